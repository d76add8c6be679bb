//! config.yml as serde reads it, once the key check has left only what regmirror reads: sections
//! and list entries as structs, every value as it is written (a [`Slot`]), so that a value of the
//! wrong type is reported at its key by validation instead of stopping the reading. A field here
//! is a `Field`, `FreeField`, `Map` or `List` of `keys::KEYS` under the same name (a test walks
//! both).

use serde::Deserialize;
use serde_yaml_ng::Value;

/// A value as written; `None` when absent or empty.
pub(super) type Slot = Option<Value>;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawConfig {
    pub log: RawLog,
    pub limits: RawLimits,
    pub auth: RawAuth,
    pub local: Slot,
    pub storage: RawStorage,
    pub http: RawHttp,
    /// Absent: a plain registry (every repository local), as distribution without `proxy`.
    pub proxy: Option<RawProxy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawLog {
    pub level: Slot,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawLimits {
    pub header_timeout: Slot,
    pub tls_handshake_timeout: Slot,
    pub idle_timeout: Slot,
    pub max_connections: Slot,
    pub max_manifest_size: Slot,
    pub max_blob_size: Slot,
    pub fill_min_rate: Slot,
    pub max_fills: Slot,
    pub max_fills_per_upstream: Slot,
    pub upload_lifetime: Slot,
    pub max_uploads: Slot,
    pub upstream_queue_timeout: Slot,
    pub manifest_memo: Slot,
    pub blob_memo: Slot,
    pub buffer_memory: Slot,
    pub max_referrers: Slot,
    pub max_referrers_size: Slot,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawAuth {
    pub htpasswd: Option<RawHtpasswd>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawHtpasswd {
    pub realm: Slot,
    pub path: Slot,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawStorage {
    pub filesystem: Option<RawFilesystem>,
    pub s3: Option<RawS3>,
    pub azure: Option<RawAzure>,
    pub redirect: RawRedirect,
    pub spool: Slot,
    pub delete: RawDelete,
    pub maxsize: Slot,
    pub gc_interval: Slot,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawFilesystem {
    pub rootdirectory: Slot,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawRedirect {
    pub disable: Slot,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawDelete {
    pub enabled: Slot,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawS3 {
    pub bucket: Slot,
    pub region: Slot,
    pub regionendpoint: Slot,
    pub accesskey: Slot,
    pub secretkey: Slot,
    pub rootdirectory: Slot,
    pub secure: Slot,
    pub forcepathstyle: Slot,
    pub chunksize: Slot,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawAzure {
    pub accountname: Slot,
    pub accountkey: Slot,
    pub container: Slot,
    pub rootdirectory: Slot,
    pub realm: Slot,
    pub serviceurl: Slot,
    pub connectionstring: Slot,
    pub credentials: RawAzureCredentials,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawAzureCredentials {
    #[serde(rename = "type")]
    pub kind: Slot,
    pub clientid: Slot,
    pub tenantid: Slot,
    pub secret: Slot,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawHttp {
    pub addr: Slot,
    pub host: Slot,
    pub secret: Slot,
    pub net: Slot,
    pub tls: RawTls,
    pub headers: Slot,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawTls {
    pub certificate: Slot,
    pub key: Slot,
    pub clientcas: Slot,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawProxy {
    pub remoteurl: Slot,
    pub username: Slot,
    pub password: Slot,
    pub ttl: Slot,
    /// An entry the key check found of the wrong shape (reported) is `None`.
    pub remoteregistries: Vec<Option<RawRemote>>,
    pub on: Slot,
    pub allow: Slot,
    pub deny: Slot,
    pub platforms: Slot,
    pub allow_private_upstreams: Slot,
    pub tag_revalidate: Slot,
    pub serve_stale_on_404: Slot,
    pub ratelimit_reserve: Slot,
    pub max_concurrent: Slot,
    pub max_rate: Slot,
    pub exec: Option<RawExec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawRemote {
    pub url: Slot,
    pub username: Slot,
    pub password: Slot,
    pub allow: Slot,
    pub deny: Slot,
    pub tag_revalidate: Slot,
    pub ratelimit_reserve: Slot,
    pub max_concurrent: Slot,
    pub max_rate: Slot,
    pub exec: Option<RawExec>,
}

/// `exec`, on `proxy` or a `remoteregistries[]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawExec {
    pub command: Slot,
    pub lifetime: Slot,
    pub timeout: Slot,
}

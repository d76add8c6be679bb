//! The cache server's configuration: distribution's `config.yml` format, plus regmirror's
//! `proxy.remoteregistries` / `proxy.on`, and distribution's `REGISTRY_*` environment overrides.
//!
//! Pure: the caller passes the file text and the environment. Reading goes in steps, one module
//! each: the YAML text to a document (a syntax error is located), the `REGISTRY_*` overrides set
//! over it (`env`), the keys checked against the key table (`keys`: unknown keys are warnings, a
//! slip of a key regmirror reads is an error that names the key it resembles), the document read
//! into `raw`'s structs, and one validation per section (`validate`, with `units`). Every error
//! is collected, located at its key (file, line and column, through `yaml_span`, or the
//! variable that set it: `report`) and returned together.

mod env;
mod exec;
mod filter;
mod keys;
mod raw;
mod report;
mod storage;
#[cfg(test)]
mod tests;
mod units;
mod validate;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

use super::mirrors::MirrorUrl;
use crate::config::json_span::LineColumn;
use crate::config::yaml_span;
use crate::config::{CredentialHelper, Credentials};

pub use filter::{Pattern, Patterns, Refusal, RepositoryFilter};
pub use keys::is_section;
pub use report::{CacheDiagnostic, CacheErrors, Origin};
pub use units::{parse_duration, parse_size};

/// Where the embedded default listens.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5000";
/// Where the embedded default keeps its data (relative to the working directory).
pub const DEFAULT_ROOT: &str = "./regmirror-data";
/// Well-known public registries the embedded default routes by `?ns=` or path prefix.
pub const WELL_KNOWN_REGISTRIES: [&str; 6] = [
    "ghcr.io",
    "quay.io",
    "gcr.io",
    "registry.k8s.io",
    "mcr.microsoft.com",
    "public.ecr.aws",
];
/// The namespace of pushed repositories in the cache: never the name of an upstream.
pub const LOCAL_NAMESPACE: &str = "local";
/// How often the server evicts by default.
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(600);
/// distribution's default `proxy.ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(168 * 3600);

/// `limits`: bounds on what clients and upstreams can make the server hold, each with its
/// default. A limit that is hit gives a clear error naming its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `header_timeout`: time to send a request head, and how long an idle keep-alive connection
    /// waits for the next one.
    pub header_timeout: Duration,
    /// `tls_handshake_timeout`: time to complete the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// `idle_timeout`: a connection that makes no progress writing a response (a client that does
    /// not read) or reading a request body for this long is closed.
    pub idle_timeout: Duration,
    /// `max_connections`: connections served at once; `None` derives it from the open-file
    /// limit (a connection may hold a socket and a file).
    pub max_connections: Option<usize>,
    /// `max_manifest_size`: the largest manifest accepted from an upstream or a push.
    pub max_manifest_size: u64,
    /// `max_blob_size`: the largest blob filled or pushed.
    pub max_blob_size: u64,
    /// `fill_min_rate` (bytes per second): a fill that falls behind this rate by more than the
    /// upstream read timeout is abandoned.
    pub fill_min_rate: u64,
    /// `max_fills`: upstream downloads in flight at once.
    pub max_fills: usize,
    /// `max_fills_per_upstream`: of those, the most one upstream may hold (every dynamic
    /// upstream together counts as one); by default three quarters of `max_fills`, at least 1.
    pub max_fills_per_upstream: usize,
    /// `upload_lifetime`: an upload no request touched for this long is abandoned.
    pub upload_lifetime: Duration,
    /// `max_uploads`: uploads in progress at once.
    pub max_uploads: usize,
    /// `upstream_queue_timeout`: the longest a request waits for its turn under an upstream's
    /// `max_concurrent`/`max_rate`; past it the client gets 429.
    pub upstream_queue_timeout: Duration,
    /// `manifest_memo`: bytes of hot manifests kept in memory.
    pub manifest_memo: u64,
    /// `blob_memo`: bytes of hot small blobs (up to 128 KiB each) kept in memory.
    pub blob_memo: u64,
    /// `buffer_memory`: blob data held in memory for clients and fills; past it, reads shrink
    /// and nothing is read ahead.
    pub buffer_memory: u64,
    /// `max_referrers`: referrers kept per subject and repository; an upstream's longer answer
    /// is cut (served with a `Warning`), a push past it refused.
    pub max_referrers: usize,
    /// `max_referrers_size`: bytes of referrer descriptors kept per subject and repository, and
    /// of an upstream's referrers answer read (all pages together, plus the page that crossed
    /// it).
    pub max_referrers_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(20),
            tls_handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
            max_manifest_size: 4 << 20,
            max_blob_size: 64 << 30,
            fill_min_rate: 32 << 10,
            max_fills: 256,
            max_fills_per_upstream: 192,
            upload_lifetime: Duration::from_secs(3600),
            max_uploads: 1000,
            upstream_queue_timeout: Duration::from_secs(30),
            manifest_memo: 64 << 20,
            blob_memo: 128 << 20,
            buffer_memory: 256 << 20,
            max_referrers: 1000,
            max_referrers_size: 1 << 20,
        }
    }
}

/// The shortest `http.secret` accepted.
pub const MIN_SECRET_BYTES: usize = 16;

/// A secret from the config: compared, never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the cache keeps content and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageBackend {
    /// `storage.filesystem`: everything under the local root.
    Filesystem,
    /// `storage.s3`: an S3-compatible bucket shared by any number of replicas.
    S3(S3Config),
    /// `storage.azure`: an Azure Blob Storage container shared by any number of replicas.
    Azure(AzureConfig),
}

/// `storage.azure`, as distribution spells it, and `storage.redirect`.
#[derive(Clone, PartialEq, Eq)]
pub struct AzureConfig {
    /// `accountname` (or the connection string's `AccountName`).
    pub account: String,
    /// `container`: must exist.
    pub container: String,
    /// `serviceurl` (or the connection string's `BlobEndpoint`); default
    /// `https://<accountname>.blob.<realm>`. An emulator's is `http://127.0.0.1:10000/<account>`.
    pub service_url: String,
    pub credentials: AzureCredentials,
    /// `rootdirectory`: the key prefix everything lives under (no leading or trailing `/`).
    pub prefix: String,
    /// Not `storage.redirect.disable`: a GET of a committed blob may answer 307 to a SAS URL.
    pub redirect: bool,
}

impl std::fmt::Debug for AzureConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureConfig")
            .field("account", &self.account)
            .field("container", &self.container)
            .field("service_url", &self.service_url)
            .field("credentials", &self.credentials)
            .field("prefix", &self.prefix)
            .field("redirect", &self.redirect)
            .finish()
    }
}

/// `storage.azure.credentials.type` and what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AzureCredentials {
    /// `shared_key`: the account key (`accountkey`); SAS URLs are signed with it.
    SharedKey(Secret),
    /// `client_secret`: a service principal (`clientid`, `tenantid`, `secret`).
    ClientSecret {
        client_id: String,
        tenant_id: String,
        secret: Secret,
    },
    /// `default_credentials`: workload identity, managed identity or the Azure CLI, as found.
    Default,
}

/// The default `storage.azure.realm`.
pub const DEFAULT_AZURE_REALM: &str = "core.windows.net";

/// `storage.s3`, as distribution spells it, and `storage.redirect`.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    pub region: String,
    /// `regionendpoint`, with its scheme (`http://minio:9000`); `None` for AWS itself.
    pub endpoint: Option<String>,
    /// `accesskey` / `secretkey`; `None`: the usual AWS environment (and instance roles).
    pub credentials: Option<Credentials>,
    /// `rootdirectory`: the key prefix everything lives under (no leading or trailing `/`).
    pub prefix: String,
    /// `forcepathstyle` (default: true with a `regionendpoint`, false for AWS).
    pub path_style: bool,
    /// `chunksize`: the part size of multipart uploads (default 10 MiB, at least 5 MiB).
    pub chunk_size: u64,
    /// Not `storage.redirect.disable`: a GET of a committed blob may answer 307 to a presigned
    /// URL (distribution's default).
    pub redirect: bool,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("credentials", &self.credentials)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("chunk_size", &self.chunk_size)
            .field("redirect", &self.redirect)
            .finish()
    }
}

/// The default multipart part size (distribution's).
pub const DEFAULT_S3_CHUNK_SIZE: u64 = 10 << 20;
/// S3's smallest part size.
pub const MIN_S3_CHUNK_SIZE: u64 = 5 << 20;

/// One upstream registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The registry's name as clients say it (`docker.io`, `ghcr.io`, `127.0.0.1:5001`): the
    /// `?ns=` value, the path prefix, and the namespace of its cached content.
    pub name: String,
    /// Where its registry API lives.
    pub url: MirrorUrl,
    pub credentials: Option<Credentials>,
    /// `exec`: a credential helper whose answer replaces `credentials`.
    pub credential_helper: Option<CredentialHelper>,
    /// How long a tag is served from cache without asking this upstream (`tag_revalidate`).
    pub tag_revalidate: Duration,
    /// `ratelimit_reserve`: the part of the pull budget the upstream states that is kept for
    /// content not cached yet.
    pub ratelimit_reserve: RateLimitReserve,
    /// `max_concurrent` and `max_rate`.
    pub requests: RequestLimits,
    /// `allow` and `deny`: what the cache may fetch from it (see [`RepositoryFilter`]).
    pub filter: RepositoryFilter,
}

/// `ratelimit_reserve`: `10%` of the stated limit, or a number of pulls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitReserve {
    Percent(u8),
    Pulls(u64),
}

impl Default for RateLimitReserve {
    fn default() -> Self {
        RateLimitReserve::Percent(10)
    }
}

impl RateLimitReserve {
    /// Whether `remaining` pulls of `limit` have fallen under the reserve.
    pub fn reached(self, limit: u64, remaining: u64) -> bool {
        let reserve = match self {
            RateLimitReserve::Percent(percent) => limit.saturating_mul(u64::from(percent)) / 100,
            RateLimitReserve::Pulls(pulls) => pulls,
        };
        remaining < reserve
    }
}

/// `max_concurrent` (requests in flight, a download until its body ends) and `max_rate`
/// (requests per second) for one upstream; none by default.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RequestLimits {
    pub max_concurrent: Option<usize>,
    pub max_rate: Option<f64>,
}

impl Eq for RequestLimits {}

/// Repositories that accept pushes and are never proxied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LocalRepositories {
    #[default]
    None,
    /// `local: all`: every repository a request does not name an upstream for (no `?ns=`,
    /// `domain` header or registry path prefix); there is then no default upstream.
    All,
    /// `local: [{prefix: "myteam/"}]`
    Prefixes(Vec<String>),
}

impl LocalRepositories {
    pub fn contains(&self, repository: &str) -> bool {
        match self {
            LocalRepositories::None => false,
            LocalRepositories::All => true,
            LocalRepositories::Prefixes(prefixes) => {
                prefixes.iter().any(|p| repository.starts_with(p.as_str()))
            }
        }
    }

    /// How a refusal names them: `myteam/, ci/`.
    pub fn describe(&self) -> String {
        match self {
            LocalRepositories::None => "none are configured (local:)".to_owned(),
            LocalRepositories::All => "all repositories without an upstream".to_owned(),
            LocalRepositories::Prefixes(prefixes) => prefixes.join(", "),
        }
    }
}

/// The validated cache configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// `host:port` to listen on.
    pub listen: String,
    /// The local directory: the whole store with the filesystem driver
    /// (`storage.filesystem.rootdirectory`), the spool of work in progress with s3
    /// (`storage.spool`).
    pub root: PathBuf,
    /// Where verified content and metadata live.
    pub storage: StorageBackend,
    /// `http.tls.certificate` / `http.tls.key`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `http.tls.clientcas`: when set, clients must present a certificate signed by one of them.
    pub client_cas: Vec<PathBuf>,
    /// `auth.htpasswd`: (realm, file).
    pub htpasswd: Option<(String, PathBuf)>,
    /// `local`: repositories that accept pushes.
    pub local: LocalRepositories,
    /// `storage.delete.enabled`: local manifests and blobs may be deleted.
    pub delete_enabled: bool,
    /// `storage.maxsize`: least recently used images are evicted above it.
    pub max_size: Option<u64>,
    /// `storage.gc_interval`: how often the server collects (default 10m).
    pub gc_interval: Duration,
    /// `http.headers`: added to every response.
    pub headers: Vec<(String, String)>,
    /// `http.host`: the URL other replicas reach this one at (advertised in fill leases).
    pub host: Option<String>,
    /// `http.secret`: shared by the replicas of one bucket; authenticates their internal route.
    pub secret: Option<Secret>,
    /// Configured upstreams; the first is the default for requests that name none.
    pub upstreams: Vec<UpstreamConfig>,
    /// `proxy.on`: serve registries that are not configured, without stored credentials.
    pub dynamic_upstreams: bool,
    /// `proxy.ratelimit_reserve` and `proxy.max_concurrent`/`max_rate`: the defaults of every
    /// upstream, and what dynamic upstreams get (their limits shared by all of them).
    pub proxy_reserve: RateLimitReserve,
    pub proxy_requests: RequestLimits,
    /// `proxy.allow_private_upstreams`: let dynamic upstreams be loopback, link-local or private.
    pub allow_private_upstreams: bool,
    /// `proxy.allow` and `proxy.deny`: the fetch policy of dynamic upstreams (configured ones
    /// have theirs in [`UpstreamConfig::filter`]).
    pub filter: RepositoryFilter,
    /// `proxy.platforms`: the platforms `regmirror warm` keeps from indexes (empty: every one).
    pub platforms: Vec<crate::platform::Platform>,
    /// `proxy.ttl`.
    pub ttl: Duration,
    /// `proxy.serve_stale_on_404`: a tag the upstream answers 404 for is still served from cache.
    pub serve_stale_on_404: bool,
    /// `log.level`, when set.
    pub log_level: Option<String>,
    /// `limits`.
    pub limits: Limits,
    /// Keys that were ignored, and why, each located.
    pub warnings: Vec<CacheDiagnostic>,
}

impl CacheConfig {
    /// The configuration used when no file is given: Docker Hub as the default upstream, the
    /// well-known public registries routable by `?ns=` or path prefix.
    pub fn embedded_default() -> Self {
        let hub = upstream("docker.io", "https://registry-1.docker.io");
        let mut upstreams = vec![hub];
        upstreams.extend(
            WELL_KNOWN_REGISTRIES
                .iter()
                .map(|host| upstream(host, &format!("https://{host}"))),
        );
        CacheConfig {
            listen: DEFAULT_LISTEN.to_owned(),
            root: PathBuf::from(DEFAULT_ROOT),
            tls: None,
            client_cas: Vec::new(),
            htpasswd: None,
            storage: StorageBackend::Filesystem,
            local: LocalRepositories::None,
            delete_enabled: false,
            max_size: None,
            gc_interval: DEFAULT_GC_INTERVAL,
            headers: Vec::new(),
            host: None,
            secret: None,
            upstreams,
            dynamic_upstreams: false,
            proxy_reserve: RateLimitReserve::default(),
            proxy_requests: RequestLimits::default(),
            allow_private_upstreams: false,
            filter: RepositoryFilter::default(),
            platforms: Vec::new(),
            ttl: DEFAULT_TTL,
            serve_stale_on_404: false,
            log_level: None,
            limits: Limits::default(),
            warnings: Vec::new(),
        }
    }

    /// Parses `config.yml` text (`file` names it in messages) with `REGISTRY_*` overrides from
    /// `env`. With no text, the embedded default is the base the overrides apply to.
    /// Parses `config.yml` text (`file` names it in messages) with `REGISTRY_*` overrides from
    /// `env`. With no text, the embedded default is the base the overrides apply to. Every error
    /// is returned, the file's in line order.
    pub fn parse(
        file: &str,
        text: Option<&str>,
        env: &[(String, String)],
    ) -> Result<Self, CacheErrors> {
        let overrides = env::overrides(env);
        let mut document = match text {
            Some(text) => read_document(file, text)?,
            None if overrides.is_empty() => return Ok(Self::embedded_default()),
            None => {
                let urls: Vec<String> = Self::embedded_default()
                    .upstreams
                    .iter()
                    .map(|u| u.url.to_string())
                    .collect();
                env::base_document(&overrides, &urls)
            }
        };
        env::apply(&mut document, &overrides);
        let mut report = report::Report::new(file, text, &overrides);
        keys::check(&mut document, &mut report);
        let config = match raw::RawConfig::deserialize(document) {
            Ok(raw) => validate::validate(raw, &mut report),
            Err(e) => {
                report.error("", e.to_string());
                None
            }
        };
        let (errors, warnings) = report.finish();
        match config {
            Some(config) if errors.is_empty() => Ok(CacheConfig { warnings, ..config }),
            _ => Err(CacheErrors(errors)),
        }
    }
}

/// The YAML text as a document: a mapping (an empty file is an empty one). A syntax error, or a
/// document that is not a mapping, is the one error.
fn read_document(file: &str, text: &str) -> Result<Value, CacheErrors> {
    let located = |position: LineColumn, message: String| {
        CacheErrors(vec![CacheDiagnostic {
            origin: Origin::File {
                file: file.into(),
                position: Some(position),
            },
            field: String::new(),
            message,
        }])
    };
    let start = LineColumn { line: 1, column: 1 };
    match serde_yaml_ng::from_str::<Value>(text) {
        Ok(Value::Null) => Ok(Value::Mapping(Mapping::new())),
        Ok(document @ Value::Mapping(_)) => Ok(document),
        Ok(_) => Err(located(
            start,
            "the file must hold a mapping of sections (proxy:, storage:, http: ...)".into(),
        )),
        Err(e) => {
            let position = e.location().map_or(start, |l| {
                let at = LineColumn {
                    line: l.line(),
                    column: l.column(),
                };
                yaml_span::clamp(text, at)
            });
            Err(located(
                position,
                format!("invalid YAML: {}", without_positions(&e.to_string())),
            ))
        }
    }
}

/// A parser message without its " at line L column C" parts: the diagnostic says where.
fn without_positions(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find(" at line ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " at line ".len()..];
        let digits = |s: &str| s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let line_digits = digits(after);
        let tail = &after[line_digits..];
        match tail.strip_prefix(" column ") {
            Some(column) if line_digits > 0 && digits(column) > 0 => {
                rest = &column[digits(column)..];
            }
            _ => {
                out.push_str(" at line ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn upstream(name: &str, url: &str) -> UpstreamConfig {
    UpstreamConfig {
        name: name.to_owned(),
        url: MirrorUrl::parse(url).expect("built-in upstream URLs are valid"),
        credentials: None,
        credential_helper: None,
        tag_revalidate: Duration::ZERO,
        ratelimit_reserve: RateLimitReserve::default(),
        requests: RequestLimits::default(),
        filter: RepositoryFilter::default(),
    }
}

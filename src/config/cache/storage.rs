//! The `storage` section: exactly one driver (`filesystem`, `s3` or `azure`) with its keys as
//! distribution spells them, and the keys every driver shares.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{RawAzure, RawAzureCredentials, RawS3, RawStorage};
use super::report::{Report, Zero};
use super::{
    AzureConfig, AzureCredentials, DEFAULT_AZURE_REALM, DEFAULT_GC_INTERVAL, DEFAULT_ROOT,
    DEFAULT_S3_CHUNK_SIZE, MIN_S3_CHUNK_SIZE, S3Config, Secret, StorageBackend,
};
use crate::config::Credentials;

/// The `storage` section, validated.
pub(super) struct Storage {
    pub(super) backend: StorageBackend,
    pub(super) root: PathBuf,
    pub(super) delete_enabled: bool,
    pub(super) max_size: Option<u64>,
    pub(super) gc_interval: Duration,
}

pub(super) fn storage(raw: RawStorage, r: &mut Report<'_>) -> Storage {
    let redirect_disabled = r
        .flag(&raw.redirect.disable, "storage.redirect.disable")
        .unwrap_or(false);
    let delete_enabled = r
        .flag(&raw.delete.enabled, "storage.delete.enabled")
        .unwrap_or(false);
    let max_size = r.size(&raw.maxsize, "storage.maxsize", "a size like 50GiB", |_| {
        true
    });
    let gc_interval = r
        .duration(&raw.gc_interval, "storage.gc_interval", Zero::Refused)
        .unwrap_or(DEFAULT_GC_INTERVAL);
    let spool = r.path(&raw.spool, "storage.spool");
    let default_root = || PathBuf::from(DEFAULT_ROOT);
    let configured: Vec<&str> = [
        ("filesystem", raw.filesystem.is_some()),
        ("s3", raw.s3.is_some()),
        ("azure", raw.azure.is_some()),
    ]
    .into_iter()
    .filter_map(|(driver, set)| set.then_some(driver))
    .collect();
    if let [first, second, ..] = configured[..] {
        r.error(
            "storage",
            format!(
                "both {first} and {second} are configured: choose one (REGISTRY_STORAGE={second} \
                 selects {second})"
            ),
        );
    }
    let bucket_root = |spool: Option<PathBuf>| spool.unwrap_or_else(default_root);
    let (backend, root) = match (raw.filesystem, raw.s3, raw.azure) {
        (_, Some(s3), _) => {
            let backend = s3_storage(s3, redirect_disabled, r)
                .map_or(StorageBackend::Filesystem, StorageBackend::S3);
            (backend, bucket_root(spool))
        }
        (_, None, Some(azure)) => {
            let backend = azure_storage(azure, redirect_disabled, r)
                .map_or(StorageBackend::Filesystem, StorageBackend::Azure);
            (backend, bucket_root(spool))
        }
        (filesystem, None, None) => {
            let root = filesystem
                .and_then(|f| r.path(&f.rootdirectory, "storage.filesystem.rootdirectory"));
            (
                StorageBackend::Filesystem,
                root.unwrap_or_else(default_root),
            )
        }
    };
    Storage {
        backend,
        root,
        delete_enabled,
        max_size,
        gc_interval,
    }
}

/// `storage.s3`, as distribution spells it.
fn s3_storage(raw: RawS3, redirect_disabled: bool, r: &mut Report<'_>) -> Option<S3Config> {
    let bucket = r.required(&raw.bucket, "storage.s3.bucket");
    let secure = r.flag(&raw.secure, "storage.s3.secure").unwrap_or(true);
    let endpoint = r
        .string(&raw.regionendpoint, "storage.s3.regionendpoint")
        .filter(|e| !e.is_empty())
        .map(|e| match e.contains("://") {
            true => e.trim_end_matches('/').to_owned(),
            false => {
                let scheme = if secure { "https" } else { "http" };
                format!("{scheme}://{}", e.trim_end_matches('/'))
            }
        });
    if let Some(Err(e)) = endpoint.as_deref().map(url::Url::parse) {
        let shown = endpoint.as_deref().unwrap_or_default();
        r.error("storage.s3.regionendpoint", format!("{shown:?}: {e}"));
    }
    let key = r.string(&raw.accesskey, "storage.s3.accesskey");
    let secret = r.string(&raw.secretkey, "storage.s3.secretkey");
    let credentials = match (key, secret) {
        (Some(key), Some(secret)) if !key.is_empty() => Some(Credentials::new(key, secret)),
        (None, None) => None,
        (Some(key), None) if key.is_empty() => None,
        _ => {
            r.error(
                "storage.s3.accesskey",
                "accesskey and secretkey go together",
            );
            None
        }
    };
    let chunk_size = r
        .size(
            &raw.chunksize,
            "storage.s3.chunksize",
            "a part size of at least 5MiB (S3's smallest part)",
            |n| n >= MIN_S3_CHUNK_SIZE,
        )
        .unwrap_or(DEFAULT_S3_CHUNK_SIZE);
    let region = r.string(&raw.region, "storage.s3.region");
    let path_style = r.flag(&raw.forcepathstyle, "storage.s3.forcepathstyle");
    let prefix = r.string(&raw.rootdirectory, "storage.s3.rootdirectory");
    Some(S3Config {
        bucket: bucket?,
        region: region
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "us-east-1".to_owned()),
        path_style: path_style.unwrap_or(endpoint.is_some()),
        endpoint,
        credentials,
        prefix: prefix.unwrap_or_default().trim_matches('/').to_owned(),
        chunk_size,
        redirect: !redirect_disabled,
    })
}

/// `storage.azure`, as distribution spells it; `connectionstring` in place of `accountname`,
/// `accountkey` and `serviceurl`.
fn azure_storage(
    raw: RawAzure,
    redirect_disabled: bool,
    r: &mut Report<'_>,
) -> Option<AzureConfig> {
    let container = r.required(&raw.container, "storage.azure.container");
    let connection = r
        .string(&raw.connectionstring, "storage.azure.connectionstring")
        .filter(|c| !c.is_empty());
    let parts = match connection {
        Some(text) => from_connection_string(&text, &raw, r)?,
        None => AzureAccount {
            name: r.required(&raw.accountname, "storage.azure.accountname"),
            key: r
                .string(&raw.accountkey, "storage.azure.accountkey")
                .filter(|k| !k.is_empty()),
            service_url: r
                .string(&raw.serviceurl, "storage.azure.serviceurl")
                .filter(|u| !u.is_empty()),
        },
    };
    let realm = r
        .string(&raw.realm, "storage.azure.realm")
        .filter(|realm| !realm.is_empty())
        .unwrap_or_else(|| DEFAULT_AZURE_REALM.to_owned());
    let credentials = azure_credentials(&raw.credentials, parts.key, r);
    let prefix = r.string(&raw.rootdirectory, "storage.azure.rootdirectory");
    let account = parts.name?;
    let service_url = parts
        .service_url
        .map(|u| u.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| format!("https://{account}.blob.{realm}"));
    if let Err(e) = url::Url::parse(&service_url) {
        r.error("storage.azure.serviceurl", format!("{service_url:?}: {e}"));
    }
    Some(AzureConfig {
        account,
        container: container?,
        service_url,
        credentials: credentials?,
        prefix: prefix.unwrap_or_default().trim_matches('/').to_owned(),
        redirect: !redirect_disabled,
    })
}

/// The account's name, key and endpoint, from the keys or a connection string.
struct AzureAccount {
    name: Option<String>,
    key: Option<String>,
    service_url: Option<String>,
}

/// `AccountName=…;AccountKey=…;BlobEndpoint=…` (or `DefaultEndpointsProtocol` and
/// `EndpointSuffix` in place of `BlobEndpoint`), as the Azure portal and Azurite show it.
fn from_connection_string(text: &str, raw: &RawAzure, r: &mut Report<'_>) -> Option<AzureAccount> {
    const FIELD: &str = "storage.azure.connectionstring";
    if raw.accountname.is_some() || raw.accountkey.is_some() || raw.serviceurl.is_some() {
        r.error(
            FIELD,
            "takes the place of accountname, accountkey and serviceurl: set one or the other",
        );
        return None;
    }
    let mut values = BTreeMap::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = part.split_once('=') else {
            r.error(FIELD, format!("{part:?} is not Name=value"));
            return None;
        };
        values.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let Some(name) = values.remove("accountname") else {
        r.error(FIELD, "has no AccountName");
        return None;
    };
    let service_url = values.remove("blobendpoint").or_else(|| {
        let suffix = values.remove("endpointsuffix")?;
        let scheme = values
            .remove("defaultendpointsprotocol")
            .unwrap_or_else(|| "https".to_owned());
        Some(format!("{scheme}://{name}.blob.{suffix}"))
    });
    Some(AzureAccount {
        name: Some(name),
        key: values.remove("accountkey"),
        service_url,
    })
}

/// `storage.azure.credentials`: `shared_key` (the default with an account key),
/// `client_secret`, or `default_credentials` (the default without one).
fn azure_credentials(
    raw: &RawAzureCredentials,
    key: Option<String>,
    r: &mut Report<'_>,
) -> Option<AzureCredentials> {
    const TYPE: &str = "storage.azure.credentials.type";
    let kind = r.string(&raw.kind, TYPE).filter(|k| !k.is_empty());
    let client_id = r.string(&raw.clientid, "storage.azure.credentials.clientid");
    let tenant_id = r.string(&raw.tenantid, "storage.azure.credentials.tenantid");
    let secret = r.string(&raw.secret, "storage.azure.credentials.secret");
    let kind = kind.unwrap_or_else(|| {
        match key {
            Some(_) => "shared_key",
            None => "default_credentials",
        }
        .to_owned()
    });
    match kind.as_str() {
        "shared_key" => match key {
            Some(key) => Some(AzureCredentials::SharedKey(Secret(key))),
            None => {
                r.error(TYPE, "shared_key needs storage.azure.accountkey");
                None
            }
        },
        "client_secret" => {
            let mut needed = |value: Option<String>, name: &str| {
                let value = value.filter(|v| !v.is_empty());
                if value.is_none() {
                    r.error(&format!("storage.azure.credentials.{name}"), "is required");
                }
                value
            };
            let client_id = needed(client_id, "clientid");
            let tenant_id = needed(tenant_id, "tenantid");
            let secret = needed(secret, "secret");
            Some(AzureCredentials::ClientSecret {
                client_id: client_id?,
                tenant_id: tenant_id?,
                secret: Secret(secret?),
            })
        }
        "default_credentials" | "default" => Some(AzureCredentials::Default),
        other => {
            r.error(
                TYPE,
                format!("{other:?}: one of shared_key, client_secret, default_credentials"),
            );
            None
        }
    }
}

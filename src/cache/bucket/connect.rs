//! `object_store` clients from the storage config: the S3 and Azure builders with the timeouts
//! and retries every bucket request shares. Builds clients only; no request is made.

use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::{ClientOptions, RetryConfig};

use super::BucketError;
use crate::config::cache::{AzureConfig, AzureCredentials, S3Config};

/// The size of each block an Azure upload stages (distribution's driver stages 4 MiB; larger
/// blocks mean fewer requests, and a blob may have 50,000).
pub(super) const AZURE_BLOCK_SIZE: usize = 10 << 20;

fn retry() -> RetryConfig {
    RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(10),
        ..RetryConfig::default()
    }
}

fn client_options(connect_timeout: Duration) -> ClientOptions {
    ClientOptions::new()
        .with_connect_timeout(connect_timeout)
        .with_timeout_disabled()
        .with_read_timeout(Duration::from_secs(30))
}

/// An S3 client for `storage.s3`: conditional puts by ETag, so a lease update is `If-Match`.
pub(super) fn s3(config: &S3Config, connect_timeout: Duration) -> Result<AmazonS3, BucketError> {
    crate::upstream::install_crypto_provider();
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&config.bucket)
        .with_region(&config.region)
        .with_virtual_hosted_style_request(!config.path_style)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_retry(retry())
        .with_client_options(client_options(connect_timeout));
    if let Some(endpoint) = &config.endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    if let Some(credentials) = &config.credentials {
        builder = builder
            .with_access_key_id(credentials.username())
            .with_secret_access_key(credentials.password());
    }
    builder.build().map_err(|source| BucketError::Config {
        driver: "s3",
        source,
    })
}

/// An Azure Blob Storage client for `storage.azure`, at its service URL (an emulator's too:
/// `http://127.0.0.1:10000/<account>`, the account a path level). Only `default_credentials`
/// reads the environment (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE` of
/// workload identity, ...), as distribution's `DefaultAzureCredential` does; the account,
/// container and endpoint are always the config's.
pub(super) fn azure(
    config: &AzureConfig,
    connect_timeout: Duration,
) -> Result<MicrosoftAzure, BucketError> {
    crate::upstream::install_crypto_provider();
    let base = match config.credentials {
        AzureCredentials::Default => MicrosoftAzureBuilder::from_env(),
        _ => MicrosoftAzureBuilder::new(),
    };
    let mut builder = base
        .with_account(&config.account)
        .with_container_name(&config.container)
        .with_retry(retry())
        // Options replace each other: allow_http after them.
        .with_client_options(client_options(connect_timeout))
        .with_endpoint(config.service_url.clone())
        .with_allow_http(config.service_url.starts_with("http://"));
    builder = match &config.credentials {
        AzureCredentials::SharedKey(key) => builder.with_access_key(&key.0),
        AzureCredentials::ClientSecret {
            client_id,
            tenant_id,
            secret,
        } => builder.with_client_secret_authorization(client_id, &secret.0, tenant_id),
        AzureCredentials::Default => builder.with_credential_type("auto"),
    };
    builder.build().map_err(|source| BucketError::Config {
        driver: "azure",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cache::Secret;

    /// Every credential type makes a client without a request (tokens are fetched on first use).
    #[test]
    fn every_azure_credential_type_makes_a_client() {
        for credentials in [
            AzureCredentials::SharedKey(Secret("a2V5".into())),
            AzureCredentials::ClientSecret {
                client_id: "id".into(),
                tenant_id: "tenant".into(),
                secret: Secret("s".into()),
            },
            AzureCredentials::Default,
        ] {
            let config = AzureConfig {
                account: "acct".into(),
                container: "registry".into(),
                service_url: "https://acct.blob.core.windows.net".into(),
                credentials: credentials.clone(),
                prefix: String::new(),
                redirect: true,
            };
            if let Err(e) = azure(&config, Duration::from_secs(1)) {
                panic!("{credentials:?}: {e}");
            }
        }
        let bad_key = AzureConfig {
            account: "acct".into(),
            container: "registry".into(),
            service_url: "https://acct.blob.core.windows.net".into(),
            credentials: AzureCredentials::SharedKey(Secret("not base64!".into())),
            prefix: String::new(),
            redirect: true,
        };
        let e = azure(&bad_key, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().starts_with("storage.azure: "), "{e}");
    }
}

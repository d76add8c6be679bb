//! An object store as the cache's storage: an S3-compatible bucket or an Azure Blob Storage
//! container, through the `object_store` crate (signed requests, multipart uploads, conditional
//! puts, signed URLs), and the key layout everything in it follows. Only the listing of
//! abandoned uploads differs between the services (see [`Bucket::pending_uploads`]).
//!
//! Keys, under the driver's `rootdirectory` (`<root>/`, empty by default):
//!
//! | key | what |
//! |---|---|
//! | `blobs/<alg>/<2 hex>/<hex>` | verified content: blobs and manifests, shared by every namespace |
//! | `meta/manifests/<alg>/<hex>` | a manifest's record: media type, size, references (JSON) |
//! | `meta/tags/<upstream>/<repository>/_tags/<tag>` | a cached tag: digest, media type, validated at (JSON) |
//! | `meta/links/<upstream>/<repository>/_links/<alg>/<hex>` | the repository may read the digest (empty) |
//! | `meta/sources/<upstream>/<alg>/<hex>` | the namespace received (or was pushed) the bytes (empty) |
//! | `meta/referrers/<upstream>/<repository>/_referrers/<alg>/<hex>/<alg>/<hex>` | a manifest referring to a subject: its descriptor (JSON) |
//! | `meta/used/<replica>/<unix seconds>-<n>` | a batch of last-use times from one replica (JSON) |
//! | `meta/doomed/<alg>/<hex>` | evicted; the content is deleted next (empty) |
//! | `leases/fills/<upstream>/<alg>/<hex>` | the replica downloading that blob, until when (JSON) |
//! | `leases/gc` | the replica collecting, until when (JSON) |
//! | `uploads/<id>/record`, `uploads/<id>/part-<n>` | a push in progress: repository, size, parts (JSON); the bytes of each PATCH |
//!
//! A `/` inside a repository name is a key level; `_tags` and `_links` cannot be repository name
//! components (those start with a letter or digit), so no two records share a key. Characters S3
//! advises against (the brackets of an IPv6 upstream) are percent-encoded in their key level.
//! Content becomes visible under `blobs/` only when a multipart upload of verified bytes is
//! completed (on Azure: its block list is committed); an upload a crash abandoned is invisible
//! and is aborted by the next collection on S3; Azure discards uncommitted blocks by itself
//! after 7 days.

mod connect;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::aws::AmazonS3;
use object_store::multipart::MultipartStore as _;
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{
    GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt as _, PutMode, PutOptions,
    PutPayload, UpdateVersion, WriteMultipart,
};

use crate::config::cache::{AzureConfig, S3Config};

/// How long a presigned URL for a blob is valid.
const PRESIGN_FOR: Duration = Duration::from_secs(20 * 60);
/// Parts of one multipart upload in flight at once.
const UPLOAD_CONCURRENCY: usize = 4;

/// What went wrong with the bucket.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    /// The configuration does not make a client (`storage.s3`, `storage.azure`).
    #[error("storage.{driver}: {source}")]
    Config {
        driver: &'static str,
        source: object_store::Error,
    },
    /// The HTTP client for requests `object_store` only presigns could not be built.
    #[error("{0}")]
    Client(#[source] reqwest::Error),
    /// The bucket did not answer, or refused (the service's XML error in one line).
    #[error("storage {bucket}: {}", one_line(&.source.to_string()))]
    Unreachable {
        bucket: Arc<str>,
        source: object_store::Error,
    },
    /// A request presigned by `object_store` (the listing of multipart uploads) failed.
    #[error("storage {bucket}: {source}")]
    Presigned {
        bucket: Arc<str>,
        source: reqwest::Error,
    },
    /// The spool file an upload reads from.
    #[error("spool: {0}")]
    Spool(#[source] std::io::Error),
    /// A conditional put lost: the key exists, or changed since it was read.
    #[error("precondition failed")]
    Precondition,
    /// A lease other replicas kept changing while this one tried to take it.
    #[error("lease {key}: too much contention")]
    Contended { key: String },
}

/// An object read with its version, for a conditional update.
#[derive(Debug, Clone)]
pub(crate) struct Versioned {
    pub(crate) body: Bytes,
    pub(crate) version: UpdateVersion,
}

/// A multipart upload in progress: (key under the root, upload id).
pub(crate) type PendingUpload = (String, String);

/// The service behind the bucket, for what `object_store`'s traits leave out: the listing and
/// abort of abandoned multipart uploads.
#[derive(Debug, Clone)]
enum Service {
    S3(Arc<AmazonS3>),
    Azure,
}

/// The bucket, its root, and how to reach it.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    store: Arc<dyn ObjectStore>,
    /// Signs the URLs redirects go to (SigV4 on S3, a SAS on Azure).
    signer: Arc<dyn Signer>,
    service: Service,
    root: String,
    /// `s3://bucket/root at endpoint` or `azure://container/root at service URL`, for messages.
    pub(crate) describe: Arc<str>,
    chunk_size: usize,
    http: reqwest::Client,
}

impl Bucket {
    /// A client for `storage.s3`; no request is made.
    pub(crate) fn s3(config: &S3Config, connect_timeout: Duration) -> Result<Self, BucketError> {
        let store = Arc::new(connect::s3(config, connect_timeout)?);
        let at = config.endpoint.as_deref().unwrap_or("AWS");
        let describe = format!("s3://{}/{} at {at}", config.bucket, config.prefix);
        let chunk_size = usize::try_from(config.chunk_size).unwrap_or(usize::MAX);
        Bucket::with(
            store.clone(),
            store.clone(),
            Service::S3(store),
            &config.prefix,
            describe,
            chunk_size,
            connect_timeout,
        )
    }

    /// A client for `storage.azure`; no request is made.
    pub(crate) fn azure(
        config: &AzureConfig,
        connect_timeout: Duration,
    ) -> Result<Self, BucketError> {
        let store = Arc::new(connect::azure(config, connect_timeout)?);
        let describe = format!(
            "azure://{}/{} at {}",
            config.container, config.prefix, config.service_url
        );
        Bucket::with(
            store.clone(),
            store,
            Service::Azure,
            &config.prefix,
            describe,
            connect::AZURE_BLOCK_SIZE,
            connect_timeout,
        )
    }

    fn with(
        store: Arc<dyn ObjectStore>,
        signer: Arc<dyn Signer>,
        service: Service,
        root: &str,
        describe: String,
        chunk_size: usize,
        connect_timeout: Duration,
    ) -> Result<Self, BucketError> {
        Ok(Bucket {
            store,
            signer,
            service,
            root: root.to_owned(),
            describe: Arc::from(describe),
            chunk_size,
            http: reqwest::Client::builder()
                .connect_timeout(connect_timeout)
                .timeout(Duration::from_secs(30))
                .build()
                .map_err(BucketError::Client)?,
        })
    }

    /// The object key of `key` (a key of the layout above) under the root.
    pub(crate) fn path(&self, key: &str) -> Path {
        if self.root.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.root))
        }
    }

    /// `key` of a listed object, relative to the root and percent-decoded.
    fn relative(&self, path: &Path) -> String {
        let parts: Vec<String> = path
            .parts()
            .skip(if self.root.is_empty() {
                0
            } else {
                self.root.split('/').count()
            })
            .map(|p| {
                percent_encoding::percent_decode_str(p.as_ref())
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        parts.join("/")
    }

    fn unreachable(&self, e: object_store::Error) -> BucketError {
        match e {
            object_store::Error::Precondition { .. }
            | object_store::Error::AlreadyExists { .. } => BucketError::Precondition,
            source => BucketError::Unreachable {
                bucket: self.describe.clone(),
                source,
            },
        }
    }

    fn presigned_failed(&self, source: reqwest::Error) -> BucketError {
        BucketError::Presigned {
            bucket: self.describe.clone(),
            source,
        }
    }

    /// A 404 for the key itself; a missing bucket (container) answers 404 too, and is an outage.
    fn is_missing_key(&self, e: &object_store::Error) -> bool {
        matches!(e, object_store::Error::NotFound { .. }) && {
            let text = format!("{e:?}");
            !text.contains("NoSuchBucket") && !text.contains("ContainerNotFound")
        }
    }

    /// One listing request: the bucket exists and the credentials are good.
    pub(crate) async fn check(&self) -> Result<(), BucketError> {
        let prefix = self.path("meta");
        let mut listing = self.store.list(Some(&prefix));
        match listing.next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(self.unreachable(e)),
        }
    }

    /// An object whole, or `None`.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Bytes>, BucketError> {
        Ok(self.get_versioned(key).await?.map(|v| v.body))
    }

    /// An object whole with its version, or `None`.
    pub(crate) async fn get_versioned(&self, key: &str) -> Result<Option<Versioned>, BucketError> {
        match self.store.get(&self.path(key)).await {
            Ok(result) => {
                let version = UpdateVersion {
                    e_tag: result.meta.e_tag.clone(),
                    version: result.meta.version.clone(),
                };
                let body = result.bytes().await.map_err(|e| self.unreachable(e))?;
                Ok(Some(Versioned { body, version }))
            }
            Err(e) if self.is_missing_key(&e) => Ok(None),
            Err(e) => Err(self.unreachable(e)),
        }
    }

    /// An object's size, or `None` when it does not exist.
    pub(crate) async fn head(&self, key: &str) -> Result<Option<u64>, BucketError> {
        match self.store.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(e) if self.is_missing_key(&e) => Ok(None),
            Err(e) => Err(self.unreachable(e)),
        }
    }

    /// Bytes `start..end` of an object, as they arrive.
    pub(crate) async fn stream(
        &self,
        key: &str,
        start: u64,
        end: u64,
    ) -> Result<futures_util::stream::BoxStream<'static, std::io::Result<Bytes>>, BucketError> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(start..end)),
            ..GetOptions::default()
        };
        let result = self
            .store
            .get_opts(&self.path(key), options)
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(result.into_stream().map_err(std::io::Error::other).boxed())
    }

    /// A presigned URL to GET an object (on Azure a service SAS).
    pub(crate) async fn presigned(&self, key: &str) -> Result<url::Url, BucketError> {
        self.signer
            .signed_url(reqwest::Method::GET, &self.path(key), PRESIGN_FOR)
            .await
            .map_err(|e| self.unreachable(e))
    }

    /// Writes an object (overwriting).
    pub(crate) async fn put(&self, key: &str, body: Bytes) -> Result<(), BucketError> {
        self.store
            .put(&self.path(key), PutPayload::from(body))
            .await
            .map(drop)
            .map_err(|e| self.unreachable(e))
    }

    /// Writes an object only if the key does not exist (`If-None-Match: *` on S3 and Azure).
    pub(crate) async fn create(
        &self,
        key: &str,
        body: Bytes,
    ) -> Result<UpdateVersion, BucketError> {
        self.put_mode(key, body, PutMode::Create).await
    }

    /// Replaces an object only if it is still at `version` (`If-Match` with its ETag).
    pub(crate) async fn replace(
        &self,
        key: &str,
        body: Bytes,
        version: UpdateVersion,
    ) -> Result<UpdateVersion, BucketError> {
        self.put_mode(key, body, PutMode::Update(version)).await
    }

    async fn put_mode(
        &self,
        key: &str,
        body: Bytes,
        mode: PutMode,
    ) -> Result<UpdateVersion, BucketError> {
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let result = self
            .store
            .put_opts(&self.path(key), PutPayload::from(body), options)
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(UpdateVersion {
            e_tag: result.e_tag,
            version: result.version,
        })
    }

    /// Uploads a local file as `key` in parts; the object appears only when the upload
    /// completes (a failure aborts it).
    pub(crate) async fn upload_file(
        &self,
        key: &str,
        file: &std::path::Path,
    ) -> Result<(), BucketError> {
        use tokio::io::AsyncReadExt as _;
        let upload = self
            .store
            .put_multipart(&self.path(key))
            .await
            .map_err(|e| self.unreachable(e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.chunk_size);
        let result = async {
            let mut file = tokio::fs::File::open(file)
                .await
                .map_err(BucketError::Spool)?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                writer
                    .wait_for_capacity(UPLOAD_CONCURRENCY)
                    .await
                    .map_err(|e| self.unreachable(e))?;
                let n = file.read(&mut buf).await.map_err(BucketError::Spool)?;
                if n == 0 {
                    return Ok(());
                }
                writer.write(&buf[..n]);
            }
        }
        .await;
        match result {
            Ok(()) => writer
                .finish()
                .await
                .map(drop)
                .map_err(|e| self.unreachable(e)),
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    /// Deletes an object; a missing one is not an error.
    pub(crate) async fn delete(&self, key: &str) -> Result<(), BucketError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if self.is_missing_key(&e) => Ok(()),
            Err(e) => Err(self.unreachable(e)),
        }
    }

    /// Every object under `prefix` (a key of the layout, ending in `/` or not), with keys
    /// relative to the root.
    pub(crate) async fn list(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, ObjectMeta)>, BucketError> {
        self.list_by_page(prefix).try_collect().await
    }

    /// The objects of [`Bucket::list`] as the listing's pages arrive: a reader that stops
    /// reading asks for no further page.
    pub(crate) fn list_by_page(
        &self,
        prefix: &str,
    ) -> impl futures_util::Stream<Item = Result<(String, ObjectMeta), BucketError>> + '_ {
        let path = self.path(prefix.trim_end_matches('/'));
        self.store.list(Some(&path)).map(move |listed| {
            listed
                .map(|meta| (self.relative(&meta.location), meta))
                .map_err(|e| self.unreachable(e))
        })
    }

    /// Multipart uploads in progress under the root (S3's ListMultipartUploads, sent as a
    /// request presigned by `object_store`). None on Azure: an upload there is blocks staged on
    /// the blob, invisible until their list is committed, that Azure discards after 7 days, and
    /// that no request can delete.
    pub(crate) async fn pending_uploads(&self) -> Result<Vec<PendingUpload>, BucketError> {
        let Service::S3(s3) = &self.service else {
            return Ok(Vec::new());
        };
        let mut query = vec![("uploads".to_owned(), String::new())];
        if !self.root.is_empty() {
            query.push(("prefix".to_owned(), format!("{}/", self.root)));
        }
        let url = s3
            .signed_url_opts(
                reqwest::Method::GET,
                &Path::from(""),
                PRESIGN_FOR,
                &SignedUrlOptions::new().with_query(query),
            )
            .await
            .map_err(|e| self.unreachable(e))?;
        let answer = self
            .http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|source| self.presigned_failed(source))?;
        let text = answer
            .text()
            .await
            .map_err(|source| self.presigned_failed(source))?;
        Ok(parse_uploads(&text)
            .into_iter()
            .map(|(key, id)| (self.relative(&Path::from(key)), id))
            .collect())
    }

    /// Aborts a multipart upload `pending_uploads` listed.
    pub(crate) async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), BucketError> {
        let Service::S3(s3) = &self.service else {
            return Ok(());
        };
        s3.abort_multipart(&self.path(key), &upload_id.to_owned())
            .await
            .map_err(|e| self.unreachable(e))
    }
}

/// An error for one log line: S3's `<Code>` and `<Message>` when the store answered an XML error
/// (the whole document otherwise spans lines), whitespace folded, at most 300 characters.
fn one_line(error: &str) -> String {
    let tag = |name: &str| -> Option<&str> {
        let start = error.find(&format!("<{name}>"))? + name.len() + 2;
        let end = error[start..].find(&format!("</{name}>"))? + start;
        Some(&error[start..end])
    };
    let text = match (tag("Code"), tag("Message")) {
        (Some(code), Some(message)) => {
            let before = &error[..error.find('<').unwrap_or(error.len())];
            format!("{before}{code}: {message}")
        }
        _ => error.to_owned(),
    };
    let folded: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    folded.chars().take(300).collect()
}

/// The (key, upload id) of each `<Upload>` in a ListMultipartUploads answer.
fn parse_uploads(xml: &str) -> Vec<PendingUpload> {
    let tag = |body: &str, name: &str| -> Option<String> {
        let start = body.find(&format!("<{name}>"))? + name.len() + 2;
        let end = body[start..].find(&format!("</{name}>"))? + start;
        Some(unescape(&body[start..end]))
    };
    xml.split("<Upload>")
        .skip(1)
        .filter_map(|upload| {
            let upload = upload.split("</Upload>").next()?;
            Some((tag(upload, "Key")?, tag(upload, "UploadId")?))
        })
        .collect()
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Keys of the layout (see the module docs).
pub(crate) mod keys {
    use crate::cache::meta::ListKey;
    use crate::reference::Digest;

    fn digest_part(digest: &Digest) -> String {
        format!("{}/{}", digest.algorithm(), digest.hex())
    }

    pub(crate) fn blob(digest: &Digest) -> String {
        let hex = digest.hex();
        format!("blobs/{}/{}/{hex}", digest.algorithm(), &hex[..2])
    }

    pub(crate) fn manifest(digest: &Digest) -> String {
        format!("meta/manifests/{}", digest_part(digest))
    }

    pub(crate) fn tags(upstream: &str, repository: &str) -> String {
        format!("meta/tags/{upstream}/{repository}/_tags/")
    }

    pub(crate) fn tag(upstream: &str, repository: &str, tag: &str) -> String {
        format!("{}{tag}", tags(upstream, repository))
    }

    pub(crate) const LINKS: &str = "meta/links/";

    pub(crate) fn link(upstream: &str, repository: &str, digest: &Digest) -> String {
        format!(
            "{LINKS}{upstream}/{repository}/_links/{}",
            digest_part(digest)
        )
    }

    /// (upstream, repository, digest) of a link key.
    pub(crate) fn parse_link(key: &str) -> Option<(String, String, String)> {
        let rest = key.strip_prefix(LINKS)?;
        let (upstream, rest) = rest.split_once('/')?;
        let (repository, digest) = rest.split_once("/_links/")?;
        let (algorithm, hex) = digest.split_once('/')?;
        Some((
            upstream.to_owned(),
            repository.to_owned(),
            format!("{algorithm}:{hex}"),
        ))
    }

    /// Before lists: one object per referrer,
    /// `meta/referrers/<upstream>/<repository>/_referrers/<subject alg>/<hex>/<referrer alg>/<hex>`.
    pub(crate) const REFERRERS_BEFORE_LISTS: &str = "meta/referrers/";

    /// The list of an old referrer object.
    pub(crate) fn parse_referrer_before_lists(key: &str) -> Option<ListKey> {
        let rest = key.strip_prefix(REFERRERS_BEFORE_LISTS)?;
        let (upstream, rest) = rest.split_once('/')?;
        let (repository, rest) = rest.split_once("/_referrers/")?;
        let mut parts = rest.split('/');
        let (algorithm, hex) = (parts.next()?, parts.next()?);
        Some(ListKey {
            upstream: upstream.to_owned(),
            repository: repository.to_owned(),
            subject: format!("{algorithm}:{hex}"),
        })
    }

    pub(crate) const REFERRER_LISTS: &str = "meta/referrer-lists/";

    /// `meta/referrer-lists/<upstream>/<repository>/_of/<alg>/<hex>`.
    pub(crate) fn referrer_list(list: &ListKey) -> String {
        let (algorithm, hex) = list.subject.split_once(':').unwrap_or(("", &list.subject));
        format!(
            "{REFERRER_LISTS}{}/{}/_of/{algorithm}/{hex}",
            list.upstream, list.repository
        )
    }

    pub(crate) fn parse_referrer_list(key: &str) -> Option<ListKey> {
        let rest = key.strip_prefix(REFERRER_LISTS)?;
        let (upstream, rest) = rest.split_once('/')?;
        let (repository, subject) = rest.split_once("/_of/")?;
        let (algorithm, hex) = subject.split_once('/')?;
        Some(ListKey {
            upstream: upstream.to_owned(),
            repository: repository.to_owned(),
            subject: format!("{algorithm}:{hex}"),
        })
    }

    pub(crate) const SOURCES: &str = "meta/sources/";

    pub(crate) fn source(upstream: &str, digest: &Digest) -> String {
        format!("{SOURCES}{upstream}/{}", digest_part(digest))
    }

    pub(crate) const USED: &str = "meta/used/";

    pub(crate) const DOOMED: &str = "meta/doomed/";

    pub(crate) fn doomed(digest: &Digest) -> String {
        format!("{DOOMED}{}", digest_part(digest))
    }

    pub(crate) const MANIFESTS: &str = "meta/manifests/";
    pub(crate) const BLOBS: &str = "blobs/";

    /// The digest at the end of a key (`…/<alg>/<hex>`).
    pub(crate) fn digest_at_end(key: &str) -> Option<String> {
        let mut parts = key.rsplit('/');
        let hex = parts.next()?;
        let mut algorithm = parts.next()?;
        if key.starts_with(BLOBS) {
            // blobs/<alg>/<2>/<hex>
            algorithm = parts.next()?;
        }
        Some(format!("{algorithm}:{hex}"))
    }

    pub(crate) const FILL_LEASES: &str = "leases/fills/";

    pub(crate) fn fill_lease(upstream: &str, digest: &Digest) -> String {
        format!("{FILL_LEASES}{upstream}/{}", digest_part(digest))
    }

    pub(crate) const GC_LEASE: &str = "leases/gc";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_layout() {
        let d = crate::cache::store::sha256(b"x");
        let hex = d.hex();
        assert_eq!(keys::blob(&d), format!("blobs/sha256/{}/{hex}", &hex[..2]));
        assert_eq!(
            keys::link("127.0.0.1:5001", "library/demo", &d),
            format!("meta/links/127.0.0.1:5001/library/demo/_links/sha256/{hex}")
        );
        assert_eq!(
            keys::parse_link(&keys::link("ghcr.io", "a/b/c", &d)),
            Some(("ghcr.io".into(), "a/b/c".into(), d.to_string()))
        );
        assert_eq!(
            keys::tag("docker.io", "library/nginx", "1.27"),
            "meta/tags/docker.io/library/nginx/_tags/1.27"
        );
        for key in [
            keys::blob(&d),
            keys::manifest(&d),
            keys::doomed(&d),
            keys::source("x", &d),
        ] {
            assert_eq!(keys::digest_at_end(&key), Some(d.to_string()), "{key}");
        }
        let list = crate::cache::meta::ListKey::new("ghcr.io", "a/b/c", &d);
        assert_eq!(
            keys::referrer_list(&list),
            format!("meta/referrer-lists/ghcr.io/a/b/c/_of/sha256/{hex}")
        );
        assert_eq!(
            keys::parse_referrer_list(&keys::referrer_list(&list)),
            Some(list.clone())
        );
        let before_lists =
            format!("meta/referrers/ghcr.io/a/b/c/_referrers/sha256/{hex}/sha256/{hex}");
        assert_eq!(keys::parse_referrer_before_lists(&before_lists), Some(list));
    }

    #[test]
    fn store_errors_fit_one_line() {
        let xml = "Generic S3 error: Error performing list request: response error \"<?xml version=\"1.0\"?>\n<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message>\n<RequestId>x</RequestId></Error>\"";
        assert_eq!(
            one_line(xml),
            "Generic S3 error: Error performing list request: response error \"NoSuchBucket: The specified bucket does not exist"
        );
        assert_eq!(one_line("a\n  b"), "a b");
        assert_eq!(one_line(&"x".repeat(1000)).len(), 300);
    }

    #[test]
    fn multipart_listings() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult><Bucket>registry</Bucket>
<Upload><Key>cache/blobs/sha256/ab/abcd</Key><UploadId>id-1</UploadId><Initiated>2026-12-01T10:00:00.000Z</Initiated></Upload>
<Upload><Key>a&amp;b</Key><UploadId>id-2</UploadId></Upload>
</ListMultipartUploadsResult>"#;
        let uploads = parse_uploads(xml);
        assert_eq!(uploads.len(), 2);
        assert_eq!(uploads[0].0, "cache/blobs/sha256/ab/abcd");
        assert_eq!(uploads[0].1, "id-1");
        assert_eq!(uploads[1].0, "a&b");
    }
}

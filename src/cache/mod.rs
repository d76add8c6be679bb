//! The pull-through cache: a multi-upstream OCI registry that serves what it has and fills what
//! it lacks from the right upstream, one download per blob however many clients ask.
//!
//! - [`routing`]: which upstream a request is for (`?ns=`, `domain` header, path prefix, default);
//! - [`store`]: content-addressed blob files, atomic verified commits;
//! - [`meta`]: tags, manifests, repository links, blob sizes (redb);
//! - [`fill`]: single-flight fills streamed to every reader as bytes arrive;
//! - [`buffers`]: the memory budget for blob data in flight;
//! - [`memo`]: hot manifests and small blobs in memory, bounded in bytes;
//! - [`manifest`], [`range`]: manifest bookkeeping and `Range` parsing;
//! - [`referrers`]: the referrers API, local and through upstreams;
//! - [`http`]: the request handler; [`server`]: start-up and graceful shutdown;
//! - [`metrics`]: Prometheus counters; [`status`]: the status page.

pub mod auth;
pub mod bucket;
pub mod buffers;
pub mod fill;
pub mod fleet;
pub mod gc;
pub mod http;
pub mod lease;
pub mod manifest;
pub mod memo;
pub mod meta;
pub mod metrics;
pub mod push;
pub mod range;
pub mod referrers;
pub mod routing;
pub mod server;
pub mod status;
pub mod store;
pub mod uploads;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::{HeaderName, HeaderValue};
use bytes::Bytes;
use futures_util::future::{BoxFuture, Shared};
use futures_util::{FutureExt as _, StreamExt as _};
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, StatusCode};

use crate::config::cache::Limits;
use crate::reference::{Digest, Hasher};
use crate::registry::{
    CONTENT_DIGEST_HEADER, CacheOutcome, ErrorCode, MANIFEST_ACCEPT, RegistryError, internal,
};
use crate::upstream::{
    BodyError, Budget, Target, UpstreamClient, UpstreamError, UpstreamRequest, read_limited,
};
use buffers::Buffers;
use fill::{Fetched, Fill, Fills, UpstreamBody};
use manifest::CachedManifest;
use memo::Memo;
use meta::{Access, Metadata, NewManifest};
use metrics::Metrics;
use routing::{Route, Router, Upstream};
use store::{BlobStore, Committed};

/// The largest tag list read from an upstream (a repository with 100,000 tags fits).
const MAX_TAG_LIST_BYTES: usize = 16 << 20;
/// Tags whose last revalidation time is remembered at most (for `tag_revalidate` windows).
const MAX_VALIDATED_TAGS: usize = 100_000;

/// Everything a request handler needs, shared by all of them.
#[derive(Debug)]
pub struct App {
    pub router: Router,
    pub client: Arc<UpstreamClient>,
    pub store: Arc<BlobStore>,
    pub meta: Arc<Metadata>,
    pub fills: Arc<Fills>,
    pub metrics: Arc<Metrics>,
    /// Hot manifests (`limits.manifest_memo`).
    pub memo: Memo<Arc<CachedManifest>>,
    /// Hot small blobs, whole (`limits.blob_memo`).
    pub blob_memo: Memo<Bytes>,
    /// `http.headers` of the config, added to every response.
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
    /// `proxy.serve_stale_on_404`.
    pub serve_stale_on_404: bool,
    /// `auth.htpasswd`: when set, every `/v2/` request must authenticate.
    pub htpasswd: Option<auth::Htpasswd>,
    /// Uploads to local repositories in progress.
    pub uploads: uploads::local::Uploads,
    /// `storage.delete.enabled`.
    pub delete_enabled: bool,
    /// Last uses since the last flush (digest -> unix seconds), written in batches.
    pub used: Mutex<HashMap<String, u64>>,
    /// Revalidations in flight, by (upstream, repository, tag).
    pub tag_flights: Mutex<HashMap<String, TagFlight>>,
    /// When each tag was last confirmed by its upstream (at most [`MAX_VALIDATED_TAGS`]).
    pub tag_validated: Mutex<HashMap<String, Instant>>,
    /// The memory budget for blob data in flight.
    pub buffers: Arc<Buffers>,
    /// On a shared bucket: this replica among the others (leases, following their downloads).
    pub fleet: Option<fleet::Fleet>,
    /// `http.secret`: authenticates the fleet's internal route.
    pub secret: Option<crate::config::cache::Secret>,
    /// `limits`.
    pub limits: Limits,
    /// What the status page shows beyond the other parts' own state.
    pub status: status::Status,
    /// `storage.maxsize`, for the status page.
    pub max_size: Option<u64>,
}

/// What a manifest request (by tag or digest) is answered with.
#[derive(Debug, Clone)]
pub struct TagAnswer {
    pub manifest: Arc<CachedManifest>,
    /// For the `Warning` header when the cached tag is served because the upstream failed.
    pub warning: Option<String>,
    /// Hit, miss, fresh, stale, reserve or local.
    pub cache: CacheOutcome,
}

/// A blob the cache holds, ready to be read.
#[derive(Debug)]
pub enum Hit {
    /// Whole, from the blob memo.
    Remembered(Bytes),
    Stored(Committed),
}

impl Hit {
    pub fn size(&self) -> u64 {
        match self {
            Hit::Remembered(bytes) => bytes.len() as u64,
            Hit::Stored(committed) => committed.size(),
        }
    }
}

/// A revalidation shared by every concurrent request for one tag.
pub type TagFlight = Shared<BoxFuture<'static, Result<TagAnswer, RegistryError>>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl App {
    /// Notes that `digest` was served: hits keep content from eviction.
    pub(crate) fn mark_used(&self, digest: &Digest) {
        lock(&self.used).insert(digest.to_string(), meta::now());
    }

    /// Notes that a referrer list was served (see [`gc`]).
    pub(crate) fn mark_list_used(&self, list: &meta::ListKey) {
        lock(&self.used).insert(list.use_key(), meta::now());
    }

    /// Writes the recorded last uses to the metadata.
    pub async fn flush_uses(&self) -> Result<(), meta::MetaError> {
        let uses: Vec<(String, u64)> = lock(&self.used).drain().collect();
        self.meta.record_use(&uses).await
    }

    /// Sends a request through the route's endpoints (see [`send_upstream`]).
    async fn upstream(
        &self,
        route: &Route,
        request: UpstreamRequest,
    ) -> Result<reqwest::Response, UpstreamError> {
        let targets = self.router.targets(route);
        send_upstream(
            &self.client,
            &self.metrics,
            &route.upstream,
            &targets,
            &request,
        )
        .await
    }

    /// [`upstream`](Self::upstream) for a request that must be answered 200: anything else
    /// becomes the registry error a client gets (`not_found` for a 404).
    async fn upstream_ok(
        &self,
        route: &Route,
        request: UpstreamRequest,
        not_found: ErrorCode,
    ) -> Result<reqwest::Response, RegistryError> {
        let upstream = &route.upstream.name;
        let response = self
            .upstream(route, request)
            .await
            .map_err(|e| unreachable(upstream, e))?;
        if response.status() != StatusCode::OK {
            return Err(upstream_status(upstream, &response, not_found));
        }
        Ok(response)
    }

    /// A committed blob, ready to be read: from the blob memo, else from the store.
    async fn committed_blob(&self, digest: &Digest) -> Result<Option<Hit>, RegistryError> {
        if let Some(bytes) = self.blob_memo.get(digest) {
            return Ok(Some(Hit::Remembered(bytes)));
        }
        Ok(self
            .store
            .open(digest)
            .await
            .map_err(internal)?
            .map(Hit::Stored))
    }

    /// Keeps a small blob just read whole from the store in the blob memo (a copy: a file's
    /// `bytes` hold the in-flight budget until the client has them).
    fn remember_blob(&self, digest: &Digest, bytes: &Bytes) {
        if self.blob_memo.keeps(bytes.len()) {
            self.blob_memo
                .insert(digest.clone(), Bytes::copy_from_slice(bytes));
        }
    }

    /// Content already cached may be served for `route`'s repository only if a manifest of that
    /// repository referenced it, or the upstream confirms the repository can read it.
    async fn require_access(
        &self,
        route: &Route,
        digest: &Digest,
        unknown: ErrorCode,
    ) -> Result<(), RegistryError> {
        let linked = self
            .meta
            .is_linked(&route.upstream.name, &route.repository, digest)
            .await
            .map_err(internal)?;
        if linked {
            return Ok(());
        }
        self.confirm_access(route, digest, unknown).await
    }

    /// For a repository not linked to `digest`: the upstream must confirm the repository can
    /// read it (HEAD 200), which links them.
    async fn confirm_access(
        &self,
        route: &Route,
        digest: &Digest,
        unknown: ErrorCode,
    ) -> Result<(), RegistryError> {
        let upstream = &route.upstream.name;
        if route.upstream.local {
            return Err(RegistryError::new(
                unknown,
                format!("{digest} is not in {}", route.repository),
            ));
        }
        let kind = if unknown == ErrorCode::BlobUnknown {
            "blobs"
        } else {
            "manifests"
        };
        let mut request = UpstreamRequest::pull(
            Method::HEAD,
            &route.repository,
            format!("/v2/{}/{kind}/{digest}", route.repository),
        );
        if kind == "manifests" {
            request = request.header(ACCEPT, MANIFEST_ACCEPT);
        }
        match self.upstream(route, request).await {
            Ok(response) if response.status() == StatusCode::OK => self
                .meta
                .link(upstream, &route.repository, digest)
                .await
                .map_err(internal),
            Ok(response) => Err(upstream_status(upstream, &response, unknown)),
            Err(e) => Err(RegistryError::new(
                unknown,
                format!(
                    "{digest} is not known for {}, and upstream {upstream} cannot confirm it: {e}",
                    route.repository
                ),
            )),
        }
    }

    /// Joins or starts the single fill of `digest` from `route`'s upstream.
    fn start_fill(
        self: &App,
        route: &Route,
        digest: &Digest,
    ) -> Result<(Arc<Fill>, bool), RegistryError> {
        let request = UpstreamRequest::pull(
            Method::GET,
            &route.repository,
            format!("/v2/{}/blobs/{digest}", route.repository),
        );
        let targets = self.router.targets(route);
        let client = self.client.clone();
        let metrics = self.metrics.clone();
        let route_upstream = route.upstream.clone();
        let upstream = route.upstream.name.clone();
        let download = async move {
            let response = send_upstream(&client, &metrics, &route_upstream, &targets, &request)
                .await
                .map_err(|e| unreachable(&upstream, e))?;
            if response.status() != StatusCode::OK {
                return Err(upstream_status(
                    &upstream,
                    &response,
                    ErrorCode::BlobUnknown,
                ));
            }
            let size = content_length(&response);
            let body: UpstreamBody = response
                .bytes_stream()
                .map(|r| r.map_err(|e| e.to_string()))
                .boxed();
            Ok((size, body))
        };
        let fetch = match self.fleet.clone() {
            None => async move {
                let (size, body) = download.await?;
                Ok(Fetched::stored(size, body, None))
            }
            .boxed(),
            Some(fleet) => {
                let confirm = self.upstream_confirms(route, digest);
                let (upstream, repository, digest) = (
                    route.upstream.name.clone(),
                    route.repository.clone(),
                    digest.clone(),
                );
                async move {
                    fleet
                        .fetch(&upstream, &repository, &digest, download, confirm)
                        .await
                }
                .boxed()
            }
        };
        self.fills.join_or_start(
            (&route.upstream.name, route.upstream.label()),
            &route.repository,
            digest,
            fetch,
        )
    }

    /// A check, to run later, that the upstream lets `route`'s repository read the blob
    /// (HEAD 200).
    fn upstream_confirms(
        &self,
        route: &Route,
        digest: &Digest,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send + 'static {
        let request = UpstreamRequest::pull(
            Method::HEAD,
            &route.repository,
            format!("/v2/{}/blobs/{digest}", route.repository),
        );
        let targets = self.router.targets(route);
        let client = self.client.clone();
        let metrics = self.metrics.clone();
        let route_upstream = route.upstream.clone();
        async move {
            let upstream = &route_upstream.name;
            let response = send_upstream(&client, &metrics, &route_upstream, &targets, &request)
                .await
                .map_err(|e| unreachable(upstream, e))?;
            if response.status() == StatusCode::OK {
                Ok(())
            } else {
                Err(upstream_status(upstream, &response, ErrorCode::BlobUnknown))
            }
        }
    }

    /// Whether the route's namespace holds the content of `digest` (its own upstream delivered
    /// it, or it was pushed there: the store is shared, and this keeps content from being served
    /// on the word of another upstream), and whether the route's repository is linked to it.
    async fn access(&self, route: &Route, digest: &Digest) -> Result<Access, RegistryError> {
        self.meta
            .access(&route.upstream.name, &route.repository, digest)
            .await
            .map_err(internal)
    }

    /// A manifest by digest: from cache when this repository may read it, else from upstream.
    /// Answered like a tag: `cache` says which (hit or miss), `warning` is never set.
    async fn manifest_by_digest(
        &self,
        route: &Route,
        digest: &Digest,
    ) -> Result<TagAnswer, RegistryError> {
        let access = self.access(route, digest).await?;
        let cached = if access.held {
            self.cached_manifest(digest).await?
        } else {
            None
        };
        if let Some(manifest) = cached {
            if !access.linked {
                self.confirm_access(route, digest, ErrorCode::ManifestUnknown)
                    .await?;
            }
            self.metrics.request("manifest", CacheOutcome::Hit);
            return Ok(TagAnswer {
                manifest,
                warning: None,
                cache: CacheOutcome::Hit,
            });
        }
        if route.upstream.local {
            return Err(RegistryError::new(
                ErrorCode::ManifestUnknown,
                format!("{digest} is not in {}", route.repository),
            ));
        }
        self.metrics.request("manifest", CacheOutcome::Miss);
        let manifest = self
            .fetch_manifest(route, digest.as_str(), Some(digest), None)
            .await?;
        Ok(TagAnswer {
            manifest,
            warning: None,
            cache: CacheOutcome::Miss,
        })
    }

    /// A manifest by tag. Within the upstream's `tag_revalidate` window the cached tag is served
    /// without asking; otherwise it is revalidated, with at most one revalidation in flight per
    /// tag: concurrent requests share its answer.
    async fn manifest_by_tag(
        self: &Arc<Self>,
        route: &Route,
        tag: &str,
    ) -> Result<TagAnswer, RegistryError> {
        if route.upstream.local {
            let manifest = self.cached_tag(route, tag).await?.ok_or_else(|| {
                RegistryError::new(
                    ErrorCode::ManifestUnknown,
                    format!("{}:{tag} is not known", route.repository),
                )
            })?;
            return Ok(TagAnswer {
                manifest,
                warning: None,
                cache: CacheOutcome::Local,
            });
        }
        let key = format!(
            "{}\u{1f}{}\u{1f}{tag}",
            route.upstream.name, route.repository
        );
        let window = route.upstream.tag_revalidate;
        if self.fresh(&key, window) {
            if let Some(manifest) = self.cached_tag(route, tag).await? {
                self.metrics.request("tag", CacheOutcome::Fresh);
                return Ok(TagAnswer {
                    manifest,
                    warning: None,
                    cache: CacheOutcome::Fresh,
                });
            }
        }
        if let Some(budget) = self.budget_in_reserve(route) {
            if let Some(manifest) = self.cached_tag(route, tag).await? {
                self.metrics.request("tag", CacheOutcome::Reserve);
                return Ok(TagAnswer {
                    manifest,
                    warning: Some(format!(
                        "upstream {} has {} of {} pulls left (proxy.ratelimit_reserve); serving \
                         the cached tag without asking",
                        route.upstream.name, budget.remaining, budget.limit
                    )),
                    cache: CacheOutcome::Reserve,
                });
            }
        }
        let flight = {
            let mut flights = lock(&self.tag_flights);
            match flights.get(&key) {
                Some(flight) => flight.clone(),
                None => {
                    // A task of its own: it runs to the end however many of its clients go
                    // away, and whatever ends it (a panic included) takes it out of the map.
                    let app = self.clone();
                    let (route, tag, done) = (route.clone(), tag.to_owned(), key.clone());
                    let task = tokio::spawn(async move {
                        let _leave = LeaveFlight {
                            app: app.clone(),
                            key: done.clone(),
                        };
                        app.revalidate_tag(&route, &tag, &done).await
                    });
                    let flight = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(internal(format!("the tag revalidation failed: {e}")))
                        })
                    }
                    .boxed()
                    .shared();
                    flights.insert(key, flight.clone());
                    flight
                }
            }
        };
        flight.await
    }

    /// The pull budget the route's upstream stated, when it has fallen under the upstream's
    /// `ratelimit_reserve`: cached tags are then served without asking, and the rest of the
    /// budget goes to content not cached.
    fn budget_in_reserve(&self, route: &Route) -> Option<Budget> {
        let origin = route.upstream.origin()?;
        self.client.budget(&origin.base).filter(|b| {
            route
                .upstream
                .ratelimit_reserve
                .reached(b.limit, b.remaining)
        })
    }

    /// The manifest a cached tag points at, if this repository may read it.
    async fn cached_tag(
        &self,
        route: &Route,
        tag: &str,
    ) -> Result<Option<Arc<CachedManifest>>, RegistryError> {
        let record = self
            .meta
            .tag(&route.upstream.name, &route.repository, tag)
            .await
            .map_err(internal)?;
        match record.and_then(|r| Digest::parse(&r.digest).ok()) {
            Some(digest) => self.linked_manifest(route, &digest).await,
            None => Ok(None),
        }
    }

    /// Asks the upstream about a tag (HEAD; GET only when the digest is new). When the upstream
    /// fails (or answers 404 with `serve_stale_on_404`), the cached tag is served with a warning.
    async fn revalidate_tag(
        &self,
        route: &Route,
        tag: &str,
        key: &str,
    ) -> Result<TagAnswer, RegistryError> {
        let upstream = &route.upstream.name;
        let cached = self
            .meta
            .tag(upstream, &route.repository, tag)
            .await
            .map_err(internal)?;
        let head = UpstreamRequest::pull(
            Method::HEAD,
            &route.repository,
            format!("/v2/{}/manifests/{tag}", route.repository),
        )
        .header(ACCEPT, MANIFEST_ACCEPT);
        let failure = match self.upstream(route, head).await {
            Ok(response) if response.status() == StatusCode::OK => {
                self.validated(key, route.upstream.tag_revalidate);
                let current = response
                    .headers()
                    .get(CONTENT_DIGEST_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| Digest::parse(s).ok());
                if let Some(current) = current {
                    if let Some(manifest) = self.linked_manifest(route, &current).await? {
                        if cached.as_ref().is_none_or(|c| c.digest != current.as_str()) {
                            self.record_tag(route, tag, &manifest).await?;
                        }
                        self.metrics.request("tag", CacheOutcome::Hit);
                        return Ok(TagAnswer {
                            manifest,
                            warning: None,
                            cache: CacheOutcome::Hit,
                        });
                    }
                }
                self.metrics.request("tag", CacheOutcome::Miss);
                let manifest = self.fetch_manifest(route, tag, None, Some(tag)).await?;
                return Ok(TagAnswer {
                    manifest,
                    warning: None,
                    cache: CacheOutcome::Miss,
                });
            }
            Ok(response)
                if response.status() == StatusCode::NOT_FOUND && self.serve_stale_on_404 =>
            {
                upstream_status(upstream, &response, ErrorCode::ManifestUnknown)
            }
            Ok(response) if response.status() == StatusCode::NOT_FOUND => {
                self.meta
                    .forget_tag(upstream, &route.repository, tag)
                    .await
                    .map_err(internal)?;
                return Err(upstream_status(
                    upstream,
                    &response,
                    ErrorCode::ManifestUnknown,
                ));
            }
            Ok(response) if matches!(response.status().as_u16(), 401 | 403) => {
                return Err(upstream_status(
                    upstream,
                    &response,
                    ErrorCode::ManifestUnknown,
                ));
            }
            Ok(response) => upstream_status(upstream, &response, ErrorCode::ManifestUnknown),
            Err(e) => unreachable(upstream, e),
        };
        match self.cached_tag(route, tag).await? {
            Some(manifest) => {
                self.metrics.request("tag", CacheOutcome::Stale);
                let warning = format!(
                    "upstream failed ({}); serving the cached tag",
                    failure.message
                );
                Ok(TagAnswer {
                    manifest,
                    warning: Some(warning),
                    cache: CacheOutcome::Stale,
                })
            }
            None => Err(failure),
        }
    }

    async fn record_tag(
        &self,
        route: &Route,
        tag: &str,
        manifest: &CachedManifest,
    ) -> Result<(), RegistryError> {
        self.meta
            .put_manifest(&NewManifest {
                upstream: &route.upstream.name,
                repository: &route.repository,
                tag: Some(tag),
                digest: &manifest.digest,
                media_type: &manifest.media_type,
                size: manifest.bytes.len() as u64,
                references: &[],
            })
            .await
            .map_err(internal)?;
        Ok(())
    }

    /// Whether the upstream confirmed `key` (a tag, a referrers list) less than `window` ago.
    fn fresh(&self, key: &str, window: std::time::Duration) -> bool {
        !window.is_zero()
            && lock(&self.tag_validated)
                .get(key)
                .is_some_and(|at| at.elapsed() < window)
    }

    /// Notes that the upstream just confirmed a tag. Only windows need it; the map is bounded
    /// by dropping entries whose window is over (or, past that, all of them: a dropped entry
    /// only costs one early revalidation).
    fn validated(&self, key: &str, window: std::time::Duration) {
        if window.is_zero() {
            return;
        }
        let mut validated = lock(&self.tag_validated);
        if validated.len() >= MAX_VALIDATED_TAGS {
            let longest = self.router.longest_tag_revalidate();
            validated.retain(|_, at| at.elapsed() < longest);
            if validated.len() >= MAX_VALIDATED_TAGS {
                validated.clear();
            }
        }
        validated.insert(key.to_owned(), Instant::now());
    }

    /// A cached manifest this repository is linked to and its namespace holds, without asking
    /// the upstream.
    async fn linked_manifest(
        &self,
        route: &Route,
        digest: &Digest,
    ) -> Result<Option<Arc<CachedManifest>>, RegistryError> {
        let access = self.access(route, digest).await?;
        if !(access.held && access.linked) {
            return Ok(None);
        }
        self.cached_manifest(digest).await
    }

    /// A stored manifest, from the memo or the store.
    async fn cached_manifest(
        &self,
        digest: &Digest,
    ) -> Result<Option<Arc<CachedManifest>>, RegistryError> {
        if let Some(manifest) = self.memo.get(digest) {
            return Ok(Some(manifest));
        }
        let Some(record) = self.meta.manifest(digest).await.map_err(internal)? else {
            return Ok(None);
        };
        let Some(bytes) = self.store.read(digest).await.map_err(internal)? else {
            return Ok(None);
        };
        // Recorded by an earlier version, a type may be anything an upstream or a push said.
        let media_type = match crate::registry::manifest_media_type(&record.media_type) {
            Some(known) => known,
            None => manifest::media_type(&bytes, None),
        };
        let manifest = Arc::new(CachedManifest {
            digest: digest.clone(),
            media_type: media_type.to_owned(),
            bytes,
        });
        self.memo.insert(manifest.digest.clone(), manifest.clone());
        Ok(Some(manifest))
    }

    /// GETs a manifest from upstream, verifies its digest, stores it and links what it references.
    async fn fetch_manifest(
        &self,
        route: &Route,
        reference: &str,
        expected: Option<&Digest>,
        tag: Option<&str>,
    ) -> Result<Arc<CachedManifest>, RegistryError> {
        let upstream = &route.upstream.name;
        let request = UpstreamRequest::pull(
            Method::GET,
            &route.repository,
            format!("/v2/{}/manifests/{reference}", route.repository),
        )
        .header(ACCEPT, MANIFEST_ACCEPT);
        let response = self
            .upstream_ok(route, request, ErrorCode::ManifestUnknown)
            .await?;
        let header_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let declared = response
            .headers()
            .get(CONTENT_DIGEST_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let limit = usize::try_from(self.limits.max_manifest_size).unwrap_or(usize::MAX);
        let bytes = read_limited(response, limit).await.map_err(|e| match e {
            BodyError::TooLarge { limit } => RegistryError::new(
                ErrorCode::ManifestInvalid,
                format!(
                    "upstream {upstream} sent a manifest {reference} over limits.max_manifest_size \
                     ({limit} bytes)"
                ),
            ),
            BodyError::Broken(why) => unreachable_text(upstream, &why),
        })?;
        // By digest, the manifest is named with that digest's algorithm; by tag, with sha256.
        let digest = match expected {
            Some(expected) => Hasher::digest(expected, &bytes),
            None => store::sha256(&bytes),
        };
        let mismatch = |claimed: &str| {
            RegistryError::new(
                ErrorCode::DigestInvalid,
                format!(
                    "upstream {upstream} sent a manifest whose digest is {digest}, not {claimed}; refused"
                ),
            )
        };
        if let Some(expected) = expected.filter(|e| **e != digest) {
            return Err(mismatch(expected.as_str()));
        }
        if let Some(claimed) = declared.and_then(|c| Digest::parse(&c).ok()) {
            if Hasher::digest(&claimed, &bytes) != claimed {
                return Err(mismatch(claimed.as_str()));
            }
        }
        let media_type = manifest::media_type(&bytes, header_type.as_deref()).to_owned();
        let references = manifest::references(&bytes);
        let manifest = Arc::new(CachedManifest {
            digest,
            media_type,
            bytes,
        });
        // The record first: every stored manifest has one (see `meta`).
        let new = self
            .meta
            .put_manifest(&NewManifest {
                upstream,
                repository: &route.repository,
                tag,
                digest: &manifest.digest,
                media_type: &manifest.media_type,
                size: manifest.bytes.len() as u64,
                references: &references,
            })
            .await
            .map_err(internal)?;
        self.store
            .put_verified(&manifest.digest, manifest.bytes.clone())
            .await
            .map_err(internal)?;
        if new {
            self.status.stored().committed(manifest.bytes.len() as u64);
        }
        self.memo.insert(manifest.digest.clone(), manifest.clone());
        Ok(manifest)
    }

    /// Tags the upstream lists for the repository.
    async fn upstream_tags(&self, route: &Route) -> Result<Vec<String>, RegistryError> {
        if route.upstream.local {
            return Ok(Vec::new());
        }
        let upstream = &route.upstream.name;
        let request = UpstreamRequest::pull(
            Method::GET,
            &route.repository,
            format!("/v2/{}/tags/list", route.repository),
        );
        let response = self
            .upstream_ok(route, request, ErrorCode::NameUnknown)
            .await?;
        #[derive(serde::Deserialize)]
        struct TagList {
            tags: Option<Vec<String>>,
        }
        let bytes = read_limited(response, MAX_TAG_LIST_BYTES)
            .await
            .map_err(|e| unreachable_text(upstream, &format!("tag list: {e}")))?;
        let list: TagList = serde_json::from_slice(&bytes).map_err(|e| {
            RegistryError::new(
                ErrorCode::Unavailable,
                format!("upstream {upstream}: invalid tag list: {e}"),
            )
        })?;
        Ok(list.tags.unwrap_or_default())
    }
}

/// One request to `upstream` through `targets`: in its turn under the upstream's request limits
/// (the turn held until the answer's body ends), timed in /metrics, with the pull budget the
/// upstream states noted there.
async fn send_upstream(
    client: &UpstreamClient,
    metrics: &Metrics,
    upstream: &Upstream,
    targets: &[Target],
    request: &UpstreamRequest,
) -> Result<reqwest::Response, UpstreamError> {
    let label = upstream.label();
    let admitted = match &upstream.limiter {
        None => None,
        Some(limiter) => {
            let queued = Instant::now();
            let admitted = limiter.admit().await;
            metrics.queued(label, queued.elapsed());
            Some(admitted.map_err(UpstreamError::queued)?)
        }
    };
    let started = Instant::now();
    let result = client.walk(targets, request).await;
    let status = result.as_ref().map_or(0, |(_, r)| r.status().as_u16());
    metrics.upstream(label, status, started.elapsed());
    if !upstream.dynamic {
        if let Some(budget) = upstream.origin().and_then(|o| client.budget(&o.base)) {
            metrics.budget(label, budget.limit, budget.remaining);
        }
    }
    let (_, response) = result?;
    Ok(match admitted {
        Some(admitted) => admitted.hold(response),
        None => response,
    })
}

/// Takes a finished (or failed) tag revalidation out of the map, whatever ended it.
struct LeaveFlight {
    app: Arc<App>,
    key: String,
}

impl Drop for LeaveFlight {
    fn drop(&mut self) {
        lock(&self.app.tag_flights).remove(&self.key);
    }
}

fn content_length(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// An upstream's HTTP error as the registry error to give the client (with the upstream's
/// `Retry-After` on a 429).
fn upstream_status(
    upstream: &str,
    response: &reqwest::Response,
    not_found: ErrorCode,
) -> RegistryError {
    let status = response.status();
    let code = match status.as_u16() {
        404 => not_found,
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Denied,
        429 => ErrorCode::TooManyRequests,
        _ => ErrorCode::Unavailable,
    };
    let wait = crate::upstream::retry_after(response.headers(), std::time::SystemTime::now());
    RegistryError::new(code, format!("upstream {upstream} answered HTTP {status}"))
        .with_retry_after(wait.filter(|_| code == ErrorCode::TooManyRequests))
}

fn unreachable(upstream: &str, error: UpstreamError) -> RegistryError {
    error.registry_error(&format!("upstream {upstream}"))
}

fn unreachable_text(upstream: &str, why: &str) -> RegistryError {
    RegistryError::new(
        ErrorCode::Unavailable,
        format!("upstream {upstream} unreachable: {why}"),
    )
}

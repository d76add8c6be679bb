//! The manifest and tag service: manifests by digest (from the memo or the store once this
//! repository may read them, else from the upstream), tags (served within the upstream's
//! `tag_revalidate` window or while its pull budget is in its reserve, else revalidated with one
//! flight per tag, and served stale when the upstream fails), and the tag lists. It owns the
//! manifest memo, the tag flights and the revalidation windows (which the referrers service
//! shares for its lists).
//!
//! Manifests are read with `read_limited` (never past `limits.max_manifest_size`), verified
//! against the digest asked for and the one the upstream declares, and recorded before they are
//! stored (every stored manifest has a record: see [`super::meta`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};

use super::access::ContentAccess;
use super::flights::{Flight, Flights, Joined};
use super::manifest::{self, CachedManifest};
use super::memo::Memo;
use super::meta::{Metadata, NewManifest};
use super::metrics::Metrics;
use super::routing::Route;
use super::store::{self, BlobStore, StoredBytes};
use super::upstreams::{Upstreams, unreachable, unreachable_text, upstream_status};
use super::uses::LastUses;
use crate::reference::{Digest, Hasher};
use crate::registry::route::ManifestRef;
use crate::registry::{
    CONTENT_DIGEST_HEADER, CacheOutcome, ErrorCode, MANIFEST_ACCEPT, RegistryError,
};
use crate::sync::lock;
use crate::upstream::{BodyError, UpstreamRequest, read_limited};

/// The largest tag list read from an upstream (a repository with 100,000 tags fits).
const MAX_TAG_LIST_BYTES: usize = 16 << 20;
/// Tags whose last revalidation time is remembered at most (for `tag_revalidate` windows).
const MAX_VALIDATED_TAGS: usize = 100_000;

/// What a manifest request (by tag or digest) is answered with.
#[derive(Debug, Clone)]
pub(crate) struct ManifestAnswer {
    pub(crate) manifest: Arc<CachedManifest>,
    /// For the `Warning` header: the cached tag is served because the upstream failed, or
    /// without asking because its pull budget is in its reserve.
    pub(crate) warning: Option<String>,
    /// Hit, miss, fresh, stale, reserve or local.
    pub(crate) outcome: CacheOutcome,
}

impl ManifestAnswer {
    fn new(manifest: Arc<CachedManifest>, outcome: CacheOutcome) -> Self {
        ManifestAnswer {
            manifest,
            warning: None,
            outcome,
        }
    }
}

/// The manifest and tag service (wired by [`super::App::new`]).
#[derive(Debug)]
pub(crate) struct Manifests {
    pub(super) access: ContentAccess,
    pub(super) upstreams: Upstreams,
    pub(super) meta: Arc<Metadata>,
    pub(super) store: Arc<BlobStore>,
    /// Hot manifests (`limits.manifest_memo`).
    pub(super) memo: Memo<Arc<CachedManifest>>,
    pub(super) metrics: Arc<Metrics>,
    /// Counts the bytes of new manifests stored, for the status page.
    pub(super) stored: Arc<StoredBytes>,
    pub(super) uses: Arc<LastUses>,
    /// Revalidations in flight, by (upstream, repository, tag).
    pub(super) flights: Flights<ManifestAnswer>,
    /// When each tag (or referrers list) was last confirmed by its upstream (at most
    /// [`MAX_VALIDATED_TAGS`]).
    pub(super) confirmed: Mutex<HashMap<String, Instant>>,
    /// `limits.max_manifest_size`.
    pub(super) max_manifest_size: u64,
    /// `proxy.serve_stale_on_404`.
    pub(super) serve_stale_on_404: bool,
}

impl Manifests {
    /// The bytes the manifest memo holds.
    pub(crate) fn memo_bytes(&self) -> usize {
        self.memo.bytes()
    }

    /// A manifest by digest or tag; a use that keeps it from eviction.
    pub(crate) async fn get(
        self: &Arc<Self>,
        route: &Route,
        reference: &ManifestRef,
    ) -> Result<ManifestAnswer, RegistryError> {
        let answer = match reference {
            ManifestRef::Digest(digest) => self.by_digest(route, digest).await?,
            ManifestRef::Tag(tag) => self.by_tag(route, tag).await?,
        };
        self.uses.digest(&answer.manifest.digest);
        Ok(answer)
    }

    /// A manifest by digest: from cache when this repository may read it, else from upstream.
    async fn by_digest(
        &self,
        route: &Route,
        digest: &Digest,
    ) -> Result<ManifestAnswer, RegistryError> {
        let access = self.access.access(route, digest).await?;
        let cached = if access.held {
            self.cached(digest).await?
        } else {
            None
        };
        if let Some(manifest) = cached {
            if !access.linked {
                self.access
                    .confirm(route, digest, ErrorCode::ManifestUnknown)
                    .await?;
            }
            self.metrics.request("manifest", CacheOutcome::Hit);
            return Ok(ManifestAnswer::new(manifest, CacheOutcome::Hit));
        }
        if route.upstream.local {
            return Err(RegistryError::new(
                ErrorCode::ManifestUnknown,
                format!("{digest} is not in {}", route.repository),
            ));
        }
        self.metrics.request("manifest", CacheOutcome::Miss);
        let manifest = self
            .fetch(route, digest.as_str(), Some(digest), None)
            .await?;
        Ok(ManifestAnswer::new(manifest, CacheOutcome::Miss))
    }

    /// A manifest by tag. Within the upstream's `tag_revalidate` window the cached tag is served
    /// without asking; otherwise it is revalidated, with at most one revalidation in flight per
    /// tag: concurrent requests share its answer.
    async fn by_tag(
        self: &Arc<Self>,
        route: &Route,
        tag: &str,
    ) -> Result<ManifestAnswer, RegistryError> {
        if route.upstream.local {
            let manifest = self.cached_tag(route, tag).await?.ok_or_else(|| {
                RegistryError::new(
                    ErrorCode::ManifestUnknown,
                    format!("{}:{tag} is not known", route.repository),
                )
            })?;
            return Ok(ManifestAnswer::new(manifest, CacheOutcome::Local));
        }
        let key = format!(
            "{}\u{1f}{}\u{1f}{tag}",
            route.upstream.name, route.repository
        );
        let window = route.upstream.tag_revalidate;
        if self.fresh(&key, window) {
            if let Some(manifest) = self.cached_tag(route, tag).await? {
                self.metrics.request("tag", CacheOutcome::Fresh);
                return Ok(ManifestAnswer::new(manifest, CacheOutcome::Fresh));
            }
        }
        if let Some(answer) = self.in_reserve(route, tag, "without asking").await? {
            return Ok(answer);
        }
        self.flight(route, tag, key).0.await
    }

    /// The cached tag, served with a `Warning` when the upstream's pull budget (as its last
    /// answer stated it) is under its `ratelimit_reserve`: the pulls left go to content not
    /// cached. `None` when the budget is not in its reserve or the tag is not cached.
    async fn in_reserve(
        &self,
        route: &Route,
        tag: &str,
        how: &str,
    ) -> Result<Option<ManifestAnswer>, RegistryError> {
        let Some(budget) = self.upstreams.budget_in_reserve(route) else {
            return Ok(None);
        };
        let Some(manifest) = self.cached_tag(route, tag).await? else {
            return Ok(None);
        };
        self.metrics.request("tag", CacheOutcome::Reserve);
        Ok(Some(ManifestAnswer {
            manifest,
            warning: Some(format!(
                "upstream {} has {} of {} pulls left (proxy.ratelimit_reserve); serving the \
                 cached tag {how}",
                route.upstream.name, budget.remaining, budget.limit
            )),
            outcome: CacheOutcome::Reserve,
        }))
    }

    /// The revalidation of a tag in flight, joined or started.
    fn flight(
        self: &Arc<Self>,
        route: &Route,
        tag: &str,
        key: String,
    ) -> (Flight<ManifestAnswer>, Joined) {
        let work = || {
            let manifests = self.clone();
            let (route, tag, key) = (route.clone(), tag.to_owned(), key.clone());
            async move { manifests.revalidate(&route, &tag, &key).await }
        };
        self.flights.join(key.clone(), work)
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
            .await?;
        match record.and_then(|r| Digest::parse(&r.digest).ok()) {
            Some(digest) => self.linked(route, &digest).await,
            None => Ok(None),
        }
    }

    /// Asks the upstream about a tag (HEAD; GET only when the digest is new). When the upstream
    /// fails (or answers 404 with `serve_stale_on_404`), the cached tag is served with a warning.
    async fn revalidate(
        &self,
        route: &Route,
        tag: &str,
        key: &str,
    ) -> Result<ManifestAnswer, RegistryError> {
        let upstream = &route.upstream.name;
        let cached = self.meta.tag(upstream, &route.repository, tag).await?;
        let head = UpstreamRequest::pull(
            Method::HEAD,
            &route.repository,
            format!("/v2/{}/manifests/{tag}", route.repository),
        )
        .header(ACCEPT, MANIFEST_ACCEPT);
        let failure = match self.upstreams.send(route, head).await {
            Ok(response) if response.status() == StatusCode::OK => {
                let current = response
                    .headers()
                    .get(CONTENT_DIGEST_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| Digest::parse(s).ok());
                return self
                    .head_answered(route, tag, key, cached.map(|c| c.digest), current)
                    .await;
            }
            Ok(response)
                if response.status() == StatusCode::NOT_FOUND && self.serve_stale_on_404 =>
            {
                upstream_status(upstream, &response, ErrorCode::ManifestUnknown)
            }
            Ok(response) if response.status() == StatusCode::NOT_FOUND => {
                self.meta
                    .forget_tag(upstream, &route.repository, tag)
                    .await?;
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
        self.stale(route, tag, failure).await
    }

    /// A tag whose HEAD the upstream answered 200 with the `current` digest: served from the
    /// cache when this repository holds that digest, else fetched, unless the budget that HEAD
    /// stated is under the reserve: then the GET would spend a pull, and the cached tag (`was`)
    /// is served with a `Warning`, not confirmed (the upstream moved it).
    async fn head_answered(
        &self,
        route: &Route,
        tag: &str,
        key: &str,
        was: Option<String>,
        current: Option<Digest>,
    ) -> Result<ManifestAnswer, RegistryError> {
        let window = route.upstream.tag_revalidate;
        if let Some(current) = current {
            if let Some(manifest) = self.linked(route, &current).await? {
                self.confirmed(key, window);
                if was.is_none_or(|was| was != current.as_str()) {
                    self.record_tag(route, tag, &manifest).await?;
                }
                self.metrics.request("tag", CacheOutcome::Hit);
                return Ok(ManifestAnswer::new(manifest, CacheOutcome::Hit));
            }
        }
        let how = "without fetching the digest the upstream now names";
        if let Some(answer) = self.in_reserve(route, tag, how).await? {
            return Ok(answer);
        }
        self.confirmed(key, window);
        self.metrics.request("tag", CacheOutcome::Miss);
        let manifest = self.fetch(route, tag, None, Some(tag)).await?;
        Ok(ManifestAnswer::new(manifest, CacheOutcome::Miss))
    }

    /// The cached tag served because the upstream failed, with a warning saying so; without
    /// one, the failure.
    async fn stale(
        &self,
        route: &Route,
        tag: &str,
        failure: RegistryError,
    ) -> Result<ManifestAnswer, RegistryError> {
        match self.cached_tag(route, tag).await? {
            Some(manifest) => {
                self.metrics.request("tag", CacheOutcome::Stale);
                let warning = format!(
                    "upstream failed ({}); serving the cached tag",
                    failure.message
                );
                Ok(ManifestAnswer {
                    manifest,
                    warning: Some(warning),
                    outcome: CacheOutcome::Stale,
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
            .await?;
        Ok(())
    }

    /// Whether the upstream confirmed `key` (a tag, a referrers list) less than `window` ago.
    pub(crate) fn fresh(&self, key: &str, window: Duration) -> bool {
        !window.is_zero()
            && lock(&self.confirmed)
                .get(key)
                .is_some_and(|at| at.elapsed() < window)
    }

    /// Notes that the upstream just confirmed `key` (a tag, a referrers list). Only windows need
    /// it; the map is bounded by dropping entries whose window is over (or, past that, all of
    /// them: a dropped entry only costs one early revalidation).
    pub(crate) fn confirmed(&self, key: &str, window: Duration) {
        if window.is_zero() {
            return;
        }
        let mut confirmed = lock(&self.confirmed);
        if confirmed.len() >= MAX_VALIDATED_TAGS {
            let longest = self.upstreams.router().longest_tag_revalidate();
            confirmed.retain(|_, at| at.elapsed() < longest);
            if confirmed.len() >= MAX_VALIDATED_TAGS {
                confirmed.clear();
            }
        }
        confirmed.insert(key.to_owned(), Instant::now());
    }

    /// A cached manifest this repository is linked to and its namespace holds, without asking
    /// the upstream.
    async fn linked(
        &self,
        route: &Route,
        digest: &Digest,
    ) -> Result<Option<Arc<CachedManifest>>, RegistryError> {
        let access = self.access.access(route, digest).await?;
        if !(access.held && access.linked) {
            return Ok(None);
        }
        self.cached(digest).await
    }

    /// A stored manifest, from the memo or the store.
    pub(crate) async fn cached(
        &self,
        digest: &Digest,
    ) -> Result<Option<Arc<CachedManifest>>, RegistryError> {
        if let Some(manifest) = self.memo.get(digest) {
            return Ok(Some(manifest));
        }
        let Some(record) = self.meta.manifest(digest).await? else {
            return Ok(None);
        };
        let Some(bytes) = self.store.read(digest).await? else {
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
    async fn fetch(
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
            .upstreams
            .send_ok(route, request, ErrorCode::ManifestUnknown)
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
        let limit = usize::try_from(self.max_manifest_size).unwrap_or(usize::MAX);
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
        verify(upstream, &digest, &bytes, expected, declared.as_deref())?;
        let media_type = manifest::media_type(&bytes, header_type.as_deref()).to_owned();
        let references = manifest::references(&bytes);
        let manifest = Arc::new(CachedManifest {
            digest,
            media_type,
            bytes,
        });
        self.store(route, &[tag], &manifest, &references).await?;
        self.memo.insert(manifest.digest.clone(), manifest.clone());
        Ok(manifest)
    }

    /// A manifest's records, one per tag it sets (`None`: untagged), then its bytes: the
    /// records first, so every stored manifest has one (see [`super::meta`]). Fetched and
    /// pushed manifests alike.
    pub(crate) async fn store(
        &self,
        route: &Route,
        tags: &[Option<&str>],
        manifest: &CachedManifest,
        references: &[Digest],
    ) -> Result<(), RegistryError> {
        let mut new = false;
        for tag in tags {
            new |= self
                .meta
                .put_manifest(&NewManifest {
                    upstream: &route.upstream.name,
                    repository: &route.repository,
                    tag: *tag,
                    digest: &manifest.digest,
                    media_type: &manifest.media_type,
                    size: manifest.bytes.len() as u64,
                    references,
                })
                .await?;
        }
        self.store
            .put_verified(&manifest.digest, manifest.bytes.clone())
            .await?;
        if new {
            self.stored.committed(manifest.bytes.len() as u64);
        }
        Ok(())
    }

    /// The tags of a repository: those cached, and those the upstream lists. Without an answer
    /// from the upstream, the cached ones alone (`false`: the upstream was not reached), or its
    /// error when none are cached.
    pub(crate) async fn tag_list(
        &self,
        route: &Route,
    ) -> Result<(Vec<String>, bool), RegistryError> {
        let mut names = self
            .meta
            .tags(&route.upstream.name, &route.repository)
            .await?;
        let upstream = self.upstream_tags(route).await;
        let reachable = upstream.is_ok();
        match upstream {
            Ok(tags) => names.extend(tags),
            Err(e) if names.is_empty() => return Err(e),
            Err(e) => tracing::warn!(error = %e, "tag list from cache only"),
        }
        Ok((names, reachable))
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
            .upstreams
            .send_ok(route, request, ErrorCode::NameUnknown)
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

/// Checks a fetched manifest's `digest` against the one asked for and the one the upstream
/// declared (`Docker-Content-Digest`, hashed with its own algorithm).
fn verify(
    upstream: &str,
    digest: &Digest,
    bytes: &[u8],
    expected: Option<&Digest>,
    declared: Option<&str>,
) -> Result<(), RegistryError> {
    let mismatch = |claimed: &str| {
        RegistryError::new(
            ErrorCode::DigestInvalid,
            format!(
                "upstream {upstream} sent a manifest whose digest is {digest}, not {claimed}; refused"
            ),
        )
    };
    if let Some(expected) = expected.filter(|e| *e != digest) {
        return Err(mismatch(expected.as_str()));
    }
    if let Some(claimed) = declared.and_then(|c| Digest::parse(c).ok()) {
        if Hasher::digest(&claimed, bytes) != claimed {
            return Err(mismatch(claimed.as_str()));
        }
    }
    Ok(())
}

//! `regmirror warm`: pull images through a running cache so that it holds them, routed exactly as
//! the cache routes its clients' requests.
//!
//! Each image is asked for as containerd asks a mirror: `ghcr.io/org/img:tag` is
//! `GET /v2/org/img/manifests/tag?ns=ghcr.io` (see [`plan::CacheRoute`]). The requests go through
//! the shared [`UpstreamClient`] with the cache as a target whose `ns` is the image's registry:
//! the same code that sends the shim's requests to a mirror, with its auth and TLS handling.
//! Manifests are read whole (bounded) and checked against their digest; for an index, the
//! children the platform selection keeps (`--platform`, else the cache's `proxy.platforms` as
//! its manifest answers state them, else every one) are walked the same way; then every config and layer is
//! read to its end through the cache (the cache fills as it streams), and checked against its
//! descriptor's size and digest. Manifests and blobs share one semaphore of `jobs` turns, held
//! for a request and its body only (never while its children are walked, which would let
//! parents hold every turn while waiting for their children): at most `jobs` requests at a
//! time, however many children an index has. Content that several images share in one
//! repository is asked for once.
//!
//! Nothing here prints: progress goes to a [`Report`], which the command line draws.

pub mod plan;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use futures_util::future::{BoxFuture, Shared};
use futures_util::{FutureExt as _, StreamExt as _};
use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use sha2::Digest as _;
use tokio::sync::Semaphore;

use crate::config::{Credentials, MirrorUrl, Scheme};
use crate::reference::{Digest, Hasher, ImageRef};
use crate::registry::{CACHE_HEADER, CONTENT_DIGEST_HEADER, MANIFEST_ACCEPT, PLATFORMS_HEADER};
use crate::resolve::TlsMode;
use crate::sync::lock;
use crate::upstream::{
    BodyError, Target, UpstreamClient, UpstreamError, UpstreamRequest, read_limited,
};
use plan::{CacheRoute, Descriptor, Manifest, ManifestError, NoPlatform, Platform, Source};

/// The largest manifest read (the cache's own default limit is 4 MiB).
const MAX_MANIFEST: usize = 16 << 20;
/// The largest error answer read.
const MAX_ERROR_BODY: usize = 64 << 10;
/// Indexes of indexes are followed this deep.
const MAX_DEPTH: usize = 4;
/// Errors listed per image; the rest are counted.
const MAX_ERRORS_SHOWN: usize = 3;

/// What to warm and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// The cache: `http://127.0.0.1:5000`.
    pub cache: MirrorUrl,
    /// For a cache with `auth.htpasswd`: answered to its challenge, sent to the cache only.
    pub credentials: Option<Credentials>,
    /// The platforms kept from multi-platform indexes; empty keeps the cache's
    /// `proxy.platforms`, or every child when it has none.
    pub platforms: Vec<Platform>,
    /// Manifests and blobs read at once (and images walked at once).
    pub jobs: usize,
}

/// What a piece of content is to its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Index,
    Manifest,
    Config,
    Layer,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Index => "index",
            Kind::Manifest => "manifest",
            Kind::Config => "config",
            Kind::Layer => "layer",
        }
    }

    fn is_blob(self) -> bool {
        matches!(self, Kind::Config | Kind::Layer)
    }
}

/// One manifest or blob being read.
#[derive(Debug, Clone)]
pub struct Item {
    /// Unique within a run.
    pub id: u64,
    pub kind: Kind,
    pub digest: Digest,
    pub size: u64,
    /// The image that asked for it first (`docker.io/library/nginx:latest`).
    pub image: Arc<str>,
}

/// Where a run's progress goes. Every method has a default that ignores it.
pub trait Report: Send + Sync {
    /// A blob of `bytes` joined the run (the total grows).
    fn queued(&self, _bytes: u64) {}
    /// A blob's answer came; its body follows.
    fn started(&self, _blob: &Item) {}
    /// `bytes` more of a blob were read.
    fn progress(&self, _blob: &Item, _bytes: u64) {}
    /// A manifest or blob was read whole and verified.
    fn fetched(&self, _item: &Item, _source: Source) {}
    /// A blob whose body had started failed.
    fn failed(&self, _blob: &Item, _error: &str) {}
}

/// What a run fetched, by where the cache took it from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub manifests: usize,
    pub blobs: usize,
    /// Bytes the cache fetched from its upstream for this run.
    pub upstream_bytes: u64,
    /// Bytes the cache already held.
    pub cached_bytes: u64,
    /// Bytes of answers that did not say (a cache other than regmirror).
    pub unknown_bytes: u64,
}

/// The end of a run: each image with its result, in the order given, and the totals.
#[derive(Debug)]
pub struct Outcome {
    pub images: Vec<(String, Result<(), WarmError>)>,
    pub totals: Totals,
}

/// Why an image, or a part of it, was not warmed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WarmError {
    /// A manifest, by tag or digest.
    #[error("manifest {reference}: {source}")]
    Manifest {
        reference: String,
        #[source]
        source: FetchError,
    },
    /// A config or a layer.
    #[error("{} {digest}: {source}", kind.as_str())]
    Blob {
        kind: Kind,
        digest: Digest,
        #[source]
        source: FetchError,
    },
    #[error("indexes nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error(transparent)]
    NoPlatform(#[from] NoPlatform),
    /// Several parts of an image failed, each once: the first [`MAX_ERRORS_SHOWN`] are shown,
    /// the rest counted.
    #[error("{}", several(.0))]
    Parts(Vec<WarmError>),
}

/// What failed in fetching one manifest or blob from the cache.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The request was not answered (the cache unreachable, its token service refusing).
    #[error(transparent)]
    Send(#[from] UpstreamError),
    /// The cache answered with an error: its status, and the answer in a few words.
    #[error("{description}")]
    Answered { status: u16, description: String },
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("the cache sent content of digest {got}, not {wanted}")]
    ManifestDigest { got: Digest, wanted: Digest },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("the body broke after {read} bytes: {source}")]
    Broken {
        read: u64,
        #[source]
        source: Arc<reqwest::Error>,
    },
    #[error("the cache sent more than the {size} bytes of its descriptor")]
    TooLong { size: u64 },
    #[error("the body ended after {read} of {size} bytes")]
    Short { read: u64, size: u64 },
    #[error("the cache sent content of digest {got}")]
    BlobDigest { got: Digest },
}

/// The first [`MAX_ERRORS_SHOWN`] of `errors`, and how many more there are.
fn several(errors: &[WarmError]) -> String {
    let shown: Vec<String> = errors
        .iter()
        .take(MAX_ERRORS_SHOWN)
        .map(ToString::to_string)
        .collect();
    match errors.len().saturating_sub(MAX_ERRORS_SHOWN) {
        0 => shown.join("; "),
        more => format!("{} (and {more} more)", shown.join("; ")),
    }
}

type Flight = Shared<BoxFuture<'static, Result<(), WarmError>>>;

/// One image's requests: where they go and on whose behalf.
struct Ctx {
    route: CacheRoute,
    target: Target,
    image: Arc<str>,
}

/// Warms images through one cache.
pub struct Warmer {
    client: UpstreamClient,
    options: Options,
    report: Arc<dyn Report>,
    permits: Semaphore,
    /// Child manifests and blobs asked for in this run, by (namespace, repository, digest):
    /// later askers wait for the first one's result.
    flights: Mutex<HashMap<String, Flight>>,
    totals: Mutex<Totals>,
    next_id: AtomicU64,
    /// The cache's `proxy.platforms`, from its first manifest answer.
    cache_platforms: OnceLock<Vec<Platform>>,
}

impl Warmer {
    pub fn new(client: UpstreamClient, options: Options, report: Arc<dyn Report>) -> Arc<Self> {
        let jobs = options.jobs.max(1);
        Arc::new(Warmer {
            client,
            options,
            report,
            permits: Semaphore::new(jobs),
            flights: Mutex::new(HashMap::new()),
            totals: Mutex::new(Totals::default()),
            next_id: AtomicU64::new(0),
            cache_platforms: OnceLock::new(),
        })
    }

    /// The platforms an index's children are kept for: `--platform`, else the cache's
    /// `proxy.platforms` (empty: every child).
    fn platforms(&self) -> &[Platform] {
        if !self.options.platforms.is_empty() {
            return &self.options.platforms;
        }
        self.cache_platforms.get().map_or(&[], Vec::as_slice)
    }

    /// Warms `images`, at most `jobs` at a time; a failed image does not stop the others.
    pub async fn warm(self: &Arc<Self>, images: Vec<ImageRef>) -> Outcome {
        let jobs = self.options.jobs.max(1);
        let results = futures_util::stream::iter(images)
            .map(|image| {
                let warmer = self.clone();
                async move {
                    let result = warmer.image(&image).await;
                    (image.to_string(), result)
                }
            })
            .buffered(jobs)
            .collect()
            .await;
        // Done flights hold only their results; dropping them leaves no future (and no clone of
        // this warmer) behind.
        lock(&self.flights).clear();
        Outcome {
            images: results,
            totals: lock(&self.totals).clone(),
        }
    }

    async fn image(self: &Arc<Self>, image: &ImageRef) -> Result<(), WarmError> {
        let route = CacheRoute::for_image(image, self.options.cache.authority());
        let tls = match self.options.cache.scheme() {
            Scheme::Http => TlsMode::None,
            Scheme::Https => TlsMode::Verify,
        };
        let mut target = Target::origin(&self.options.cache, self.options.credentials.clone(), tls);
        target.ns = route.ns.as_deref().map(Arc::from);
        let ctx = Arc::new(Ctx {
            route,
            target,
            image: Arc::from(image.to_string()),
        });
        let manifest = self
            .manifest(&ctx, image.manifest_reference(), image.digest())
            .await?;
        self.clone().walk(ctx, manifest, 0).await
    }

    /// Everything `manifest` references: the kept children of an index, or an image's config
    /// and layers.
    fn walk(
        self: Arc<Self>,
        ctx: Arc<Ctx>,
        manifest: Manifest,
        depth: usize,
    ) -> BoxFuture<'static, Result<(), WarmError>> {
        async move {
            let parts: Vec<Flight> = match &manifest {
                Manifest::Index { .. } if depth >= MAX_DEPTH => {
                    return Err(WarmError::TooDeep);
                }
                Manifest::Index { children } => plan::select(children, self.platforms())?
                    .into_iter()
                    .map(|child| self.child(&ctx, child, depth + 1))
                    .collect(),
                Manifest::Image { config, layers } => std::iter::once((config, Kind::Config))
                    .chain(layers.iter().map(|l| (l, Kind::Layer)))
                    .map(|(descriptor, kind)| self.blob(&ctx, descriptor, kind))
                    .collect(),
            };
            let mut errors: Vec<WarmError> = Vec::new();
            for result in futures_util::future::join_all(parts).await {
                if let Err(e) = result {
                    let text = e.to_string();
                    if !errors.iter().any(|seen| seen.to_string() == text) {
                        errors.push(e);
                    }
                }
            }
            match errors.len() {
                0 => Ok(()),
                1 => Err(errors.remove(0)),
                _ => Err(WarmError::Parts(errors)),
            }
        }
        .boxed()
    }

    /// The flight for `key`: the one in progress or done, else a new one from `start`.
    fn once(
        &self,
        key: String,
        start: impl FnOnce() -> BoxFuture<'static, Result<(), WarmError>>,
    ) -> Flight {
        lock(&self.flights)
            .entry(key)
            .or_insert_with(|| start().shared())
            .clone()
    }

    /// A child manifest of an index, and everything it references.
    fn child(self: &Arc<Self>, ctx: &Arc<Ctx>, child: &Descriptor, depth: usize) -> Flight {
        let (warmer, ctx, digest) = (self.clone(), ctx.clone(), child.digest.clone());
        self.once(ctx.route.key(&digest), move || {
            async move {
                let manifest = warmer
                    .manifest(&ctx, digest.as_str(), Some(&digest))
                    .await?;
                warmer.walk(ctx, manifest, depth).await
            }
            .boxed()
        })
    }

    /// A config or layer, read to its end through the cache.
    fn blob(self: &Arc<Self>, ctx: &Arc<Ctx>, descriptor: &Descriptor, kind: Kind) -> Flight {
        let (warmer, ctx, descriptor) = (self.clone(), ctx.clone(), descriptor.clone());
        self.once(ctx.route.key(&descriptor.digest), move || {
            async move { warmer.fetch_blob(&ctx, &descriptor, kind).await }.boxed()
        })
    }

    fn item(&self, ctx: &Ctx, kind: Kind, digest: Digest, size: u64) -> Item {
        Item {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            kind,
            digest,
            size,
            image: ctx.image.clone(),
        }
    }

    fn count(&self, item: &Item, source: Source) {
        let mut totals = lock(&self.totals);
        if item.kind.is_blob() {
            totals.blobs += 1;
        } else {
            totals.manifests += 1;
        }
        *match source {
            Source::Upstream => &mut totals.upstream_bytes,
            Source::Cached => &mut totals.cached_bytes,
            Source::Unknown => &mut totals.unknown_bytes,
        } += item.size;
    }

    /// GET `path` from the cache; an answer other than 200 is an error naming it.
    async fn get(
        &self,
        ctx: &Ctx,
        path: String,
        accept: Option<&str>,
    ) -> Result<(reqwest::Response, Source), FetchError> {
        let mut request = UpstreamRequest::pull(Method::GET, &ctx.route.repository, path.clone());
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        let response = self.client.send(&ctx.target, &request).await?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            let body = read_limited(response, MAX_ERROR_BODY)
                .await
                .unwrap_or_default();
            return Err(FetchError::Answered {
                status: status.as_u16(),
                description: plan::describe_error(status.as_u16(), &body),
            });
        }
        let header = response
            .headers()
            .get(CACHE_HEADER)
            .and_then(|v| v.to_str().ok());
        // A redirect away from the cache (a presigned bucket URL) is a committed blob.
        let redirected = !response.url().path().ends_with(&path);
        let source = Source::from_header(header, redirected);
        Ok((response, source))
    }

    /// A manifest by tag or digest, checked against `expected` (a digest reference) or the
    /// cache's `Docker-Content-Digest`, and parsed.
    async fn manifest(
        &self,
        ctx: &Ctx,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<Manifest, WarmError> {
        let failed = |source: FetchError| WarmError::Manifest {
            reference: reference.to_owned(),
            source,
        };
        // One of the `jobs` turns, held until the body is read: an index's children are all
        // asked for at once, and wait here.
        let permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let path = ctx.route.manifest_path(reference);
        let (response, source) = self
            .get(ctx, path, Some(MANIFEST_ACCEPT))
            .await
            .map_err(failed)?;
        self.cache_platforms.get_or_init(|| {
            let stated = response.headers().get(PLATFORMS_HEADER);
            plan::stated_platforms(stated.and_then(|v| v.to_str().ok()))
        });
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let stated = response
            .headers()
            .get(CONTENT_DIGEST_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v.trim()).ok());
        let bytes = read_limited(response, MAX_MANIFEST)
            .await
            .map_err(|e| failed(e.into()))?;
        drop(permit);
        let digest = match expected.or(stated.as_ref()) {
            Some(wanted) => {
                let got = Hasher::digest(wanted, &bytes);
                if &got != wanted {
                    return Err(failed(FetchError::ManifestDigest {
                        got,
                        wanted: wanted.clone(),
                    }));
                }
                got
            }
            None => Digest::sha256_from_bytes(&sha2::Sha256::digest(&bytes)),
        };
        let manifest =
            Manifest::parse(&bytes, content_type.as_deref()).map_err(|e| failed(e.into()))?;
        let kind = match manifest {
            Manifest::Index { .. } => Kind::Index,
            Manifest::Image { .. } => Kind::Manifest,
        };
        let item = self.item(ctx, kind, digest, bytes.len() as u64);
        self.count(&item, source);
        self.report.fetched(&item, source);
        Ok(manifest)
    }

    async fn fetch_blob(
        &self,
        ctx: &Ctx,
        descriptor: &Descriptor,
        kind: Kind,
    ) -> Result<(), WarmError> {
        let digest = &descriptor.digest;
        let failed = |source: FetchError| WarmError::Blob {
            kind,
            digest: digest.clone(),
            source,
        };
        self.report.queued(descriptor.size);
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let (response, source) = self
            .get(ctx, ctx.route.blob_path(digest), None)
            .await
            .map_err(failed)?;
        let item = self.item(ctx, kind, digest.clone(), descriptor.size);
        self.report.started(&item);
        match self.read_blob(&item, response).await {
            Ok(()) => {
                self.count(&item, source);
                self.report.fetched(&item, source);
                Ok(())
            }
            Err(e) => {
                self.report.failed(&item, &e.to_string());
                Err(failed(e))
            }
        }
    }

    /// Reads a blob's body to its end, checking it against the descriptor's size and digest.
    async fn read_blob(&self, item: &Item, response: reqwest::Response) -> Result<(), FetchError> {
        let mut hasher = Hasher::like(&item.digest);
        let mut read: u64 = 0;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| FetchError::Broken {
                read,
                source: Arc::new(e),
            })?;
            read = read.saturating_add(chunk.len() as u64);
            if read > item.size {
                return Err(FetchError::TooLong { size: item.size });
            }
            hasher.update(&chunk);
            self.report.progress(item, chunk.len() as u64);
        }
        if read != item.size {
            return Err(FetchError::Short {
                read,
                size: item.size,
            });
        }
        let got = hasher.finish();
        if got != item.digest {
            return Err(FetchError::BlobDigest { got });
        }
        Ok(())
    }
}

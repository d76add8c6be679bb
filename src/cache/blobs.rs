//! The blob service: a blob request answered from the blob memo, the committed file or object
//! (read at once when small, streamed when not, or redirected to the bucket), or a fill from the
//! upstream, joined or started. It decides and hands back a typed [`BlobAnswer`];
//! [`super::http`] turns it into a response and counts the bytes served.
//!
//! Content the store holds for another namespace is a miss here: the route's own upstream must
//! deliver the bytes before they are served on its routes ([`super::access`]).

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt as _, StreamExt as _};
use reqwest::{Method, StatusCode};

use super::access::ContentAccess;
use super::buffers::Buffers;
use super::fill::{Download, Fetched, Fill, FillBody, Fills, UpstreamBody};
use super::fleet::Fleet;
use super::memo::Memo;
use super::metrics::Metrics;
use super::range::{self, ByteRange};
use super::routing::Route;
use super::store::read::{READ_NOW_UP_TO, file_reader, read_now};
use super::store::{BlobStore, Committed};
use super::upstreams::{Upstreams, body_from, unreachable, upstream_status};
use super::uses::LastUses;
use crate::reference::Digest;
use crate::registry::{CacheOutcome, ErrorCode, RegistryError, internal};
use crate::upstream::UpstreamRequest;

/// A body as it is read: from a file, the bucket, or a fill.
pub(crate) type BodyStream = BoxStream<'static, io::Result<Bytes>>;

/// What a blob request asks for beyond the blob.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlobRequest<'a> {
    /// A HEAD: the size, no body.
    pub(crate) head: bool,
    /// The `Range` header.
    pub(crate) range: Option<&'a str>,
}

/// How a blob request is answered.
pub(crate) struct BlobAnswer {
    pub(crate) outcome: CacheOutcome,
    /// 206 for `span` rather than 200 for the whole blob.
    pub(crate) partial: bool,
    /// The bytes sent (for a fill of unknown size, to `u64::MAX`).
    pub(crate) span: ByteRange,
    /// The blob's size, when known (a fill without Content-Length: not yet).
    pub(crate) size: Option<u64>,
    pub(crate) body: BlobBody,
}

/// Where an answer's bytes come from.
pub(crate) enum BlobBody {
    /// None: a HEAD.
    Head,
    /// In memory: from the blob memo, or a small file or object read at once.
    Whole(Bytes),
    /// Streamed from a committed file.
    File(BodyStream),
    /// Streamed from the bucket.
    Object(BodyStream),
    /// A redirect to where the bucket serves the blob (a presigned URL).
    Redirect(url::Url),
    /// Read from a fill as its download proceeds: bytes from the upstream now.
    Fill(FillBody),
}

/// A blob the cache holds, ready to be read.
#[derive(Debug)]
enum Held {
    /// Whole, from the blob memo.
    Remembered(Bytes),
    Stored(Committed),
}

impl Held {
    fn size(&self) -> u64 {
        match self {
            Held::Remembered(bytes) => bytes.len() as u64,
            Held::Stored(committed) => committed.size(),
        }
    }
}

/// The blob service (wired by [`super::App::new`]).
#[derive(Debug)]
pub(crate) struct Blobs {
    pub(super) access: ContentAccess,
    pub(super) upstreams: Upstreams,
    pub(super) store: Arc<BlobStore>,
    pub(super) fills: Arc<Fills>,
    /// Hot small blobs, whole (`limits.blob_memo`).
    pub(super) memo: Memo<Bytes>,
    pub(super) buffers: Arc<Buffers>,
    pub(super) metrics: Arc<Metrics>,
    /// On a shared bucket: fills take the fleet's lease, or follow the replica holding it.
    pub(super) fleet: Option<Fleet>,
    pub(super) uses: Arc<LastUses>,
}

impl Blobs {
    /// The fills in flight.
    pub(crate) fn fills(&self) -> &Arc<Fills> {
        &self.fills
    }

    /// The bytes of blob data in flight ([`Buffers`]).
    pub(crate) fn buffer_bytes(&self) -> usize {
        self.buffers.in_use()
    }

    /// The bytes the blob memo holds.
    pub(crate) fn memo_bytes(&self) -> usize {
        self.memo.bytes()
    }

    /// Answers a request for `digest` on `route`.
    pub(crate) async fn get(
        &self,
        route: &Route,
        digest: &Digest,
        request: BlobRequest<'_>,
    ) -> Result<BlobAnswer, RegistryError> {
        let access = self.access.access(route, digest).await?;
        let held = if access.held {
            self.held(digest).await?
        } else {
            None
        };
        if let Some(held) = held {
            if !access.linked {
                self.access
                    .confirm(route, digest, ErrorCode::BlobUnknown)
                    .await?;
            }
            return self.hit(digest, held, request).await;
        }
        if route.upstream.local {
            return Err(RegistryError::new(
                ErrorCode::BlobUnknown,
                format!("{digest} is not in {}", route.repository),
            ));
        }
        self.miss(route, digest, request).await
    }

    /// A held blob: from memory, the file or the bucket.
    async fn hit(
        &self,
        digest: &Digest,
        held: Held,
        request: BlobRequest<'_>,
    ) -> Result<BlobAnswer, RegistryError> {
        let size = held.size();
        self.uses.digest(digest);
        self.metrics.request("blob", CacheOutcome::Hit);
        let (partial, span) = match range::resolve(request.range, Some(size))? {
            Some(span) => (true, span),
            None => (
                false,
                ByteRange {
                    start: 0,
                    end: size,
                },
            ),
        };
        let answer = |outcome, body| BlobAnswer {
            outcome,
            partial,
            span,
            size: Some(size),
            body,
        };
        if request.head {
            return Ok(answer(CacheOutcome::Hit, BlobBody::Head));
        }
        // Lossless casts: the span lies within the blob's own length.
        let (start, end) = (span.start as usize, span.end as usize);
        let body = match held {
            Held::Remembered(bytes) => BlobBody::Whole(bytes.slice(start..end)),
            Held::Stored(Committed::File { file, .. }) => {
                match read_now(&file, span.start, span.end, &self.buffers) {
                    Some(read) => {
                        let bytes = read.map_err(internal)?;
                        if span.start == 0 && span.end == size {
                            self.remember(digest, &bytes);
                        }
                        BlobBody::Whole(bytes)
                    }
                    None => BlobBody::File(
                        file_reader(file, span.start, span.end, self.buffers.clone()).boxed(),
                    ),
                }
            }
            Held::Stored(Committed::Object { key, redirect, .. }) if redirect => {
                // distribution's default on object storage: the client fetches from the bucket.
                let url = self.store.presigned(&key).await?;
                return Ok(answer(CacheOutcome::Redirect, BlobBody::Redirect(url)));
            }
            Held::Stored(Committed::Object { key, .. })
                if size <= READ_NOW_UP_TO && self.memo.keeps(size as usize) =>
            {
                // A small object is read whole and remembered: its next hits ask the bucket
                // nothing (not even the HEAD that `open` costs).
                let bytes = self.store.read_object(&key, size).await?;
                self.remember(digest, &bytes);
                BlobBody::Whole(bytes.slice(start..end))
            }
            Held::Stored(Committed::Object { key, .. }) => {
                BlobBody::Object(self.store.stream_object(&key, span.start, span.end).await?)
            }
        };
        Ok(answer(CacheOutcome::Hit, body))
    }

    /// A blob not held for the route: the fill of it from the upstream, joined or started.
    async fn miss(
        &self,
        route: &Route,
        digest: &Digest,
        request: BlobRequest<'_>,
    ) -> Result<BlobAnswer, RegistryError> {
        let (fill, started) = self.start_fill(route, digest)?;
        if !started && fill.repository != route.repository {
            // Joining another repository's download: the upstream must confirm this one may read
            // the blob. (The same repository's clients need no check: they asked for the same.)
            self.access
                .require(route, digest, ErrorCode::BlobUnknown)
                .await?;
        }
        let outcome = if started {
            CacheOutcome::Miss
        } else {
            CacheOutcome::Joined
        };
        self.metrics.request("blob", outcome);
        if request.head {
            // A HEAD on a miss fills the blob rather than asking the upstream with a HEAD: a
            // cache upstream may not know a blob it lacks until a GET (distribution#4747), or
            // fetch it whole to answer a HEAD; the client's GET follows anyway.
            let size = fill.size().await?;
            return Ok(BlobAnswer {
                outcome,
                partial: false,
                span: ByteRange {
                    start: 0,
                    end: size,
                },
                size: Some(size),
                body: BlobBody::Head,
            });
        }
        let size = fill.started().await?;
        let (partial, span) = match range::resolve(request.range, size)? {
            Some(span) => (true, span),
            None => (
                false,
                ByteRange {
                    start: 0,
                    end: size.unwrap_or(u64::MAX),
                },
            ),
        };
        let end = size.map(|_| span.end);
        Ok(BlobAnswer {
            outcome,
            partial,
            span,
            size,
            body: BlobBody::Fill(fill.body(span.start, end)),
        })
    }

    /// A committed blob, ready to be read: from the blob memo, else from the store.
    async fn held(&self, digest: &Digest) -> Result<Option<Held>, RegistryError> {
        if let Some(bytes) = self.memo.get(digest) {
            return Ok(Some(Held::Remembered(bytes)));
        }
        Ok(self.store.open(digest).await?.map(Held::Stored))
    }

    /// Keeps a small blob just read whole from the store in the blob memo (a copy: a file's
    /// `bytes` hold the in-flight budget until the client has them).
    fn remember(&self, digest: &Digest, bytes: &Bytes) {
        if self.memo.keeps(bytes.len()) {
            self.memo
                .insert(digest.clone(), Bytes::copy_from_slice(bytes));
        }
    }

    /// Joins or starts the single fill of `digest` from `route`'s upstream.
    fn start_fill(
        &self,
        route: &Route,
        digest: &Digest,
    ) -> Result<(Arc<Fill>, bool), RegistryError> {
        let fetch = match self.fleet.clone() {
            None => {
                let download = download(self.upstreams.clone(), route.clone(), digest, 0);
                async move {
                    let (size, body) = download.await?;
                    Ok(Fetched::stored(size, body, None))
                }
                .boxed()
            }
            Some(fleet) => {
                let (upstreams, to) = (self.upstreams.clone(), route.clone());
                let one = digest.clone();
                let download: Download = Arc::new(move |from| {
                    download(upstreams.clone(), to.clone(), &one, from).boxed()
                });
                let confirm = self.access.upstream_confirms(route, digest);
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
        self.fills
            .join_or_start(
                (&route.upstream.name, route.upstream.label()),
                &route.repository,
                digest,
                fetch,
            )
            .map_err(|e| e.registry_error())
    }
}

/// The GET of a blob from the route's upstream from byte `from` on (a `Range` past 0, or the
/// whole blob again where the upstream refuses ranges): the blob's size (when stated) and the
/// body from `from`, once the upstream answered.
fn download(
    upstreams: Upstreams,
    route: Route,
    digest: &Digest,
    from: u64,
) -> impl Future<Output = Result<(Option<u64>, UpstreamBody), RegistryError>> + Send + 'static {
    let mut request = UpstreamRequest::pull(
        Method::GET,
        &route.repository,
        format!("/v2/{}/blobs/{digest}", route.repository),
    );
    if from > 0 {
        request = request.header(reqwest::header::RANGE, &format!("bytes={from}-"));
    }
    async move {
        let upstream = &route.upstream.name;
        let response = upstreams
            .send(&route, request)
            .await
            .map_err(|e| unreachable(upstream, e))?;
        let status = response.status();
        if status != StatusCode::OK && status != StatusCode::PARTIAL_CONTENT {
            return Err(upstream_status(upstream, &response, ErrorCode::BlobUnknown));
        }
        body_from(response, from).ok_or_else(|| {
            RegistryError::new(
                ErrorCode::Unavailable,
                format!("upstream {upstream} answered {status} to a range from byte {from}"),
            )
        })
    }
}

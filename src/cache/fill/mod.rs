//! Single-flight blob fills: [`Fills`] (who downloads what, within the limits), each [`Fill`]'s
//! state and readers ([`follow`]), its task ([`task`]: the download, the checks, the commit) and
//! its hasher ([`hasher`]).
//!
//! The first request for a blob its upstream's namespace lacks starts a [`Fill`]: a task of its
//! own (a client hanging up cancels nothing) that streams the upstream body into a temp file while
//! hashing it, and publishes the count of bytes written through a `watch` channel. Every request
//! for the same digest *from the same upstream* — concurrent, late, or with a `Range` — joins that
//! fill and reads the temp file through the shared file handle as bytes arrive; a request routed
//! to another upstream never joins it (it starts its own), so one slow or hostile upstream cannot
//! hold a digest for everyone. Readers keeping up with the download take the chunks just received
//! from a small in-memory window ([`RecentChunks`]) instead, without copying them back out of the
//! page cache; those that fell behind it on plain http have the spool file's bytes sent with
//! `sendfile` ([`crate::sendfile`]). The blob's last byte is held back until the digest is
//! verified, so no client ever holds a complete body of unverified content.
//!
//! Bounds: a blob larger than `limits.max_blob_size` is refused before the download (by its
//! Content-Length) or cut when it passes the limit (without one); a blob larger than the free
//! space is refused, and blocks are reserved as bytes arrive (8 MiB ahead), never by the length
//! an upstream claims; a fill that falls behind `limits.fill_min_rate` by more than the
//! read timeout is abandoned; at most `limits.max_fills` run at once, and
//! at most `limits.max_fills_per_upstream` of them for one upstream. Hashing runs on the
//! blocking pool one batch of chunks at a time, and readers read files there one chunk at a time:
//! neither holds a thread while waiting for the network or for a slow client.
//!
//! At the end the size and digest are checked; once they match, readers may take the last byte
//! while the file is fsynced, recorded in the metadata (with the repository that asked, and the
//! upstream whose namespace now holds it) and renamed into the store. On a mismatch, an upstream
//! failure, a limit, or a panic, the fill fails: every reader's body ends with an error (so the
//! client sees a cut connection, never a clean short body), the temp file is deleted and nothing
//! is recorded. A drop guard does that cleanup whatever ends the task.

mod error;
mod follow;
mod hasher;
mod task;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;
use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::buffers::Buffers;
use super::lease::HeldLease;
use super::meta::Metadata;
use super::store::{BlobStore, StoredBytes};
use crate::reference::Digest;
use crate::registry::{ErrorCode, RegistryError};
use crate::sendfile::SendfileQueue;
use crate::sync::lock;
pub(crate) use error::FillError;
use follow::{Follow, RecentChunks};
use task::FillTask;

/// Progress of a fill.
#[derive(Debug, Clone)]
pub(crate) enum FillState {
    /// Waiting for the upstream's response headers.
    Connecting,
    /// Bytes `0..written` are in the temp file; `size` is the upstream's Content-Length.
    Streaming { size: Option<u64>, written: u64 },
    /// Size and digest verified: every byte may be read; the commit to the store is under way.
    Verified { size: u64 },
    /// Verified and committed.
    Done { size: u64 },
    /// Failed: the error its readers' clients get.
    Failed(RegistryError),
}

/// One in-flight download.
#[derive(Debug)]
pub(crate) struct Fill {
    file: Arc<File>,
    state: watch::Receiver<FillState>,
    recent: follow::SharedRecent,
    buffers: Arc<Buffers>,
    /// The repository whose request started it: its other requests join without an access check.
    pub(crate) repository: String,
    /// Whose share of `limits.max_fills` it takes: its upstream's metrics label (every dynamic
    /// upstream shares one).
    share: String,
    started: Instant,
    /// Requests that joined after the first.
    followers: AtomicU64,
}

impl Fill {
    /// Waits until the upstream answered: returns the expected size, or the error.
    pub(crate) async fn started(&self) -> Result<Option<u64>, RegistryError> {
        self.wait_for(|state| match state {
            FillState::Connecting | FillState::Failed(_) => None,
            FillState::Streaming { size, .. } => Some(*size),
            FillState::Verified { size } | FillState::Done { size } => Some(Some(*size)),
        })
        .await
    }

    /// Waits until the blob's size is known: the upstream's Content-Length, or without one the
    /// verified end of the download.
    pub(crate) async fn size(&self) -> Result<u64, RegistryError> {
        self.wait_for(|state| match state {
            FillState::Connecting
            | FillState::Streaming { size: None, .. }
            | FillState::Failed(_) => None,
            FillState::Streaming {
                size: Some(size), ..
            }
            | FillState::Verified { size }
            | FillState::Done { size } => Some(*size),
        })
        .await
    }

    /// Waits until `pick` finds what it needs in the fill's state, or the fill fails (a failed
    /// state is answered before `pick` sees it).
    async fn wait_for<T>(
        &self,
        pick: impl Fn(&FillState) -> Option<T>,
    ) -> Result<T, RegistryError> {
        let mut rx = self.state.clone();
        loop {
            match &*rx.borrow_and_update() {
                FillState::Failed(error) => return Err(error.clone()),
                state => {
                    if let Some(found) = pick(state) {
                        return Ok(found);
                    }
                }
            }
            if rx.changed().await.is_err() {
                return Err(RegistryError::new(ErrorCode::Unavailable, "fill abandoned"));
            }
        }
    }

    /// A body stream of bytes `start..end` (end exclusive; `None` = to the end of the blob);
    /// with `sends` (a plain-http connection's), the bytes a reader fell behind on go out from
    /// the spool file ([`follow`]).
    pub(crate) fn reader(
        &self,
        start: u64,
        end: Option<u64>,
        sends: Option<SendfileQueue>,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + use<> {
        let follow = Follow {
            progress: self.state.clone(),
            recent: self.recent.clone(),
        };
        let buffers = self.buffers.clone();
        follow::follow(self.file.clone(), start, end, follow, buffers, sends)
    }

    /// Bytes `start..end` for one answer, streamed once the answer knows how it is sent.
    pub(crate) fn body(self: &Arc<Self>, start: u64, end: Option<u64>) -> FillBody {
        FillBody {
            fill: self.clone(),
            start,
            end,
        }
    }

    /// Where it stands, for the status page.
    fn progress(&self, upstream: &str, digest: &Digest) -> FillProgress {
        let (written, size) = match &*self.state.borrow() {
            FillState::Streaming { size, written } => (*written, *size),
            FillState::Verified { size } | FillState::Done { size } => (*size, Some(*size)),
            FillState::Connecting | FillState::Failed(_) => (0, None),
        };
        FillProgress {
            upstream: upstream.to_owned(),
            repository: self.repository.clone(),
            digest: digest.to_string(),
            written,
            size,
            elapsed: self.started.elapsed(),
            followers: self.followers.load(Ordering::Relaxed),
        }
    }
}

/// A fill's bytes for one answer: see [`Fill::body`].
pub(crate) struct FillBody {
    fill: Arc<Fill>,
    start: u64,
    end: Option<u64>,
}

impl FillBody {
    /// The body stream ([`Fill::reader`]).
    pub(crate) fn stream(
        self,
        sends: Option<SendfileQueue>,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        self.fill.reader(self.start, self.end, sends)
    }
}

/// A download in flight as the status page shows it.
#[derive(Debug, Clone)]
pub(crate) struct FillProgress {
    pub(crate) upstream: String,
    pub(crate) repository: String,
    pub(crate) digest: String,
    pub(crate) written: u64,
    pub(crate) size: Option<u64>,
    pub(crate) elapsed: Duration,
    /// Requests that joined it after the one that started it.
    pub(crate) followers: u64,
}

/// A body as it arrives: from the upstream, the bucket, or another replica's fill.
pub(crate) type UpstreamBody = std::pin::Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Where a fill's bytes come from, and what becomes of them once verified.
pub(crate) struct Fetched {
    /// The Content-Length, when known.
    pub(crate) size: Option<u64>,
    pub(crate) body: UpstreamBody,
    pub(crate) keep: Keep,
}

/// A download of the blob from byte `from` on: the blob's whole size (when stated) and its body
/// from `from`, once the upstream answered.
pub(crate) type Download = Arc<
    dyn Fn(u64) -> BoxFuture<'static, Result<(Option<u64>, UpstreamBody), RegistryError>>
        + Send
        + Sync,
>;

/// What a fill does with verified bytes.
pub(crate) enum Keep {
    /// Store them with their records. `lease`: the fleet's lease on this download, held until
    /// the content is stored; losing it stops the download.
    Store { lease: Option<HeldLease> },
    /// Another replica of the fleet stores them: this one only links them to the repository its
    /// clients asked for.
    Link,
    /// Another replica's download, followed: once the bytes are verified, `settle` says what
    /// became of it. `None`: that replica stores them (or stored them), this one links them; a
    /// lease: this replica took the download over (its holder died) and stores them itself.
    Follow {
        settle: BoxFuture<'static, Option<HeldLease>>,
    },
}

impl std::fmt::Debug for Keep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keep::Store { lease } => f.debug_struct("Store").field("lease", lease).finish(),
            Keep::Link => f.write_str("Link"),
            Keep::Follow { .. } => f.write_str("Follow"),
        }
    }
}

impl Fetched {
    /// Bytes to store, from the upstream itself.
    pub(crate) fn stored(size: Option<u64>, body: UpstreamBody, lease: Option<HeldLease>) -> Self {
        Fetched {
            size,
            body,
            keep: Keep::Store { lease },
        }
    }
}

/// The bounds every fill runs within (`limits` in the config).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FillLimits {
    /// `limits.max_blob_size`.
    pub(crate) max_blob_size: u64,
    /// `limits.fill_min_rate`, bytes per second.
    pub(crate) min_rate: u64,
    /// How far behind the minimum rate a fill may fall: the upstream read timeout.
    pub(crate) grace: Duration,
    /// `limits.max_fills`.
    pub(crate) max_fills: usize,
    /// `limits.max_fills_per_upstream`: the most one share holds.
    pub(crate) max_fills_per_upstream: usize,
}

/// A fill is for one digest from one upstream.
type FillKey = (String, Digest);

/// The in-flight fills by upstream and digest.
#[derive(Debug)]
pub(crate) struct Fills {
    inflight: Mutex<HashMap<FillKey, Arc<Fill>>>,
    store: Arc<BlobStore>,
    meta: Arc<Metadata>,
    buffers: Arc<Buffers>,
    /// Counts the bytes of new blobs committed, for the status page.
    stored: Arc<StoredBytes>,
    limits: FillLimits,
    /// Dropped with the last holder of the fills (the server's state and every fill task, which
    /// runs on after its clients): a shutdown waits for it.
    _held: crate::sync::Held,
}

impl Fills {
    pub(crate) fn new(
        (store, meta): (Arc<BlobStore>, Arc<Metadata>),
        buffers: Arc<Buffers>,
        stored: Arc<StoredBytes>,
        limits: FillLimits,
        held: crate::sync::Held,
    ) -> Self {
        Fills {
            inflight: Mutex::new(HashMap::new()),
            store,
            meta,
            buffers,
            stored,
            limits,
            _held: held,
        }
    }

    /// The fill in flight for `digest` from `upstream`, if any.
    pub(crate) fn get(&self, upstream: &str, digest: &Digest) -> Option<Arc<Fill>> {
        lock(&self.inflight)
            .get(&(upstream.to_owned(), digest.clone()))
            .cloned()
    }

    /// Number of fills in flight.
    pub(crate) fn in_flight(&self) -> usize {
        lock(&self.inflight).len()
    }

    /// The fills in flight, for the status page (at most `limit`, the oldest first).
    pub(crate) fn progress(&self, limit: usize) -> Vec<FillProgress> {
        let mut views: Vec<FillProgress> = lock(&self.inflight)
            .iter()
            .map(|((upstream, digest), fill)| fill.progress(upstream, digest))
            .collect();
        views.sort_by_key(|v| std::cmp::Reverse(v.elapsed));
        views.truncate(limit);
        views
    }

    /// Joins the fill of `digest` from `upstream`, or starts one for `repository` with `fetch`,
    /// which must resolve to the upstream's size and body (or the registry error to report), in
    /// `share` (see [`Fill`]). Returns the fill and whether this call started it.
    pub(crate) fn join_or_start<F>(
        self: &Arc<Self>,
        (upstream, share): (&str, &str),
        repository: &str,
        digest: &Digest,
        fetch: F,
    ) -> Result<(Arc<Fill>, bool), FillError>
    where
        F: Future<Output = Result<Fetched, RegistryError>> + Send + 'static,
    {
        let key = (upstream.to_owned(), digest.clone());
        let mut inflight = lock(&self.inflight);
        if let Some(fill) = inflight.get(&key) {
            fill.followers.fetch_add(1, Ordering::Relaxed);
            return Ok((fill.clone(), false));
        }
        if inflight.len() >= self.limits.max_fills {
            return Err(FillError::TooMany {
                in_flight: inflight.len(),
            });
        }
        let held = inflight.values().filter(|f| f.share == share).count();
        if held >= self.limits.max_fills_per_upstream {
            return Err(FillError::ShareFull {
                share: share.to_owned(),
                held,
            });
        }
        let temp = self.store.temp_path();
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&temp)
                .map_err(FillError::Spool)?,
        );
        let (tx, rx) = watch::channel(FillState::Connecting);
        let recent = Arc::new(Mutex::new(RecentChunks::new(self.buffers.clone())));
        let fill = Arc::new(Fill {
            file: file.clone(),
            state: rx,
            recent: recent.clone(),
            buffers: self.buffers.clone(),
            repository: repository.to_owned(),
            share: share.to_owned(),
            started: Instant::now(),
            followers: AtomicU64::new(0),
        });
        inflight.insert(key.clone(), fill.clone());
        drop(inflight);
        let task = FillTask::new(self.clone(), key, repository, temp, file, tx, recent);
        tokio::spawn(task.run(fetch));
        Ok((fill, true))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;

    use super::*;

    fn buffers() -> Arc<Buffers> {
        Buffers::new(1 << 30)
    }

    fn fills(dir: &std::path::Path) -> Arc<Fills> {
        fills_with(dir, 2, 2)
    }

    fn fills_with(dir: &std::path::Path, max_fills: usize, per_upstream: usize) -> Arc<Fills> {
        let store = Arc::new(BlobStore::open_files(dir).unwrap());
        let meta = Arc::new(Metadata::open_local(&dir.join("meta.redb")).unwrap());
        Arc::new(Fills::new(
            (store, meta),
            buffers(),
            Arc::default(),
            FillLimits {
                max_blob_size: 1 << 30,
                min_rate: 1,
                grace: Duration::from_secs(5),
                max_fills,
                max_fills_per_upstream: per_upstream,
            },
            crate::sync::drain().0,
        ))
    }

    #[tokio::test]
    async fn a_panicking_fill_cleans_up_after_itself() {
        let dir = tempfile::tempdir().unwrap();
        let fills = fills(dir.path());
        let digest = crate::cache::store::sha256(b"x");
        let (fill, started) = fills
            .join_or_start(("up", "up"), "repo", &digest, async {
                panic!("a bug in the fetch");
            })
            .unwrap();
        assert!(started);
        let error = fill.started().await.unwrap_err();
        assert_eq!(error.code, ErrorCode::Unavailable);
        assert_eq!(fills.in_flight(), 0, "the digest is not wedged");
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        // The next request starts afresh.
        let body: UpstreamBody = futures_util::stream::iter([Ok(Bytes::from_static(b"x"))]).boxed();
        let (fill, started) = fills
            .join_or_start(("up", "up"), "repo", &digest, async move {
                Ok(Fetched::stored(Some(1), body, None))
            })
            .unwrap();
        assert!(started);
        let bytes: Vec<Bytes> = fill
            .reader(0, None, None)
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(bytes.concat(), b"x");
    }

    #[tokio::test]
    async fn fills_are_per_upstream_and_bounded_in_number() {
        let dir = tempfile::tempdir().unwrap();
        let fills = fills(dir.path());
        let digest = crate::cache::store::sha256(b"x");
        let never = || async { std::future::pending().await };
        let (a, _) = fills
            .join_or_start(("a", "a"), "r", &digest, never())
            .unwrap();
        let (b, started) = fills
            .join_or_start(("b", "b"), "r", &digest, never())
            .unwrap();
        assert!(started, "another upstream never joins");
        assert!(!Arc::ptr_eq(&a, &b));
        let (_, started) = fills
            .join_or_start(("a", "a"), "r2", &digest, never())
            .unwrap();
        assert!(!started, "the same upstream joins");
        let error = fills
            .join_or_start(("c", "c"), "r", &digest, never())
            .unwrap_err()
            .registry_error();
        assert_eq!(error.code, ErrorCode::TooManyRequests);
        assert!(error.message.contains("limits.max_fills"));
    }

    #[tokio::test]
    async fn one_upstream_holds_no_more_than_its_share() {
        let dir = tempfile::tempdir().unwrap();
        let fills = fills_with(dir.path(), 4, 3);
        let never = || async { std::future::pending().await };
        let digest = |i: u8| crate::cache::store::sha256(&[i]);
        // Two dynamic upstreams share one label, and with it one share.
        for (i, upstream) in [(1, "a.test"), (2, "b.test"), (3, "a.test")] {
            fills
                .join_or_start((upstream, "dynamic"), "r", &digest(i), never())
                .unwrap();
        }
        let error = fills
            .join_or_start(("c.test", "dynamic"), "r", &digest(4), never())
            .unwrap_err()
            .registry_error();
        assert_eq!(error.code, ErrorCode::TooManyRequests);
        assert!(
            error.message.contains("limits.max_fills_per_upstream")
                && error.message.contains("dynamic"),
            "{}",
            error.message
        );
        // Joining a fill in flight takes no slot; another upstream gets the last one.
        fills
            .join_or_start(("a.test", "dynamic"), "r", &digest(1), never())
            .unwrap();
        fills
            .join_or_start(("docker.io", "docker.io"), "r", &digest(4), never())
            .unwrap();
    }
}

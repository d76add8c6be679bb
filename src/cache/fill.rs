//! Single-flight blob fills, and the reader that streams a blob while it is being filled.
//!
//! The first request for a blob its upstream's namespace lacks starts a [`Fill`]: a task of its
//! own (a client hanging up cancels nothing) that streams the upstream body into a temp file while
//! hashing it, and publishes the count of bytes written through a `watch` channel. Every request
//! for the same digest *from the same upstream* — concurrent, late, or with a `Range` — joins that
//! fill and reads the temp file through the shared file handle as bytes arrive; a request routed
//! to another upstream never joins it (it starts its own), so one slow or hostile upstream cannot
//! hold a digest for everyone. Readers keeping up with the download take the chunks just received
//! from a small in-memory window ([`RecentChunks`]) instead, without copying them back out of the
//! page cache. The blob's last byte is held back until the digest is verified, so no client ever
//! holds a complete body of unverified content.
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

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::task::JoinHandle;

use super::buffers::{Buffers, Reservation};
use super::lease::HeldLease;
use super::meta::{Metadata, NewBlob};
use super::status::{FillView, StoredBytes};
use super::store::BlobStore;
use crate::reference::{Digest, Hasher};
use crate::registry::{ErrorCode, RegistryError};

/// Largest read a blob reader makes at once.
const READ_CHUNK: usize = 1 << 20;
/// Most network chunks a fill writes between two progress notifications.
const READY_CHUNKS: usize = 64;
/// Bytes of the most recent chunks a fill keeps in memory for the readers following it.
const RECENT_BYTES: usize = 8 << 20;
/// Batches of chunks waiting for the hasher before the download waits for it.
const HASH_QUEUE: usize = 16;
/// Bytes received but not yet hashed, at most, in KiB: past it the download waits for the
/// hasher, so a hasher that falls behind holds a bounded share of a fill's chunks.
const HASH_QUEUE_KIB: u32 = 16 << 10;
/// Bodies at least this long are read ahead (one chunk) once their content is verified.
const READ_AHEAD_FROM: u64 = 2 << 20;

/// The chunks a fill wrote last, by offset, at most [`RECENT_BYTES`] of them (plus one chunk),
/// each held only while the memory budget has room for it.
#[derive(Debug)]
struct RecentChunks {
    chunks: VecDeque<(u64, Bytes, Reservation)>,
    bytes: usize,
    buffers: Arc<Buffers>,
}

impl RecentChunks {
    fn new(buffers: Arc<Buffers>) -> Self {
        RecentChunks {
            chunks: VecDeque::new(),
            bytes: 0,
            buffers,
        }
    }

    fn push(&mut self, offset: u64, chunk: Bytes) {
        let Some(reservation) = self.buffers.try_reserve(chunk.len()) else {
            // Over the budget: readers behind the write head read the file instead.
            self.clear();
            return;
        };
        self.bytes += chunk.len();
        self.chunks.push_back((offset, chunk, reservation));
        while self.bytes > RECENT_BYTES && self.chunks.len() > 1 {
            if let Some((_, old, _)) = self.chunks.pop_front() {
                self.bytes -= old.len();
            }
        }
    }

    /// Bytes from `pos` up to `limit` (exclusive) out of one chunk, if the window holds `pos`.
    fn slice(&self, pos: u64, limit: u64) -> Option<Bytes> {
        let index = self.chunks.partition_point(|(offset, _, _)| *offset <= pos);
        let (offset, chunk, _) = self.chunks.get(index.checked_sub(1)?)?;
        let start = usize::try_from(pos - offset).ok()?;
        if start >= chunk.len() {
            return None;
        }
        let end = chunk
            .len()
            .min(usize::try_from(limit - offset).unwrap_or(usize::MAX));
        Some(chunk.slice(start..end))
    }

    fn clear(&mut self) {
        self.chunks.clear();
        self.bytes = 0;
    }
}

type SharedRecent = Arc<Mutex<RecentChunks>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Progress of a fill.
#[derive(Debug, Clone)]
pub enum FillState {
    /// Waiting for the upstream's response headers.
    Connecting,
    /// Bytes `0..written` are in the temp file; `size` is the upstream's Content-Length.
    Streaming {
        size: Option<u64>,
        written: u64,
    },
    /// Size and digest verified: every byte may be read; the commit to the store is under way.
    Verified {
        size: u64,
    },
    /// Verified and committed.
    Done {
        size: u64,
    },
    Failed(RegistryError),
}

/// One in-flight download.
#[derive(Debug)]
pub struct Fill {
    file: Arc<File>,
    state: watch::Receiver<FillState>,
    recent: SharedRecent,
    buffers: Arc<Buffers>,
    /// The repository whose request started it: its other requests join without an access check.
    pub repository: String,
    /// Whose share of `limits.max_fills` it takes: its upstream's metrics label (every dynamic
    /// upstream shares one).
    share: String,
    started: Instant,
    /// Requests that joined after the first.
    followers: AtomicU64,
}

impl Fill {
    /// Waits until the upstream answered: returns the expected size, or the error.
    pub async fn started(&self) -> Result<Option<u64>, RegistryError> {
        self.wait_for(|state| match state {
            FillState::Connecting | FillState::Failed(_) => None,
            FillState::Streaming { size, .. } => Some(*size),
            FillState::Verified { size } | FillState::Done { size } => Some(Some(*size)),
        })
        .await
    }

    /// Waits until the blob's size is known: the upstream's Content-Length, or without one the
    /// verified end of the download.
    pub async fn size(&self) -> Result<u64, RegistryError> {
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

    /// A body stream of bytes `start..end` (end exclusive; `None` = to the end of the blob).
    pub fn reader(
        &self,
        start: u64,
        end: Option<u64>,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        let follow = Follow {
            progress: self.state.clone(),
            recent: self.recent.clone(),
        };
        read_stream(
            self.file.clone(),
            start,
            end,
            Some(follow),
            self.buffers.clone(),
        )
    }
}

/// The body of a committed blob file, bytes `start..end`.
pub fn file_reader(
    file: File,
    start: u64,
    end: u64,
    buffers: Arc<Buffers>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    read_stream(Arc::new(file), start, Some(end), None, buffers)
}

/// What a reader of a fill in flight follows: its progress and its window of recent chunks.
struct Follow {
    progress: watch::Receiver<FillState>,
    recent: SharedRecent,
}

struct ReadState {
    file: Arc<File>,
    pos: u64,
    end: Option<u64>,
    /// `None` for a committed file, and from the moment the fill's content is verified.
    follow: Option<Follow>,
    buffers: Arc<Buffers>,
    /// The next chunk, read ahead on the blocking pool: (offset, read).
    ahead: Option<(u64, JoinHandle<io::Result<Bytes>>)>,
}

impl Drop for ReadState {
    fn drop(&mut self) {
        if let Some((_, read)) = self.ahead.take() {
            read.abort();
        }
    }
}

fn read_stream(
    file: Arc<File>,
    start: u64,
    end: Option<u64>,
    follow: Option<Follow>,
    buffers: Arc<Buffers>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let state = ReadState {
        file,
        pos: start,
        end,
        follow,
        buffers,
        ahead: None,
    };
    futures_util::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        match next_chunk(&mut state).await {
            Ok(Some(bytes)) => Some((Ok(bytes), Some(state))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed()
}

/// Reads up to the reserved length at `pos` on the blocking pool, holding a read turn (the
/// thread is held for the read only). The buffer is allocated here, on the server's thread: a
/// buffer allocated on a pool thread lives in that thread's malloc arena, and with a dozen pool
/// threads each arena kept megabytes of freed buffers resident.
fn read_at(
    file: Arc<File>,
    pos: u64,
    room: Reservation,
    turn: OwnedSemaphorePermit,
) -> JoinHandle<io::Result<Bytes>> {
    let len = room.size();
    let buf = Vec::with_capacity(len);
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        Ok(room.into_bytes(read_into(&file, pos, len, buf)?))
    })
}

/// Reads `len` bytes of `file` at `pos` (fewer only where the file ends) into the empty `buf`,
/// which has room for them and is not zeroed first.
fn read_into(file: &File, pos: u64, len: usize, mut buf: Vec<u8>) -> io::Result<Vec<u8>> {
    while buf.len() < len {
        let at = pos + buf.len() as u64;
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at) {
            Ok(0) => break,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// Bodies up to this long are read at once on the server's own thread, when the memory budget
/// has room: a page-cache read of a few KiB costs far less than a trip through the blocking
/// pool (two thread wake-ups), which dominated serving small blobs.
pub const READ_NOW_UP_TO: u64 = 128 << 10;

/// Bytes `start..end` of a committed blob file read now, or `None` when the span is over
/// [`READ_NOW_UP_TO`] or the budget has no room (stream it with [`file_reader`] then).
pub fn read_now(
    file: &File,
    start: u64,
    end: u64,
    buffers: &Arc<Buffers>,
) -> Option<io::Result<Bytes>> {
    let len = end
        .checked_sub(start)
        .filter(|&len| len <= READ_NOW_UP_TO)?;
    let len = usize::try_from(len).ok()?;
    let room = buffers.try_reserve(len)?;
    Some(
        read_into(file, start, len, Vec::with_capacity(len)).and_then(|data| {
            if data.len() < len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blob file shorter than recorded",
                ));
            }
            Ok(room.into_bytes(data))
        }),
    )
}

async fn next_chunk(state: &mut ReadState) -> io::Result<Option<Bytes>> {
    loop {
        // How far the file is readable now, and whether that is final.
        let (available, complete) = match &mut state.follow {
            None => (state.end.unwrap_or(u64::MAX), true),
            Some(follow) => match &*follow.progress.borrow_and_update() {
                FillState::Connecting => (0, false),
                // The blob's last byte is held back until its digest is verified: a client
                // must never see a complete body of unverified content.
                FillState::Streaming { written, size } => (
                    size.map_or(*written, |size| (*written).min(size.saturating_sub(1))),
                    false,
                ),
                FillState::Verified { size } | FillState::Done { size } => (*size, true),
                FillState::Failed(error) => {
                    return Err(io::Error::other(format!("upstream fill failed: {error}")));
                }
            },
        };
        if complete && state.follow.is_some() {
            // Verified content: what becomes of the commit no longer concerns this reader,
            // which reads on through its own handle.
            state.follow = None;
            state.end = Some(state.end.map_or(available, |end| end.min(available)));
        }
        let limit = state.end.map_or(available, |end| end.min(available));
        if state.pos < limit {
            let in_memory = state
                .follow
                .as_ref()
                .and_then(|follow| lock(&follow.recent).slice(state.pos, limit));
            if let Some(bytes) = in_memory {
                state.pos += bytes.len() as u64;
                return Ok(Some(bytes));
            }
            let read = match state.ahead.take() {
                Some((offset, read)) if offset == state.pos => read,
                other => {
                    if let Some((_, stale)) = other {
                        stale.abort();
                    }
                    let wanted = usize::try_from(limit - state.pos)
                        .unwrap_or(usize::MAX)
                        .min(READ_CHUNK);
                    let turn = state.buffers.read_turn().await;
                    let room = state.buffers.reserve_read(wanted);
                    read_at(state.file.clone(), state.pos, room, turn)
                }
            };
            let bytes = read.await.map_err(io::Error::other)??;
            if bytes.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blob file shorter than recorded",
                ));
            }
            state.pos += bytes.len() as u64;
            read_ahead(state, limit, complete);
            return Ok(Some(bytes));
        }
        if complete || state.end.is_some_and(|end| state.pos >= end) {
            return Ok(None);
        }
        let rx = &mut state
            .follow
            .as_mut()
            .expect("incomplete reads follow a fill")
            .progress;
        if rx.changed().await.is_err() {
            // The fill task ended; its last state is still readable.
            let last = rx.borrow().clone();
            if !matches!(
                last,
                FillState::Verified { .. } | FillState::Done { .. } | FillState::Failed(_)
            ) {
                return Err(io::Error::other("upstream fill ended without finishing"));
            }
        }
    }
}

/// Starts reading the next chunk of a large, complete body while the client takes this one, if
/// the memory budget has room for it.
fn read_ahead(state: &mut ReadState, limit: u64, complete: bool) {
    let remaining = limit.saturating_sub(state.pos);
    if !complete || state.follow.is_some() || remaining < READ_AHEAD_FROM {
        return;
    }
    let len = usize::try_from(remaining)
        .unwrap_or(usize::MAX)
        .min(READ_CHUNK);
    let Some(turn) = state.buffers.try_read_turn() else {
        return;
    };
    if let Some(room) = state.buffers.try_reserve(len) {
        let read = read_at(state.file.clone(), state.pos, room, turn);
        state.ahead = Some((state.pos, read));
    }
}

/// Free bytes for an unprivileged writer on the file system of `file`.
fn free_space(file: &File) -> io::Result<u64> {
    let stat = rustix::fs::fstatvfs(file)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// How far ahead of the bytes received a fill's blocks are allocated (within its Content-Length).
const RESERVE_AHEAD: u64 = 8 << 20;

/// Allocates `len` bytes of a blob's blocks from `offset` before they are written, so a disk
/// that fills up fails the fill with a clear error at once. A file system without `fallocate`
/// is written as before.
fn reserve(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use rustix::io::Errno;
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), offset, len) {
        Ok(()) => Ok(()),
        Err(e) if e == Errno::NOSPC || e == Errno::DQUOT || e == Errno::FBIG => Err(e.into()),
        Err(e) => {
            tracing::debug!(error = %e, "fallocate refused; blocks are allocated as written");
            Ok(())
        }
    }
}

/// What the fill task needs from the upstream: a response whose status was checked.
pub type UpstreamBody = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// Where a fill's bytes come from, and what becomes of them once verified.
pub struct Fetched {
    /// The Content-Length, when known.
    pub size: Option<u64>,
    pub body: UpstreamBody,
    pub keep: Keep,
}

/// What a fill does with verified bytes.
#[derive(Debug)]
pub enum Keep {
    /// Store them with their records. `lease`: the fleet's lease on this download, held until
    /// the content is stored; losing it stops the download.
    Store { lease: Option<HeldLease> },
    /// Another replica of the fleet stores them: this one only links them to the repository its
    /// clients asked for.
    Link,
}

impl Fetched {
    /// Bytes to store, from the upstream itself.
    pub fn stored(size: Option<u64>, body: UpstreamBody, lease: Option<HeldLease>) -> Self {
        Fetched {
            size,
            body,
            keep: Keep::Store { lease },
        }
    }
}

/// Resolves when a held lease is lost; never without one.
async fn lost(keep: &Keep) {
    match keep {
        Keep::Store { lease: Some(lease) } => lease.lost().await,
        _ => std::future::pending().await,
    }
}

/// The bounds every fill runs within (`limits` in the config).
#[derive(Debug, Clone, Copy)]
pub struct FillLimits {
    /// `limits.max_blob_size`.
    pub max_blob_size: u64,
    /// `limits.fill_min_rate`, bytes per second.
    pub min_rate: u64,
    /// How far behind the minimum rate a fill may fall: the upstream read timeout.
    pub grace: Duration,
    /// `limits.max_fills`.
    pub max_fills: usize,
    /// `limits.max_fills_per_upstream`: the most one share holds.
    pub max_fills_per_upstream: usize,
}

/// A fill is for one digest from one upstream.
type FillKey = (String, Digest);

/// The in-flight fills by upstream and digest.
#[derive(Debug)]
pub struct Fills {
    inflight: Mutex<HashMap<FillKey, Arc<Fill>>>,
    store: Arc<BlobStore>,
    meta: Arc<Metadata>,
    buffers: Arc<Buffers>,
    /// Counts the bytes of new blobs committed, for the status page.
    stored: Arc<StoredBytes>,
    limits: FillLimits,
}

impl Fills {
    pub fn new(
        store: Arc<BlobStore>,
        meta: Arc<Metadata>,
        buffers: Arc<Buffers>,
        stored: Arc<StoredBytes>,
        limits: FillLimits,
    ) -> Self {
        Fills {
            inflight: Mutex::new(HashMap::new()),
            store,
            meta,
            buffers,
            stored,
            limits,
        }
    }

    /// The fill in flight for `digest` from `upstream`, if any.
    pub fn get(&self, upstream: &str, digest: &Digest) -> Option<Arc<Fill>> {
        lock(&self.inflight)
            .get(&(upstream.to_owned(), digest.clone()))
            .cloned()
    }

    /// Number of fills in flight.
    pub fn in_flight(&self) -> usize {
        lock(&self.inflight).len()
    }

    /// The fills in flight, for the status page (at most `limit`, the oldest first).
    pub fn snapshot(&self, limit: usize) -> Vec<FillView> {
        let mut views: Vec<FillView> = lock(&self.inflight)
            .iter()
            .map(|((upstream, digest), fill)| {
                let (written, size) = match &*fill.state.borrow() {
                    FillState::Streaming { size, written } => (*written, *size),
                    FillState::Verified { size } | FillState::Done { size } => (*size, Some(*size)),
                    FillState::Connecting | FillState::Failed(_) => (0, None),
                };
                FillView {
                    upstream: upstream.clone(),
                    repository: fill.repository.clone(),
                    digest: digest.to_string(),
                    written,
                    size,
                    elapsed: fill.started.elapsed(),
                    followers: fill.followers.load(Ordering::Relaxed),
                }
            })
            .collect();
        views.sort_by_key(|v| std::cmp::Reverse(v.elapsed));
        views.truncate(limit);
        views
    }

    /// Joins the fill of `digest` from `upstream`, or starts one for `repository` with `fetch`,
    /// which must resolve to the upstream's size and body (or the registry error to report), in
    /// `share` (see [`Fill`]). Returns the fill and whether this call started it.
    pub fn join_or_start<F>(
        self: &Arc<Self>,
        (upstream, share): (&str, &str),
        repository: &str,
        digest: &Digest,
        fetch: F,
    ) -> Result<(Arc<Fill>, bool), RegistryError>
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
            return Err(RegistryError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "{} upstream downloads are in progress (limits.max_fills); try again shortly",
                    inflight.len()
                ),
            ));
        }
        let held = inflight.values().filter(|f| f.share == share).count();
        if held >= self.limits.max_fills_per_upstream {
            return Err(RegistryError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "upstream {share} has {held} downloads in progress, its share of \
                     limits.max_fills (limits.max_fills_per_upstream); try again shortly"
                ),
            ));
        }
        let internal = |e: io::Error| {
            RegistryError::new(ErrorCode::Unavailable, format!("internal error: {e}"))
        };
        let temp = self.store.temp_path();
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&temp)
                .map_err(internal)?,
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
        let task = FillTask {
            fills: self.clone(),
            key,
            repository: repository.to_owned(),
            temp,
            file,
            tx,
            recent,
            finished: false,
        };
        tokio::spawn(task.run(fetch));
        Ok((fill, true))
    }
}

/// One fill's task. Whatever ends it — success, failure or a panic — it leaves the in-flight
/// map, tells its readers, and (unless it committed) deletes its temp file: [`Drop`] does what
/// [`FillTask::finish`] did not get to do.
struct FillTask {
    fills: Arc<Fills>,
    key: FillKey,
    repository: String,
    temp: PathBuf,
    file: Arc<File>,
    tx: watch::Sender<FillState>,
    recent: SharedRecent,
    finished: bool,
}

impl FillTask {
    async fn run<F>(mut self, fetch: F)
    where
        F: Future<Output = Result<Fetched, RegistryError>>,
    {
        let result = self.download(fetch).await;
        self.finish(result);
    }

    fn finish(&mut self, result: Result<u64, RegistryError>) {
        self.finished = true;
        // Readers still behind go on from the file: the window's memory is given back now.
        lock(&self.recent).clear();
        // Leave the in-flight map before announcing the end: a request arriving after this
        // point finds the committed file (or starts afresh after a failure).
        lock(&self.fills.inflight).remove(&self.key);
        let (upstream, digest) = &self.key;
        match result {
            Ok(size) => {
                tracing::debug!(%upstream, %digest, size, "fill committed");
                self.tx.send_replace(FillState::Done { size });
            }
            Err(error) => {
                tracing::warn!(%upstream, %digest, %error, "fill failed");
                let _ = std::fs::remove_file(&self.temp);
                self.tx.send_replace(FillState::Failed(error));
            }
        }
    }

    fn digest(&self) -> &Digest {
        &self.key.1
    }

    async fn download<F>(&self, fetch: F) -> Result<u64, RegistryError>
    where
        F: Future<Output = Result<Fetched, RegistryError>>,
    {
        let limits = self.fills.limits;
        let fail = |message: String| RegistryError::new(ErrorCode::Unavailable, message);
        let too_large = |size: u64| {
            RegistryError::new(
                ErrorCode::SizeInvalid,
                format!(
                    "blob {} is {size} bytes or more, over limits.max_blob_size ({} bytes)",
                    self.digest(),
                    limits.max_blob_size
                ),
            )
        };
        let Fetched { size, body, keep } = fetch.await?;
        if let Some(size) = size.filter(|&size| size > 0) {
            if size > limits.max_blob_size {
                return Err(too_large(size));
            }
            let free = free_space(&self.file).map_err(|e| fail(e.to_string()))?;
            if size > free {
                return Err(fail(format!(
                    "not enough free space for {}: {size} bytes needed, {free} free",
                    self.digest()
                )));
            }
        }
        // Blocks are reserved as bytes arrive, a step ahead, never by the length an upstream
        // claims: four hostile 1 GiB claims trickling 40 KB/s reserved 4 GiB before.
        let mut reserved = 0u64;
        self.tx
            .send_replace(FillState::Streaming { size, written: 0 });
        // Hashing (~0.7 s per GiB with SHA-NI on these machines) runs on the blocking pool a batch at a time, off
        // the path from the upstream socket to the file the readers follow.
        let hash_room = Arc::new(tokio::sync::Semaphore::new(HASH_QUEUE_KIB as usize));
        let (to_hasher, mut hasher_input) =
            tokio::sync::mpsc::channel::<(Vec<Bytes>, OwnedSemaphorePermit)>(HASH_QUEUE);
        let like = self.digest().clone();
        let hasher = tokio::spawn(async move {
            let mut hasher = Hasher::like(&like);
            while let Some((mut batch, mut room)) = hasher_input.recv().await {
                // Whatever queued meanwhile goes in the same trip to the pool.
                while let Ok((more, more_room)) = hasher_input.try_recv() {
                    batch.extend(more);
                    room.merge(more_room);
                }
                hasher = tokio::task::spawn_blocking(move || {
                    for chunk in &batch {
                        hasher.update(chunk);
                    }
                    // The room goes back once the chunks are hashed.
                    drop(room);
                    hasher
                })
                .await
                .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(hasher.finish())
        });
        let started = tokio::time::Instant::now();
        let mut written = 0u64;
        // Every chunk already received is written before readers are woken once: readers then
        // make few, large reads instead of one per network chunk.
        let mut batches = body.ready_chunks(READY_CHUNKS);
        loop {
            // A fill may fall behind the minimum rate by the grace, no more.
            let allowed =
                limits.grace + Duration::from_secs_f64(written as f64 / limits.min_rate as f64);
            let deadline = started
                .checked_add(allowed)
                .unwrap_or(started + limits.grace);
            let next = tokio::select! {
                next = tokio::time::timeout_at(deadline, batches.next()) => next,
                () = lost(&keep) => {
                    return Err(fail(format!(
                        "the fleet's lease on {} was lost: another replica downloads it",
                        self.digest()
                    )));
                }
            };
            let batch = match next {
                Ok(Some(batch)) => batch,
                Ok(None) => break,
                Err(_) => {
                    return Err(fail(format!(
                        "upstream too slow for {}: {written} bytes in {:.0?}, under \
                         limits.fill_min_rate ({} bytes/s)",
                        self.digest(),
                        started.elapsed(),
                        limits.min_rate
                    )));
                }
            };
            let mut hashed = Vec::with_capacity(batch.len());
            for chunk in batch {
                let chunk = chunk
                    .map_err(|e| fail(format!("upstream body of {} broke: {e}", self.digest())))?;
                let after = written + chunk.len() as u64;
                if size.is_some_and(|size| after > size) {
                    return Err(fail(format!(
                        "upstream sent more than {} bytes for {}",
                        size.unwrap_or(0),
                        self.digest()
                    )));
                }
                if after > limits.max_blob_size {
                    return Err(too_large(after));
                }
                if let Some(size) = size.filter(|_| after > reserved) {
                    let upto = after.saturating_add(RESERVE_AHEAD).min(size);
                    reserve(&self.file, reserved, upto - reserved).map_err(|e| {
                        fail(format!(
                            "cannot reserve space for {} ({upto} of {size} bytes): {e}",
                            self.digest()
                        ))
                    })?;
                    reserved = upto;
                }
                (&*self.file)
                    .write_all(&chunk)
                    .map_err(|e| fail(format!("cannot write the cache: {e}")))?;
                lock(&self.recent).push(written, chunk.clone());
                written = after;
                hashed.push(chunk);
            }
            let kib = hashed.iter().map(Bytes::len).sum::<usize>().div_ceil(1024);
            let kib = u32::try_from(kib)
                .unwrap_or(u32::MAX)
                .clamp(1, HASH_QUEUE_KIB);
            let room = hash_room
                .clone()
                .acquire_many_owned(kib)
                .await
                .map_err(|e| fail(e.to_string()))?;
            if to_hasher.send((hashed, room)).await.is_err() {
                break;
            }
            self.tx.send_replace(FillState::Streaming { size, written });
        }
        drop(to_hasher);
        if size.is_some_and(|size| size != written) {
            return Err(fail(format!(
                "upstream body of {} ended at {written} of {} bytes",
                self.digest(),
                size.unwrap_or(0)
            )));
        }
        let actual = hasher
            .await
            .map_err(|e| fail(e.to_string()))?
            .map_err(fail)?;
        if actual != *self.digest() {
            return Err(RegistryError::new(
                ErrorCode::DigestInvalid,
                format!(
                    "upstream sent content with digest {actual} for {}",
                    self.digest()
                ),
            ));
        }
        self.tx.send_replace(FillState::Verified { size: written });
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(|e| fail(e.to_string()))?
            .map_err(|e| fail(format!("cannot write the cache: {e}")))?;
        let (upstream, digest) = &self.key;
        let commit_failed = |e: String| fail(format!("cannot commit {digest}: {e}"));
        let lease = match keep {
            Keep::Link => {
                let meta = &self.fills.meta;
                meta.link(upstream, &self.repository, digest)
                    .await
                    .map_err(|e| commit_failed(e.to_string()))?;
                return Ok(written);
            }
            Keep::Store { lease } => lease,
        };
        // The record first: every stored blob has one (see `meta`).
        let new = self
            .fills
            .meta
            .put_blob(&NewBlob {
                upstream,
                repository: &self.repository,
                digest,
                size: written,
            })
            .await
            .map_err(|e| commit_failed(e.to_string()))?;
        self.fills
            .store
            .commit(self.temp.clone(), digest)
            .await
            .map_err(|e| commit_failed(e.to_string()))?;
        if new {
            self.fills.stored.committed(written);
        }
        if let Some(lease) = lease {
            lease.release().await;
        }
        Ok(written)
    }
}

impl Drop for FillTask {
    fn drop(&mut self) {
        if !self.finished {
            self.finish(Err(RegistryError::new(
                ErrorCode::Unavailable,
                "the download was abandoned (internal error)",
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffers() -> Arc<Buffers> {
        Buffers::new(1 << 30)
    }

    fn window(chunks: &[&'static [u8]]) -> RecentChunks {
        let mut recent = RecentChunks::new(buffers());
        let mut offset = 0;
        for chunk in chunks {
            recent.push(offset, Bytes::from_static(chunk));
            offset += chunk.len() as u64;
        }
        recent
    }

    #[test]
    fn a_slice_comes_from_the_chunk_holding_the_position() {
        let recent = window(&[b"abcd", b"efgh", b"ij"]);
        assert_eq!(recent.slice(0, 10).unwrap(), &b"abcd"[..]);
        assert_eq!(recent.slice(5, 10).unwrap(), &b"fgh"[..]);
        assert_eq!(recent.slice(8, 10).unwrap(), &b"ij"[..]);
        // Never beyond the readable limit (the held-back last byte, a range's end).
        assert_eq!(recent.slice(8, 9).unwrap(), &b"i"[..]);
        assert_eq!(recent.slice(2, 3).unwrap(), &b"c"[..]);
        assert!(recent.slice(10, 12).is_none(), "past the write head");
    }

    #[test]
    fn old_chunks_leave_the_window_and_are_read_from_the_file() {
        let budget = buffers();
        let mut recent = RecentChunks::new(budget.clone());
        let chunk = Bytes::from(vec![7u8; 1 << 20]);
        for i in 0..(RECENT_BYTES as u64 >> 20) + 3 {
            recent.push(i << 20, chunk.clone());
        }
        assert!(recent.bytes <= RECENT_BYTES);
        assert_eq!(
            budget.in_use(),
            recent.bytes,
            "the window counts against the budget"
        );
        assert!(recent.slice(0, 1).is_none(), "the first chunk was dropped");
        assert!(recent.slice(2 << 20, 3 << 20).is_none());
        assert!(
            recent.slice(3 << 20, 4 << 20).is_some(),
            "the window holds 8 MiB"
        );
        let last = (RECENT_BYTES as u64) + (2 << 20);
        assert_eq!(recent.slice(last, last + 10).unwrap().len(), 10);
        recent.clear();
        assert!(recent.slice(last, last + 10).is_none());
        assert_eq!(budget.in_use(), 0, "the window's memory is given back");
    }

    #[test]
    fn over_the_budget_the_window_keeps_nothing() {
        let budget = Buffers::new(1000);
        let mut recent = RecentChunks::new(budget.clone());
        recent.push(0, Bytes::from(vec![1u8; 600]));
        recent.push(600, Bytes::from(vec![1u8; 600]));
        assert!(recent.slice(0, 1).is_none() && recent.slice(600, 601).is_none());
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn space_is_reserved_before_the_download_and_a_blob_too_large_is_refused() {
        let file = tempfile::tempfile().unwrap();
        reserve(&file, 0, 1 << 20).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 1 << 20);
        assert!(free_space(&file).unwrap() > 0);
        let error = reserve(&file, 0, 1 << 62).unwrap_err();
        let errno = rustix::io::Errno::from_io_error(&error);
        assert!(
            errno == Some(rustix::io::Errno::FBIG) || errno == Some(rustix::io::Errno::NOSPC),
            "EFBIG or ENOSPC, got {error}"
        );
    }

    #[test]
    fn one_chunk_larger_than_the_window_is_kept() {
        let mut recent = RecentChunks::new(buffers());
        recent.push(0, Bytes::from(vec![1u8; RECENT_BYTES + 1]));
        assert_eq!(
            recent.slice(RECENT_BYTES as u64, u64::MAX).unwrap().len(),
            1
        );
    }

    fn fills(dir: &std::path::Path) -> Arc<Fills> {
        fills_with(dir, 2, 2)
    }

    fn fills_with(dir: &std::path::Path, max_fills: usize, per_upstream: usize) -> Arc<Fills> {
        let store = Arc::new(BlobStore::open_files(dir).unwrap());
        let meta = Arc::new(Metadata::open_local(&dir.join("meta.redb")).unwrap());
        Arc::new(Fills::new(
            store,
            meta,
            buffers(),
            Arc::default(),
            FillLimits {
                max_blob_size: 1 << 30,
                min_rate: 1,
                grace: Duration::from_secs(5),
                max_fills,
                max_fills_per_upstream: per_upstream,
            },
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
        let bytes: Vec<Bytes> = fill.reader(0, None).map(Result::unwrap).collect().await;
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
            .unwrap_err();
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
            .unwrap_err();
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

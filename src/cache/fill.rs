//! Single-flight blob fills, and the reader that streams a blob while it is being filled.
//!
//! The first request for a missing blob starts a [`Fill`]: a task of its own (a client hanging up
//! cancels nothing) that streams the upstream body into a temp file while hashing it, and
//! publishes the count of bytes written through a `watch` channel. Every request for the same
//! digest — concurrent, late, or with a `Range` — joins that fill and reads the temp file through
//! the shared file handle as bytes arrive. Readers keeping up with the download take the chunks
//! just received from a small in-memory window ([`RecentChunks`]) instead, without copying them
//! back out of the page cache: that is the common case, and with eight clients on one blob it
//! saves eight reads of every byte. The blob's last byte is held back until the digest is
//! verified, so no client ever holds a complete body of unverified content. At the end the size
//! and digest are checked (the hash runs on its own thread, off the streaming path); once they
//! match, readers may take the last byte while the file is fsynced and renamed into the store
//! (flushing a 1 GiB blob to disk takes seconds, which no client should wait for; readers keep
//! the open handle, so the rename cannot disturb them). On a mismatch or an upstream failure the
//! fill fails:
//! every reader's body ends with an error (so the client sees a cut connection, never a clean
//! short body), the temp file is deleted and nothing is recorded.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use super::meta::Metadata;
use super::store::BlobStore;
use crate::reference::Digest;
use crate::registry::{ErrorCode, RegistryError};

/// Largest read a blob reader makes at once.
const READ_CHUNK: u64 = 1 << 20;
/// Most network chunks a fill writes between two progress notifications.
const READY_CHUNKS: usize = 64;
/// Bytes of the most recent chunks a fill keeps in memory for the readers following it.
const RECENT_BYTES: usize = 8 << 20;

/// The chunks a fill wrote last, by offset, at most [`RECENT_BYTES`] of them (plus one chunk).
#[derive(Debug, Default)]
struct RecentChunks {
    chunks: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

impl RecentChunks {
    fn push(&mut self, offset: u64, chunk: Bytes) {
        self.bytes += chunk.len();
        self.chunks.push_back((offset, chunk));
        while self.bytes > RECENT_BYTES && self.chunks.len() > 1 {
            if let Some((_, old)) = self.chunks.pop_front() {
                self.bytes -= old.len();
            }
        }
    }

    /// Bytes from `pos` up to `limit` (exclusive) out of one chunk, if the window holds `pos`.
    fn slice(&self, pos: u64, limit: u64) -> Option<Bytes> {
        let index = self.chunks.partition_point(|(offset, _)| *offset <= pos);
        let (offset, chunk) = self.chunks.get(index.checked_sub(1)?)?;
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

fn lock_recent(recent: &Mutex<RecentChunks>) -> std::sync::MutexGuard<'_, RecentChunks> {
    recent.lock().unwrap_or_else(|e| e.into_inner())
}

/// Progress of a fill.
#[derive(Debug, Clone)]
pub enum FillState {
    /// Waiting for the upstream's response headers.
    Connecting,
    /// Bytes `0..written` are in the temp file; `size` is the upstream's Content-Length.
    Streaming { size: Option<u64>, written: u64 },
    /// Size and digest verified: every byte may be read; the commit to the store is under way.
    Verified { size: u64 },
    /// Verified and committed.
    Done { size: u64 },
    /// `started` tells whether any byte was published before the failure.
    Failed { error: RegistryError, started: bool },
}

/// One in-flight download.
#[derive(Debug)]
pub struct Fill {
    file: Arc<File>,
    state: watch::Receiver<FillState>,
    recent: SharedRecent,
}

impl Fill {
    /// Waits until the upstream answered: returns the expected size, or the error.
    pub async fn started(&self) -> Result<Option<u64>, RegistryError> {
        let mut rx = self.state.clone();
        loop {
            match &*rx.borrow_and_update() {
                FillState::Connecting => {}
                FillState::Streaming { size, .. } => return Ok(*size),
                FillState::Verified { size } | FillState::Done { size } => {
                    return Ok(Some(*size));
                }
                FillState::Failed { error, .. } => return Err(error.clone()),
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
        read_stream(self.file.clone(), start, end, Some(follow))
    }
}

/// Bodies at least this long are read ahead on a thread of their own.
const READ_AHEAD_FROM: u64 = 8 << 20;
/// Chunks read ahead of what the client has taken.
const READ_AHEAD_CHUNKS: usize = 4;

/// The body of a committed blob file, bytes `start..end`. Large bodies are read ahead by a
/// blocking thread so reading the file overlaps writing the socket.
pub fn file_reader(
    file: File,
    start: u64,
    end: u64,
) -> futures_util::stream::BoxStream<'static, io::Result<Bytes>> {
    if end - start < READ_AHEAD_FROM {
        return read_stream(Arc::new(file), start, Some(end), None).boxed();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(READ_AHEAD_CHUNKS);
    tokio::task::spawn_blocking(move || {
        let mut pos = start;
        while pos < end {
            let len = (end - pos).min(READ_CHUNK) as usize;
            let mut buf = vec![0u8; len];
            let chunk = match file.read_exact_at(&mut buf, pos) {
                Ok(()) => Ok(Bytes::from(buf)),
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            // A client that went away closes the channel: stop reading.
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
            pos += len as u64;
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    })
    .boxed()
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
}

fn read_stream(
    file: Arc<File>,
    start: u64,
    end: Option<u64>,
    follow: Option<Follow>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let state = ReadState {
        file,
        pos: start,
        end,
        follow,
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
                FillState::Failed { error, .. } => {
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
                .and_then(|follow| lock_recent(&follow.recent).slice(state.pos, limit));
            if let Some(bytes) = in_memory {
                state.pos += bytes.len() as u64;
                return Ok(Some(bytes));
            }
            let len = (limit - state.pos).min(READ_CHUNK) as usize;
            let file = state.file.clone();
            let pos = state.pos;
            let bytes = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
                let mut buf = vec![0u8; len];
                let mut filled = 0;
                while filled < len {
                    let n = file.read_at(&mut buf[filled..], pos + filled as u64)?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                buf.truncate(filled);
                Ok(buf)
            })
            .await
            .map_err(io::Error::other)??;
            if bytes.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blob file shorter than recorded",
                ));
            }
            state.pos += bytes.len() as u64;
            return Ok(Some(Bytes::from(bytes)));
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
                FillState::Verified { .. } | FillState::Done { .. } | FillState::Failed { .. }
            ) {
                return Err(io::Error::other("upstream fill ended without finishing"));
            }
        }
    }
}

/// Allocates a blob's blocks before it is written, so a disk too full for it fails the fill at
/// once (a clear error instead of gigabytes downloaded for nothing). A filesystem without
/// `fallocate` is written as before.
fn reserve(file: &File, size: u64) -> io::Result<()> {
    use rustix::io::Errno;
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, size) {
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

/// The in-flight fills by digest.
#[derive(Debug, Default)]
pub struct Fills {
    inflight: Mutex<HashMap<Digest, Arc<Fill>>>,
}

impl Fills {
    /// The fill in flight for `digest`, if any.
    pub fn get(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.lock().get(digest).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Arc<Fill>>> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of fills in flight.
    pub fn in_flight(&self) -> usize {
        self.lock().len()
    }

    /// Joins the fill for `digest`, or starts one with `fetch`, which must resolve to the
    /// upstream's size and body (or the registry error to report). Returns the fill and whether
    /// this call started it.
    pub fn join_or_start<F>(
        self: &Arc<Self>,
        digest: &Digest,
        store: Arc<BlobStore>,
        meta: Arc<Metadata>,
        fetch: F,
    ) -> io::Result<(Arc<Fill>, bool)>
    where
        F: Future<Output = Result<(Option<u64>, UpstreamBody), RegistryError>> + Send + 'static,
    {
        let mut inflight = self.lock();
        if let Some(fill) = inflight.get(digest) {
            return Ok((fill.clone(), false));
        }
        if let Some(size) = store.size(digest) {
            // Committed between the caller's check and now.
            let (_tx, rx) = watch::channel(FillState::Done { size });
            let file = File::open(store.path(digest))?;
            return Ok((
                Arc::new(Fill {
                    file: Arc::new(file),
                    state: rx,
                    recent: SharedRecent::default(),
                }),
                false,
            ));
        }
        let temp = store.temp_path();
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&temp)?,
        );
        let (tx, rx) = watch::channel(FillState::Connecting);
        let recent = SharedRecent::default();
        let fill = Arc::new(Fill {
            file: file.clone(),
            state: rx,
            recent: recent.clone(),
        });
        inflight.insert(digest.clone(), fill.clone());
        drop(inflight);
        let task = FillTask {
            fills: self.clone(),
            digest: digest.clone(),
            temp,
            file,
            tx,
            recent,
            store,
            meta,
        };
        tokio::spawn(task.run(fetch));
        Ok((fill, true))
    }
}

struct FillTask {
    fills: Arc<Fills>,
    digest: Digest,
    temp: PathBuf,
    file: Arc<File>,
    tx: watch::Sender<FillState>,
    recent: SharedRecent,
    store: Arc<BlobStore>,
    meta: Arc<Metadata>,
}

impl FillTask {
    async fn run<F>(self, fetch: F)
    where
        F: Future<Output = Result<(Option<u64>, UpstreamBody), RegistryError>>,
    {
        let mut started = false;
        let result = self.download(fetch, &mut started).await;
        // Readers still behind go on from the file: the window's memory is given back now.
        lock_recent(&self.recent).clear();
        // Leave the in-flight map before announcing the end: a request arriving after this
        // point finds the committed file (or starts afresh after a failure).
        self.fills.lock().remove(&self.digest);
        match result {
            Ok(size) => {
                tracing::debug!(digest = %self.digest, size, "fill committed");
                self.tx.send_replace(FillState::Done { size });
            }
            Err(error) => {
                tracing::warn!(digest = %self.digest, %error, "fill failed");
                let _ = std::fs::remove_file(&self.temp);
                self.tx.send_replace(FillState::Failed { error, started });
            }
        }
    }

    async fn download<F>(&self, fetch: F, started: &mut bool) -> Result<u64, RegistryError>
    where
        F: Future<Output = Result<(Option<u64>, UpstreamBody), RegistryError>>,
    {
        let (size, body) = fetch.await?;
        if let Some(size) = size.filter(|&size| size > 0) {
            reserve(&self.file, size).map_err(|e| {
                let message = format!("cannot reserve {size} bytes for {}: {e}", self.digest);
                RegistryError::new(ErrorCode::Unavailable, message)
            })?;
        }
        self.tx
            .send_replace(FillState::Streaming { size, written: 0 });
        *started = true;
        let fail = |message: String| RegistryError::new(ErrorCode::Unavailable, message);
        // Hashing (~0.7 s per GiB even with SHA-NI) runs on its own thread, off the path from
        // the upstream socket to the file the readers follow; the commit waits for it.
        let (to_hasher, hasher_input) = std::sync::mpsc::channel::<Bytes>();
        let hasher = tokio::task::spawn_blocking(move || {
            let mut hasher = Sha256::new();
            for chunk in hasher_input {
                hasher.update(&chunk);
            }
            Digest::sha256_from_bytes(&hasher.finalize())
        });
        let mut written = 0u64;
        // Every chunk already received is written before readers are woken once: readers then
        // make few, large reads instead of one per network chunk.
        let mut batches = body.ready_chunks(READY_CHUNKS);
        while let Some(batch) = batches.next().await {
            for chunk in batch {
                let chunk = chunk
                    .map_err(|e| fail(format!("upstream body of {} broke: {e}", self.digest)))?;
                if size.is_some_and(|size| written + chunk.len() as u64 > size) {
                    return Err(fail(format!(
                        "upstream sent more than {} bytes for {}",
                        size.unwrap_or(0),
                        self.digest
                    )));
                }
                (&*self.file)
                    .write_all(&chunk)
                    .map_err(|e| fail(format!("cannot write the cache: {e}")))?;
                lock_recent(&self.recent).push(written, chunk.clone());
                written += chunk.len() as u64;
                let _ = to_hasher.send(chunk);
            }
            self.tx.send_replace(FillState::Streaming { size, written });
        }
        drop(to_hasher);
        if size.is_some_and(|size| size != written) {
            return Err(fail(format!(
                "upstream body of {} ended at {written} of {} bytes",
                self.digest,
                size.unwrap_or(0)
            )));
        }
        let actual = hasher.await.map_err(|e| fail(e.to_string()))?;
        if actual != self.digest {
            return Err(RegistryError::new(
                ErrorCode::DigestInvalid,
                format!(
                    "upstream sent content with digest {actual} for {}",
                    self.digest
                ),
            ));
        }
        self.tx.send_replace(FillState::Verified { size: written });
        let file = self.file.clone();
        let store = self.store.clone();
        let meta = self.meta.clone();
        let temp = self.temp.clone();
        let digest = self.digest.clone();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            file.sync_all().map_err(|e| e.to_string())?;
            store.commit(&temp, &digest).map_err(|e| e.to_string())?;
            meta.put_blob(&digest, written).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(format!("cannot commit {}: {e}", self.digest)))?;
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(chunks: &[&'static [u8]]) -> RecentChunks {
        let mut recent = RecentChunks::default();
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
        let mut recent = RecentChunks::default();
        let chunk = Bytes::from(vec![7u8; 1 << 20]);
        for i in 0..(RECENT_BYTES as u64 >> 20) + 3 {
            recent.push(i << 20, chunk.clone());
        }
        assert!(recent.bytes <= RECENT_BYTES);
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
    }

    #[test]
    fn space_is_reserved_before_the_download_and_a_blob_too_large_is_refused() {
        let file = tempfile::tempfile().unwrap();
        reserve(&file, 1 << 20).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 1 << 20);
        let error = reserve(&file, 1 << 62).unwrap_err();
        let errno = rustix::io::Errno::from_io_error(&error);
        assert!(
            errno == Some(rustix::io::Errno::FBIG) || errno == Some(rustix::io::Errno::NOSPC),
            "EFBIG or ENOSPC, got {error}"
        );
    }

    #[test]
    fn one_chunk_larger_than_the_window_is_kept() {
        let mut recent = RecentChunks::default();
        recent.push(0, Bytes::from(vec![1u8; RECENT_BYTES + 1]));
        assert_eq!(
            recent.slice(RECENT_BYTES as u64, u64::MAX).unwrap().len(),
            1
        );
    }
}

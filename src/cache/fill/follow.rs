//! A reader following a fill in flight: it reads the fill's spool file up to the bytes written
//! so far (never the blob's last byte before the digest is verified), waits for more, and takes
//! the chunks just received from the fill's in-memory window ([`RecentChunks`]) when it keeps up,
//! instead of reading them back out of the page cache. Fallen behind that window on a plain-http
//! connection, it reads nothing: the spans written go out with `sendfile` from the spool file
//! ([`crate::sendfile`]), so a reader that fell behind costs no more per byte than one keeping
//! up, and can catch up (reading back through memory cost two copies per byte, which kept late
//! readers late). Once the content is verified it reads on like any reader of a committed file,
//! through its own handle, whatever becomes of the commit.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use tokio::sync::watch;

use super::FillState;
use crate::cache::buffers::{Buffers, Reservation};
use crate::cache::store::read::FileReader;
use crate::sendfile::{MAX_SPAN, SendfileQueue};
use crate::sync::lock;

/// Bytes of the most recent chunks a fill keeps in memory for the readers following it.
const RECENT_BYTES: usize = 8 << 20;
/// How far behind the write head a reader on plain http has its bytes sent from the spool file
/// (`sendfile`): written that recently, they are in the page cache (`sendfile` would wait for
/// the disk on the server's thread otherwise). Further behind, it reads on the blocking pool.
const SENT_FROM_FILE_WITHIN: u64 = 256 << 20;

/// The chunks a fill wrote last, by offset, at most [`RECENT_BYTES`] of them (plus one chunk),
/// each held only while the memory budget has room for it.
#[derive(Debug)]
pub(super) struct RecentChunks {
    chunks: VecDeque<(u64, Bytes, Reservation)>,
    bytes: usize,
    buffers: Arc<Buffers>,
}

impl RecentChunks {
    pub(super) fn new(buffers: Arc<Buffers>) -> Self {
        RecentChunks {
            chunks: VecDeque::new(),
            bytes: 0,
            buffers,
        }
    }

    pub(super) fn push(&mut self, offset: u64, chunk: Bytes) {
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

    pub(super) fn clear(&mut self) {
        self.chunks.clear();
        self.bytes = 0;
    }
}

pub(super) type SharedRecent = Arc<Mutex<RecentChunks>>;

/// What a reader of a fill in flight follows: its progress and its window of recent chunks.
pub(super) struct Follow {
    pub(super) progress: watch::Receiver<FillState>,
    pub(super) recent: SharedRecent,
}

/// One reader's place in a fill.
struct Reader {
    file: FileReader,
    end: Option<u64>,
    /// `None` from the moment the fill's content is verified.
    follow: Option<Follow>,
    /// On a plain-http connection: its bytes go out with `sendfile` from the spool file.
    sends: Option<SendfileQueue>,
    /// The fill's write head when last seen (its size once verified).
    head: u64,
}

/// A body stream of bytes `start..end` of the fill behind `follow` (end exclusive; `None` = to
/// the end of the blob), read from its spool file `file`, or sent from it through `sends`.
pub(super) fn follow(
    file: Arc<File>,
    start: u64,
    end: Option<u64>,
    follow: Follow,
    buffers: Arc<Buffers>,
    sends: Option<SendfileQueue>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let reader = Reader {
        file: FileReader::new(file, start, buffers),
        end,
        follow: Some(follow),
        sends,
        head: 0,
    };
    futures_util::stream::unfold(Some(reader), |reader| async move {
        let mut reader = reader?;
        match reader.next_chunk().await {
            Ok(Some(bytes)) => Some((Ok(bytes), Some(reader))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed()
}

impl Reader {
    /// How far the file is readable now, and whether that is final.
    fn readable(&mut self) -> io::Result<(u64, bool)> {
        let Some(follow) = &mut self.follow else {
            return Ok((self.end.unwrap_or(u64::MAX), true));
        };
        Ok(match &*follow.progress.borrow_and_update() {
            FillState::Connecting => (0, false),
            // The blob's last byte is held back until its digest is verified: a client must
            // never see a complete body of unverified content.
            FillState::Streaming { written, size } => (
                size.map_or(*written, |size| (*written).min(size.saturating_sub(1))),
                false,
            ),
            FillState::Verified { size } | FillState::Done { size } => (*size, true),
            FillState::Failed(error) => {
                return Err(io::Error::other(format!("upstream fill failed: {error}")));
            }
        })
    }

    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            let (available, complete) = self.readable()?;
            if self.follow.is_some() {
                self.head = available;
            }
            if complete && self.follow.is_some() {
                // Verified content: what becomes of the commit no longer concerns this reader,
                // which reads on through its own handle.
                self.follow = None;
                self.end = Some(self.end.map_or(available, |end| end.min(available)));
            }
            let limit = self.end.map_or(available, |end| end.min(available));
            let pos = self.file.pos();
            if pos < limit {
                let in_memory = self
                    .follow
                    .as_ref()
                    .and_then(|follow| lock(&follow.recent).slice(pos, limit));
                if let Some(bytes) = in_memory {
                    self.file.skip(bytes.len() as u64);
                    return Ok(Some(bytes));
                }
                let recent = self.head.saturating_sub(pos) <= SENT_FROM_FILE_WITHIN;
                if let Some(sends) = self.sends.as_ref().filter(|_| recent) {
                    // Behind the window: what is written stays written, its span is sent from
                    // the file when the socket has room, with no copy through memory.
                    let len = usize::try_from(limit - pos)
                        .unwrap_or(usize::MAX)
                        .min(MAX_SPAN);
                    self.file.skip(len as u64);
                    return Ok(Some(sends.placeholder(self.file.file().clone(), pos, len)));
                }
                return self.file.read(limit, complete).await.map(Some);
            }
            if complete || self.end.is_some_and(|end| pos >= end) {
                return Ok(None);
            }
            let rx = &mut self
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

    /// A reader of a fill whose spool file holds `content`, `written` bytes of it so far, the
    /// window holding the chunk at `windowed`; with a sendfile queue or without.
    fn reader_of(
        content: &[u8],
        written: u64,
        windowed: (u64, &'static [u8]),
        sends: Option<SendfileQueue>,
    ) -> (
        impl Stream<Item = io::Result<Bytes>>,
        watch::Sender<FillState>,
    ) {
        range_reader_of(content, written, None, windowed, sends)
    }

    /// [`reader_of`] for bytes `0..end`.
    fn range_reader_of(
        content: &[u8],
        written: u64,
        end: Option<u64>,
        windowed: (u64, &'static [u8]),
        sends: Option<SendfileQueue>,
    ) -> (
        impl Stream<Item = io::Result<Bytes>>,
        watch::Sender<FillState>,
    ) {
        use std::io::Write as _;
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(content).unwrap();
        // Sparse past the content: zeroes.
        file.set_len(written.max(content.len() as u64)).unwrap();
        let (progress_tx, progress) = watch::channel(FillState::Streaming {
            size: None,
            written,
        });
        let mut recent = RecentChunks::new(buffers());
        recent.push(windowed.0, Bytes::from_static(windowed.1));
        let follow = Follow {
            progress,
            recent: Arc::new(Mutex::new(recent)),
        };
        let reader = super::follow(Arc::new(file), 0, end, follow, buffers(), sends);
        (reader, progress_tx)
    }

    #[tokio::test]
    async fn behind_the_window_a_plain_http_reader_sends_from_the_file() {
        let content = b"abcdefghijkl";
        let (reader, progress) = reader_of(content, 12, (8, b"ijkl"), Some(Default::default()));
        let mut reader = std::pin::pin!(reader);
        let behind = reader.next().await.unwrap().unwrap();
        assert_eq!(behind.len(), 12, "every byte written, in one span");
        assert!(
            crate::sendfile::is_placeholder(&behind),
            "from byte 0, behind the window: sent from the file"
        );
        progress.send(FillState::Verified { size: 12 }).unwrap();
        assert!(reader.next().await.is_none());
        // Keeping up, it takes the window's chunk.
        let (reader, _progress) =
            reader_of(content, 12, (0, b"abcd"), Some(SendfileQueue::default()));
        let mut reader = std::pin::pin!(reader);
        assert_eq!(&reader.next().await.unwrap().unwrap()[..], b"abcd");
        let behind = reader.next().await.unwrap().unwrap();
        assert!(crate::sendfile::is_placeholder(&behind) && behind.len() == 8);
    }

    #[tokio::test]
    async fn without_sendfile_or_far_behind_a_reader_reads_the_file() {
        let content = b"abcdefghijkl";
        let (reader, _progress) = reader_of(content, 12, (8, b"ijkl"), None);
        let mut reader = std::pin::pin!(reader);
        assert_eq!(&reader.next().await.unwrap().unwrap()[..], content);
        // Further behind the write head than the page cache surely holds: read, not sent.
        let written = SENT_FROM_FILE_WITHIN + 2;
        let sends = SendfileQueue::default();
        let (reader, _progress) = reader_of(b"", written, (0, b"x"), Some(sends));
        let mut reader = std::pin::pin!(reader);
        let first = reader.next().await.unwrap().unwrap();
        assert_eq!(&first[..], b"x", "the window first");
        let next = reader.next().await.unwrap().unwrap();
        assert!(!crate::sendfile::is_placeholder(&next) && next.iter().all(|&b| b == 0));
        // A range's end near, the write head far: far behind all the same.
        let end = (2 << 20) + 1;
        let head = SENT_FROM_FILE_WITHIN + end;
        let sends = Some(SendfileQueue::default());
        let (reader, progress) = range_reader_of(b"", head, Some(end), (0, b"x"), sends);
        progress.send(FillState::Verified { size: head }).unwrap();
        let chunks: Vec<Bytes> = reader.map(Result::unwrap).collect().await;
        assert!(chunks.iter().all(|c| !crate::sendfile::is_placeholder(c)));
        assert_eq!(chunks.iter().map(Bytes::len).sum::<usize>() as u64, end);
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
    fn one_chunk_larger_than_the_window_is_kept() {
        let mut recent = RecentChunks::new(buffers());
        recent.push(0, Bytes::from(vec![1u8; RECENT_BYTES + 1]));
        assert_eq!(
            recent.slice(RECENT_BYTES as u64, u64::MAX).unwrap().len(),
            1
        );
    }
}

//! Reading blob files without holding a thread while a client is slow: what cache hits read
//! committed files with, and what a fill's readers read its spool file with as it grows
//! ([`crate::cache::fill`]).
//!
//! A body up to [`READ_NOW_UP_TO`] is read at once on the server's own thread when the memory
//! budget has room ([`read_now`]): a page-cache read of a few KiB costs far less than a trip
//! through the blocking pool. Anything else is read one chunk at a time on the blocking pool
//! ([`FileReader`]), holding one of the [`Buffers`]' read turns for the read only, and a large
//! body whose bytes are final is read one chunk ahead while the client takes the last.

use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;

use crate::cache::buffers::{Buffers, Reservation};

/// Largest read a blob reader makes at once.
const READ_CHUNK: usize = 1 << 20;
/// Bodies at least this long are read ahead (one chunk) once their content is final.
const READ_AHEAD_FROM: u64 = 2 << 20;
/// Bodies up to this long are read at once on the server's own thread, when the memory budget
/// has room: a page-cache read of a few KiB costs far less than a trip through the blocking
/// pool (two thread wake-ups), which dominated serving small blobs.
pub(crate) const READ_NOW_UP_TO: u64 = 128 << 10;

/// Reads one file forward from a position, a chunk at a time on the blocking pool.
#[derive(Debug)]
pub(crate) struct FileReader {
    file: Arc<File>,
    pos: u64,
    buffers: Arc<Buffers>,
    /// The next chunk, read ahead on the blocking pool: (offset, read).
    ahead: Option<(u64, JoinHandle<io::Result<Bytes>>)>,
}

impl Drop for FileReader {
    fn drop(&mut self) {
        if let Some((_, read)) = self.ahead.take() {
            read.abort();
        }
    }
}

impl FileReader {
    pub(crate) fn new(file: Arc<File>, pos: u64, buffers: Arc<Buffers>) -> Self {
        FileReader {
            file,
            pos,
            buffers,
            ahead: None,
        }
    }

    /// Where the next read starts.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// The file it reads.
    pub(crate) fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Moves on past `n` bytes the caller had from elsewhere (a fill's chunks in memory).
    pub(crate) fn skip(&mut self, n: u64) {
        self.pos += n;
    }

    /// The next chunk before `limit` (which lies past [`pos`](Self::pos)). `complete`: the
    /// file's bytes up to `limit` are final, so the chunk after this one may be read ahead.
    pub(crate) async fn read(&mut self, limit: u64, complete: bool) -> io::Result<Bytes> {
        let read = match self.ahead.take() {
            Some((offset, read)) if offset == self.pos => read,
            other => {
                if let Some((_, stale)) = other {
                    stale.abort();
                }
                let wanted = usize::try_from(limit - self.pos)
                    .unwrap_or(usize::MAX)
                    .min(READ_CHUNK);
                let turn = self.buffers.read_turn().await;
                let room = self.buffers.reserve_read(wanted);
                read_at(self.file.clone(), self.pos, room, turn)
            }
        };
        let bytes = read.await.map_err(io::Error::other)??;
        if bytes.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "blob file shorter than recorded",
            ));
        }
        self.pos += bytes.len() as u64;
        if complete {
            self.read_ahead(limit);
        }
        Ok(bytes)
    }

    /// Starts reading the next chunk of a large body while the client takes this one, if the
    /// memory budget has room for it.
    fn read_ahead(&mut self, limit: u64) {
        let remaining = limit.saturating_sub(self.pos);
        if remaining < READ_AHEAD_FROM {
            return;
        }
        let len = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(READ_CHUNK);
        let Some(turn) = self.buffers.try_read_turn() else {
            return;
        };
        if let Some(room) = self.buffers.try_reserve(len) {
            let read = read_at(self.file.clone(), self.pos, room, turn);
            self.ahead = Some((self.pos, read));
        }
    }
}

/// The body of a committed blob file, bytes `start..end`.
pub(crate) fn file_reader(
    file: File,
    start: u64,
    end: u64,
    buffers: Arc<Buffers>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let reader = FileReader::new(Arc::new(file), start, buffers);
    futures_util::stream::unfold(Some(reader), move |reader| async move {
        let mut reader = reader?;
        if reader.pos() >= end {
            return None;
        }
        match reader.read(end, true).await {
            Ok(bytes) => Some((Ok(bytes), Some(reader))),
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

/// Bytes `start..end` of a committed blob file read now, or `None` when the span is over
/// [`READ_NOW_UP_TO`] or the budget has no room (stream it with [`file_reader`] then).
pub(crate) fn read_now(
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

//! The memory budget for blob data in flight: chunks read for clients (until the connection has
//! sent them), chunks read ahead, and the window of recent chunks each fill keeps for its readers.
//!
//! The budget is soft and never makes anyone wait: below it, readers take large chunks and read
//! ahead; above it, they take small chunks and read nothing ahead, and fills stop keeping a
//! window. So a thousand clients that stop reading cost a bounded amount of memory (at most one
//! small chunk each beyond the budget) and never a thread, while clients that keep up still get
//! large reads when memory allows.
//!
//! File reads run on the blocking pool, [`READ_THREADS`] at a time at most: more parallel reads
//! of one disk gain nothing, and a burst of clients must not spawn a burst of threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The chunk size when the budget is exhausted.
pub const SMALL_CHUNK: usize = 16 << 10;
/// File reads on the blocking pool at once, at most.
pub const READ_THREADS: usize = 16;

/// Bytes of blob data in flight, against a soft limit, and the turns for file reads.
#[derive(Debug)]
pub struct Buffers {
    limit: usize,
    in_use: AtomicUsize,
    reads: Arc<Semaphore>,
}

impl Buffers {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Buffers {
            limit,
            in_use: AtomicUsize::new(0),
            reads: Arc::new(Semaphore::new(READ_THREADS)),
        })
    }

    /// A turn to read a file on the blocking pool, when one is free.
    pub async fn read_turn(&self) -> OwnedSemaphorePermit {
        self.reads
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// A turn to read now, or `None` when every turn is taken (for optional reads).
    pub fn try_read_turn(&self) -> Option<OwnedSemaphorePermit> {
        self.reads.clone().try_acquire_owned().ok()
    }

    /// Bytes in flight now.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// How much of `wanted` a reader should read now: all of it while the budget allows, else a
    /// small chunk.
    pub fn chunk_len(&self, wanted: usize) -> usize {
        if self.in_use() + wanted <= self.limit {
            wanted
        } else {
            wanted.min(SMALL_CHUNK)
        }
    }

    /// Whether optional memory (a read-ahead, a fill's window) may be taken now.
    pub fn has_room_for(&self, len: usize) -> bool {
        self.in_use() + len <= self.limit
    }

    /// Counts `len` bytes held outside a tracked buffer (a fill's window); give them back with
    /// [`release`](Self::release).
    pub fn hold(&self, len: usize) {
        self.in_use.fetch_add(len, Ordering::Relaxed);
    }

    pub fn release(&self, len: usize) {
        self.in_use.fetch_sub(len, Ordering::Relaxed);
    }

    /// `data` as `Bytes` counted against the budget until the last clone is dropped (for a
    /// response chunk: until the connection has written it).
    pub fn track(self: &Arc<Self>, data: Vec<u8>) -> Bytes {
        self.hold(data.len());
        Bytes::from_owner(Tracked {
            data,
            buffers: self.clone(),
        })
    }
}

struct Tracked {
    data: Vec<u8>,
    buffers: Arc<Buffers>,
}

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.buffers.release(self.data.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracked_bytes_count_until_the_last_clone_goes() {
        let buffers = Buffers::new(1 << 20);
        let chunk = buffers.track(vec![1; 1000]);
        let clone = chunk.slice(10..20);
        assert_eq!(buffers.in_use(), 1000);
        drop(chunk);
        assert_eq!(buffers.in_use(), 1000, "a slice keeps the buffer");
        drop(clone);
        assert_eq!(buffers.in_use(), 0);
    }

    #[test]
    fn over_the_budget_chunks_shrink_and_nothing_optional_is_taken() {
        let buffers = Buffers::new(1 << 20);
        assert_eq!(buffers.chunk_len(1 << 20), 1 << 20);
        let held = buffers.track(vec![0; 900 << 10]);
        assert_eq!(buffers.chunk_len(1 << 20), SMALL_CHUNK);
        assert_eq!(buffers.chunk_len(100), 100);
        assert!(!buffers.has_room_for(200 << 10));
        buffers.hold(10);
        buffers.release(10);
        drop(held);
        assert!(buffers.has_room_for(1 << 20));
    }
}

//! The memory budget for blob data in flight: chunks read for clients (until the connection has
//! sent them), chunks read ahead, and the window of recent chunks each fill keeps for its readers.
//!
//! The budget is soft and never makes anyone wait: below it, readers take large chunks and read
//! ahead; above it, they take small chunks and read nothing ahead, and fills stop keeping a
//! window. So a thousand clients that stop reading cost a bounded amount of memory (beyond the
//! budget, what each connection queues: the server caps that at 64 KiB, plus one small chunk)
//! and never a thread, while clients that keep up still get large reads when memory allows.
//!
//! File reads run on the blocking pool, [`READ_THREADS`] at a time at most: more parallel reads
//! of one disk gain nothing, and a burst of clients must not spawn a burst of threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The chunk size when the budget is exhausted.
pub(crate) const SMALL_CHUNK: usize = 16 << 10;
/// File reads on the blocking pool at once, at most.
pub(crate) const READ_THREADS: usize = 16;

/// Bytes of blob data in flight, against a soft limit, and the turns for file reads.
#[derive(Debug)]
pub(crate) struct Buffers {
    limit: usize,
    in_use: AtomicUsize,
    reads: Arc<Semaphore>,
}

impl Buffers {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Buffers {
            limit,
            in_use: AtomicUsize::new(0),
            reads: Arc::new(Semaphore::new(READ_THREADS)),
        })
    }

    /// A turn to read a file on the blocking pool, when one is free.
    pub(crate) async fn read_turn(&self) -> OwnedSemaphorePermit {
        self.reads
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// A turn to read now, or `None` when every turn is taken (for optional reads).
    pub(crate) fn try_read_turn(&self) -> Option<OwnedSemaphorePermit> {
        self.reads.clone().try_acquire_owned().ok()
    }

    /// Bytes in flight now.
    pub(crate) fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Reserves room for a read of up to `wanted` bytes: all of it while the budget allows, else
    /// a small chunk, which is always granted (nobody waits for memory).
    pub(crate) fn reserve_read(self: &Arc<Self>, wanted: usize) -> Reservation {
        self.try_reserve(wanted).unwrap_or_else(|| {
            let len = wanted.min(SMALL_CHUNK);
            self.in_use.fetch_add(len, Ordering::Relaxed);
            Reservation {
                buffers: self.clone(),
                len,
            }
        })
    }

    /// Reserves `len` bytes if the budget has room for them (memory that is optional: a
    /// read-ahead, a fill's window).
    pub(crate) fn try_reserve(self: &Arc<Self>, len: usize) -> Option<Reservation> {
        self.in_use
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |in_use| {
                (in_use + len <= self.limit).then_some(in_use + len)
            })
            .ok()
            .map(|_| Reservation {
                buffers: self.clone(),
                len,
            })
    }
}

/// Bytes reserved against the budget; given back when dropped, or kept by the `Bytes` made with
/// [`Reservation::into_bytes`] until its last clone is dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    buffers: Arc<Buffers>,
    len: usize,
}

impl Reservation {
    /// The bytes reserved.
    pub(crate) fn size(&self) -> usize {
        self.len
    }

    /// `data` (at most the reserved length) as `Bytes` that hold the reservation: for a response
    /// chunk, until the connection has written it.
    pub(crate) fn into_bytes(mut self, data: Vec<u8>) -> Bytes {
        debug_assert!(data.len() <= self.len);
        let unused = self.len.saturating_sub(data.len());
        self.buffers.in_use.fetch_sub(unused, Ordering::Relaxed);
        self.len -= unused;
        Bytes::from_owner(Tracked {
            data,
            _reservation: self,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.buffers.in_use.fetch_sub(self.len, Ordering::Relaxed);
    }
}

struct Tracked {
    data: Vec<u8>,
    _reservation: Reservation,
}

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracked_bytes_count_until_the_last_clone_goes() {
        let buffers = Buffers::new(1 << 20);
        let reservation = buffers.reserve_read(2000);
        assert_eq!(buffers.in_use(), 2000, "reserved before the read");
        let chunk = reservation.into_bytes(vec![1; 1000]);
        let clone = chunk.slice(10..20);
        assert_eq!(
            buffers.in_use(),
            1000,
            "what the read did not fill is given back"
        );
        drop(chunk);
        assert_eq!(buffers.in_use(), 1000, "a slice keeps the buffer");
        drop(clone);
        assert_eq!(buffers.in_use(), 0);
    }

    #[test]
    fn over_the_budget_reads_shrink_and_nothing_optional_is_taken() {
        let buffers = Buffers::new(1 << 20);
        let first = buffers.reserve_read(900 << 10);
        assert_eq!(first.size(), 900 << 10);
        // Concurrent readers each see what the others reserved: no burst past the budget.
        assert_eq!(buffers.reserve_read(1 << 20).size(), SMALL_CHUNK);
        assert_eq!(buffers.reserve_read(100).size(), 100);
        assert!(buffers.try_reserve(200 << 10).is_none());
        drop(first);
        assert_eq!(buffers.in_use(), 0);
        assert!(buffers.try_reserve(1 << 20).is_some());
        assert_eq!(buffers.in_use(), 0, "an unused reservation is given back");
    }
}

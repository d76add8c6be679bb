//! The bytes the store keeps, for the status page: measured by each collection (which reads
//! the whole inventory) and counted up between collections by every commit of new content
//! (fills, pushes, fetched manifests).

use crate::sync::lock;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// The bytes the store keeps: measured by a collection, plus what was committed since.
#[derive(Debug, Default)]
pub(crate) struct StoredBytes {
    /// Bytes of new content committed since start-up (only grows).
    committed: AtomicU64,
    measured: Mutex<Option<Measured>>,
}

#[derive(Debug, Clone, Copy)]
struct Measured {
    bytes: u64,
    at: SystemTime,
    /// `committed` when the collection read its inventory.
    committed_then: u64,
}

/// Where the commit count stood when a collection began (see [`StoredBytes::mark`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CommitMark(u64);

impl StoredBytes {
    /// New content of `bytes` was committed (a blob or manifest the store did not hold).
    pub(crate) fn committed(&self, bytes: u64) {
        self.committed.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Taken before a collection reads its inventory: what is committed after it is counted on
    /// top of the collection's measure.
    pub(crate) fn mark(&self) -> CommitMark {
        CommitMark(self.committed.load(Ordering::Relaxed))
    }

    /// A collection's result: the store keeps `bytes` (after its evictions).
    pub(crate) fn measured(&self, bytes: u64, mark: CommitMark) {
        *lock(&self.measured) = Some(Measured {
            bytes,
            at: SystemTime::now(),
            committed_then: mark.0,
        });
    }

    /// (bytes stored now, when they were last measured, bytes committed since), once measured.
    pub(crate) fn now(&self) -> Option<(u64, SystemTime, u64)> {
        let measured = (*lock(&self.measured))?;
        let since = self
            .committed
            .load(Ordering::Relaxed)
            .saturating_sub(measured.committed_then);
        Some((measured.bytes.saturating_add(since), measured.at, since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_bytes_count_commits_after_the_measure() {
        let stored = StoredBytes::default();
        stored.committed(100);
        assert_eq!(stored.now(), None, "not measured yet");
        let mark = stored.mark();
        // Committed while the collection ran: not in its inventory, counted on top.
        stored.committed(20);
        stored.measured(1000, mark);
        stored.committed(5);
        let (bytes, _, since) = stored.now().unwrap();
        assert_eq!((bytes, since), (1025, 25));
        stored.measured(10, stored.mark());
        assert_eq!(stored.now().unwrap().0, 10, "a collection measures again");
    }
}

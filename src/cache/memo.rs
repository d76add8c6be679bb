//! In-memory memos of hot content by digest, bounded in bytes: hot manifests
//! (`limits.manifest_memo`) and hot small blobs (`limits.blob_memo`), so that serving them costs
//! no file I/O (for a small blob, the open, stat, read and close were a third of a hit's CPU).
//! Content is addressed by its verified digest, so a remembered copy is never stale; every
//! request still passes the repository access check before a memo is consulted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::cache::manifest::CachedManifest;
use crate::reference::Digest;

/// What an entry costs the memo's budget.
pub(crate) trait Weighed {
    fn weight(&self) -> usize;
}

impl Weighed for Bytes {
    fn weight(&self) -> usize {
        self.len()
    }
}

impl Weighed for Arc<CachedManifest> {
    fn weight(&self) -> usize {
        self.bytes.len()
    }
}

/// Hot entries by digest, at most `budget` bytes of them; the least recently used go first, and
/// an entry over a quarter of the budget is not kept.
#[derive(Debug)]
pub(crate) struct Memo<V> {
    entries: Mutex<Entries<V>>,
    budget: usize,
}

#[derive(Debug)]
struct Entries<V> {
    by_digest: HashMap<Digest, (V, u64)>,
    bytes: usize,
    /// A use counter: each get or insert stamps its entry with the next value.
    clock: u64,
}

impl<V: Clone + Weighed> Memo<V> {
    pub(crate) fn new(budget: usize) -> Self {
        Memo {
            entries: Mutex::new(Entries {
                by_digest: HashMap::new(),
                bytes: 0,
                clock: 0,
            }),
            budget,
        }
    }

    /// Whether an entry of `weight` bytes would be kept.
    pub(crate) fn keeps(&self, weight: usize) -> bool {
        self.budget > 0 && weight <= self.budget / 4
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<V>> {
        crate::sync::lock(&self.entries)
    }

    /// Bytes held now.
    pub(crate) fn bytes(&self) -> usize {
        self.lock().bytes
    }

    pub(crate) fn get(&self, digest: &Digest) -> Option<V> {
        let mut entries = self.lock();
        entries.clock += 1;
        let clock = entries.clock;
        let (value, used) = entries.by_digest.get_mut(digest)?;
        *used = clock;
        Some(value.clone())
    }

    pub(crate) fn insert(&self, digest: Digest, value: V) {
        let size = value.weight();
        if !self.keeps(size) {
            return;
        }
        let mut entries = self.lock();
        entries.clock += 1;
        let clock = entries.clock;
        if let Some((old, _)) = entries.by_digest.insert(digest, (value, clock)) {
            entries.bytes -= old.weight();
        }
        entries.bytes += size;
        if entries.bytes > self.budget {
            // Down to three quarters at once, so the sort is paid rarely.
            let mut by_use: Vec<(u64, Digest)> = entries
                .by_digest
                .iter()
                .map(|(digest, (_, used))| (*used, digest.clone()))
                .collect();
            by_use.sort_unstable();
            for (_, digest) in by_use {
                if entries.bytes <= self.budget / 4 * 3 {
                    break;
                }
                if let Some((gone, _)) = entries.by_digest.remove(&digest) {
                    entries.bytes -= gone.weight();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_is_bounded_by_bytes_and_keeps_what_is_used() {
        let memo = Memo::new(4000);
        let digest = |i: u8| crate::cache::store::sha256(&[i]);
        memo.insert(digest(0), Bytes::from(vec![0; 500]));
        for i in 1..40u8 {
            memo.insert(digest(i), Bytes::from(vec![i; 500]));
            assert!(memo.get(&digest(0)).is_some(), "the hot one stays");
            let entries = memo.lock();
            assert!(entries.bytes <= 4000, "{} bytes", entries.bytes);
            assert_eq!(
                entries.bytes,
                entries
                    .by_digest
                    .values()
                    .map(|(v, _)| v.len())
                    .sum::<usize>()
            );
        }
        assert!(memo.get(&digest(1)).is_none(), "cold ones went");
        // An entry over a quarter of the budget is served from the store instead.
        assert!(!memo.keeps(1001));
        memo.insert(digest(200), Bytes::from(vec![0; 1001]));
        assert!(memo.get(&digest(200)).is_none());
        // A memo of no bytes keeps nothing.
        let off = Memo::new(0);
        off.insert(digest(1), Bytes::from_static(b"x"));
        assert!(off.get(&digest(1)).is_none());
    }
}

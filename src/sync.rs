//! Locks that outlive a panic, and a signal a shutdown waits on. A thread that panics while
//! holding a `std` lock poisons it; every lock in regmirror guards state that each critical
//! section leaves whole (maps, counters, queues updated in one step), so the data is still good
//! and the next holder takes it as it is, rather than turning one panic into a panic in every
//! later request. [`drain`] fires when the last of its holders is dropped.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `mutex`, locked, poisoned or not.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// `lock`, read, poisoned or not.
pub fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

/// `lock`, written, poisoned or not.
pub fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// A signal that fires once every [`Held`] of it is gone: what a shutdown waits for, instead of
/// polling how many handles to something are left. Whatever must finish first (a server's state,
/// every task still using it) holds a `Held`; [`Drained::wait`] returns when the last one drops.
pub fn drain() -> (Held, Drained) {
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    (Held { _sender: sender }, Drained(receiver))
}

/// One holder of a [`drain`] signal (clone it for another); nothing is ever sent.
#[derive(Debug, Clone)]
pub struct Held {
    _sender: tokio::sync::mpsc::Sender<()>,
}

/// The waiting side of a [`drain`] signal.
#[derive(Debug)]
pub struct Drained(tokio::sync::mpsc::Receiver<()>);

impl Drained {
    /// Returns once every [`Held`] has been dropped.
    pub async fn wait(mut self) {
        while self.0.recv().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_drain_fires_when_the_last_holder_is_gone() {
        let (held, drained) = drain();
        let other = held.clone();
        let waiting = tokio::spawn(drained.wait());
        drop(held);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one holder is left");
        let task = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            drop(other);
        });
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("fires once the task's holder is dropped")
            .unwrap();
        task.await.unwrap();
    }
}

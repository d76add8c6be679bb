//! A fill's hasher: the digest is computed on the blocking pool a batch of chunks at a time
//! (~0.7 s per GiB with SHA-NI on these machines), off the path from the upstream socket to the
//! file the readers follow. At most [`HASH_QUEUE_KIB`] of received chunks wait for it: past
//! that the download waits, so a hasher that falls behind holds a bounded share of a fill's
//! chunks.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::{JoinError, JoinHandle};

use crate::reference::{Digest, Hasher};

/// Batches of chunks waiting for the hasher before the download waits for it.
const HASH_QUEUE: usize = 16;
/// Bytes received but not yet hashed, at most, in KiB.
const HASH_QUEUE_KIB: u32 = 16 << 10;

/// The hasher of one fill.
pub(super) struct Hashing {
    /// Room for chunks queued, in KiB.
    room: Arc<Semaphore>,
    queue: mpsc::Sender<(Vec<Bytes>, OwnedSemaphorePermit)>,
    task: JoinHandle<Result<Digest, JoinError>>,
}

impl Hashing {
    /// A hasher of the algorithm of `like`.
    pub(super) fn start(like: &Digest) -> Self {
        let (queue, mut input) = mpsc::channel::<(Vec<Bytes>, OwnedSemaphorePermit)>(HASH_QUEUE);
        let like = like.clone();
        let task = tokio::spawn(async move {
            let mut hasher = Hasher::like(&like);
            while let Some((mut batch, mut room)) = input.recv().await {
                // Whatever queued meanwhile goes in the same trip to the pool.
                while let Ok((more, more_room)) = input.try_recv() {
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
                .await?;
            }
            Ok(hasher.finish())
        });
        Hashing {
            room: Arc::new(Semaphore::new(HASH_QUEUE_KIB as usize)),
            queue,
            task,
        }
    }

    /// Queues `chunks` to be hashed, once there is room for them. `false`: the hasher is gone
    /// (its end says why).
    pub(super) async fn feed(&self, chunks: Vec<Bytes>) -> bool {
        let kib = chunks.iter().map(Bytes::len).sum::<usize>().div_ceil(1024);
        let kib = u32::try_from(kib)
            .unwrap_or(u32::MAX)
            .clamp(1, HASH_QUEUE_KIB);
        let room = self
            .room
            .clone()
            .acquire_many_owned(kib)
            .await
            .expect("the hasher's room is never closed");
        self.queue.send((chunks, room)).await.is_ok()
    }

    /// The digest of everything fed, once it is hashed; an error when the hashing task failed.
    pub(super) async fn finish(self) -> Result<Digest, JoinError> {
        drop(self.queue);
        self.task.await?
    }
}

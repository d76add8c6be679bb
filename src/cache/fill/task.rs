//! One fill's task: fetch, check the size against the limits and the free space, stream the body
//! into the spool file within the rate deadline (blocks reserved a step ahead, chunks handed to
//! the hasher and to the readers' window), verify the size and the digest, let the readers take
//! the last byte, fsync, record, commit. Whatever ends it — success, failure or a panic — it
//! leaves the in-flight map, tells its readers, and (unless it committed) deletes its spool file.

use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::watch;

use super::follow::SharedRecent;
use super::hasher::Hashing;
use super::{Fetched, FillError, FillKey, FillState, Fills, Keep, UpstreamBody};
use crate::cache::lease::HeldLease;
use crate::cache::meta::NewBlob;
use crate::cache::store::space::{RESERVE_AHEAD, free_space, reserve};
use crate::reference::Digest;
use crate::registry::RegistryError;
use crate::sync::lock;

/// Most network chunks a fill writes between two progress notifications.
const READY_CHUNKS: usize = 64;

/// One fill's task. [`Drop`] does what [`FillTask::finish`] did not get to do.
pub(super) struct FillTask {
    fills: Arc<Fills>,
    key: FillKey,
    repository: String,
    temp: PathBuf,
    file: Arc<File>,
    tx: watch::Sender<FillState>,
    recent: SharedRecent,
    finished: bool,
}

/// How far a download got: bytes written to the spool file, blocks reserved for them.
struct Written {
    /// The upstream's Content-Length.
    size: Option<u64>,
    bytes: u64,
    reserved: u64,
}

impl FillTask {
    pub(super) fn new(
        fills: Arc<Fills>,
        key: FillKey,
        repository: &str,
        temp: PathBuf,
        file: Arc<File>,
        tx: watch::Sender<FillState>,
        recent: SharedRecent,
    ) -> Self {
        FillTask {
            fills,
            key,
            repository: repository.to_owned(),
            temp,
            file,
            tx,
            recent,
            finished: false,
        }
    }

    pub(super) async fn run<F>(mut self, fetch: F)
    where
        F: Future<Output = Result<Fetched, RegistryError>>,
    {
        let result = self.download(fetch).await;
        self.finish(result);
    }

    fn finish(&mut self, result: Result<u64, FillError>) {
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
                let error = error.registry_error();
                tracing::warn!(%upstream, %digest, %error, "fill failed");
                let _ = std::fs::remove_file(&self.temp);
                self.tx.send_replace(FillState::Failed(error));
            }
        }
    }

    fn digest(&self) -> &Digest {
        &self.key.1
    }

    async fn download<F>(&self, fetch: F) -> Result<u64, FillError>
    where
        F: Future<Output = Result<Fetched, RegistryError>>,
    {
        let Fetched { size, body, keep } = fetch.await?;
        self.check_room(size)?;
        self.tx
            .send_replace(FillState::Streaming { size, written: 0 });
        let hashing = Hashing::start(self.digest());
        let lease = match &keep {
            Keep::Store { lease } => lease.as_ref(),
            Keep::Link | Keep::Follow { .. } => None,
        };
        let written = self.stream(size, body, lease, &hashing).await?;
        if let Some(size) = size.filter(|&size| size != written) {
            return Err(FillError::Short {
                digest: self.digest().clone(),
                written,
                size,
            });
        }
        let actual = hashing.finish().await.map_err(FillError::Task)?;
        if actual != *self.digest() {
            return Err(FillError::Mismatch {
                digest: self.digest().clone(),
                actual,
            });
        }
        self.tx.send_replace(FillState::Verified { size: written });
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(FillError::Task)?
            .map_err(FillError::Write)?;
        self.commit(keep, written).await
    }

    /// Refuses a blob whose Content-Length is over `limits.max_blob_size` or the free space.
    fn check_room(&self, size: Option<u64>) -> Result<(), FillError> {
        let Some(size) = size.filter(|&size| size > 0) else {
            return Ok(());
        };
        self.check_size(size)?;
        let free = free_space(&self.file).map_err(FillError::Space)?;
        if size > free {
            return Err(FillError::NoRoom {
                digest: self.digest().clone(),
                needed: size,
                free,
            });
        }
        Ok(())
    }

    fn check_size(&self, size: u64) -> Result<(), FillError> {
        let limit = self.fills.limits.max_blob_size;
        if size > limit {
            return Err(FillError::TooLarge {
                digest: self.digest().clone(),
                size,
                limit,
            });
        }
        Ok(())
    }

    /// The body into the spool file, batch by batch: every chunk already received is written
    /// before readers are woken once (so they make few, large reads instead of one per network
    /// chunk), within the rate deadline and while the fleet's lease (if any) holds. Returns the
    /// bytes written.
    async fn stream(
        &self,
        size: Option<u64>,
        body: UpstreamBody,
        lease: Option<&HeldLease>,
        hashing: &Hashing,
    ) -> Result<u64, FillError> {
        let limits = self.fills.limits;
        let started = tokio::time::Instant::now();
        // Blocks are reserved as bytes arrive, a step ahead, never by the length an upstream
        // claims: four hostile 1 GiB claims trickling 40 KB/s reserved 4 GiB before.
        let mut written = Written {
            size,
            bytes: 0,
            reserved: 0,
        };
        let mut batches = body.ready_chunks(READY_CHUNKS);
        loop {
            // A fill may fall behind the minimum rate by the grace, no more.
            let allowed = limits.grace
                + Duration::from_secs_f64(written.bytes as f64 / limits.min_rate as f64);
            let deadline = started
                .checked_add(allowed)
                .unwrap_or(started + limits.grace);
            let next = tokio::select! {
                next = tokio::time::timeout_at(deadline, batches.next()) => next,
                () = lost(lease) => {
                    return Err(FillError::LeaseLost { digest: self.digest().clone() });
                }
            };
            let batch = match next {
                Ok(Some(batch)) => batch,
                Ok(None) => break,
                Err(_) => {
                    return Err(FillError::TooSlow {
                        digest: self.digest().clone(),
                        written: written.bytes,
                        elapsed: started.elapsed(),
                        min_rate: limits.min_rate,
                    });
                }
            };
            let hashed = self.write(batch, &mut written)?;
            if !hashing.feed(hashed).await {
                break;
            }
            self.tx.send_replace(FillState::Streaming {
                size,
                written: written.bytes,
            });
        }
        Ok(written.bytes)
    }

    /// Writes a batch of chunks to the spool file (and the readers' window), within the
    /// Content-Length and `limits.max_blob_size`, blocks reserved ahead; returns the chunks, for
    /// the hasher.
    fn write(
        &self,
        batch: Vec<std::io::Result<Bytes>>,
        written: &mut Written,
    ) -> Result<Vec<Bytes>, FillError> {
        let mut chunks = Vec::with_capacity(batch.len());
        for chunk in batch {
            let chunk = chunk.map_err(|source| FillError::Broken {
                digest: self.digest().clone(),
                source,
            })?;
            let after = written.bytes + chunk.len() as u64;
            if let Some(size) = written.size.filter(|&size| after > size) {
                return Err(FillError::TooLong {
                    digest: self.digest().clone(),
                    size,
                });
            }
            self.check_size(after)?;
            if let Some(size) = written.size.filter(|_| after > written.reserved) {
                let upto = after.saturating_add(RESERVE_AHEAD).min(size);
                reserve(&self.file, written.reserved, upto - written.reserved).map_err(
                    |source| FillError::Reserve {
                        digest: self.digest().clone(),
                        upto,
                        size,
                        source,
                    },
                )?;
                written.reserved = upto;
            }
            (&*self.file).write_all(&chunk).map_err(FillError::Write)?;
            lock(&self.recent).push(written.bytes, chunk.clone());
            written.bytes = after;
            chunks.push(chunk);
        }
        Ok(chunks)
    }

    /// Links verified bytes another replica stores to the repository that asked.
    async fn link(&self, written: u64) -> Result<u64, FillError> {
        let (upstream, digest) = &self.key;
        self.fills
            .meta
            .link(upstream, &self.repository, digest)
            .await
            .map_err(|source| FillError::Record {
                digest: digest.clone(),
                source,
            })?;
        Ok(written)
    }

    /// Verified bytes kept: on a bucket another replica stores, only the repository's link
    /// (unless this replica took the download over from a holder that died); else the records
    /// (the record first: every stored blob has one, see `meta`), then the content, then the
    /// lease (if any) goes.
    async fn commit(&self, keep: Keep, written: u64) -> Result<u64, FillError> {
        let (upstream, digest) = &self.key;
        let record = |source| FillError::Record {
            digest: digest.clone(),
            source,
        };
        let lease: Option<HeldLease> = match keep {
            Keep::Store { lease } => lease,
            // The holder died before storing them: this replica took over, and stores them.
            Keep::Follow { settle } => match settle.await {
                Some(lease) => Some(lease),
                None => return self.link(written).await,
            },
            Keep::Link => return self.link(written).await,
        };
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
            .map_err(record)?;
        self.fills
            .store
            .commit(self.temp.clone(), digest)
            .await
            .map_err(|source| FillError::Store {
                digest: digest.clone(),
                source,
            })?;
        if new {
            self.fills.stored.committed(written);
        }
        if let Some(lease) = lease {
            lease.release().await;
        }
        Ok(written)
    }
}

/// Resolves when a held lease is lost; never without one.
async fn lost(lease: Option<&HeldLease>) {
    match lease {
        Some(lease) => lease.lost().await,
        None => std::future::pending().await,
    }
}

impl Drop for FillTask {
    fn drop(&mut self) {
        if !self.finished {
            self.finish(Err(FillError::Abandoned));
        }
    }
}

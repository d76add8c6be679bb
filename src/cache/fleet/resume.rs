//! A follower whose holder dies keeps its clients: the body a follower's fill reads
//! ([`following`]) goes on from the byte it had when the holder's stream broke.
//!
//! A broken stream from the holder is looked at again at once: the blob stored meanwhile is read
//! from the bucket from that byte on; a lease now held by another replica (which took over) is
//! followed from that byte on; the same holder refusing connections (or answering that it has no
//! such download) is taken for dead, and its lease is taken over at once with `If-Match` on the
//! version read ([`crate::cache::lease::Leases::take_over_from`]), without waiting for it to
//! expire. Holding the
//! lease, the follower asks the upstream for the rest (`Range`), or for the whole blob again
//! where ranges are refused, dropping the bytes it has. Every byte, the holder's and the
//! upstream's, goes through the fill's digest check before anything is kept; holding the lease,
//! the follower stores the blob itself ([`Job::settle`]).
//!
//! A follower that received the whole blob still waits, once it verified it, for the holder to
//! store it: a holder that dies before storing it leaves the bucket without it, so the follower
//! then takes the lease over and stores its own verified copy. Its clients have their last byte
//! by then: they wait for none of this.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, Stream, StreamExt as _};

use super::{FOLLOW_WAIT, Fleet, FollowError, FromHolder, POLL, unavailable};
use crate::cache::bucket::keys;
use crate::cache::fill::{Download, UpstreamBody};
use crate::cache::lease::{Claim, HeldLease, Lease};
use crate::reference::Digest;
use crate::registry::{ErrorCode, RegistryError};
use crate::sync::lock;

/// How soon a follower looks again when the lease changed under it (renewed, taken over).
const AGAIN: Duration = Duration::from_millis(100);

/// One followed download: what a follower needs to take it over.
pub(super) struct Job {
    pub(super) fleet: Fleet,
    pub(super) upstream: String,
    pub(super) repository: String,
    pub(super) digest: Digest,
    pub(super) download: Download,
    /// The lease this follower took over, until its fill stores the blob.
    taken: Mutex<Option<HeldLease>>,
    /// The holder whose stream it read last (its address worked from here).
    followed: Mutex<Option<String>>,
}

/// Where a followed body's bytes come from now.
struct Source {
    body: UpstreamBody,
    /// The holder streaming it; `None` from the upstream or the bucket (then a break is final).
    holder: Option<Lease>,
    /// The blob's size, when stated.
    size: Option<u64>,
    /// Resolves when the lease taken over is lost.
    lost: Option<BoxFuture<'static, ()>>,
}

/// A followed body as it streams.
struct Following {
    job: Arc<Job>,
    source: Source,
    received: u64,
}

impl Job {
    pub(super) fn new(
        fleet: Fleet,
        (upstream, repository): (&str, &str),
        digest: &Digest,
        download: Download,
    ) -> Arc<Self> {
        Arc::new(Job {
            fleet,
            upstream: upstream.to_owned(),
            repository: repository.to_owned(),
            digest: digest.clone(),
            download,
            taken: Mutex::new(None),
            followed: Mutex::new(None),
        })
    }

    fn key(&self) -> String {
        keys::fill_lease(&self.upstream, &self.digest)
    }

    /// The lease, when this replica gets it; else the lease another replica holds.
    async fn claim(&self) -> Result<Result<HeldLease, Lease>, RegistryError> {
        let fleet = &self.fleet;
        let claim = fleet
            .leases
            .claim(&self.key(), &self.repository)
            .await
            .map_err(|e| unavailable(&fleet.bucket, e))?;
        match claim {
            Claim::Held { lease, took_over } => {
                fleet
                    .metrics
                    .fleet(if took_over { "took_over" } else { "led" });
                Ok(Ok(lease))
            }
            Claim::Other(theirs) => Ok(Err(theirs)),
        }
    }

    /// Takes over from `dead` (its stream broke and it refuses connections, or it has no such
    /// download), when it still holds the lease.
    async fn take_over_from(&self, dead: &Lease) -> Result<Option<HeldLease>, RegistryError> {
        self.fleet
            .take_over(&self.key(), &self.repository, dead)
            .await
    }

    /// Where the bytes from `from` on come from after the stream from `cut` broke.
    async fn resume(&self, cut: &Lease, from: u64) -> Result<Source, RegistryError> {
        let deadline = Instant::now() + FOLLOW_WAIT;
        loop {
            if let Some(size) = self.fleet.stored(&self.upstream, &self.digest).await? {
                return self.stored_rest(from, size).await;
            }
            let theirs = match self.claim().await? {
                // Unless the holder stored it and released the lease just before the claim.
                Ok(lease) => match self.unless_stored(lease).await? {
                    Some(lease) => return self.download(lease, from).await,
                    None => continue,
                },
                Err(theirs) => theirs,
            };
            let follower = &self.fleet.follower;
            let answer = follower
                .follow(&theirs, &self.upstream, &self.digest, from)
                .await;
            let (dead, mut wait) = match answer {
                Ok(FromHolder::Streaming(size, body)) => {
                    tracing::info!(holder = %theirs.holder, from, "following on after a broken stream");
                    *lock(&self.followed) = Some(theirs.holder.clone());
                    return Ok(Source::holder(theirs, size, body));
                }
                // It answers, holding the lease without a download: it failed.
                Ok(FromHolder::NoFill) => (true, AGAIN),
                // Refused: the holder whose stream broke is dead (another replica refusing may
                // only be unreachable from here: its lease expires if it is dead).
                Err(FollowError::Request { source, .. }) if source.is_connect() => {
                    (theirs.holder == cut.holder, POLL)
                }
                // Reset or closed (a holder dying as it was asked): look again soon.
                Err(FollowError::Request { .. }) => (false, AGAIN),
                Err(e) => {
                    tracing::debug!(holder = %theirs.holder, error = %e, "cannot follow on");
                    (false, POLL)
                }
            };
            if dead {
                if let Some(lease) = self.take_over_from(&theirs).await? {
                    match self.unless_stored(lease).await? {
                        Some(lease) => return self.download(lease, from).await,
                        None => continue,
                    }
                }
                // The lease changed meanwhile (renewed, taken over, released).
                wait = AGAIN;
            }
            if Instant::now() >= deadline {
                return Err(RegistryError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "the download of {} broke and could not be taken over; waited {FOLLOW_WAIT:?}",
                        self.digest
                    ),
                ));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// The stored blob from `from` on.
    async fn stored_rest(&self, from: u64, size: u64) -> Result<Source, RegistryError> {
        let bucket = &self.fleet.bucket;
        let body = bucket
            .stream(&keys::blob(&self.digest), from, size)
            .await
            .map_err(|e| unavailable(bucket, e))?
            .boxed();
        Ok(Source {
            body,
            holder: None,
            size: Some(size),
            lost: None,
        })
    }

    /// Holding `lease`: the rest from the upstream.
    async fn download(&self, lease: HeldLease, from: u64) -> Result<Source, RegistryError> {
        tracing::info!(digest = %self.digest, from, "took the download over from its holder");
        let lost = lease.when_lost().boxed();
        *lock(&self.taken) = Some(lease);
        let (size, body) = (self.download)(from).await?;
        Ok(Source {
            body,
            holder: None,
            size,
            lost: Some(lost),
        })
    }

    /// Once the fill verified every byte: the lease when this replica is to store the blob
    /// (it took the download over, or its holder died before storing it), `None` when the
    /// holder stores it (or stored it).
    pub(super) async fn settle(self: Arc<Self>) -> Option<HeldLease> {
        if let Some(lease) = lock(&self.taken).take() {
            return Some(lease);
        }
        match self.await_holder().await {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!(digest = %self.digest, error = %e, "cannot tell whether the holder stored it");
                None
            }
        }
    }

    /// Waits for the holder to store the blob: `None` once it is stored, the lease when the
    /// holder died (or failed) first.
    async fn await_holder(&self) -> Result<Option<HeldLease>, RegistryError> {
        let deadline = Instant::now() + FOLLOW_WAIT;
        while Instant::now() < deadline {
            if self
                .fleet
                .stored(&self.upstream, &self.digest)
                .await?
                .is_some()
            {
                return Ok(None);
            }
            let theirs = match self.claim().await? {
                Ok(lease) => return self.unless_stored(lease).await,
                Err(theirs) => theirs,
            };
            let probe = self
                .fleet
                .follower
                .probe(&theirs, &self.upstream, &self.digest)
                .await;
            let followed = lock(&self.followed).as_ref() == Some(&theirs.holder);
            let dead = match probe {
                Ok(has_fill) => !has_fill,
                // Refusing connections: dead, when it is the holder this replica followed.
                Err(FollowError::Request { source, .. }) => source.is_connect() && followed,
                Err(_) => false,
            };
            if dead {
                if let Some(lease) = self.take_over_from(&theirs).await? {
                    return self.unless_stored(lease).await;
                }
            }
            tokio::time::sleep(if dead { AGAIN } else { POLL }).await;
        }
        Ok(None)
    }

    /// `lease` unless the blob is stored after all (then it is released).
    async fn unless_stored(&self, lease: HeldLease) -> Result<Option<HeldLease>, RegistryError> {
        if self
            .fleet
            .stored(&self.upstream, &self.digest)
            .await?
            .is_some()
        {
            lease.release().await;
            return Ok(None);
        }
        Ok(Some(lease))
    }
}

impl Source {
    fn holder(lease: Lease, size: Option<u64>, body: UpstreamBody) -> Self {
        Source {
            body,
            holder: Some(lease),
            size,
            lost: None,
        }
    }
}

/// The body of `holder`'s download (`size` when stated) as a follower reads it: going on from
/// where it broke (see the module's docs).
pub(super) fn following(
    job: Arc<Job>,
    holder: Lease,
    size: Option<u64>,
    body: UpstreamBody,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    *lock(&job.followed) = Some(holder.holder.clone());
    let following = Following {
        job,
        source: Source::holder(holder, size, body),
        received: 0,
    };
    futures_util::stream::unfold(Some(following), |following| async move {
        let mut following = following?;
        match following.next().await {
            Some(Ok(chunk)) => Some((Ok(chunk), Some(following))),
            Some(Err(e)) => Some((Err(e), None)),
            None => None,
        }
    })
}

impl Following {
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            let source = &mut self.source;
            let next = match &mut source.lost {
                Some(lost) => tokio::select! {
                    next = source.body.next() => next,
                    () = lost => {
                        return Some(Err(io::Error::other(
                            "the lease taken over was lost: another replica downloads it",
                        )));
                    }
                },
                None => source.body.next().await,
            };
            let error = match next {
                Some(Ok(chunk)) => {
                    self.received += chunk.len() as u64;
                    return Some(Ok(chunk));
                }
                Some(Err(error)) => error,
                // A clean end: complete unless short of a stated size.
                None if source.size.is_none_or(|size| self.received >= size) => return None,
                None => io::Error::new(io::ErrorKind::UnexpectedEof, "the stream ended early"),
            };
            if source.size.is_some_and(|size| self.received >= size) {
                // Every byte arrived; the digest check tells the rest.
                return None;
            }
            let Some(cut) = source.holder.take() else {
                return Some(Err(error));
            };
            tracing::warn!(holder = %cut.holder, received = self.received, %error, "the holder's stream broke");
            match self.job.resume(&cut, self.received).await {
                Ok(next) => {
                    if let (Some(was), Some(now)) = (self.source.size, next.size) {
                        if was != now {
                            return Some(Err(io::Error::other(format!(
                                "the download went on with {now} bytes, not the {was} it started with"
                            ))));
                        }
                    }
                    let size = self.source.size.or(next.size);
                    self.source = Source { size, ..next };
                }
                Err(e) => return Some(Err(io::Error::other(e.to_string()))),
            }
        }
    }
}

//! Leases in the bucket: which replica of a fleet downloads a blob (or collects garbage) now.
//!
//! A lease is a small object (`leases/fills/<upstream>/<alg>/<hex>`, `leases/gc`) naming its
//! holder, where other replicas reach it, the repository it fetches for, and until when it holds.
//! It is created with `If-None-Match: *` (only one replica gets it), renewed every third of its
//! lifetime with `If-Match` on its last version, and deleted when the work is done. A replica
//! that finds a lease expired (its holder died: nobody renewed it) takes it over with `If-Match`
//! on the version it read, so of several replicas noticing at once exactly one wins; a follower
//! whose holder does not answer (refuses connections, or is silent) takes it over the same way
//! without waiting for the expiry once its stream from the holder broke or the holder missed a
//! renewal ([`Leases::take_over_from`], [`missed_renewal`]). A holder
//! that cannot renew in time considers the lease lost and stops, so two replicas never download
//! the same blob for long. Expiry times are wall-clock: replicas' clocks must agree to within
//! [`CLOCK_SKEW`].
//!
//! [`decide`] is the pure rule; [`Leases`] does the bucket requests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::bucket::{Bucket, BucketError, Versioned};

/// How long a lease holds without renewal.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(10);
/// How far replicas' clocks may disagree: a lease is taken over only this long after it expired.
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(2);
/// How often a holder renews its lease.
const RENEW_EVERY: Duration = Duration::from_millis(LEASE_TTL.as_millis() as u64 / 3);
/// What a renewal may take beyond its time (the bucket's latency) before it counts as missed.
const RENEWAL_LATE: Duration = Duration::from_secs(1);

/// A lease as stored (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lease {
    /// The holding replica's name.
    pub(crate) holder: String,
    /// The URL other replicas reach the holder at (`http.host`), when it has one.
    pub(crate) address: Option<String>,
    /// The repository the holder fetches for.
    pub(crate) repository: String,
    /// Unix milliseconds.
    pub(crate) expires: u64,
}

/// What to do about a lease someone holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// It is live: its holder does the work.
    Respect,
    /// It expired (beyond the clock skew): take it over.
    TakeOver,
}

/// The rule for a lease found in the bucket at `now_ms`.
pub(crate) fn decide(lease: &Lease, now_ms: u64) -> Decision {
    let skew = CLOCK_SKEW.as_millis() as u64;
    if lease.expires.saturating_add(skew) < now_ms {
        Decision::TakeOver
    } else {
        Decision::Respect
    }
}

/// Whether the holder of `lease` missed a renewal: the lease stayed as it is for longer than a
/// renewal takes to come round (`unchanged_for`, seen from here), or, by the holder's own clock,
/// its last renewal (`expires` less the lifetime) is older than that plus the clock skew. A
/// holder that also stops answering is dead: its lease is taken over without waiting for it to
/// expire.
pub(crate) fn missed_renewal(lease: &Lease, unchanged_for: Duration, now_ms: u64) -> bool {
    let due = RENEW_EVERY + RENEWAL_LATE;
    let renewed_at = lease.expires.saturating_sub(LEASE_TTL.as_millis() as u64);
    let overdue_at = renewed_at.saturating_add((due + CLOCK_SKEW).as_millis() as u64);
    unchanged_for >= due || now_ms > overdue_at
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The outcome of a claim.
#[derive(Debug)]
pub(crate) enum Claim {
    /// This replica holds the lease (created, or taken over: `took_over`).
    Held { lease: HeldLease, took_over: bool },
    /// Another replica holds it.
    Other(Lease),
}

/// This replica's leases in one bucket.
#[derive(Debug, Clone)]
pub(crate) struct Leases {
    bucket: Bucket,
    replica: String,
    address: Option<String>,
}

impl Leases {
    pub(crate) fn new(bucket: Bucket, replica: String, address: Option<String>) -> Self {
        Leases {
            bucket,
            replica,
            address,
        }
    }

    fn lease_for(&self, repository: &str) -> Lease {
        Lease {
            holder: self.replica.clone(),
            address: self.address.clone(),
            repository: repository.to_owned(),
            expires: now_ms() + LEASE_TTL.as_millis() as u64,
        }
    }

    /// Claims the lease `key` for work on `repository`.
    pub(crate) async fn claim(&self, key: &str, repository: &str) -> Result<Claim, BucketError> {
        // A few rounds: between reading an expired lease and replacing it, another replica may
        // take it over, delete it, or create a new one.
        for _ in 0..4 {
            let mine = self.lease_for(repository);
            match self.bucket.create(key, encode(&mine)).await {
                Ok(version) => {
                    return Ok(Claim::Held {
                        lease: HeldLease::start(self.bucket.clone(), key, mine, version),
                        took_over: false,
                    });
                }
                Err(BucketError::Precondition) => {}
                Err(e) => return Err(e),
            }
            let Some(Versioned { body, version }) = self.bucket.get_versioned(key).await? else {
                continue;
            };
            let theirs: Lease = match serde_json::from_slice(&body) {
                Ok(lease) => lease,
                // Unreadable: treat it as expired, the replace is conditional anyway.
                Err(_) => Lease {
                    holder: String::new(),
                    address: None,
                    repository: String::new(),
                    expires: 0,
                },
            };
            if decide(&theirs, now_ms()) == Decision::Respect {
                return Ok(Claim::Other(theirs));
            }
            match self.bucket.replace(key, encode(&mine), version).await {
                Ok(version) => {
                    tracing::warn!(%key, dead = %theirs.holder, "took over an expired lease");
                    return Ok(Claim::Held {
                        lease: HeldLease::start(self.bucket.clone(), key, mine, version),
                        took_over: true,
                    });
                }
                Err(BucketError::Precondition) => {}
                Err(e) => return Err(e),
            }
        }
        Err(BucketError::Contended {
            key: key.to_owned(),
        })
    }

    /// Takes the lease `key` over from a dead holder before it expires, for work on
    /// `repository`: what a follower does when the holder no longer answers and either its
    /// stream from it broke or it missed a renewal ([`missed_renewal`]). `dead` is the lease as
    /// the follower judged it. Conditional on the version read now (`If-Match`): `None` when the
    /// lease is gone or is no longer `dead` (renewed, taken over, released), or changed between
    /// the read and the replace.
    pub(crate) async fn take_over_from(
        &self,
        key: &str,
        repository: &str,
        dead: &Lease,
    ) -> Result<Option<HeldLease>, BucketError> {
        let Some(Versioned { body, version }) = self.bucket.get_versioned(key).await? else {
            return Ok(None);
        };
        if serde_json::from_slice::<Lease>(&body).ok().as_ref() != Some(dead) {
            return Ok(None);
        }
        let holder = &dead.holder;
        let mine = self.lease_for(repository);
        match self.bucket.replace(key, encode(&mine), version).await {
            Ok(version) => {
                tracing::warn!(%key, dead = %holder, "took over the lease of a holder that stopped answering");
                Ok(Some(HeldLease::start(
                    self.bucket.clone(),
                    key,
                    mine,
                    version,
                )))
            }
            Err(BucketError::Precondition) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn encode(lease: &Lease) -> Bytes {
    Bytes::from(serde_json::to_vec(lease).expect("a lease serializes"))
}

/// A lease this replica holds: renewed in the background until released (or lost).
#[derive(Debug)]
pub(crate) struct HeldLease {
    bucket: Bucket,
    key: String,
    renewal: tokio::task::JoinHandle<()>,
    lost: watch::Receiver<bool>,
}

impl HeldLease {
    fn start(
        bucket: Bucket,
        key: &str,
        lease: Lease,
        version: object_store::UpdateVersion,
    ) -> Self {
        let (tx, lost) = watch::channel(false);
        let renewal = tokio::spawn(renew(bucket.clone(), key.to_owned(), lease, version, tx));
        HeldLease {
            bucket,
            key: key.to_owned(),
            renewal,
            lost,
        }
    }

    /// Whether the lease was lost (taken over, or not renewed in time).
    pub(crate) fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves when the lease is lost.
    pub(crate) async fn lost(&self) {
        self.when_lost().await;
    }

    /// Resolves when the lease is lost, without borrowing it (the lease may move meanwhile).
    pub(crate) fn when_lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut lost = self.lost.clone();
        async move {
            let _ = lost.wait_for(|lost| *lost).await;
        }
    }

    /// Stops renewing and deletes the lease (unless it was lost: then it is someone else's).
    pub(crate) async fn release(self) {
        self.renewal.abort();
        if !self.is_lost() {
            if let Err(e) = self.bucket.delete(&self.key).await {
                tracing::warn!(key = %self.key, error = %e, "cannot release a lease; it expires by itself");
            }
        }
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

/// Renews every third of the lifetime; flags the lease lost when a renewal is refused (taken
/// over) or none succeeded before it expired.
async fn renew(
    bucket: Bucket,
    key: String,
    mut lease: Lease,
    mut version: object_store::UpdateVersion,
    lost: watch::Sender<bool>,
) {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let renewed = Lease {
            expires: now_ms() + LEASE_TTL.as_millis() as u64,
            ..lease.clone()
        };
        match bucket
            .replace(&key, encode(&renewed), version.clone())
            .await
        {
            Ok(next) => {
                version = next;
                lease = renewed;
            }
            Err(BucketError::Precondition) => {
                tracing::warn!(%key, "lease taken over by another replica");
                let _ = lost.send(true);
                return;
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "cannot renew a lease");
                if now_ms() >= lease.expires {
                    let _ = lost.send(true);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(expires: u64) -> Lease {
        Lease {
            holder: "a".into(),
            address: Some("http://10.0.0.1:5000".into()),
            repository: "library/x".into(),
            expires,
        }
    }

    #[test]
    fn expired_leases_are_taken_over_after_the_clock_skew() {
        let now = 1_000_000;
        let skew = CLOCK_SKEW.as_millis() as u64;
        assert_eq!(decide(&lease(now + 5_000), now), Decision::Respect);
        assert_eq!(
            decide(&lease(now - 1), now),
            Decision::Respect,
            "within the skew"
        );
        assert_eq!(decide(&lease(now - skew), now), Decision::Respect);
        assert_eq!(decide(&lease(now - skew - 1), now), Decision::TakeOver);
        assert_eq!(
            decide(&lease(u64::MAX), now),
            Decision::Respect,
            "no overflow"
        );
    }

    #[test]
    fn a_renewal_is_missed_once_it_is_late_here_or_by_the_holders_clock() {
        let now = 1_000_000;
        let ttl = LEASE_TTL.as_millis() as u64;
        let just_renewed = lease(now + ttl);
        let quiet = Duration::ZERO;
        assert!(!missed_renewal(&just_renewed, quiet, now));
        let due = RENEW_EVERY + RENEWAL_LATE;
        assert!(!missed_renewal(
            &just_renewed,
            due - Duration::from_millis(1),
            now
        ));
        assert!(
            missed_renewal(&just_renewed, due, now),
            "unchanged here long enough"
        );
        // Renewed, by its clock, a renewal period plus the latency and the skew ago.
        let overdue = (due + CLOCK_SKEW).as_millis() as u64;
        assert!(!missed_renewal(&lease(now + ttl - overdue), quiet, now));
        assert!(missed_renewal(&lease(now + ttl - overdue - 1), quiet, now));
        assert!(!missed_renewal(&lease(u64::MAX), quiet, now), "no overflow");
        assert!(missed_renewal(&lease(0), quiet, now));
    }

    #[test]
    fn leases_round_trip_as_json() {
        let l = lease(42);
        let text = String::from_utf8(encode(&l).to_vec()).unwrap();
        assert!(text.contains("\"holder\":\"a\""), "{text}");
        assert_eq!(serde_json::from_str::<Lease>(&text).unwrap(), l);
    }
}

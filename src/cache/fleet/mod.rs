//! Replicas of one bucket sharing their downloads: the internal route a fill's holder serves its
//! download in progress on, and the request a follower makes to it.
//!
//! [`Fleet::fetch`] is where a replica's fill gets its bytes when the cache is on a bucket: it
//! claims the blob's lease ([`crate::cache::lease`]); holding it, it downloads from the upstream
//! and stores the blob; when another replica holds it, it streams that replica's download
//! (verifying the digest itself and storing nothing: the holder does), or, when the holder
//! cannot be reached, waits (at most [`FOLLOW_WAIT`]) for the blob to appear in the bucket or
//! for the lease to expire and be taken over. A holder that refuses connections (or does not
//! answer in time) and misses a renewal is dead: its lease is taken over then, seconds before it
//! would expire. So the fleet makes one upstream download per blob.
//! A follower whose stream from the holder breaks goes on from the byte it had, taking the
//! download over when the holder is dead ([`resume`]).
//!
//! `GET /_regmirror/fills/<upstream>/<digest>` answers the bytes of a fill in flight as they
//! arrive (its last byte held back until the digest is verified, as for any reader), from byte
//! `n` on as a 206 for `Range: bytes=<n>-` when the size is known (a follower going on after a
//! break), 404 (`BLOB_UNKNOWN`) when there is none; a HEAD says whether it is in flight. It is refused (403, `DENIED`) without
//! `Regmirror-Fleet: <expiry>.<HMAC-SHA256 of "<expiry> <path>", keyed by http.secret>` whose
//! expiry (unix seconds, at most 30 s after signing) has not passed, and entirely when no
//! `http.secret` is configured. A follower checks the digest itself as well: nothing it serves
//! depends on trusting the holder.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;

use super::bucket::{Bucket, BucketError, keys};
mod resume;

use super::fill::{Download, Fetched, Keep, UpstreamBody};
use super::lease::{Claim, Decision, HeldLease, Lease, Leases, decide, missed_renewal, now_ms};
use super::metrics::Metrics;
use crate::config::cache::Secret;
use crate::reference::Digest;
use crate::registry::{ErrorCode, RegistryError};

/// The longest a replica waits for another's download it cannot stream.
pub(crate) const FOLLOW_WAIT: Duration = Duration::from_secs(300);
/// How often a waiting replica looks again.
const POLL: Duration = Duration::from_secs(1);
/// How often a holder that did not answer is looked at again, until it renews or is found dead.
const SILENT_POLL: Duration = Duration::from_millis(250);

/// This replica in a fleet sharing one bucket.
#[derive(Debug, Clone)]
pub(crate) struct Fleet {
    bucket: Bucket,
    leases: Leases,
    follower: Follower,
    metrics: Arc<Metrics>,
}

fn unavailable(bucket: &Bucket, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::new(
        ErrorCode::Unavailable,
        format!("storage {}: {e}", bucket.describe),
    )
}

impl Fleet {
    /// Runs `collect` unless another replica is collecting (then `None`): the collection holds
    /// the bucket's gc lease, and afterwards aborts the multipart uploads no live fill owns.
    pub(crate) async fn collect_alone<T, E, F>(
        &self,
        collect: F,
        upload_lifetime: Duration,
    ) -> Result<Option<T>, E>
    where
        F: Future<Output = Result<T, E>>,
        E: From<BucketError>,
    {
        let claim = self.leases.claim(keys::GC_LEASE, "").await?;
        let Claim::Held { lease, .. } = claim else {
            return Ok(None);
        };
        let result = collect.await;
        if result.is_ok() {
            let cleaned = async {
                let uploads = super::uploads::shared::expire(&self.bucket, upload_lifetime).await?;
                self.abort_abandoned_uploads(&uploads).await
            };
            if let Err(e) = cleaned.await {
                tracing::warn!(error = %e, "cannot clean up abandoned uploads");
            }
        }
        lease.release().await;
        result.map(Some)
    }

    /// Aborts the multipart uploads of blobs that no replica is storing (no live lease for the
    /// digest), and of parts of pushes no longer in progress: what a replica killed while
    /// storing left behind. A replica takes a
    /// blob's lease before it starts an upload and releases it after completing it, and the
    /// uploads are listed before the leases, so a live upload always has a live lease here.
    pub(crate) async fn abort_abandoned_uploads(
        &self,
        pushes: &std::collections::HashSet<String>,
    ) -> Result<usize, BucketError> {
        let pending = self.bucket.pending_uploads().await?;
        if pending.is_empty() {
            return Ok(0);
        }
        let now = super::lease::now_ms();
        let mut live = std::collections::HashSet::new();
        for (key, _) in self.bucket.list(keys::FILL_LEASES).await? {
            let Some(body) = self.bucket.get(&key).await? else {
                continue;
            };
            let lease: Option<Lease> = serde_json::from_slice(&body).ok();
            if lease.is_some_and(|l| decide(&l, now) == Decision::Respect) {
                live.extend(keys::digest_at_end(&key));
            }
        }
        let mut aborted = 0;
        for (key, id) in pending {
            let owned = if key.starts_with(keys::BLOBS) {
                keys::digest_at_end(&key).is_some_and(|d| live.contains(&d))
            } else if key.starts_with(super::uploads::shared::UPLOADS) {
                // A part of a push in progress (`pushes`: the live uploads).
                pushes.contains(super::uploads::shared::upload_id(&key))
            } else {
                true
            };
            if owned {
                continue;
            }
            // Completed since the listing: nothing to abort any more.
            match self.bucket.abort_upload(&key, &id).await {
                Ok(()) => {
                    tracing::info!(%key, "aborted an abandoned multipart upload");
                    aborted += 1;
                }
                Err(e) => tracing::debug!(%key, error = %e, "upload gone before its abort"),
            }
        }
        Ok(aborted)
    }

    /// Runs `store` (which uploads the blob `digest`) holding the blob's lease, so a collection
    /// meanwhile never takes the upload for one a dead replica left. When another replica
    /// holds the lease (it stores the same blob), its lease covers the upload just as well.
    pub(crate) async fn storing<T>(&self, digest: &Digest, store: impl Future<Output = T>) -> T {
        let key = keys::fill_lease(super::routing::LOCAL, digest);
        let claim = self.leases.claim(&key, "").await;
        let result = store.await;
        if let Ok(Claim::Held { lease, .. }) = claim {
            lease.release().await;
        }
        result
    }

    pub(crate) fn new(
        bucket: Bucket,
        leases: Leases,
        follower: Follower,
        metrics: Arc<Metrics>,
    ) -> Self {
        Fleet {
            bucket,
            leases,
            follower,
            metrics,
        }
    }

    /// The bytes of `digest` from `upstream` for `repository`: downloaded with `download` when
    /// this replica gets the lease, else from the replica that has it (after `confirm` checks
    /// that `repository` may read the blob, when the holder fetches for another repository).
    pub(crate) async fn fetch<C>(
        &self,
        upstream: &str,
        repository: &str,
        digest: &Digest,
        download: Download,
        confirm: C,
    ) -> Result<Fetched, RegistryError>
    where
        C: Future<Output = Result<(), RegistryError>>,
    {
        let key = keys::fill_lease(upstream, digest);
        let deadline = Instant::now() + FOLLOW_WAIT;
        let mut confirm = Some(confirm);
        let mut waited = false;
        // The lease of a holder that did not answer, as first seen, and since when.
        let mut silent: Option<(Lease, Instant)> = None;
        loop {
            // Stored for this upstream by another replica meanwhile: read it from the bucket
            // (verified again).
            if let Some(size) = self.stored(upstream, digest).await? {
                if let Some(confirm) = confirm.take() {
                    confirm.await?;
                }
                return self.read_stored(digest, size).await;
            }
            let claim = self
                .leases
                .claim(&key, repository)
                .await
                .map_err(|e| unavailable(&self.bucket, e))?;
            let theirs = match claim {
                Claim::Held { lease, took_over } => {
                    self.metrics
                        .fleet(if took_over { "took_over" } else { "led" });
                    let (size, body) = download(0).await?;
                    return Ok(Fetched::stored(size, body, Some(lease)));
                }
                Claim::Other(theirs) => theirs,
            };
            if theirs.repository != repository {
                if let Some(confirm) = confirm.take() {
                    confirm.await?;
                }
            }
            let job = resume::Job::new(
                self.clone(),
                (upstream, repository),
                digest,
                download.clone(),
            );
            let mut poll = POLL;
            match self.follow(&theirs, job).await {
                Followed::Streaming(fetched) => return Ok(fetched),
                // Finished or failed just now: look at the bucket and the lease again.
                Followed::Gone => continue,
                Followed::Unreachable => {}
                // Dead once it also misses a renewal: taken over then, not at the expiry.
                Followed::NotAnswering => match &silent {
                    Some((seen, since)) if *seen == theirs => {
                        if missed_renewal(&theirs, since.elapsed(), now_ms()) {
                            if let Some(lease) = self.take_over(&key, repository, &theirs).await? {
                                let (size, body) = download(0).await?;
                                return Ok(Fetched::stored(size, body, Some(lease)));
                            }
                        }
                        poll = SILENT_POLL;
                    }
                    _ => {
                        silent = Some((theirs.clone(), Instant::now()));
                        poll = SILENT_POLL;
                    }
                },
            }
            if !waited {
                waited = true;
                self.metrics.fleet("waited");
            }
            if Instant::now() >= deadline {
                return Err(RegistryError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "replica {} is downloading {digest} and cannot be followed; waited {FOLLOW_WAIT:?}",
                        theirs.holder
                    ),
                ));
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Takes the lease `key` over from `dead`, a holder found dead, for work on `repository`,
    /// counting the takeover: `None` when the lease changed meanwhile (renewed, taken over,
    /// released).
    async fn take_over(
        &self,
        key: &str,
        repository: &str,
        dead: &Lease,
    ) -> Result<Option<HeldLease>, RegistryError> {
        let taken = self
            .leases
            .take_over_from(key, repository, dead)
            .await
            .map_err(|e| unavailable(&self.bucket, e))?;
        if taken.is_some() {
            self.metrics.fleet("took_over");
        }
        Ok(taken)
    }

    /// The size of `digest` in the bucket when `upstream`'s namespace holds it there: content
    /// stored for another upstream does not count (see `meta`: sources).
    async fn stored(&self, upstream: &str, digest: &Digest) -> Result<Option<u64>, RegistryError> {
        let held = self
            .bucket
            .head(&keys::source(upstream, digest))
            .await
            .map_err(|e| unavailable(&self.bucket, e))?
            .is_some();
        if !held {
            return Ok(None);
        }
        self.bucket
            .head(&keys::blob(digest))
            .await
            .map_err(|e| unavailable(&self.bucket, e))
    }

    /// A blob stored in the bucket, to stream (and verify) and link.
    async fn read_stored(&self, digest: &Digest, size: u64) -> Result<Fetched, RegistryError> {
        let body = self
            .bucket
            .stream(&keys::blob(digest), 0, size)
            .await
            .map_err(|e| unavailable(&self.bucket, e))?
            .boxed();
        Ok(Fetched {
            size: Some(size),
            body,
            keep: Keep::Link,
        })
    }

    /// The holder's download, streamed when it can be followed (and gone on with when its
    /// stream breaks: see [`resume`]).
    async fn follow(&self, theirs: &Lease, job: Arc<resume::Job>) -> Followed {
        if !self.follower.enabled() || theirs.address.is_none() {
            return Followed::Unreachable;
        }
        let answer = self
            .follower
            .follow(theirs, &job.upstream, &job.digest, 0)
            .await;
        match answer {
            Ok(FromHolder::Streaming(size, body)) => {
                self.metrics.fleet("followed");
                let body = resume::following(job.clone(), theirs.clone(), size, body).boxed();
                Followed::Streaming(Fetched {
                    size,
                    body,
                    keep: Keep::Follow {
                        settle: Box::pin(job.settle()),
                    },
                })
            }
            Ok(FromHolder::NoFill) => Followed::Gone,
            Err(e) => {
                tracing::debug!(holder = %theirs.holder, error = %e, "cannot follow");
                match e {
                    FollowError::Request { source, .. } if source.is_connect() => {
                        Followed::NotAnswering
                    }
                    FollowError::Silent { .. } => Followed::NotAnswering,
                    _ => Followed::Unreachable,
                }
            }
        }
    }
}

/// What following a holder gave.
enum Followed {
    /// Its download, as it streams.
    Streaming(Fetched),
    /// It has no fill in flight (done, failed, or never started).
    Gone,
    /// It cannot be followed: no secret or address, or it answered with an error.
    Unreachable,
    /// It refused the connection or did not answer in time.
    NotAnswering,
}

/// Where the internal route lives.
pub(crate) const FILLS_PATH: &str = "/_regmirror/fills/";
/// The header carrying the route's signature.
pub(crate) const SIGNATURE_HEADER: &str = "regmirror-fleet";

/// The internal path of a fill.
pub fn fill_path(upstream: &str, digest: &Digest) -> String {
    let upstream: String = url::form_urlencoded::byte_serialize(upstream.as_bytes()).collect();
    format!("{FILLS_PATH}{upstream}/{digest}")
}

/// The (upstream, digest) of an internal path.
pub fn parse_fill_path(path: &str) -> Option<(String, Digest)> {
    let rest = path.strip_prefix(FILLS_PATH)?;
    let (upstream, digest) = rest.split_once('/')?;
    let upstream = url::form_urlencoded::parse(format!("u={upstream}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())?;
    Some((upstream, Digest::parse(digest).ok()?))
}

/// How long a signature is valid after it was made: a signed request seen in a log or by a
/// proxy cannot be replayed later.
pub const SIGNATURE_LIFETIME: Duration = Duration::from_secs(30);
/// How far a signature's expiry may lie beyond [`SIGNATURE_LIFETIME`]: the replicas' clock skew.
const CLOCK_SKEW: Duration = Duration::from_secs(30);

fn key(secret: &Secret) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.0.as_bytes())
}

/// What is signed: the expiry and the path.
fn signed(expires: u64, path: &str) -> String {
    format!("{expires} {path}")
}

/// The signature of `path` under `secret`, valid until `now` (unix seconds) plus
/// [`SIGNATURE_LIFETIME`]: `<expiry>.<hex HMAC-SHA256 of "<expiry> <path>">`.
pub fn sign(secret: &Secret, path: &str, now: u64) -> String {
    let expires = now.saturating_add(SIGNATURE_LIFETIME.as_secs());
    let tag = ring::hmac::sign(&key(secret), signed(expires, path).as_bytes());
    format!("{expires}.{}", hex::encode(tag.as_ref()))
}

/// Whether `signature` signs `path` under `secret` (constant time) and has not expired at
/// `now`; an expiry further ahead than a signature's lifetime and the clock skew is refused
/// too. Without a secret, nothing is accepted.
pub fn verify(secret: Option<&Secret>, path: &str, signature: Option<&str>, now: u64) -> bool {
    let (Some(secret), Some(signature)) = (secret, signature) else {
        return false;
    };
    let Some((expires, tag)) = signature.split_once('.') else {
        return false;
    };
    let (Ok(expires), Ok(tag)) = (expires.parse::<u64>(), hex::decode(tag)) else {
        return false;
    };
    let latest = now.saturating_add((SIGNATURE_LIFETIME + CLOCK_SKEW).as_secs());
    (now..=latest).contains(&expires)
        && ring::hmac::verify(&key(secret), signed(expires, path).as_bytes(), &tag).is_ok()
}

/// How long a follower waits for the holder's answer headers.
const HOLDER_TIMEOUT: Duration = Duration::from_secs(5);

/// What a follower asks holders with.
#[derive(Debug, Clone)]
pub(crate) struct Follower {
    client: reqwest::Client,
    secret: Option<Secret>,
}

/// Why a holder's download could not be followed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FollowError {
    #[error("the holder cannot be reached (no http.secret or http.host)")]
    NoWay,
    #[error("holder {address} did not answer")]
    Silent { address: String },
    #[error("holder {address}: {source}")]
    Request {
        address: String,
        source: reqwest::Error,
    },
    #[error("holder {address} answered {status}")]
    Status {
        address: String,
        status: reqwest::StatusCode,
    },
}

/// A holder's answer.
pub(crate) enum FromHolder {
    /// Its fill, as it streams (size when known).
    Streaming(Option<u64>, UpstreamBody),
    /// It has no fill in flight (done, failed, or never started).
    NoFill,
}

impl Follower {
    pub(crate) fn new(
        secret: Option<Secret>,
        connect_timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        // Holders are other replicas on the operator's own network: no address guard, no proxy.
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .read_timeout(Duration::from_secs(30))
            .no_proxy()
            .build()?;
        Ok(Follower { client, secret })
    }

    /// Whether this replica can follow holders at all (it knows the fleet's secret).
    pub(crate) fn enabled(&self) -> bool {
        self.secret.is_some()
    }

    /// Streams the holder's fill of `digest` from `upstream`, from byte `from` on.
    pub(crate) async fn follow(
        &self,
        lease: &Lease,
        upstream: &str,
        digest: &Digest,
        from: u64,
    ) -> Result<FromHolder, FollowError> {
        let mut request = self.request(reqwest::Method::GET, lease, upstream, digest)?;
        if from > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        let address = lease.address.as_deref().unwrap_or_default();
        let response = self.send(address, request).await?;
        match response.status() {
            reqwest::StatusCode::NOT_FOUND => Ok(FromHolder::NoFill),
            status => match super::upstreams::body_from(response, from) {
                Some((size, body)) => Ok(FromHolder::Streaming(size, body)),
                None => Err(FollowError::Status {
                    address: address.to_owned(),
                    status,
                }),
            },
        }
    }

    /// Whether the holder still has its fill of `digest` from `upstream` in flight (a HEAD).
    pub(crate) async fn probe(
        &self,
        lease: &Lease,
        upstream: &str,
        digest: &Digest,
    ) -> Result<bool, FollowError> {
        let request = self.request(reqwest::Method::HEAD, lease, upstream, digest)?;
        let address = lease.address.as_deref().unwrap_or_default();
        let response = self.send(address, request).await?;
        match response.status() {
            reqwest::StatusCode::OK => Ok(true),
            reqwest::StatusCode::NOT_FOUND => Ok(false),
            status => Err(FollowError::Status {
                address: address.to_owned(),
                status,
            }),
        }
    }

    /// A signed request for the holder's fill.
    fn request(
        &self,
        method: reqwest::Method,
        lease: &Lease,
        upstream: &str,
        digest: &Digest,
    ) -> Result<reqwest::RequestBuilder, FollowError> {
        let (Some(secret), Some(address)) = (&self.secret, &lease.address) else {
            return Err(FollowError::NoWay);
        };
        let path = fill_path(upstream, digest);
        Ok(self
            .client
            .request(method, format!("{address}{path}"))
            .header(SIGNATURE_HEADER, sign(secret, &path, super::meta::now())))
    }

    /// Sends `request` to the holder at `address`: its answer's head, within [`HOLDER_TIMEOUT`].
    async fn send(
        &self,
        address: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, FollowError> {
        let address = address.to_owned();
        tokio::time::timeout(HOLDER_TIMEOUT, request.send())
            .await
            .map_err(|_| FollowError::Silent {
                address: address.clone(),
            })?
            .map_err(|source| FollowError::Request { address, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_paths_round_trip() {
        let d = crate::cache::store::sha256(b"x");
        for upstream in ["docker.io", "127.0.0.1:5001", "[::1]:5000"] {
            let path = fill_path(upstream, &d);
            assert!(path.starts_with(FILLS_PATH), "{path}");
            assert_eq!(
                parse_fill_path(&path),
                Some((upstream.to_owned(), d.clone()))
            );
        }
        assert_eq!(parse_fill_path("/_regmirror/fills/x/notadigest"), None);
    }

    #[test]
    fn only_the_fleet_secret_signs_and_signatures_expire() {
        let secret = Secret("the-fleet-secret".into());
        let path = "/_regmirror/fills/docker.io/sha256:00";
        let now = 1_000_000;
        let signature = sign(&secret, path, now);
        assert!(signature.starts_with("1000030."), "{signature}");
        assert!(verify(Some(&secret), path, Some(&signature), now));
        assert!(verify(Some(&secret), path, Some(&signature), now + 30));
        assert!(
            !verify(Some(&secret), path, Some(&signature), now + 31),
            "expired"
        );
        // A signature made by a clock ahead by up to the skew passes; further ahead, not.
        assert!(verify(
            Some(&secret),
            path,
            Some(&sign(&secret, path, now + 30)),
            now
        ));
        assert!(!verify(
            Some(&secret),
            path,
            Some(&sign(&secret, path, now + 31)),
            now
        ));
        // The expiry is signed: moving it breaks the signature.
        let moved = signature.replacen("1000030.", "1000040.", 1);
        assert!(!verify(Some(&secret), path, Some(&moved), now));
        assert!(!verify(
            Some(&secret),
            "/_regmirror/fills/other",
            Some(&signature),
            now
        ));
        assert!(!verify(
            Some(&Secret("another-fleet-secret".into())),
            path,
            Some(&signature),
            now
        ));
        for wrong in [None, Some("zz"), Some("1000030"), Some(".00"), Some("x.00")] {
            assert!(!verify(Some(&secret), path, wrong, now), "{wrong:?}");
        }
        assert!(
            !verify(None, path, Some(&signature), now),
            "no secret, no route"
        );
    }
}

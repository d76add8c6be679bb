//! Why a fill failed, kept apart up to the one place it becomes the registry error its readers'
//! clients get ([`FillError::registry_error`]): a full disk, a write that failed, an upstream
//! too slow or sending the wrong bytes, a limit, a lost lease.

use std::io;
use std::time::Duration;

use tokio::task::JoinError;

use crate::cache::meta::MetaError;
use crate::cache::store::StoreError;
use crate::reference::Digest;
use crate::registry::{ErrorCode, RegistryError};

/// Why a fill did not start, or did not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FillError {
    /// `limits.max_fills` are in flight.
    #[error("{in_flight} upstream downloads are in progress (limits.max_fills); try again shortly")]
    TooMany { in_flight: usize },
    /// The upstream's share of `limits.max_fills` is taken.
    #[error(
        "upstream {share} has {held} downloads in progress, its share of limits.max_fills \
         (limits.max_fills_per_upstream); try again shortly"
    )]
    ShareFull { share: String, held: usize },
    /// The spool file could not be created.
    #[error("internal error: {0}")]
    Spool(#[source] io::Error),
    /// The upstream (or the fleet) did not deliver: the error as a client gets it.
    #[error("{0}")]
    Fetch(RegistryError),
    #[error("blob {digest} is {size} bytes or more, over limits.max_blob_size ({limit} bytes)")]
    TooLarge {
        digest: Digest,
        size: u64,
        limit: u64,
    },
    /// The free space could not be read.
    #[error("{0}")]
    Space(#[source] io::Error),
    #[error("not enough free space for {digest}: {needed} bytes needed, {free} free")]
    NoRoom {
        digest: Digest,
        needed: u64,
        free: u64,
    },
    /// Blocks could not be allocated ahead of the bytes: the disk is full (or the quota).
    #[error("cannot reserve space for {digest} ({upto} of {size} bytes): {source}")]
    Reserve {
        digest: Digest,
        upto: u64,
        size: u64,
        source: io::Error,
    },
    /// Writing or syncing the spool file failed (ENOSPC, EIO, ...).
    #[error("cannot write the cache: {0}")]
    Write(#[source] io::Error),
    #[error(
        "upstream too slow for {digest}: {written} bytes in {elapsed:.0?}, under \
         limits.fill_min_rate ({min_rate} bytes/s)"
    )]
    TooSlow {
        digest: Digest,
        written: u64,
        elapsed: Duration,
        min_rate: u64,
    },
    #[error("the fleet's lease on {digest} was lost: another replica downloads it")]
    LeaseLost { digest: Digest },
    #[error("upstream body of {digest} broke: {source}")]
    Broken { digest: Digest, source: io::Error },
    #[error("upstream sent more than {size} bytes for {digest}")]
    TooLong { digest: Digest, size: u64 },
    #[error("upstream body of {digest} ended at {written} of {size} bytes")]
    Short {
        digest: Digest,
        written: u64,
        size: u64,
    },
    #[error("upstream sent content with digest {actual} for {digest}")]
    Mismatch { digest: Digest, actual: Digest },
    /// Hashing or syncing on the blocking pool did not finish (a panic).
    #[error("{0}")]
    Task(#[source] JoinError),
    /// The verified blob's records could not be written.
    #[error("cannot commit {digest}: {source}")]
    Record { digest: Digest, source: MetaError },
    /// The verified blob could not be moved into the store.
    #[error("cannot commit {digest}: {source}")]
    Store { digest: Digest, source: StoreError },
    /// The task ended without a result (a panic).
    #[error("the download was abandoned (internal error)")]
    Abandoned,
}

impl FillError {
    /// The error the fill's readers' clients get.
    pub(crate) fn registry_error(&self) -> RegistryError {
        let code = match self {
            FillError::Fetch(error) => return error.clone(),
            FillError::TooMany { .. } | FillError::ShareFull { .. } => ErrorCode::TooManyRequests,
            FillError::TooLarge { .. } => ErrorCode::SizeInvalid,
            FillError::Mismatch { .. } => ErrorCode::DigestInvalid,
            FillError::Spool(_)
            | FillError::Space(_)
            | FillError::NoRoom { .. }
            | FillError::Reserve { .. }
            | FillError::Write(_)
            | FillError::TooSlow { .. }
            | FillError::LeaseLost { .. }
            | FillError::Broken { .. }
            | FillError::TooLong { .. }
            | FillError::Short { .. }
            | FillError::Task(_)
            | FillError::Record { .. }
            | FillError::Store { .. }
            | FillError::Abandoned => ErrorCode::Unavailable,
        };
        RegistryError::new(code, self.to_string())
    }
}

impl From<RegistryError> for FillError {
    fn from(error: RegistryError) -> Self {
        FillError::Fetch(error)
    }
}

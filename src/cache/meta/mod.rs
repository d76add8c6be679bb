//! The cache's metadata: what survives restarts and crashes without a directory walk or a bucket
//! listing per request. One interface, [`Metadata`], over two backends the cache logic never
//! tells apart: [`local`] (one redb file, for a cache on the local file system) and [`bucket`]
//! (objects in an S3-compatible bucket, shared by every replica).
//!
//! - tags: (upstream, repository, tag) -> digest, media type, validation time;
//! - manifests: digest -> media type, size and what they reference (the bytes are a blob);
//! - links: (upstream, repository, digest): which repository may read which blob or manifest,
//!   so private content fetched for one repository is never served to another;
//! - blobs: digest -> size of committed blobs;
//! - sources: (namespace, digest): the content's bytes were received from that upstream (or
//!   pushed to the local namespace). The store is shared by every namespace, so a digest another
//!   namespace holds is served on a route only once its own upstream has delivered the same
//!   bytes: an upstream that merely *claims* a digest (a HEAD 200) never gets content cached from
//!   elsewhere;
//! - referrer lists: (upstream, repository, subject) -> the descriptors of the manifests that
//!   refer to the subject (signatures, SBOMs, attestations), one bounded record per subject,
//!   replaced whole; evicted by their own last use and their subject's;
//! - last uses (for eviction) and doomed digests (evicted, files not yet deleted).
//!
//! Blob and manifest records are written before their content is made visible in the store, so
//! every stored blob has a record (eviction sees it); a crash in between leaves a record without
//! content, which reads as a miss and is filled again.

pub(crate) mod bucket;
pub(crate) mod local;

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cache::bucket::BucketError;
use crate::reference::{Digest, DigestError};
pub(crate) use bucket::BucketMetadata;
pub(crate) use local::LocalMetadata;

/// A cached tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TagRecord {
    pub(crate) digest: String,
    pub(crate) media_type: String,
    /// Unix seconds when the upstream last confirmed the tag.
    pub(crate) validated_at: u64,
}

/// A cached manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ManifestRecord {
    pub(crate) media_type: String,
    pub(crate) size: u64,
    /// What it references (config, layers, child manifests): kept alive while it lives.
    #[serde(default)]
    pub(crate) references: Vec<String>,
}

/// The metadata a collection decides from.
#[derive(Debug, Default)]
pub(crate) struct Inventory {
    pub(crate) manifests: HashMap<String, ManifestRecord>,
    /// Committed blobs and their sizes.
    pub(crate) blobs: HashMap<String, u64>,
    pub(crate) last_used: HashMap<String, u64>,
    /// (upstream, repository, digest, linked at)
    pub(crate) links: Vec<(String, String, String, u64)>,
    /// Digests evicted whose content may still be stored.
    pub(crate) doomed: Vec<String>,
    /// Referrer lists, with their sizes and when they were stored.
    pub(crate) referrer_lists: Vec<StoredList>,
}

/// Which referrer list: the referrers of `subject` in one repository of an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ListKey {
    pub(crate) upstream: String,
    pub(crate) repository: String,
    pub(crate) subject: String,
}

impl ListKey {
    pub(crate) fn new(upstream: &str, repository: &str, subject: &Digest) -> Self {
        ListKey {
            upstream: upstream.to_owned(),
            repository: repository.to_owned(),
            subject: subject.to_string(),
        }
    }

    /// Its name among the last uses (beside digests, which never contain U+001F).
    pub(crate) fn use_key(&self) -> String {
        format!(
            "referrers\u{1f}{}\u{1f}{}\u{1f}{}",
            self.upstream, self.repository, self.subject
        )
    }
}

/// A referrer list as a collection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredList {
    pub(crate) key: ListKey,
    /// The record's size.
    pub(crate) bytes: u64,
    /// Unix seconds when it was written.
    pub(crate) stored_at: u64,
}

/// The referrers of one subject in one repository: one record, replaced whole, never more than
/// the `limits` allow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReferrerList {
    /// Unix seconds when it was written.
    #[serde(default)]
    pub(crate) stored_at: u64,
    /// Why the upstream's answer was cut (served as a `Warning` with the list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cut: Option<String>,
    /// The descriptors, one per digest, sorted by digest.
    #[serde(default)]
    pub(crate) descriptors: Vec<serde_json::Value>,
}

/// How many referrers, and how many bytes of their descriptors, one list may hold
/// (`limits.max_referrers`, `limits.max_referrers_size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListBounds {
    pub count: usize,
    pub bytes: usize,
}

/// One referrer added to or removed from a list.
#[derive(Debug, Clone)]
pub(crate) enum ListChange {
    /// A descriptor (it replaces one of the same digest), within the bounds.
    Add(serde_json::Value, ListBounds),
    /// The referrer of this digest goes.
    Remove(String),
}

/// What [`Metadata::change_referrers`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Changed {
    Applied,
    /// The list is at its bounds: nothing was added.
    Full,
}

impl ReferrerList {
    /// Applies a change, keeping the descriptors sorted by digest.
    pub(crate) fn apply(&mut self, change: &ListChange) -> Changed {
        let digest_of = |d: &serde_json::Value| d["digest"].as_str().unwrap_or("").to_owned();
        match change {
            ListChange::Remove(digest) => {
                self.descriptors.retain(|d| digest_of(d) != *digest);
            }
            ListChange::Add(descriptor, bounds) => {
                let digest = digest_of(descriptor);
                let others: Vec<&serde_json::Value> = self
                    .descriptors
                    .iter()
                    .filter(|d| digest_of(d) != digest)
                    .collect();
                let bytes: usize = others
                    .iter()
                    .chain([&descriptor])
                    .map(|d| d.to_string().len())
                    .sum();
                if others.len() >= bounds.count || bytes > bounds.bytes {
                    return Changed::Full;
                }
                self.descriptors.retain(|d| digest_of(d) != digest);
                let at = self.descriptors.partition_point(|d| digest_of(d) < digest);
                self.descriptors.insert(at, descriptor.clone());
            }
        }
        self.stored_at = now();
        Changed::Applied
    }
}

/// A verified blob about to be made visible in the store, and who fetched or pushed it.
#[derive(Debug)]
pub(crate) struct NewBlob<'a> {
    pub(crate) upstream: &'a str,
    pub(crate) repository: &'a str,
    pub(crate) digest: &'a Digest,
    pub(crate) size: u64,
}

/// A manifest to record, with what it references.
#[derive(Debug)]
pub(crate) struct NewManifest<'a> {
    pub(crate) upstream: &'a str,
    pub(crate) repository: &'a str,
    pub(crate) tag: Option<&'a str>,
    pub(crate) digest: &'a Digest,
    pub(crate) media_type: &'a str,
    pub(crate) size: u64,
    /// Blobs and child manifests it references: linked to the repository too.
    pub(crate) references: &'a [Digest],
}

/// Why the metadata could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The local database (redb).
    #[error("cache metadata: {0}")]
    Database(#[from] redb::Error),
    /// The bucket the records are kept in.
    #[error("cache metadata: {0}")]
    Bucket(#[from] BucketError),
    /// A record that does not encode or decode.
    #[error("cache metadata: {0}")]
    Record(#[from] serde_json::Error),
    /// A referrer list that does not decode.
    #[error("cache metadata: referrers of {subject}: {source}")]
    Referrers {
        subject: String,
        source: serde_json::Error,
    },
    /// A referrer list other replicas kept changing while this one tried to change it.
    #[error("cache metadata: referrers of {subject} kept changing under {tries} tries")]
    Contended { subject: String, tries: usize },
    /// A digest among the records that does not parse.
    #[error("cache metadata: {0}")]
    Digest(#[from] DigestError),
    /// A write on the blocking pool did not finish (a panic).
    #[error("cache metadata: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// redb's errors of each step (open, begin, table, read, commit) are one [`redb::Error`].
macro_rules! database_errors {
    ($($step:ty),*) => {
        $(impl From<$step> for MetaError {
            fn from(e: $step) -> Self {
                MetaError::Database(e.into())
            }
        })*
    };
}

database_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl MetaError {
    /// A referrer list of `subject` that does not decode.
    pub(crate) fn referrers(subject: &str, source: serde_json::Error) -> Self {
        MetaError::Referrers {
            subject: subject.to_owned(),
            source,
        }
    }
}

/// Unix seconds now.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the metadata says about one digest for one repository of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Access {
    /// The upstream's namespace holds the bytes (its own upstream delivered them, or they were
    /// pushed there).
    pub(crate) held: bool,
    /// The repository is linked to the digest (a manifest of it referenced the digest, or the
    /// upstream confirmed the repository may read it).
    pub(crate) linked: bool,
}

/// The metadata of a cache, on whichever backend it runs.
#[derive(Debug)]
pub(crate) enum Metadata {
    Local(LocalMetadata),
    Bucket(BucketMetadata),
}

impl Metadata {
    /// The metadata of a cache on the local file system: one redb file at `path`.
    pub(crate) fn open_local(path: &std::path::Path) -> Result<Self, MetaError> {
        LocalMetadata::open(path).map(Metadata::Local)
    }

    pub(crate) async fn tag(
        &self,
        upstream: &str,
        repository: &str,
        tag: &str,
    ) -> Result<Option<TagRecord>, MetaError> {
        match self {
            Metadata::Local(m) => m.tag(upstream, repository, tag),
            Metadata::Bucket(m) => m.tag(upstream, repository, tag).await,
        }
    }

    /// Tags cached for a repository, sorted.
    pub(crate) async fn tags(
        &self,
        upstream: &str,
        repository: &str,
    ) -> Result<Vec<String>, MetaError> {
        match self {
            Metadata::Local(m) => m.tags(upstream, repository),
            Metadata::Bucket(m) => m.tags(upstream, repository).await,
        }
    }

    pub(crate) async fn forget_tag(
        &self,
        upstream: &str,
        repository: &str,
        tag: &str,
    ) -> Result<(), MetaError> {
        match self {
            Metadata::Local(m) => m.forget_tag(upstream, repository, tag),
            Metadata::Bucket(m) => m.forget_tag(upstream, repository, tag).await,
        }
    }

    pub(crate) async fn manifest(
        &self,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, MetaError> {
        match self {
            Metadata::Local(m) => m.manifest(digest),
            Metadata::Bucket(m) => m.manifest(digest).await,
        }
    }

    /// Records a manifest, its tag, that its namespace holds it, and links it and everything it
    /// references to the repository. True when the manifest is new to the store (exact on the
    /// local backend; on a bucket, when it comes with its references).
    pub(crate) async fn put_manifest(&self, manifest: &NewManifest<'_>) -> Result<bool, MetaError> {
        match self {
            Metadata::Local(m) => m.put_manifest(manifest),
            Metadata::Bucket(m) => m.put_manifest(manifest).await,
        }
    }

    pub(crate) async fn is_linked(
        &self,
        upstream: &str,
        repository: &str,
        digest: &Digest,
    ) -> Result<bool, MetaError> {
        match self {
            Metadata::Local(m) => m.is_linked(upstream, repository, digest),
            Metadata::Bucket(m) => m.is_linked(upstream, repository, digest).await,
        }
    }

    pub(crate) async fn link(
        &self,
        upstream: &str,
        repository: &str,
        digest: &Digest,
    ) -> Result<(), MetaError> {
        match self {
            Metadata::Local(m) => m.link(upstream, repository, digest),
            Metadata::Bucket(m) => m.link(upstream, repository, digest).await,
        }
    }

    /// Removes a repository's link to `digest` and every tag of the repository pointing at it.
    pub(crate) async fn unlink(
        &self,
        upstream: &str,
        repository: &str,
        digest: &Digest,
    ) -> Result<(), MetaError> {
        match self {
            Metadata::Local(m) => m.unlink(upstream, repository, digest),
            Metadata::Bucket(m) => m.unlink(upstream, repository, digest).await,
        }
    }

    /// The referrers recorded for `subject` in the repository.
    pub(crate) async fn referrer_list(
        &self,
        key: &ListKey,
    ) -> Result<Option<ReferrerList>, MetaError> {
        match self {
            Metadata::Local(m) => m.referrer_list(key),
            Metadata::Bucket(m) => m.referrer_list(key).await,
        }
    }

    /// Makes `list` the referrers of its subject (an empty list removes the record). On the
    /// local backend the write runs on the blocking pool.
    pub(crate) async fn put_referrer_list(
        &self,
        key: &ListKey,
        list: &ReferrerList,
    ) -> Result<(), MetaError> {
        match self {
            Metadata::Local(m) => m.put_referrer_list(key, list).await,
            Metadata::Bucket(m) => m.put_referrer_list(key, list).await,
        }
    }

    /// Adds or removes one referrer of a subject in one atomic step (a pushed or deleted
    /// manifest with a `subject`).
    pub(crate) async fn change_referrers(
        &self,
        key: &ListKey,
        change: ListChange,
    ) -> Result<Changed, MetaError> {
        match self {
            Metadata::Local(m) => m.change_referrers(key, change).await,
            Metadata::Bucket(m) => m.change_referrers(key, change).await,
        }
    }

    /// Whether `upstream`'s namespace holds `digest` and `repository` is linked to it, in one
    /// read: the question every cache hit asks.
    pub(crate) async fn access(
        &self,
        upstream: &str,
        repository: &str,
        digest: &Digest,
    ) -> Result<Access, MetaError> {
        match self {
            Metadata::Local(m) => m.access(upstream, repository, digest),
            Metadata::Bucket(m) => {
                let (held, linked) = futures_util::try_join!(
                    m.has_source(upstream, digest),
                    m.is_linked(upstream, repository, digest)
                )?;
                Ok(Access { held, linked })
            }
        }
    }

    /// Whether `upstream`'s namespace received (or was pushed) the bytes of `digest`.
    pub(crate) async fn has_source(
        &self,
        upstream: &str,
        digest: &Digest,
    ) -> Result<bool, MetaError> {
        match self {
            Metadata::Local(m) => m.has_source(upstream, digest),
            Metadata::Bucket(m) => m.has_source(upstream, digest).await,
        }
    }

    /// Records a verified blob: its size, that its namespace holds it, and the repository it
    /// was fetched for or pushed to. True when the blob is new to the store (exact on the local
    /// backend; always on a bucket).
    pub(crate) async fn put_blob(&self, blob: &NewBlob<'_>) -> Result<bool, MetaError> {
        match self {
            Metadata::Local(m) => m.put_blob(blob),
            Metadata::Bucket(m) => m.put_blob(blob).await,
        }
    }

    /// Records last-use times (digest -> unix seconds).
    pub(crate) async fn record_use(&self, uses: &[(String, u64)]) -> Result<(), MetaError> {
        match self {
            Metadata::Local(m) => m.record_use(uses),
            Metadata::Bucket(m) => m.record_use(uses).await,
        }
    }

    /// Everything a collection needs.
    pub(crate) async fn inventory(&self) -> Result<Inventory, MetaError> {
        match self {
            Metadata::Local(m) => m.inventory(),
            Metadata::Bucket(m) => m.inventory().await,
        }
    }

    /// Forgets evicted manifests and blobs: their links everywhere, tags pointing at them, their
    /// records and use times; they stay doomed until their content is deleted. Evicted referrer
    /// lists go with their use times.
    pub(crate) async fn evict(
        &self,
        digests: &[String],
        lists: &[ListKey],
    ) -> Result<(), MetaError> {
        match self {
            Metadata::Local(m) => m.evict(digests, lists),
            Metadata::Bucket(m) => m.evict(digests, lists).await,
        }
    }

    /// Forgets doomed digests once their content is deleted.
    pub(crate) async fn clear_doomed(&self, digests: &[String]) -> Result<(), MetaError> {
        match self {
            Metadata::Local(m) => m.clear_doomed(digests),
            Metadata::Bucket(m) => m.clear_doomed(digests).await,
        }
    }

    /// Every (upstream, repository) with cached content, sorted and distinct.
    pub(crate) async fn repositories(&self) -> Result<Vec<(String, String)>, MetaError> {
        match self {
            Metadata::Local(m) => m.repositories(),
            Metadata::Bucket(m) => m.repositories().await,
        }
    }
}

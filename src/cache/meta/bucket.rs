//! The metadata of a cache on an S3-compatible bucket: one small object per record (see the key
//! layout in [`crate::cache::bucket`]), so any number of replicas share it with no coordination
//! beyond what S3 gives: a record is written whole or not at all.
//!
//! Facts that only ever appear (a link, a source, a manifest's record: immutable by digest) are
//! remembered per replica once seen, bounded, so a hot blob costs no bucket request to check;
//! eviction removing one behind a replica's back only costs that replica a miss (the content is
//! gone, so it is filled again). Tags are always read from the bucket: another replica may have
//! moved them.
//!
//! Last uses are written in batches, one object per replica and flush, and merged by the
//! collection that reads them. Tags of evicted manifests are not searched for (that would read
//! every tag): a tag whose manifest is gone reads as not cached.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};

use super::{
    Changed, Inventory, ListBounds, ListChange, ListKey, ManifestRecord, MetaError, NewBlob,
    NewManifest, ReferrerList, StoredList, TagRecord, now,
};
use crate::cache::bucket::{Bucket, BucketError, keys};
use crate::reference::Digest;
use crate::sync::lock;

/// Facts remembered per replica at most; past it the memory starts afresh.
const MAX_KNOWN: usize = 100_000;
/// Bucket requests a metadata operation makes at once.
const PARALLEL: usize = 16;
/// Tries of a read-change-write that another replica keeps winning.
const CONDITIONAL_TRIES: usize = 8;
/// Referrers recorded before lists are all kept when they are migrated.
const MIGRATED: ListBounds = ListBounds {
    count: usize::MAX,
    bytes: usize::MAX,
};

fn err(e: BucketError) -> MetaError {
    MetaError::Bucket(e)
}

#[derive(Debug)]
pub(crate) struct BucketMetadata {
    bucket: Bucket,
    /// This replica's name in the last-use batches.
    replica: String,
    batch: AtomicU64,
    known: Mutex<HashSet<String>>,
    records: Mutex<HashMap<String, ManifestRecord>>,
}

impl BucketMetadata {
    pub(crate) fn new(bucket: Bucket, replica: String) -> Self {
        BucketMetadata {
            bucket,
            replica,
            batch: AtomicU64::new(0),
            known: Mutex::new(HashSet::new()),
            records: Mutex::new(HashMap::new()),
        }
    }

    fn remember(&self, key: String) {
        let mut known = lock(&self.known);
        if known.len() >= MAX_KNOWN {
            known.clear();
        }
        known.insert(key);
    }

    /// Whether the object `key` exists, from memory when it was seen before.
    async fn exists(&self, key: String) -> Result<bool, MetaError> {
        if lock(&self.known).contains(&key) {
            return Ok(true);
        }
        let exists = self.bucket.head(&key).await.map_err(err)?.is_some();
        if exists {
            self.remember(key);
        }
        Ok(exists)
    }

    /// Writes small marker objects (the time as their body), several at once.
    async fn mark(&self, keys: Vec<String>) -> Result<(), MetaError> {
        let stamp = Bytes::from(now().to_string());
        futures_util::stream::iter(keys)
            .map(|key| {
                let stamp = stamp.clone();
                async move {
                    self.bucket.put(&key, stamp).await.map_err(err)?;
                    self.remember(key);
                    Ok::<(), MetaError>(())
                }
            })
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await
    }

    async fn delete_all(&self, keys: Vec<String>) -> Result<(), MetaError> {
        {
            let mut known = lock(&self.known);
            for key in &keys {
                known.remove(key);
            }
        }
        futures_util::stream::iter(keys)
            .map(|key| async move { self.bucket.delete(&key).await.map_err(err) })
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await
    }

    pub(crate) async fn tag(
        &self,
        upstream: &str,
        repository: &str,
        tag: &str,
    ) -> Result<Option<TagRecord>, MetaError> {
        let body = self
            .bucket
            .get(&keys::tag(upstream, repository, tag))
            .await
            .map_err(err)?;
        Ok(body.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    pub(crate) async fn tags(
        &self,
        upstream: &str,
        repository: &str,
    ) -> Result<Vec<String>, MetaError> {
        let prefix = keys::tags(upstream, repository);
        let mut tags: Vec<String> = self
            .bucket
            .list(&prefix)
            .await
            .map_err(err)?
            .into_iter()
            .filter_map(|(key, _)| key.strip_prefix(&prefix).map(str::to_owned))
            .filter(|tag| !tag.contains('/'))
            .collect();
        tags.sort();
        Ok(tags)
    }

    pub(crate) async fn forget_tag(
        &self,
        upstream: &str,
        repository: &str,
        tag: &str,
    ) -> Result<(), MetaError> {
        self.bucket
            .delete(&keys::tag(upstream, repository, tag))
            .await
            .map_err(err)
    }

    pub(crate) async fn manifest(
        &self,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, MetaError> {
        if let Some(record) = lock(&self.records).get(digest.as_str()) {
            return Ok(Some(record.clone()));
        }
        let body = self
            .bucket
            .get(&keys::manifest(digest))
            .await
            .map_err(err)?;
        let record: Option<ManifestRecord> = body.and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(record) = &record {
            let mut records = lock(&self.records);
            if records.len() >= MAX_KNOWN / 10 {
                records.clear();
            }
            records.insert(digest.to_string(), record.clone());
        }
        Ok(record)
    }

    /// New content: a manifest stored with its references (a tag moved to a manifest already
    /// stored records none), without a read to tell.
    pub(crate) async fn put_manifest(&self, m: &NewManifest<'_>) -> Result<bool, MetaError> {
        let new = !m.references.is_empty();
        let mut references: Vec<String> = m.references.iter().map(ToString::to_string).collect();
        if references.is_empty() {
            // A tag moved to a manifest already stored: keep what the record knew.
            if let Some(old) = self.manifest(m.digest).await? {
                references = old.references;
            }
        }
        let record = ManifestRecord {
            media_type: m.media_type.to_owned(),
            size: m.size,
            references,
        };
        let body = serde_json::to_vec(&record).map_err(MetaError::from)?;
        self.bucket
            .put(&keys::manifest(m.digest), Bytes::from(body))
            .await
            .map_err(err)?;
        lock(&self.records).insert(m.digest.to_string(), record);
        let mut markers = vec![keys::source(m.upstream, m.digest)];
        markers.extend(
            std::iter::once(m.digest)
                .chain(m.references)
                .map(|d| keys::link(m.upstream, m.repository, d)),
        );
        self.mark(markers).await?;
        if let Some(tag) = m.tag {
            let record = TagRecord {
                digest: m.digest.to_string(),
                media_type: m.media_type.to_owned(),
                validated_at: now(),
            };
            let body = serde_json::to_vec(&record).map_err(MetaError::from)?;
            self.bucket
                .put(&keys::tag(m.upstream, m.repository, tag), Bytes::from(body))
                .await
                .map_err(err)?;
        }
        Ok(new)
    }

    pub(crate) async fn is_linked(
        &self,
        upstream: &str,
        repository: &str,
        digest: &Digest,
    ) -> Result<bool, MetaError> {
        self.exists(keys::link(upstream, repository, digest)).await
    }

    pub(crate) async fn link(
        &self,
        upstream: &str,
        repository: &str,
        digest: &Digest,
    ) -> Result<(), MetaError> {
        self.mark(vec![keys::link(upstream, repository, digest)])
            .await
    }

    pub(crate) async fn unlink(
        &self,
        upstream: &str,
        repository: &str,
        digest: &Digest,
    ) -> Result<(), MetaError> {
        let mut doomed = vec![keys::link(upstream, repository, digest)];
        for tag in self.tags(upstream, repository).await? {
            if self
                .tag(upstream, repository, &tag)
                .await?
                .is_some_and(|r| r.digest == digest.as_str())
            {
                doomed.push(keys::tag(upstream, repository, &tag));
            }
        }
        self.delete_all(doomed).await
    }

    pub(crate) async fn referrer_list(
        &self,
        key: &ListKey,
    ) -> Result<Option<ReferrerList>, MetaError> {
        let body = self
            .bucket
            .get(&keys::referrer_list(key))
            .await
            .map_err(err)?;
        body.map(|b| serde_json::from_slice(&b))
            .transpose()
            .map_err(|e| MetaError::referrers(&key.subject, e))
    }

    pub(crate) async fn put_referrer_list(
        &self,
        key: &ListKey,
        list: &ReferrerList,
    ) -> Result<(), MetaError> {
        let object = keys::referrer_list(key);
        if list.descriptors.is_empty() {
            return self.bucket.delete(&object).await.map_err(err);
        }
        let body = serde_json::to_vec(list).map_err(MetaError::from)?;
        self.bucket
            .put(&object, Bytes::from(body))
            .await
            .map_err(err)
    }

    /// Read, change, and write back only if nobody wrote it meanwhile (conditional puts), so
    /// two replicas adding referrers of one subject at once both land.
    pub(crate) async fn change_referrers(
        &self,
        key: &ListKey,
        change: ListChange,
    ) -> Result<Changed, MetaError> {
        let object = keys::referrer_list(key);
        for _ in 0..CONDITIONAL_TRIES {
            let current = self.bucket.get_versioned(&object).await.map_err(err)?;
            let mut list: ReferrerList = match &current {
                Some(current) => serde_json::from_slice(&current.body)
                    .map_err(|e| MetaError::referrers(&key.subject, e))?,
                None => ReferrerList::default(),
            };
            if list.apply(&change) == Changed::Full {
                return Ok(Changed::Full);
            }
            let body = Bytes::from(serde_json::to_vec(&list).map_err(MetaError::from)?);
            let written = match current {
                None if list.descriptors.is_empty() => return Ok(Changed::Applied),
                None => self.bucket.create(&object, body).await.map(drop),
                // A conditional delete is not in every S3: an empty list stays as a record.
                Some(current) => self
                    .bucket
                    .replace(&object, body, current.version)
                    .await
                    .map(drop),
            };
            match written {
                Ok(()) => return Ok(Changed::Applied),
                Err(BucketError::Precondition) => continue,
                Err(e) => return Err(err(e)),
            }
        }
        Err(MetaError::Contended {
            subject: key.subject.clone(),
            tries: CONDITIONAL_TRIES,
        })
    }

    /// Referrers recorded before lists (one object per referrer) become lists.
    async fn migrate_referrers(&self) -> Result<(), MetaError> {
        let old = self
            .bucket
            .list(keys::REFERRERS_BEFORE_LISTS)
            .await
            .map_err(err)?;
        let mut lists: HashMap<ListKey, Vec<String>> = HashMap::new();
        for (object, _) in old {
            if let Some(key) = keys::parse_referrer_before_lists(&object) {
                lists.entry(key).or_default().push(object);
            }
        }
        for (key, objects) in lists {
            let mut list = self.referrer_list(&key).await?.unwrap_or_default();
            for object in &objects {
                let body = self.bucket.get(object).await.map_err(err)?;
                if let Some(descriptor) = body.and_then(|b| serde_json::from_slice(&b).ok()) {
                    list.apply(&ListChange::Add(descriptor, MIGRATED));
                }
            }
            self.put_referrer_list(&key, &list).await?;
            self.delete_all(objects).await?;
        }
        Ok(())
    }

    pub(crate) async fn has_source(
        &self,
        upstream: &str,
        digest: &Digest,
    ) -> Result<bool, MetaError> {
        self.exists(keys::source(upstream, digest)).await
    }

    /// Always new content: the blob's record is its object, which a read would have to ask for
    /// (a blob fetched again for a second upstream counts twice until the next collection).
    pub(crate) async fn put_blob(&self, blob: &NewBlob<'_>) -> Result<bool, MetaError> {
        self.mark(vec![
            keys::source(blob.upstream, blob.digest),
            keys::link(blob.upstream, blob.repository, blob.digest),
        ])
        .await?;
        Ok(true)
    }

    pub(crate) async fn record_use(&self, uses: &[(String, u64)]) -> Result<(), MetaError> {
        if uses.is_empty() {
            return Ok(());
        }
        let batch: HashMap<&str, u64> = uses.iter().map(|(d, at)| (d.as_str(), *at)).collect();
        let body = serde_json::to_vec(&batch).map_err(MetaError::from)?;
        let n = self.batch.fetch_add(1, Ordering::Relaxed);
        let key = format!("{}{}/{}-{n}", keys::USED, self.replica, now());
        self.bucket.put(&key, Bytes::from(body)).await.map_err(err)
    }

    /// Everything a collection needs. The last-use batches read are merged into one (and
    /// removed), so they do not pile up.
    pub(crate) async fn inventory(&self) -> Result<Inventory, MetaError> {
        self.migrate_referrers().await?;
        let mut inventory = Inventory::default();
        let manifests: Vec<String> = self
            .bucket
            .list(keys::MANIFESTS)
            .await
            .map_err(err)?
            .into_iter()
            .filter_map(|(key, _)| keys::digest_at_end(&key))
            .collect();
        let records: Vec<(String, Option<ManifestRecord>)> = futures_util::stream::iter(manifests)
            .map(|digest| async move {
                let parsed = Digest::parse(&digest).map_err(MetaError::from)?;
                let record = self.manifest(&parsed).await?;
                Ok::<_, MetaError>((digest, record))
            })
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        inventory.manifests = records
            .into_iter()
            .filter_map(|(d, r)| Some((d, r?)))
            .collect();
        for (key, meta) in self.bucket.list(keys::BLOBS).await.map_err(err)? {
            if let Some(digest) = keys::digest_at_end(&key) {
                inventory.blobs.insert(digest, meta.size);
            }
        }
        for (object, meta) in self.bucket.list(keys::REFERRER_LISTS).await.map_err(err)? {
            if let Some(key) = keys::parse_referrer_list(&object) {
                inventory.referrer_lists.push(StoredList {
                    key,
                    bytes: meta.size,
                    stored_at: u64::try_from(meta.last_modified.timestamp()).unwrap_or(0),
                });
            }
        }
        for (key, meta) in self.bucket.list(keys::LINKS).await.map_err(err)? {
            if let Some((upstream, repository, digest)) = keys::parse_link(&key) {
                let at = u64::try_from(meta.last_modified.timestamp()).unwrap_or(0);
                inventory.links.push((upstream, repository, digest, at));
            }
        }
        let batches: Vec<String> = self
            .bucket
            .list(keys::USED)
            .await
            .map_err(err)?
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        for key in &batches {
            if let Some(body) = self.bucket.get(key).await.map_err(err)? {
                let batch: HashMap<String, u64> = serde_json::from_slice(&body).unwrap_or_default();
                for (digest, at) in batch {
                    let entry = inventory.last_used.entry(digest).or_default();
                    *entry = (*entry).max(at);
                }
            }
        }
        if batches.len() > 1 {
            let uses: Vec<(String, u64)> = inventory
                .last_used
                .iter()
                .map(|(d, at)| (d.clone(), *at))
                .collect();
            self.record_use(&uses).await?;
            self.delete_all(batches).await?;
        }
        inventory.doomed = self
            .bucket
            .list(keys::DOOMED)
            .await
            .map_err(err)?
            .into_iter()
            .filter_map(|(key, _)| keys::digest_at_end(&key))
            .collect();
        Ok(inventory)
    }

    pub(crate) async fn evict(
        &self,
        digests: &[String],
        lists: &[ListKey],
    ) -> Result<(), MetaError> {
        let doomed: HashSet<&str> = digests.iter().map(String::as_str).collect();
        let parsed: Vec<Digest> = digests
            .iter()
            .filter_map(|d| Digest::parse(d).ok())
            .collect();
        // Marked first: a crash from here on leaves them to the next collection.
        self.mark(parsed.iter().map(keys::doomed).collect()).await?;
        let mut dead: Vec<String> = parsed.iter().map(keys::manifest).collect();
        dead.extend(lists.iter().map(keys::referrer_list));
        for prefix in [keys::LINKS, keys::SOURCES] {
            dead.extend(
                self.bucket
                    .list(prefix)
                    .await
                    .map_err(err)?
                    .into_iter()
                    .map(|(key, _)| key)
                    .filter(|key| {
                        keys::digest_at_end(key).is_some_and(|d| doomed.contains(d.as_str()))
                    }),
            );
        }
        {
            let mut records = lock(&self.records);
            for digest in digests {
                records.remove(digest);
            }
        }
        self.delete_all(dead).await
    }

    pub(crate) async fn clear_doomed(&self, digests: &[String]) -> Result<(), MetaError> {
        let keys = digests
            .iter()
            .filter_map(|d| Digest::parse(d).ok())
            .map(|d| keys::doomed(&d))
            .collect();
        self.delete_all(keys).await
    }

    pub(crate) async fn repositories(&self) -> Result<Vec<(String, String)>, MetaError> {
        let mut repositories: Vec<(String, String)> = self
            .bucket
            .list(keys::LINKS)
            .await
            .map_err(err)?
            .into_iter()
            .filter_map(|(key, _)| keys::parse_link(&key).map(|(u, r, _)| (u, r)))
            .collect();
        repositories.sort();
        repositories.dedup();
        Ok(repositories)
    }
}

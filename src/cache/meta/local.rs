//! The metadata of a cache on the local file system: one transactional file (redb), what survives
//! restarts and crashes without a directory walk. Tables:
//!
//! - `tags`: (upstream, repository, tag) -> digest, media type, validation time;
//! - `manifests`: digest -> media type, size and references (the bytes are a blob in the store);
//! - `links`: (upstream, repository, digest) -> linked at;
//! - `blobs`: digest -> size of committed blobs;
//! - `sources`: (namespace, digest) -> when the namespace received the bytes;
//! - `last_used`: digest (or a referrer list's [`ListKey::use_key`]) -> unix seconds;
//! - `referrer_lists`: (upstream, repository, subject) -> its [`ReferrerList`] (JSON), written
//!   on the blocking pool: a list may be a MiB, and an fsynced commit is no work for an async
//!   worker;
//! - `doomed`: digests an eviction removed whose files may still exist.
//!
//! Keys join their parts with U+001F, which no valid name, tag or digest contains.
//!
//! Every cache hit asks [`LocalMetadata::access`]; its positive answers are remembered in memory
//! (the process holds the storage lock, so it is the only writer) until something removes a
//! link or a source, which forgets them all.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    Access, Changed, Inventory, ListChange, ListKey, ManifestRecord, MetaError, NewBlob,
    NewManifest, ReferrerList, StoredList, TagRecord, now,
};
use crate::reference::Digest;

fn err(e: impl Into<MetaError>) -> MetaError {
    e.into()
}

const TAGS: TableDefinition<&str, &[u8]> = TableDefinition::new("tags");
const MANIFESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("manifests");
const LINKS: TableDefinition<&str, u64> = TableDefinition::new("links");
const BLOBS: TableDefinition<&str, u64> = TableDefinition::new("blobs");
const LAST_USED: TableDefinition<&str, u64> = TableDefinition::new("last_used");
const SOURCES: TableDefinition<&str, u64> = TableDefinition::new("sources");
/// Before schema 4: (upstream, repository, subject, referrer) -> the referrer's descriptor, one
/// record (and one transaction) per referrer. Read once to migrate, then dropped.
const REFERRERS_BEFORE_LISTS: TableDefinition<&str, &[u8]> = TableDefinition::new("referrers");
/// (upstream, repository, subject) -> its [`ReferrerList`] (JSON).
const REFERRER_LISTS: TableDefinition<&str, &[u8]> = TableDefinition::new("referrer_lists");
const VERSION: TableDefinition<&str, u64> = TableDefinition::new("version");
/// 2: `sources` exists (before it, links alone granted access). 3: `doomed` holds digests (it
/// held file paths). 4: referrers are one list per subject (`referrer_lists`).
const SCHEMA_VERSION: u64 = 4;
/// Digests whose metadata an eviction already removed and whose files are deleted after the
/// commit: a crash in between leaves them here, and the next collection finishes the job.
const DOOMED: TableDefinition<&str, ()> = TableDefinition::new("doomed");
const SEP: char = '\u{1f}';

fn key(parts: &[&str]) -> String {
    let mut key = String::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(SEP);
        }
        key.push_str(part);
    }
    key
}

/// The key of a referrer list.
fn list_key(list: &ListKey) -> String {
    key(&[&list.upstream, &list.repository, &list.subject])
}

/// Schema 4: the referrer records of each subject become one list (sorted by digest, as
/// [`ReferrerList`] keeps them), and the old table goes.
fn migrate_referrers(txn: &redb::WriteTransaction) -> Result<(), MetaError> {
    let mut lists: BTreeMap<String, ReferrerList> = BTreeMap::new();
    {
        let old = txn.open_table(REFERRERS_BEFORE_LISTS).map_err(err)?;
        for entry in old.iter().map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            let Some((subject, _referrer)) = k.value().rsplit_once(SEP) else {
                continue;
            };
            if let Ok(descriptor) = serde_json::from_slice(v.value()) {
                let list = lists.entry(subject.to_owned()).or_default();
                list.descriptors.push(descriptor);
                list.stored_at = now();
            }
        }
    }
    txn.delete_table(REFERRERS_BEFORE_LISTS).map_err(err)?;
    let mut table = txn.open_table(REFERRER_LISTS).map_err(err)?;
    for (subject, mut list) in lists {
        // Old keys end with the referrer's digest, so each list is already sorted by it.
        list.descriptors
            .sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
        let value = serde_json::to_vec(&list).map_err(err)?;
        table
            .insert(subject.as_str(), value.as_slice())
            .map_err(err)?;
    }
    Ok(())
}

/// Every key of a table.
fn keys_of<V: redb::Value + 'static>(
    table: &impl ReadableTable<&'static str, V>,
) -> Result<Vec<String>, MetaError> {
    Ok(table
        .iter()
        .map_err(err)?
        .filter_map(Result::ok)
        .map(|(k, _)| k.value().to_owned())
        .collect())
}

/// Removes every entry of a table keyed `…␟digest` whose digest is in `doomed`.
fn remove_by_digest(
    table: &mut redb::Table<'_, &str, u64>,
    doomed: &std::collections::HashSet<&str>,
) -> Result<(), MetaError> {
    let dead: Vec<String> = table
        .iter()
        .map_err(err)?
        .filter_map(|entry| entry.ok())
        .map(|(k, _)| k.value().to_owned())
        .filter(|k| k.rsplit(SEP).next().is_some_and(|d| doomed.contains(d)))
        .collect();
    for k in dead {
        table.remove(k.as_str()).map_err(err)?;
    }
    Ok(())
}

/// redb's page cache (its default is 1 GiB, which a big cache's metadata file grows into:
/// 118 MiB of RSS after a collection over 100,000 blobs). Hits are answered from the granted
/// set below; what misses it reads a few pages.
const CACHE_BYTES: usize = 16 << 20;
/// Most positive [`LocalMetadata::access`] answers remembered (~100 bytes each); past it the
/// memory starts afresh.
const GRANTED_ENTRIES: usize = 16_384;

#[derive(Debug)]
pub(crate) struct LocalMetadata {
    db: Arc<Database>,
    granted: Mutex<Granted>,
}

/// (upstream, repository, digest) keys known to be held and linked, as of `generation`: every
/// removal of a link or a source moves the generation on and empties the set, and an answer read
/// before a removal is not remembered after it.
#[derive(Debug, Default)]
struct Granted {
    generation: u64,
    keys: HashSet<String>,
}

impl LocalMetadata {
    pub(crate) fn open(path: &Path) -> Result<Self, MetaError> {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(TAGS).map_err(err)?;
        txn.open_table(MANIFESTS).map_err(err)?;
        txn.open_table(LINKS).map_err(err)?;
        txn.open_table(BLOBS).map_err(err)?;
        txn.open_table(LAST_USED).map_err(err)?;
        txn.open_table(DOOMED).map_err(err)?;
        txn.open_table(SOURCES).map_err(err)?;
        txn.open_table(REFERRER_LISTS).map_err(err)?;
        let version = txn
            .open_table(VERSION)
            .map_err(err)?
            .get("schema")
            .map_err(err)?
            .map_or(1, |v| v.value());
        if version < 3 {
            // Doomed files were recorded by path, `<root>/blobs/<algorithm>/<2>/<hex>`.
            let paths = keys_of(&txn.open_table(DOOMED).map_err(err)?)?;
            let mut doomed = txn.open_table(DOOMED).map_err(err)?;
            for path in paths {
                doomed.remove(path.as_str()).map_err(err)?;
                let parts: Vec<&str> = path.rsplit('/').take(3).collect();
                if let [hex, _, algorithm] = parts[..] {
                    doomed
                        .insert(format!("{algorithm}:{hex}").as_str(), ())
                        .map_err(err)?;
                }
            }
        }
        if version < 2 {
            // Caches written before sources existed: what a namespace links, it holds.
            let links = keys_of(&txn.open_table(LINKS).map_err(err)?)?;
            let mut sources = txn.open_table(SOURCES).map_err(err)?;
            for link in links {
                if let [upstream, _, digest] = link.split(SEP).collect::<Vec<_>>()[..] {
                    sources
                        .insert(key(&[upstream, digest]).as_str(), now())
                        .map_err(err)?;
                }
            }
        }
        if version < 4 {
            migrate_referrers(&txn)?;
        }
        if version < SCHEMA_VERSION {
            txn.open_table(VERSION)
                .map_err(err)?
                .insert("schema", SCHEMA_VERSION)
                .map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(LocalMetadata {
            db: Arc::new(db),
            granted: Mutex::default(),
        })
    }

    fn granted(&self) -> MutexGuard<'_, Granted> {
        crate::sync::lock(&self.granted)
    }

    /// Forgets every remembered [`access`](Self::access) answer: call after a commit that
    /// removed links or sources.
    fn revoke_granted(&self) {
        let mut granted = self.granted();
        granted.generation += 1;
        granted.keys.clear();
    }

    /// The referrers recorded for a subject.
    pub(crate) fn referrer_list(&self, key: &ListKey) -> Result<Option<ReferrerList>, MetaError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(REFERRER_LISTS).map_err(err)?;
        let Some(value) = table.get(list_key(key).as_str()).map_err(err)? else {
            return Ok(None);
        };
        serde_json::from_slice(value.value())
            .map(Some)
            .map_err(|e| MetaError::referrers(&key.subject, e))
    }

    /// Makes `list` the referrers of its subject, on the blocking pool.
    pub(crate) async fn put_referrer_list(
        &self,
        key: &ListKey,
        list: &ReferrerList,
    ) -> Result<(), MetaError> {
        let value = serde_json::to_vec(list).map_err(err)?;
        let empty = list.descriptors.is_empty();
        self.write(list_key(key), move |table, key| {
            if empty {
                table.remove(key).map_err(err)?;
            } else {
                table.insert(key, value.as_slice()).map_err(err)?;
            }
            Ok(Changed::Applied)
        })
        .await
        .map(drop)
    }

    /// Adds or removes one referrer in one transaction, on the blocking pool.
    pub(crate) async fn change_referrers(
        &self,
        key: &ListKey,
        change: ListChange,
    ) -> Result<Changed, MetaError> {
        self.write(list_key(key), move |table, key| {
            let mut list: ReferrerList = match table.get(key).map_err(err)? {
                Some(value) => serde_json::from_slice(value.value()).map_err(err)?,
                None => ReferrerList::default(),
            };
            if list.apply(&change) == Changed::Full {
                return Ok(Changed::Full);
            }
            if list.descriptors.is_empty() {
                table.remove(key).map_err(err)?;
            } else {
                let value = serde_json::to_vec(&list).map_err(err)?;
                table.insert(key, value.as_slice()).map_err(err)?;
            }
            Ok(Changed::Applied)
        })
        .await
    }

    /// One write transaction on the referrer lists, run on the blocking pool.
    async fn write(
        &self,
        key: String,
        change: impl FnOnce(&mut redb::Table<'_, &str, &[u8]>, &str) -> Result<Changed, MetaError>
        + Send
        + 'static,
    ) -> Result<Changed, MetaError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().map_err(err)?;
            let changed = change(
                &mut txn.open_table(REFERRER_LISTS).map_err(err)?,
                key.as_str(),
            )?;
            txn.commit().map_err(err)?;
            Ok(changed)
        })
        .await
        .map_err(err)?
    }

    /// Whether `upstream`'s namespace received (or was pushed) the bytes of `digest`.
    /// [`Access`]: from memory when it was granted before, else in one read transaction.
    pub(crate) fn access(
        &self,
        upstream: &str,
        repository: &str,
        digest: &Digest,
    ) -> Result<Access, MetaError> {
        let link = key(&[upstream, repository, digest.as_str()]);
        let generation = {
            let granted = self.granted();
            if granted.keys.contains(&link) {
                return Ok(Access {
                    held: true,
                    linked: true,
                });
            }
            granted.generation
        };
        let access = self.read_access(upstream, &link, digest)?;
        if access.held && access.linked {
            let mut granted = self.granted();
            if granted.generation == generation {
                if granted.keys.len() >= GRANTED_ENTRIES {
                    granted.keys.clear();
                }
                granted.keys.insert(link);
            }
        }
        Ok(access)
    }

    fn read_access(
        &self,
        upstream: &str,
        link: &str,
        digest: &Digest,
    ) -> Result<Access, MetaError> {
        let txn = self.db.begin_read().map_err(err)?;
        let sources = txn.open_table(SOURCES).map_err(err)?;
        let held = sources
            .get(key(&[upstream, digest.as_str()]).as_str())
            .map_err(err)?
            .is_some();
        let links = txn.open_table(LINKS).map_err(err)?;
        let linked = links.get(link).map_err(err)?.is_some();
        Ok(Access { held, linked })
    }

    pub(crate) fn has_source(&self, upstream: &str, digest: &Digest) -> Result<bool, MetaError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(SOURCES).map_err(err)?;
        Ok(table
            .get(key(&[upstream, digest.as_str()]).as_str())
            .map_err(err)?
            .is_some())
    }

    /// Records a verified blob in one transaction: its size, that its namespace holds it, and
    /// the repository it was fetched for or pushed to.
    pub(crate) fn put_blob(&self, blob: &NewBlob<'_>) -> Result<bool, MetaError> {
        let now = now();
        let txn = self.db.begin_write().map_err(err)?;
        let new;
        {
            let digest = blob.digest.as_str();
            new = txn
                .open_table(BLOBS)
                .map_err(err)?
                .insert(digest, blob.size)
                .map_err(err)?
                .is_none();
            txn.open_table(SOURCES)
                .map_err(err)?
                .insert(key(&[blob.upstream, digest]).as_str(), now)
                .map_err(err)?;
            txn.open_table(LINKS)
                .map_err(err)?
                .insert(key(&[blob.upstream, blob.repository, digest]).as_str(), now)
                .map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(new)
    }

    pub(crate) fn tag(
        &self,
        upstream: &str,
        repository: &str,
        tag: &str,
    ) -> Result<Option<TagRecord>, MetaError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(TAGS).map_err(err)?;
        let value = table
            .get(key(&[upstream, repository, tag]).as_str())
            .map_err(err)?;
        Ok(value.and_then(|v| serde_json::from_slice(v.value()).ok()))
    }

    /// Tags cached for a repository, sorted.
    pub(crate) fn tags(&self, upstream: &str, repository: &str) -> Result<Vec<String>, MetaError> {
        let prefix = format!("{}{SEP}", key(&[upstream, repository]));
        let end = format!(
            "{}{}",
            key(&[upstream, repository]),
            char::from_u32(0x20).unwrap()
        );
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(TAGS).map_err(err)?;
        let mut tags = Vec::new();
        for entry in table.range(prefix.as_str()..end.as_str()).map_err(err)? {
            let (k, _) = entry.map_err(err)?;
            if let Some(tag) = k.value().strip_prefix(prefix.as_str()) {
                tags.push(tag.to_owned());
            }
        }
        Ok(tags)
    }

    pub(crate) fn forget_tag(
        &self,
        upstream: &str,
        repository: &str,
        tag: &str,
    ) -> Result<(), MetaError> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(TAGS)
            .map_err(err)?
            .remove(key(&[upstream, repository, tag]).as_str())
            .map_err(err)?;
        txn.commit().map_err(err)
    }

    pub(crate) fn manifest(&self, digest: &Digest) -> Result<Option<ManifestRecord>, MetaError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(MANIFESTS).map_err(err)?;
        let value = table.get(digest.as_str()).map_err(err)?;
        Ok(value.and_then(|v| serde_json::from_slice(v.value()).ok()))
    }

    /// Records a manifest, its tag, and links it and everything it references to the repository,
    /// in one transaction.
    pub(crate) fn put_manifest(&self, m: &NewManifest<'_>) -> Result<bool, MetaError> {
        let now = now();
        let txn = self.db.begin_write().map_err(err)?;
        let new;
        {
            let mut references: Vec<String> =
                m.references.iter().map(ToString::to_string).collect();
            if references.is_empty() {
                // A tag moved to a manifest already stored: keep what the record knew.
                if let Some(old) = txn
                    .open_table(MANIFESTS)
                    .map_err(err)?
                    .get(m.digest.as_str())
                    .map_err(err)?
                {
                    if let Ok(old) = serde_json::from_slice::<ManifestRecord>(old.value()) {
                        references = old.references;
                    }
                }
            }
            let record = ManifestRecord {
                media_type: m.media_type.to_owned(),
                size: m.size,
                references,
            };
            new = txn
                .open_table(MANIFESTS)
                .map_err(err)?
                .insert(
                    m.digest.as_str(),
                    serde_json::to_vec(&record).map_err(err)?.as_slice(),
                )
                .map_err(err)?
                .is_none();
            if let Some(tag) = m.tag {
                let record = TagRecord {
                    digest: m.digest.to_string(),
                    media_type: m.media_type.to_owned(),
                    validated_at: now,
                };
                txn.open_table(TAGS)
                    .map_err(err)?
                    .insert(
                        key(&[m.upstream, m.repository, tag]).as_str(),
                        serde_json::to_vec(&record).map_err(err)?.as_slice(),
                    )
                    .map_err(err)?;
            }
            txn.open_table(SOURCES)
                .map_err(err)?
                .insert(key(&[m.upstream, m.digest.as_str()]).as_str(), now)
                .map_err(err)?;
            let mut links = txn.open_table(LINKS).map_err(err)?;
            for digest in std::iter::once(m.digest).chain(m.references) {
                links
                    .insert(
                        key(&[m.upstream, m.repository, digest.as_str()]).as_str(),
                        now,
                    )
                    .map_err(err)?;
            }
        }
        txn.commit().map_err(err)?;
        Ok(new)
    }

    pub(crate) fn is_linked(
        &self,
        upstream: &str,
        repository: &str,
        digest: &Digest,
    ) -> Result<bool, MetaError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(LINKS).map_err(err)?;
        Ok(table
            .get(key(&[upstream, repository, digest.as_str()]).as_str())
            .map_err(err)?
            .is_some())
    }

    pub(crate) fn link(
        &self,
        upstream: &str,
        repository: &str,
        digest: &Digest,
    ) -> Result<(), MetaError> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(LINKS)
            .map_err(err)?
            .insert(
                key(&[upstream, repository, digest.as_str()]).as_str(),
                now(),
            )
            .map_err(err)?;
        txn.commit().map_err(err)
    }

    /// Removes a repository's link to `digest` and every tag of the repository pointing at it.
    pub(crate) fn unlink(
        &self,
        upstream: &str,
        repository: &str,
        digest: &Digest,
    ) -> Result<(), MetaError> {
        let prefix = format!("{}{SEP}", key(&[upstream, repository]));
        let txn = self.db.begin_write().map_err(err)?;
        {
            txn.open_table(LINKS)
                .map_err(err)?
                .remove(key(&[upstream, repository, digest.as_str()]).as_str())
                .map_err(err)?;
            let mut tags = txn.open_table(TAGS).map_err(err)?;
            let mut doomed = Vec::new();
            for entry in tags.range(prefix.as_str()..).map_err(err)? {
                let (k, v) = entry.map_err(err)?;
                if !k.value().starts_with(prefix.as_str()) {
                    break;
                }
                let record: Option<TagRecord> = serde_json::from_slice(v.value()).ok();
                if record.is_some_and(|r| r.digest == digest.as_str()) {
                    doomed.push(k.value().to_owned());
                }
            }
            for k in doomed {
                tags.remove(k.as_str()).map_err(err)?;
            }
        }
        txn.commit().map_err(err)?;
        self.revoke_granted();
        Ok(())
    }

    /// Records last-use times (digest -> unix seconds) in one transaction.
    pub(crate) fn record_use(&self, uses: &[(String, u64)]) -> Result<(), MetaError> {
        if uses.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut table = txn.open_table(LAST_USED).map_err(err)?;
            for (digest, at) in uses {
                table.insert(digest.as_str(), *at).map_err(err)?;
            }
        }
        txn.commit().map_err(err)
    }

    /// Everything a collection needs, read in one transaction.
    pub(crate) fn inventory(&self) -> Result<Inventory, MetaError> {
        let txn = self.db.begin_read().map_err(err)?;
        let mut inventory = Inventory::default();
        for entry in txn
            .open_table(MANIFESTS)
            .map_err(err)?
            .iter()
            .map_err(err)?
        {
            let (k, v) = entry.map_err(err)?;
            if let Ok(record) = serde_json::from_slice::<ManifestRecord>(v.value()) {
                inventory.manifests.insert(k.value().to_owned(), record);
            }
        }
        for entry in txn.open_table(BLOBS).map_err(err)?.iter().map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            inventory.blobs.insert(k.value().to_owned(), v.value());
        }
        for entry in txn
            .open_table(LAST_USED)
            .map_err(err)?
            .iter()
            .map_err(err)?
        {
            let (k, v) = entry.map_err(err)?;
            inventory.last_used.insert(k.value().to_owned(), v.value());
        }
        for entry in txn.open_table(LINKS).map_err(err)?.iter().map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            let parts: Vec<&str> = k.value().split(SEP).collect();
            if let [upstream, repository, digest] = parts[..] {
                inventory.links.push((
                    upstream.to_owned(),
                    repository.to_owned(),
                    digest.to_owned(),
                    v.value(),
                ));
            }
        }
        for entry in txn.open_table(DOOMED).map_err(err)?.iter().map_err(err)? {
            let (k, _) = entry.map_err(err)?;
            inventory.doomed.push(k.value().to_owned());
        }
        for entry in txn
            .open_table(REFERRER_LISTS)
            .map_err(err)?
            .iter()
            .map_err(err)?
        {
            let (k, v) = entry.map_err(err)?;
            #[derive(serde::Deserialize)]
            struct Stored {
                #[serde(default)]
                stored_at: u64,
            }
            let parts: Vec<&str> = k.value().split(SEP).collect();
            if let [upstream, repository, subject] = parts[..] {
                let bytes = v.value();
                inventory.referrer_lists.push(StoredList {
                    key: ListKey {
                        upstream: upstream.to_owned(),
                        repository: repository.to_owned(),
                        subject: subject.to_owned(),
                    },
                    bytes: bytes.len() as u64,
                    stored_at: serde_json::from_slice::<Stored>(bytes).map_or(0, |s| s.stored_at),
                });
            }
        }
        Ok(inventory)
    }

    /// Forgets evicted manifests and blobs in one transaction: their links everywhere, tags
    /// pointing at them, their records and use times; they are recorded as doomed until their
    /// files are deleted. Evicted referrer lists go with their use times.
    pub(crate) fn evict(&self, digests: &[String], lists: &[ListKey]) -> Result<(), MetaError> {
        let doomed: std::collections::HashSet<&str> = digests.iter().map(String::as_str).collect();
        let txn = self.db.begin_write().map_err(err)?;
        {
            remove_by_digest(&mut txn.open_table(LINKS).map_err(err)?, &doomed)?;
            let mut referrer_lists = txn.open_table(REFERRER_LISTS).map_err(err)?;
            let mut used = txn.open_table(LAST_USED).map_err(err)?;
            for list in lists {
                referrer_lists
                    .remove(list_key(list).as_str())
                    .map_err(err)?;
                used.remove(list.use_key().as_str()).map_err(err)?;
            }
            drop((referrer_lists, used));
            remove_by_digest(&mut txn.open_table(SOURCES).map_err(err)?, &doomed)?;
            let mut tags = txn.open_table(TAGS).map_err(err)?;
            let dead_tags: Vec<String> = tags
                .iter()
                .map_err(err)?
                .filter_map(|entry| entry.ok())
                .filter(|(_, v)| {
                    serde_json::from_slice::<TagRecord>(v.value())
                        .is_ok_and(|r| doomed.contains(r.digest.as_str()))
                })
                .map(|(k, _)| k.value().to_owned())
                .collect();
            for k in dead_tags {
                tags.remove(k.as_str()).map_err(err)?;
            }
            let mut manifests = txn.open_table(MANIFESTS).map_err(err)?;
            let mut blobs = txn.open_table(BLOBS).map_err(err)?;
            let mut used = txn.open_table(LAST_USED).map_err(err)?;
            for digest in digests {
                manifests.remove(digest.as_str()).map_err(err)?;
                blobs.remove(digest.as_str()).map_err(err)?;
                used.remove(digest.as_str()).map_err(err)?;
            }
            let mut doomed_table = txn.open_table(DOOMED).map_err(err)?;
            for digest in digests {
                doomed_table.insert(digest.as_str(), ()).map_err(err)?;
            }
        }
        txn.commit().map_err(err)?;
        self.revoke_granted();
        Ok(())
    }

    /// Forgets doomed digests once their files are deleted.
    pub(crate) fn clear_doomed(&self, digests: &[String]) -> Result<(), MetaError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut doomed = txn.open_table(DOOMED).map_err(err)?;
            for digest in digests {
                doomed.remove(digest.as_str()).map_err(err)?;
            }
        }
        txn.commit().map_err(err)
    }

    /// Every (upstream, repository) with cached content, sorted and distinct.
    pub(crate) fn repositories(&self) -> Result<Vec<(String, String)>, MetaError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(LINKS).map_err(err)?;
        let mut repositories: Vec<(String, String)> = Vec::new();
        for entry in table.iter().map_err(err)? {
            let (k, _) = entry.map_err(err)?;
            let mut parts = k.value().split(SEP);
            if let (Some(upstream), Some(repository)) = (parts.next(), parts.next()) {
                if repositories
                    .last()
                    .is_none_or(|(u, r)| u != upstream || r != repository)
                {
                    repositories.push((upstream.to_owned(), repository.to_owned()));
                }
            }
        }
        Ok(repositories)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::store::sha256;

    #[test]
    fn manifests_tags_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let meta = LocalMetadata::open(&dir.path().join("meta.redb")).unwrap();
        let manifest = sha256(b"manifest");
        let layer = sha256(b"layer");
        meta.put_manifest(&NewManifest {
            upstream: "docker.io",
            repository: "library/nginx",
            tag: Some("latest"),
            digest: &manifest,
            media_type: "application/vnd.oci.image.manifest.v1+json",
            size: 8,
            references: std::slice::from_ref(&layer),
        })
        .unwrap();
        let tag = meta
            .tag("docker.io", "library/nginx", "latest")
            .unwrap()
            .unwrap();
        assert_eq!(tag.digest, manifest.as_str());
        assert!(
            meta.is_linked("docker.io", "library/nginx", &layer)
                .unwrap()
        );
        assert!(
            !meta
                .is_linked("docker.io", "library/other", &layer)
                .unwrap()
        );
        assert!(
            !meta.is_linked("ghcr.io", "library/nginx", &layer).unwrap(),
            "upstreams never share"
        );
        assert_eq!(
            meta.tag("ghcr.io", "library/nginx", "latest").unwrap(),
            None
        );
        assert_eq!(meta.manifest(&manifest).unwrap().unwrap().size, 8);
        meta.link("ghcr.io", "org/x", &layer).unwrap();
        assert_eq!(
            meta.repositories().unwrap(),
            [
                ("docker.io".into(), "library/nginx".into()),
                ("ghcr.io".into(), "org/x".into())
            ]
        );
        assert_eq!(meta.tags("docker.io", "library/nginx").unwrap(), ["latest"]);
        assert!(
            meta.tags("docker.io", "library/nginx-x")
                .unwrap()
                .is_empty()
        );
        meta.forget_tag("docker.io", "library/nginx", "latest")
            .unwrap();
        assert_eq!(
            meta.tag("docker.io", "library/nginx", "latest").unwrap(),
            None
        );
    }

    fn descriptor(digest: &Digest) -> serde_json::Value {
        serde_json::json!({"mediaType": "m", "digest": digest.as_str(), "size": 1})
    }

    #[tokio::test]
    async fn referrer_lists_change_one_referrer_at_a_time_within_bounds_and_are_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let meta = LocalMetadata::open(&dir.path().join("meta.redb")).unwrap();
        let (subject, signature, sbom) = (sha256(b"image"), sha256(b"sig"), sha256(b"sbom"));
        let key = ListKey::new("local", "team/app", &subject);
        let bounds = crate::cache::meta::ListBounds {
            count: 2,
            bytes: usize::MAX,
        };
        for referrer in [&signature, &sbom] {
            let change = ListChange::Add(descriptor(referrer), bounds);
            assert_eq!(
                meta.change_referrers(&key, change).await.unwrap(),
                Changed::Applied
            );
        }
        let third = ListChange::Add(descriptor(&sha256(b"third")), bounds);
        assert_eq!(
            meta.change_referrers(&key, third).await.unwrap(),
            Changed::Full
        );
        // Adding one again replaces it: no room needed.
        let again = ListChange::Add(descriptor(&sbom), bounds);
        assert_eq!(
            meta.change_referrers(&key, again).await.unwrap(),
            Changed::Applied
        );
        let list = meta.referrer_list(&key).unwrap().unwrap();
        let mut expected = vec![signature.to_string(), sbom.to_string()];
        expected.sort();
        let digests: Vec<&str> = list
            .descriptors
            .iter()
            .map(|d| d["digest"].as_str().unwrap())
            .collect();
        assert_eq!(digests, expected, "one per digest, sorted");
        assert!(
            meta.referrer_list(&ListKey::new("local", "team/ap", &subject))
                .unwrap()
                .is_none()
        );
        let remove = ListChange::Remove(sbom.to_string());
        meta.change_referrers(&key, remove).await.unwrap();
        let list = meta.referrer_list(&key).unwrap().unwrap();
        assert_eq!(list.descriptors, [descriptor(&signature)]);
        // A proxied list, written whole, and evicted with its use time.
        let proxied = ListKey::new("docker.io", "library/x", &subject);
        meta.put_referrer_list(&proxied, &list).await.unwrap();
        meta.record_use(&[(proxied.use_key(), 5)]).unwrap();
        let inventory = meta.inventory().unwrap();
        assert_eq!(inventory.referrer_lists.len(), 2);
        assert_eq!(inventory.last_used.get(&proxied.use_key()), Some(&5));
        meta.evict(&[], std::slice::from_ref(&proxied)).unwrap();
        assert!(meta.referrer_list(&proxied).unwrap().is_none());
        assert!(meta.inventory().unwrap().last_used.is_empty());
        // An empty list is no record.
        meta.put_referrer_list(&key, &ReferrerList::default())
            .await
            .unwrap();
        assert!(meta.referrer_list(&key).unwrap().is_none());
    }

    #[test]
    fn referrer_records_from_before_lists_become_lists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let (subject, signature, sbom) = (sha256(b"image"), sha256(b"sig"), sha256(b"sbom"));
        {
            let meta = LocalMetadata::open(&path).unwrap();
            // As a cache written by an earlier version: one record per referrer, schema 3.
            let txn = meta.db.begin_write().unwrap();
            {
                let mut old = txn.open_table(REFERRERS_BEFORE_LISTS).unwrap();
                for referrer in [&signature, &sbom] {
                    let k = key(&["local", "team/app", subject.as_str(), referrer.as_str()]);
                    let value = descriptor(referrer).to_string();
                    old.insert(k.as_str(), value.as_bytes()).unwrap();
                }
                txn.open_table(VERSION)
                    .unwrap()
                    .insert("schema", 3)
                    .unwrap();
            }
            txn.delete_table(REFERRER_LISTS).unwrap();
            txn.commit().unwrap();
        }
        let meta = LocalMetadata::open(&path).unwrap();
        let list = meta
            .referrer_list(&ListKey::new("local", "team/app", &subject))
            .unwrap()
            .unwrap();
        let mut expected = vec![descriptor(&signature), descriptor(&sbom)];
        expected.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
        assert_eq!(list.descriptors, expected);
        let txn = meta.db.begin_read().unwrap();
        assert!(txn.open_table(REFERRERS_BEFORE_LISTS).is_err(), "dropped");
    }

    #[test]
    fn caches_from_before_sources_hold_what_they_link() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let digest = sha256(b"old");
        {
            let meta = LocalMetadata::open(&path).unwrap();
            meta.link("ghcr.io", "org/x", &digest).unwrap();
            // As a cache written by an earlier version: no sources, no version.
            let txn = meta.db.begin_write().unwrap();
            txn.delete_table(SOURCES).unwrap();
            txn.delete_table(VERSION).unwrap();
            txn.commit().unwrap();
        }
        let meta = LocalMetadata::open(&path).unwrap();
        assert!(meta.has_source("ghcr.io", &digest).unwrap());
        assert!(!meta.has_source("docker.io", &digest).unwrap());
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let digest = sha256(b"x");
        LocalMetadata::open(&path)
            .unwrap()
            .put_blob(&NewBlob {
                upstream: "docker.io",
                repository: "library/x",
                digest: &digest,
                size: 1,
            })
            .unwrap();
        let meta = LocalMetadata::open(&path).unwrap();
        assert_eq!(
            meta.inventory().unwrap().blobs.get(digest.as_str()),
            Some(&1)
        );
        assert!(meta.has_source("docker.io", &digest).unwrap());
        assert!(
            !meta.has_source("ghcr.io", &digest).unwrap(),
            "namespaces never share"
        );
        assert!(meta.is_linked("docker.io", "library/x", &digest).unwrap());
    }

    #[test]
    fn access_reads_the_source_and_the_link_together() {
        let dir = tempfile::tempdir().unwrap();
        let meta = LocalMetadata::open(&dir.path().join("meta.redb")).unwrap();
        let digest = sha256(b"x");
        let access = |upstream, repository| meta.access(upstream, repository, &digest).unwrap();
        let none = Access {
            held: false,
            linked: false,
        };
        assert_eq!(access("docker.io", "library/x"), none);
        meta.put_blob(&NewBlob {
            upstream: "docker.io",
            repository: "library/x",
            digest: &digest,
            size: 1,
        })
        .unwrap();
        let both = Access {
            held: true,
            linked: true,
        };
        assert_eq!(access("docker.io", "library/x"), both);
        let held = Access {
            held: true,
            linked: false,
        };
        assert_eq!(access("docker.io", "library/y"), held, "another repository");
        assert_eq!(access("ghcr.io", "library/x"), none, "another namespace");
        assert_eq!(access("docker.io", "library/x"), both, "remembered");
        meta.unlink("docker.io", "library/x", &digest).unwrap();
        assert_eq!(access("docker.io", "library/x"), held, "an unlink is seen");
        meta.link("docker.io", "library/x", &digest).unwrap();
        assert_eq!(access("docker.io", "library/x"), both);
        meta.evict(&[digest.to_string()], &[]).unwrap();
        assert_eq!(
            access("docker.io", "library/x"),
            none,
            "an eviction is seen"
        );
    }
}

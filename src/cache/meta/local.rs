//! The metadata of a cache on the local file system: one transactional file (redb), what survives
//! restarts and crashes without a directory walk. Tables:
//!
//! - `tags`: (upstream, repository, tag) -> digest, media type, validation time;
//! - `manifests`: digest -> media type, size and references (the bytes are a blob in the store);
//! - `links`: (upstream, repository, digest) -> linked at;
//! - `blobs`: digest -> size of committed blobs;
//! - `sources`: (namespace, digest) -> when the namespace received the bytes;
//! - `last_used`: digest -> unix seconds;
//! - `doomed`: digests an eviction removed whose files may still exist.
//!
//! Keys join their parts with U+001F, which no valid name, tag or digest contains.
//!
//! Every cache hit asks [`LocalMetadata::access`]; its positive answers are remembered in memory
//! (the process holds the storage lock, so it is the only writer) until something removes a
//! link or a source, which forgets them all.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Access, Inventory, ManifestRecord, MetaError, NewBlob, NewManifest, TagRecord, now};
use crate::reference::Digest;

fn err(e: impl std::fmt::Display) -> MetaError {
    MetaError(e.to_string())
}

const TAGS: TableDefinition<&str, &[u8]> = TableDefinition::new("tags");
const MANIFESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("manifests");
const LINKS: TableDefinition<&str, u64> = TableDefinition::new("links");
const BLOBS: TableDefinition<&str, u64> = TableDefinition::new("blobs");
const LAST_USED: TableDefinition<&str, u64> = TableDefinition::new("last_used");
const SOURCES: TableDefinition<&str, u64> = TableDefinition::new("sources");
/// (upstream, repository, subject, referrer) -> the referrer's descriptor (JSON).
const REFERRERS: TableDefinition<&str, &[u8]> = TableDefinition::new("referrers");
const VERSION: TableDefinition<&str, u64> = TableDefinition::new("version");
/// 2: `sources` exists (before it, links alone granted access). 3: `doomed` holds digests (it
/// held file paths).
const SCHEMA_VERSION: u64 = 3;
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
pub struct LocalMetadata {
    db: Database,
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
    pub fn open(path: &Path) -> Result<Self, MetaError> {
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
        txn.open_table(REFERRERS).map_err(err)?;
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
        if version < SCHEMA_VERSION {
            txn.open_table(VERSION)
                .map_err(err)?
                .insert("schema", SCHEMA_VERSION)
                .map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(LocalMetadata {
            db,
            granted: Mutex::default(),
        })
    }

    fn granted(&self) -> MutexGuard<'_, Granted> {
        self.granted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets every remembered [`access`](Self::access) answer: call after a commit that
    /// removed links or sources.
    fn revoke_granted(&self) {
        let mut granted = self.granted();
        granted.generation += 1;
        granted.keys.clear();
    }

    /// Records `referrer` (its descriptor) as referring to `subject` in the repository.
    pub fn put_referrer(
        &self,
        upstream: &str,
        repository: &str,
        subject: &Digest,
        referrer: &Digest,
        descriptor: &[u8],
    ) -> Result<(), MetaError> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(REFERRERS)
            .map_err(err)?
            .insert(
                key(&[upstream, repository, subject.as_str(), referrer.as_str()]).as_str(),
                descriptor,
            )
            .map_err(err)?;
        txn.commit().map_err(err)
    }

    /// The descriptors of the manifests referring to `subject` in the repository.
    pub fn referrers(
        &self,
        upstream: &str,
        repository: &str,
        subject: &Digest,
    ) -> Result<Vec<Vec<u8>>, MetaError> {
        let prefix = format!("{}{SEP}", key(&[upstream, repository, subject.as_str()]));
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(REFERRERS).map_err(err)?;
        let mut descriptors = Vec::new();
        for entry in table.range(prefix.as_str()..).map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            if !k.value().starts_with(prefix.as_str()) {
                break;
            }
            descriptors.push(v.value().to_vec());
        }
        Ok(descriptors)
    }

    /// Forgets that `referrer` refers to `subject` in the repository.
    pub fn forget_referrer(
        &self,
        upstream: &str,
        repository: &str,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<(), MetaError> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(REFERRERS)
            .map_err(err)?
            .remove(key(&[upstream, repository, subject.as_str(), referrer.as_str()]).as_str())
            .map_err(err)?;
        txn.commit().map_err(err)
    }

    /// Whether `upstream`'s namespace received (or was pushed) the bytes of `digest`.
    /// [`Access`]: from memory when it was granted before, else in one read transaction.
    pub fn access(
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

    pub fn has_source(&self, upstream: &str, digest: &Digest) -> Result<bool, MetaError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(SOURCES).map_err(err)?;
        Ok(table
            .get(key(&[upstream, digest.as_str()]).as_str())
            .map_err(err)?
            .is_some())
    }

    /// Records a verified blob in one transaction: its size, that its namespace holds it, and
    /// the repository it was fetched for or pushed to.
    pub fn put_blob(&self, blob: &NewBlob<'_>) -> Result<(), MetaError> {
        let now = now();
        let txn = self.db.begin_write().map_err(err)?;
        {
            let digest = blob.digest.as_str();
            txn.open_table(BLOBS)
                .map_err(err)?
                .insert(digest, blob.size)
                .map_err(err)?;
            txn.open_table(SOURCES)
                .map_err(err)?
                .insert(key(&[blob.upstream, digest]).as_str(), now)
                .map_err(err)?;
            txn.open_table(LINKS)
                .map_err(err)?
                .insert(key(&[blob.upstream, blob.repository, digest]).as_str(), now)
                .map_err(err)?;
        }
        txn.commit().map_err(err)
    }

    pub fn tag(
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
    pub fn tags(&self, upstream: &str, repository: &str) -> Result<Vec<String>, MetaError> {
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

    pub fn forget_tag(&self, upstream: &str, repository: &str, tag: &str) -> Result<(), MetaError> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(TAGS)
            .map_err(err)?
            .remove(key(&[upstream, repository, tag]).as_str())
            .map_err(err)?;
        txn.commit().map_err(err)
    }

    pub fn manifest(&self, digest: &Digest) -> Result<Option<ManifestRecord>, MetaError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(MANIFESTS).map_err(err)?;
        let value = table.get(digest.as_str()).map_err(err)?;
        Ok(value.and_then(|v| serde_json::from_slice(v.value()).ok()))
    }

    /// Records a manifest, its tag, and links it and everything it references to the repository,
    /// in one transaction.
    pub fn put_manifest(&self, m: &NewManifest<'_>) -> Result<(), MetaError> {
        let now = now();
        let txn = self.db.begin_write().map_err(err)?;
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
            txn.open_table(MANIFESTS)
                .map_err(err)?
                .insert(
                    m.digest.as_str(),
                    serde_json::to_vec(&record).map_err(err)?.as_slice(),
                )
                .map_err(err)?;
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
        txn.commit().map_err(err)
    }

    pub fn is_linked(
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

    pub fn link(&self, upstream: &str, repository: &str, digest: &Digest) -> Result<(), MetaError> {
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
    pub fn unlink(
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
    pub fn record_use(&self, uses: &[(String, u64)]) -> Result<(), MetaError> {
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
    pub fn inventory(&self) -> Result<Inventory, MetaError> {
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
        Ok(inventory)
    }

    /// Forgets evicted manifests and blobs in one transaction: their links everywhere, tags
    /// pointing at them, their records and use times; they are recorded as doomed until their
    /// files are deleted.
    pub fn evict(&self, digests: &[String]) -> Result<(), MetaError> {
        let doomed: std::collections::HashSet<&str> = digests.iter().map(String::as_str).collect();
        let txn = self.db.begin_write().map_err(err)?;
        {
            remove_by_digest(&mut txn.open_table(LINKS).map_err(err)?, &doomed)?;
            let mut referrers = txn.open_table(REFERRERS).map_err(err)?;
            let dead: Vec<String> = keys_of(&referrers)?
                .into_iter()
                .filter(|k| k.rsplit(SEP).next().is_some_and(|d| doomed.contains(d)))
                .collect();
            for k in dead {
                referrers.remove(k.as_str()).map_err(err)?;
            }
            drop(referrers);
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
    pub fn clear_doomed(&self, digests: &[String]) -> Result<(), MetaError> {
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
    pub fn repositories(&self) -> Result<Vec<(String, String)>, MetaError> {
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

    #[test]
    fn referrers_per_repository_forgotten_and_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let meta = LocalMetadata::open(&dir.path().join("meta.redb")).unwrap();
        let (subject, signature, sbom) = (sha256(b"image"), sha256(b"sig"), sha256(b"sbom"));
        meta.put_referrer("local", "team/app", &subject, &signature, b"{\"s\":1}")
            .unwrap();
        meta.put_referrer("local", "team/app", &subject, &sbom, b"{\"b\":1}")
            .unwrap();
        assert_eq!(
            meta.referrers("local", "team/app", &subject).unwrap().len(),
            2
        );
        assert!(
            meta.referrers("local", "team/ap", &subject)
                .unwrap()
                .is_empty()
        );
        assert!(
            meta.referrers("local", "team/app", &sbom)
                .unwrap()
                .is_empty()
        );
        meta.forget_referrer("local", "team/app", &subject, &sbom)
            .unwrap();
        assert_eq!(
            meta.referrers("local", "team/app", &subject).unwrap(),
            [b"{\"s\":1}".to_vec()]
        );
        // An evicted referrer leaves the list.
        meta.evict(&[signature.to_string()]).unwrap();
        assert!(
            meta.referrers("local", "team/app", &subject)
                .unwrap()
                .is_empty()
        );
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
        meta.evict(&[digest.to_string()]).unwrap();
        assert_eq!(
            access("docker.io", "library/x"),
            none,
            "an eviction is seen"
        );
    }
}

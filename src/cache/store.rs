//! Content-addressed blob files: `blobs/sha256/<2 hex>/<hex>`, shared by every upstream and
//! repository (manifests are stored the same way).
//!
//! A file appears under `blobs/` only by an atomic rename of a temp file in `tmp/` whose digest
//! was verified and whose data was fsynced; a crash leaves at most a stray temp file, which
//! [`BlobStore::open`] deletes on start. A reader never sees a partial or unverified blob.
//!
//! One process owns a store at a time: [`BlobStore::open`] takes an exclusive lock on
//! `<root>/lock` before it touches anything (a second server, or `regmirror gc`, on a live store
//! fails at once and wipes nothing), and holds it while the store is open.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use crate::reference::Digest;

#[derive(Debug)]
pub struct BlobStore {
    blobs: PathBuf,
    tmp: PathBuf,
    next_temp: AtomicU64,
    /// The open lock file; the lock goes with it.
    _lock: std::fs::File,
}

impl BlobStore {
    /// Locks the store under `root` (creating it), then removes temp files a crash left behind.
    pub fn open(root: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("lock"))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| {
                if e == rustix::io::Errno::WOULDBLOCK {
                    io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!(
                            "{} is in use by another regmirror process (serve or gc)",
                            root.display()
                        ),
                    )
                } else {
                    e.into()
                }
            },
        )?;
        let blobs = root.join("blobs");
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&blobs)?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(BlobStore {
            blobs,
            tmp,
            next_temp: AtomicU64::new(0),
            _lock: lock,
        })
    }

    /// Where a committed blob lives. The digest is validated, so the path stays inside the store.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.blobs
            .join(digest.algorithm())
            .join(&hex[..2])
            .join(hex)
    }

    /// The size of a committed blob, or `None`.
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        std::fs::metadata(self.path(digest)).ok().map(|m| m.len())
    }

    /// A fresh temp path in the store's own file system (so the final rename is atomic).
    pub fn temp_path(&self) -> PathBuf {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!("{}-{n}", std::process::id()))
    }

    /// Moves a verified, fsynced temp file into place and makes the rename durable.
    pub fn commit(&self, temp: &Path, digest: &Digest) -> io::Result<PathBuf> {
        let path = self.path(digest);
        let dir = path.parent().expect("blob paths have a parent");
        std::fs::create_dir_all(dir)?;
        std::fs::rename(temp, &path)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(path)
    }

    /// Writes small content (a manifest) after checking it hashes to `digest`.
    pub fn put_verified(&self, digest: &Digest, bytes: &[u8]) -> io::Result<()> {
        if digest.algorithm() != "sha256" || sha256(bytes) != *digest {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("content does not match {digest}"),
            ));
        }
        if self.path(digest).exists() {
            return Ok(());
        }
        let temp = self.temp_path();
        let result = (|| {
            use std::io::Write;
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            self.commit(&temp, digest).map(drop)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result
    }

    pub fn read(&self, digest: &Digest) -> io::Result<Vec<u8>> {
        std::fs::read(self.path(digest))
    }
}

/// The sha256 digest of `bytes`.
pub fn sha256(bytes: &[u8]) -> Digest {
    Digest::sha256_from_bytes(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_verified_refuses_wrong_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let digest = sha256(b"hello");
        assert!(store.put_verified(&digest, b"hellO").is_err());
        assert!(store.size(&digest).is_none());
        store.put_verified(&digest, b"hello").unwrap();
        assert_eq!(store.read(&digest).unwrap(), b"hello");
        assert!(
            store
                .path(&digest)
                .starts_with(dir.path().join("blobs/sha256"))
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        std::fs::write(store.temp_path(), b"an upload in progress").unwrap();
        let error = BlobStore::open(dir.path()).unwrap_err();
        assert!(error.to_string().contains("in use"), "{error}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            1,
            "nothing wiped"
        );
        drop(store);
        BlobStore::open(dir.path()).unwrap();
    }

    #[test]
    fn stray_temp_files_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        std::fs::write(store.temp_path(), b"partial").unwrap();
        drop(store);
        BlobStore::open(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}

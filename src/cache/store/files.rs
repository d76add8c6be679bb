//! Content-addressed blob files: `<root>/blobs/sha256/<2 hex>/<hex>`, shared by every upstream
//! and repository (manifests are stored the same way).
//!
//! A file appears under `blobs/` only by an atomic rename of a spool file whose digest was
//! verified and whose data was fsynced: a reader never sees a partial or unverified blob. The
//! functions here block (file system calls); the store runs them on the blocking pool.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::reference::Digest;

#[derive(Debug)]
pub(crate) struct FileStore {
    blobs: PathBuf,
    /// `blobs/`, open: a blob is opened relative to it, so the kernel walks three path
    /// components per hit instead of the whole root's path.
    blobs_dir: OwnedFd,
}

impl FileStore {
    /// The store under `root` (its `blobs/` directory is created).
    pub(crate) fn open(root: &Path) -> io::Result<Self> {
        let blobs = root.join("blobs");
        std::fs::create_dir_all(&blobs)?;
        let blobs_dir = rustix::fs::open(
            &blobs,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(FileStore { blobs, blobs_dir })
    }

    /// A committed blob's file, open for reading.
    pub(crate) fn open_blob(&self, digest: &Digest) -> io::Result<File> {
        let fd = rustix::fs::openat(
            &self.blobs_dir,
            relative(digest).as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(File::from(fd))
    }

    /// Where a committed blob lives. The digest is validated, so the path stays inside the store.
    pub(crate) fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(relative(digest))
    }
}

/// A blob's path under `blobs/`: `<algorithm>/<2 hex>/<hex>`.
fn relative(digest: &Digest) -> String {
    let hex = digest.hex();
    format!("{}/{}/{hex}", digest.algorithm(), &hex[..2])
}

/// Moves a verified, fsynced temp file to `path` and makes the rename durable.
pub(crate) fn commit(temp: &Path, path: &Path) -> io::Result<()> {
    let dir = path.parent().expect("blob paths have a parent");
    std::fs::create_dir_all(dir)?;
    std::fs::rename(temp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Writes small verified content (a manifest) through `temp` to `path`, unless it is there.
pub(crate) fn put(temp: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let result = (|| {
        use std::io::Write;
        let mut file = std::fs::File::create(temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        commit(temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(temp);
    }
    result
}

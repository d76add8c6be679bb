//! The local spool: the directory where downloads and uploads in progress are written before
//! their content is verified, whichever backend then keeps it (`<root>/tmp`).
//!
//! One process owns a spool at a time: [`Spool::open`] takes an exclusive lock on `<root>/lock`
//! before it touches anything (a second server, or `regmirror gc`, on a live root fails at once
//! and wipes nothing), then removes the temp files a crash left behind, and holds the lock while
//! the spool is open.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub(crate) struct Spool {
    tmp: PathBuf,
    next_temp: AtomicU64,
    /// The open lock file; the lock goes with it.
    _lock: std::fs::File,
}

impl Spool {
    /// Locks `root` (creating it), then empties `<root>/tmp`.
    pub(crate) fn open(root: &Path) -> io::Result<Self> {
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
        let tmp = root.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(Spool {
            tmp,
            next_temp: AtomicU64::new(0),
            _lock: lock,
        })
    }

    /// A fresh temp path (in the same file system as a file store's blobs, so a commit there is
    /// an atomic rename).
    pub(crate) fn temp_path(&self) -> PathBuf {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!("{}-{n}", std::process::id()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        std::fs::write(spool.temp_path(), b"an upload in progress").unwrap();
        let error = Spool::open(dir.path()).unwrap_err();
        assert!(error.to_string().contains("in use"), "{error}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            1,
            "nothing wiped"
        );
        drop(spool);
        Spool::open(dir.path()).unwrap();
    }

    #[test]
    fn stray_temp_files_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        std::fs::write(spool.temp_path(), b"partial").unwrap();
        drop(spool);
        Spool::open(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}

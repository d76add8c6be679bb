//! Disk space for content on its way into the store: what is free, and blocks allocated ahead
//! of the bytes, so that a disk too full for a blob fails its fill at once with a clear error
//! rather than part-way through a write.

use std::fs::File;
use std::io;

/// How far ahead of the bytes received a fill's blocks are allocated (within its Content-Length).
pub(crate) const RESERVE_AHEAD: u64 = 8 << 20;

/// Free bytes for an unprivileged writer on the file system of `file`.
pub(crate) fn free_space(file: &File) -> io::Result<u64> {
    let stat = rustix::fs::fstatvfs(file)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Allocates `len` bytes of a blob's blocks from `offset` before they are written, so a disk
/// that fills up fails the fill with a clear error at once. A file system without `fallocate`
/// is written as before.
pub(crate) fn reserve(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use rustix::io::Errno;
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), offset, len) {
        Ok(()) => Ok(()),
        Err(e) if e == Errno::NOSPC || e == Errno::DQUOT || e == Errno::FBIG => Err(e.into()),
        Err(e) => {
            tracing::debug!(error = %e, "fallocate refused; blocks are allocated as written");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_is_reserved_before_the_download_and_a_blob_too_large_is_refused() {
        let file = tempfile::tempfile().unwrap();
        reserve(&file, 0, 1 << 20).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 1 << 20);
        assert!(free_space(&file).unwrap() > 0);
        let error = reserve(&file, 0, 1 << 62).unwrap_err();
        let errno = rustix::io::Errno::from_io_error(&error);
        assert!(
            errno == Some(rustix::io::Errno::FBIG) || errno == Some(rustix::io::Errno::NOSPC),
            "EFBIG or ENOSPC, got {error}"
        );
    }
}

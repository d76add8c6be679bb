//! glibc's heap, set up for streaming blobs: freed chunks stay in the heap for the next ones.
//!
//! A fill receives chunks of a few hundred KiB, keeps them for its readers and its hasher, then
//! frees them in order, all the time. With glibc's defaults (a trim threshold twice the largest
//! freed mmapped chunk: about a MiB here) every few MiB freed at the top of a thread's heap went
//! back to the kernel (`madvise`) and the next chunks faulted the same pages in again: 56,000 to
//! 70,000 page faults per cold GiB, 6% of the server's CPU in a profile. With the thresholds below,
//! 6,600. What a heap keeps is bounded by [`TRIM_THRESHOLD`] per arena (glibc makes at most 8 per
//! core), and collections still hand free pages back (`gc::give_back_freed_memory`).

/// Free bytes at the top of a heap beyond which glibc hands them back to the kernel.
pub(crate) const TRIM_THRESHOLD: i32 = 16 << 20;
/// Allocations from this size on get a mapping of their own (a fill's chunks stay below it).
pub(crate) const MMAP_THRESHOLD: i32 = 2 << 20;

/// Sets glibc's thresholds; call once, before the runtime's threads start.
pub(crate) fn keep_freed_chunks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's parameters; it is called before any other
    // thread of the process allocates.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

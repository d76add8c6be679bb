//! `parse_range` with an arbitrary header and blob size: never panics, and a range it grants
//! lies inside the blob and is not empty. The same header as a `Content-Range` answer
//! (`content_range`): never panics, and a first byte it reads lies inside the stated size.
//!
//! Input: the size in decimal on the first line (anything else: its length is the size), the
//! header value after it, so the corpus stays readable.
//!
//! The fuzz target `range` (fuzz/fuzz_targets/range.rs) runs it under libFuzzer;
//! tests/fuzz_corpus.rs replays the committed corpus (fuzz/corpus/range/) through it.

use regmirror::cache::range::{content_range, parse_range};

/// The property, for one input.
pub fn check(input: &str) {
    let (size, header) = input.split_once('\n').unwrap_or(("", input));
    let size = size.parse().unwrap_or(size.len() as u64);
    if let Ok(Some(range)) = parse_range(header, size) {
        assert!(
            range.start < range.end && range.end <= size,
            "{header:?} of {size} gave {range:?}"
        );
    }
    if let Some((start, Some(total))) = content_range(header) {
        assert!(start < total, "{header:?} starts at {start} of {total}");
    }
}

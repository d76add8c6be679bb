//! `references` and `declared_media_type` on arbitrary bytes: never panic, and every digest they
//! return is a valid one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regmirror::cache::manifest::{declared_media_type, references};
use regmirror::reference::Digest;

fuzz_target!(|bytes: &[u8]| {
    for digest in references(bytes) {
        assert_eq!(Digest::parse(digest.as_str()).as_ref(), Ok(&digest));
    }
    declared_media_type(bytes);
});

//! `references`, `required_references`, `subject`, `referrer_descriptor`, `media_type` and
//! `pushed_media_type` on arbitrary bytes: never panic, every digest they return is a valid
//! one, what a push requires is among what the manifest references, a referrer's descriptor
//! names the digest and size it was given, and a manifest's type is always a manifest media
//! type.
//!
//! The fuzz target `manifest` (fuzz/fuzz_targets/manifest.rs) runs it under libFuzzer;
//! tests/fuzz_corpus.rs replays the committed corpus (fuzz/corpus/manifest/) through it.

use regmirror::cache::manifest::{
    media_type, pushed_media_type, references, referrer_descriptor, required_references, subject,
};
use regmirror::reference::Digest;
use regmirror::registry::MANIFEST_MEDIA_TYPES;

/// The property, for one input.
pub fn check(bytes: &[u8]) {
    let all = references(bytes);
    for digest in &all {
        assert_eq!(Digest::parse(digest.as_str()).as_ref(), Ok(digest));
    }
    for digest in required_references(bytes) {
        assert!(
            all.contains(&digest),
            "{digest} required but not referenced"
        );
    }
    if let Some(subject) = subject(bytes) {
        assert_eq!(Digest::parse(subject.as_str()).as_ref(), Ok(&subject));
    }
    let digest = Digest::sha256_from_bytes(&[0; 32]);
    let descriptor = referrer_descriptor(bytes, &digest, "m");
    assert_eq!(descriptor["digest"], digest.as_str());
    assert_eq!(descriptor["size"], bytes.len());
    for content_type in [None, Some("text/html"), Some(MANIFEST_MEDIA_TYPES[0])] {
        assert!(MANIFEST_MEDIA_TYPES.contains(&media_type(bytes, content_type)));
        if let Ok(pushed) = pushed_media_type(bytes, content_type) {
            assert!(MANIFEST_MEDIA_TYPES.contains(&pushed));
        }
    }
}

//! `references`, `required_references`, `subject`, `referrer_descriptor` and
//! `declared_media_type` on arbitrary bytes: never panic, every digest they return is a valid
//! one, what a push requires is among what the manifest references, and a referrer's descriptor
//! names the digest and size it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regmirror::cache::manifest::{
    declared_media_type, references, referrer_descriptor, required_references, subject,
};
use regmirror::reference::Digest;

fuzz_target!(|bytes: &[u8]| {
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
    declared_media_type(bytes);
});

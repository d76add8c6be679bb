//! `ImageRef::parse` on arbitrary text: never panics, and a parsed reference printed in its full
//! form parses back to the same value (normalisation is idempotent).
//!
//! The fuzz target `reference` (fuzz/fuzz_targets/reference.rs) runs it under libFuzzer;
//! tests/fuzz_corpus.rs replays the committed corpus (fuzz/corpus/reference/) through it.

use regmirror::reference::{ImageRef, is_valid_host, is_valid_path_component, is_valid_tag};

/// The property, for one input.
pub fn check(input: &str) {
    let Ok(image) = ImageRef::parse(input) else {
        return;
    };
    assert!(is_valid_host(image.registry()), "{image:?}");
    assert!(
        image.repository().split('/').all(is_valid_path_component),
        "{image:?}"
    );
    assert!(image.tag().is_none_or(is_valid_tag), "{image:?}");
    assert!(
        image.tag().is_some() || image.digest().is_some(),
        "{image:?}"
    );
    let printed = image.to_string();
    let again = ImageRef::parse(&printed)
        .unwrap_or_else(|e| panic!("{input:?} printed as {printed:?} does not parse: {e}"));
    assert_eq!(again, image, "{input:?} printed as {printed:?}");
}

//! `registry::route::parse` on arbitrary request paths: never panics, and every name, tag, digest
//! and upload id it accepts is safe to build a storage path from (no empty, `.` or `..`
//! component, no backslash, a valid registry host when one leads the name).
//!
//! The fuzz target `v2_route` (fuzz/fuzz_targets/v2_route.rs) runs it under libFuzzer;
//! tests/fuzz_corpus.rs replays the committed corpus (fuzz/corpus/v2_route/) through it.

use regmirror::reference::{Digest, is_valid_host, is_valid_tag};
use regmirror::registry::route::{ManifestRef, V2Request, parse, split_registry_prefix};

/// The property, for one input.
pub fn check(path: &str) {
    let Ok(request) = parse(path) else {
        return;
    };
    let (name, component) = match &request {
        V2Request::Base | V2Request::Catalog => return,
        V2Request::Tags { name } => (name, None),
        V2Request::Manifest { name, reference } => match reference {
            ManifestRef::Tag(tag) => {
                assert!(is_valid_tag(tag), "{path:?}: tag {tag:?}");
                (name, Some(tag.as_str()))
            }
            ManifestRef::Digest(digest) => (name, Some(checked(digest))),
        },
        V2Request::Blob { name, digest } => (name, Some(checked(digest))),
        V2Request::Upload { name, id } => (name, id.as_deref()),
        V2Request::Referrers { name, subject } => (name, Some(checked(subject))),
    };
    let (host, repository) = split_registry_prefix(name);
    assert!(host.is_none_or(is_valid_host), "{path:?}: host {host:?}");
    for part in repository.split('/').chain(component) {
        assert!(
            !matches!(part, "" | "." | "..") && !part.contains(['/', '\\']),
            "{path:?}: unsafe component {part:?} in {request:?}"
        );
    }
}

fn checked(digest: &Digest) -> &str {
    assert_eq!(Digest::parse(digest.as_str()).as_ref(), Ok(digest));
    digest.hex()
}

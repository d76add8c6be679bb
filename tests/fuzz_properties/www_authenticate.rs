//! `Challenge::parse` on arbitrary `WWW-Authenticate` values: never panics, and a Bearer
//! challenge written back with quoted, escaped values parses to the same challenge.
//!
//! The fuzz target `www_authenticate` (fuzz/fuzz_targets/www_authenticate.rs) runs it under libFuzzer;
//! tests/fuzz_corpus.rs replays the committed corpus (fuzz/corpus/www_authenticate/) through it.

use regmirror::upstream::Challenge;

/// The property, for one input.
pub fn check(header: &str) {
    let Some(challenge) = Challenge::parse(header) else {
        return;
    };
    let Challenge::Bearer {
        realm,
        service,
        scope,
    } = &challenge
    else {
        return;
    };
    let quote = |value: &str| format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""));
    let mut written = format!("Bearer realm={}", quote(realm));
    for (key, value) in [("service", service), ("scope", scope)] {
        if let Some(value) = value {
            written.push_str(&format!(",{key}={}", quote(value)));
        }
    }
    assert_eq!(
        Challenge::parse(&written).as_ref(),
        Some(&challenge),
        "{header:?} written as {written:?}"
    );
}

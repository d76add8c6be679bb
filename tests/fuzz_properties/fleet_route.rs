//! The fleet's internal route: `parse_fill_path` on an arbitrary path and `verify` on an
//! arbitrary signature and time. Never panics; a parsed path is written back to itself; a
//! signature `verify` accepts is the one `sign` makes for that path and expiry (hex in any
//! case), and it has not expired; what `sign` makes verifies until it expires.
//!
//! Input: the path on the first line, the `Regmirror-Fleet` value on the second, the time
//! (unix seconds) on the third.
//!
//! The fuzz target `fleet_route` (fuzz/fuzz_targets/fleet_route.rs) runs it under libFuzzer;
//! tests/fuzz_corpus.rs replays the committed corpus (fuzz/corpus/fleet_route/) through it.

use regmirror::cache::fleet::{SIGNATURE_LIFETIME, fill_path, parse_fill_path, sign, verify};
use regmirror::config::cache::Secret;

/// The property, for one input.
pub fn check(input: &str) {
    let mut lines = input.splitn(3, '\n');
    let path = lines.next().unwrap_or("");
    let signature = lines.next().unwrap_or("");
    let now: u64 = lines
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(1_000_000);
    if let Some((upstream, digest)) = parse_fill_path(path) {
        let written = fill_path(&upstream, &digest);
        assert_eq!(
            parse_fill_path(&written),
            Some((upstream, digest)),
            "{path:?}"
        );
    }
    let secret = Secret("a-fleet-secret-for-fuzzing".into());
    if verify(Some(&secret), path, Some(signature), now) {
        let (expires, tag) = signature.split_once('.').unwrap();
        let expires: u64 = expires.parse().unwrap();
        assert!(expires >= now);
        if let Some(made) = expires.checked_sub(SIGNATURE_LIFETIME.as_secs()) {
            let signed = sign(&secret, path, made);
            let (_, signed_tag) = signed.split_once('.').unwrap();
            assert!(
                tag.eq_ignore_ascii_case(signed_tag),
                "{signature} for {path:?}"
            );
        }
    }
    let made = sign(&secret, path, now);
    assert!(verify(Some(&secret), path, Some(&made), now));
    let expired = now
        .saturating_add(SIGNATURE_LIFETIME.as_secs())
        .saturating_add(1);
    assert!(now > u64::MAX - 31 || !verify(Some(&secret), path, Some(&made), expired));
}

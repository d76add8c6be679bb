//! `Challenge::parse` on arbitrary `WWW-Authenticate` values: never panics, and a Bearer
//! challenge written back with quoted, escaped values parses to the same challenge.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regmirror::upstream::Challenge;

fuzz_target!(|header: &str| {
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
});

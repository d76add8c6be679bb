//! The property each fuzz target checks, one file per target: `check(input)` panics when the
//! property does not hold. The libFuzzer targets in fuzz/fuzz_targets/ include their file by path;
//! tests/fuzz_corpus.rs replays the committed corpus through all of them on stable.

pub mod config_yml;
pub mod daemon_json;
pub mod fleet_route;
pub mod manifest;
pub mod range;
pub mod rate_limit_headers;
pub mod reference;
pub mod referrers_answer;
pub mod registry_host;
pub mod v2_route;
pub mod www_authenticate;

//! `CacheConfig::parse` on arbitrary config.yml text and `REGISTRY_*` overrides: never panics,
//! and a configuration it accepts has what the server needs to start.
//!
//! Input: the YAML text, then optionally a NUL byte and `KEY=VALUE` lines, each taken as an
//! environment variable (`REGISTRY_` is prepended when missing). The overrides are applied to the
//! text and, separately, to no file at all.
//!
//! The fuzz target `config_yml` (fuzz/fuzz_targets/config_yml.rs) runs it under libFuzzer;
//! tests/fuzz_corpus.rs replays the committed corpus (fuzz/corpus/config_yml/) through it.

use regmirror::config::cache::CacheConfig;

/// The property, for one input.
pub fn check(input: &str) {
    let (text, env) = input.split_once('\0').unwrap_or((input, ""));
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| {
            let key = if key.starts_with("REGISTRY_") {
                key.to_owned()
            } else {
                format!("REGISTRY_{key}")
            };
            (key, value.to_owned())
        })
        .collect();
    for text in [Some(text), None] {
        if let Ok(config) = CacheConfig::parse("config.yml", text, &env) {
            assert!(!config.gc_interval.is_zero(), "{input:?}");
            assert!(
                !config.upstreams.is_empty()
                    || config.dynamic_upstreams
                    || config.local != Default::default(),
                "{input:?}: nothing to serve"
            );
        }
    }
}

//! `CacheConfig::parse` on arbitrary config.yml text and `REGISTRY_*` overrides: never panics, a
//! configuration it accepts has what the server needs to start, and every error and warning
//! either names a variable of the environment or a line and a column (in characters) inside the
//! text, its lines counted as YAML counts them (`\r` and Unicode line breaks too).
//!
//! Input: the YAML text, then optionally a NUL byte and `KEY=VALUE` lines, each taken as an
//! environment variable (`REGISTRY_` is prepended when missing). The overrides are applied to the
//! text and, separately, to no file at all.
//!
//! The fuzz target `config_yml` (fuzz/fuzz_targets/config_yml.rs) runs it under libFuzzer;
//! tests/fuzz_corpus.rs replays the committed corpus (fuzz/corpus/config_yml/) through it.

use regmirror::config::cache::{CacheConfig, CacheDiagnostic, Origin};
use regmirror::config::yaml_span;

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
        match CacheConfig::parse("config.yml", text, &env) {
            Ok(config) => {
                assert!(!config.gc_interval.is_zero(), "{input:?}");
                assert!(
                    !config.upstreams.is_empty()
                        || config.dynamic_upstreams
                        || config.local != Default::default(),
                    "{input:?}: nothing to serve"
                );
                for warning in &config.warnings {
                    located(text, &env, warning);
                }
            }
            Err(errors) => {
                assert!(!errors.0.is_empty(), "{input:?}: refused without a reason");
                for error in &errors.0 {
                    located(text, &env, error);
                }
            }
        }
    }
}

fn located(text: Option<&str>, env: &[(String, String)], diagnostic: &CacheDiagnostic) {
    match (&diagnostic.origin, text) {
        (Origin::Env(variable), _) => assert!(
            env.iter().any(|(key, _)| key == variable),
            "{diagnostic}: names a variable that is not set"
        ),
        (
            Origin::File {
                position: Some(p), ..
            },
            Some(text),
        ) => {
            let lines = yaml_span::lines(text);
            let line = p.line.checked_sub(1).and_then(|i| lines.get(i));
            assert!(
                line.is_some_and(|l| p.column >= 1 && p.column <= l.chars().count() + 1),
                "{text:?}: {diagnostic} is outside the text"
            );
        }
        (Origin::File { position, .. }, None) => {
            assert!(
                position.is_none(),
                "{diagnostic}: a position without a file"
            )
        }
        (Origin::File { position: None, .. }, Some(_)) => {
            panic!("{diagnostic}: a file's diagnostic without a position")
        }
    }
}

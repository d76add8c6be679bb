//! Every fuzz target's committed corpus (fuzz/corpus/<target>/*), replayed as ordinary tests on
//! stable: each input goes through the property its libFuzzer target checks
//! (tests/fuzz_properties/, which the targets include), so a change that breaks a property on a
//! known input fails `cargo test`, without nightly or a fuzzing build. Looking for new inputs is
//! a campaign's job: `fuzz/run` (fuzz/README.md).

mod fuzz_properties;

use std::path::{Path, PathBuf};

use fuzz_properties as property;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The committed inputs of `target`, sorted by name.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{}: no inputs", dir.display());
    inputs
}

/// `bytes` as libfuzzer-sys hands them to a target that takes `&str`: the longest prefix that is
/// valid UTF-8 (arbitrary's `<&str>::arbitrary_take_rest`).
fn as_text(bytes: &[u8]) -> &str {
    match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap(),
    }
}

/// Runs `check` on every input of `target`'s corpus; fails naming each input whose check
/// panicked (the panic itself is printed above).
fn replay(target: &str, check: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    let inputs = corpus(target);
    let failed: Vec<String> = inputs
        .iter()
        .filter(|(_, bytes)| std::panic::catch_unwind(|| check(bytes)).is_err())
        .map(|(path, _)| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: the property fails for {failed:?}"
    );
    eprintln!("{target}: {} inputs hold", inputs.len());
}

#[test]
fn config_yml() {
    replay("config_yml", |bytes| {
        property::config_yml::check(as_text(bytes))
    });
}

#[test]
fn daemon_json() {
    replay("daemon_json", |bytes| {
        property::daemon_json::check(as_text(bytes))
    });
}

#[test]
fn fleet_route() {
    replay("fleet_route", |bytes| {
        property::fleet_route::check(as_text(bytes))
    });
}

#[test]
fn manifest() {
    replay("manifest", property::manifest::check);
}

#[test]
fn range() {
    replay("range", |bytes| property::range::check(as_text(bytes)));
}

#[test]
fn rate_limit_headers() {
    replay("rate_limit_headers", |bytes| {
        property::rate_limit_headers::check(as_text(bytes))
    });
}

#[test]
fn reference() {
    replay("reference", |bytes| {
        property::reference::check(as_text(bytes))
    });
}

#[test]
fn referrers_answer() {
    replay("referrers_answer", |bytes| {
        property::referrers_answer::check(as_text(bytes))
    });
}

#[test]
fn registry_host() {
    replay("registry_host", |bytes| {
        property::registry_host::check(as_text(bytes))
    });
}

#[test]
fn v2_route() {
    replay("v2_route", |bytes| {
        property::v2_route::check(as_text(bytes))
    });
}

#[test]
fn www_authenticate() {
    replay("www_authenticate", |bytes| {
        property::www_authenticate::check(as_text(bytes))
    });
}

/// Every fuzz target, and every corpus directory, is replayed above: a new target without a
/// replay here fails.
#[test]
fn every_target_is_replayed() {
    let replayed = [
        "config_yml",
        "daemon_json",
        "fleet_route",
        "manifest",
        "range",
        "rate_limit_headers",
        "reference",
        "referrers_answer",
        "registry_host",
        "v2_route",
        "www_authenticate",
    ];
    for dir in ["fuzz_targets", "corpus"] {
        let mut names: Vec<String> = std::fs::read_dir(fuzz_dir().join(dir))
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                path.file_stem().unwrap().to_str().unwrap().to_owned()
            })
            .collect();
        names.sort();
        assert_eq!(names, replayed, "fuzz/{dir}");
    }
}

//! `regmirror containerd-hosts` and `regmirror registries-conf` as a user runs them: golden
//! output, warnings, `--check`, `--prune`, `--force` and idempotence.
//! `REGMIRROR_UPDATE_GOLDEN=1 cargo test --test generate_cli` rewrites tests/golden/.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn regmirror(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_regmirror"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every file under `dir`, as `== relative/path ==` sections in name order.
fn snapshot(dir: &Path) -> String {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, base, out);
            } else {
                let name = path.strip_prefix(base).unwrap().display().to_string();
                out.push((name, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files);
    files.sort();
    files
        .iter()
        .map(|(name, text)| format!("== {name} ==\n{text}"))
        .collect()
}

fn golden(name: &str, actual: &str) {
    let path = root().join("tests/golden").join(name);
    if std::env::var_os("REGMIRROR_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(actual, expected, "{name} differs from the golden file");
}

#[test]
fn containerd_golden_files() {
    for (example, version) in [
        ("exact-rule", "1.7"),
        ("catch-all", "1.7"),
        ("fleet", "1.7"),
        ("fleet", "2.1"),
        ("mirrors-only", "1.7"),
    ] {
        let out = tempfile::tempdir().unwrap();
        let result = regmirror(&[
            "containerd-hosts",
            "--config",
            &format!("contrib/examples/{example}.json"),
            "--out",
            out.path().to_str().unwrap(),
            "--containerd-version",
            version,
        ]);
        assert!(result.status.success(), "{}", stderr(&result));
        let text = snapshot(out.path());
        for section in text.split("== ").skip(1) {
            let body = section.split_once(" ==\n").unwrap().1;
            toml::from_str::<toml::Table>(body).unwrap_or_else(|e| panic!("not TOML: {e}\n{body}"));
        }
        golden(&format!("containerd-{example}-{version}.txt"), &text);
    }
}

#[test]
fn registries_conf_golden_files() {
    for (example, extra) in [
        ("exact-rule", vec![]),
        (
            "catch-all",
            vec!["--registry", "quay.io", "--registry", "sea.hub:5000"],
        ),
        ("fleet", vec![]),
        ("mirrors-only", vec!["--registry", "quay.io"]),
    ] {
        let out = tempfile::tempdir().unwrap();
        let file = out.path().join("50-regmirror.conf");
        let mut args = vec!["registries-conf", "--config"];
        let config = format!("contrib/examples/{example}.json");
        args.push(&config);
        args.extend(["--out", file.to_str().unwrap()]);
        args.extend(extra.iter().copied());
        let result = regmirror(&args);
        assert!(result.status.success(), "{}", stderr(&result));
        let text = std::fs::read_to_string(&file).unwrap();
        toml::from_str::<toml::Table>(&text).unwrap();
        golden(&format!("registries-{example}.conf"), &text);
    }
}

#[test]
fn warnings_name_the_rule() {
    let out = tempfile::tempdir().unwrap();
    let result = regmirror(&[
        "containerd-hosts",
        "--config",
        "contrib/examples/fleet.json",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(result.status.success());
    let err = stderr(&result);
    assert!(err.contains("contrib/examples/fleet.json:8:17: containerd hosts.toml cannot express the pattern rule \"*.corp.example\""), "{err}");
    assert!(err.contains("CIDR insecure entry 10.20.0.0/16"), "{err}");
    let result = regmirror(&[
        "registries-conf",
        "--config",
        "contrib/examples/catch-all.json",
        "--out",
        out.path().join("r.conf").to_str().unwrap(),
    ]);
    assert!(
        stderr(&result).contains("no catch-all"),
        "{}",
        stderr(&result)
    );
    let result = regmirror(&[
        "registries-conf",
        "--config",
        "contrib/examples/fleet.json",
        "--out",
        out.path().join("r.conf").to_str().unwrap(),
    ]);
    assert!(result.status.success());
    let err = stderr(&result);
    assert!(err.contains("contrib/examples/fleet.json:5:19: mirror cache.internal:5000 serves docker.io, ghcr.io, \
        legacy.corp.example:5000, *.corp.example in registries.conf, but podman and CRI-O send no ?ns="), "{err}");
    assert!(err.contains("contrib/examples/fleet.json:8:17: registries.conf's prefix \"*.corp.example\" also matches \
        hosts with a port"), "{err}");
    let result = regmirror(&[
        "registries-conf",
        "--config",
        "contrib/examples/exact-rule.json",
        "--out",
        out.path().join("r.conf").to_str().unwrap(),
        "--registry",
        "lone.example",
    ]);
    assert!(result.status.success());
    let err = stderr(&result);
    assert!(
        err.contains("--registry lone.example: no rule covers it"),
        "{err}"
    );
}

#[test]
fn mirrors_only_warnings_name_the_key() {
    let out = tempfile::tempdir().unwrap();
    let config = "contrib/examples/mirrors-only.json";
    let result = regmirror(&[
        "containerd-hosts",
        "--config",
        config,
        "--out",
        out.path().join("certs.d").to_str().unwrap(),
        "--containerd-version",
        "1.6.4",
    ]);
    assert!(result.status.success(), "{}", stderr(&result));
    let err = stderr(&result);
    assert!(
        err.contains(
            "contrib/examples/mirrors-only.json:9:17: containerd 1.6.4 does not read _default (needs \
             1.6.17 or 1.7): the `*` rule is written only for the registries the configuration names; \
             it is mirrors-only, so containerd reaches every other registry's origin directly"
        ),
        "{err}"
    );
    let result = regmirror(&[
        "registries-conf",
        "--config",
        config,
        "--out",
        out.path().join("r.conf").to_str().unwrap(),
    ]);
    assert!(result.status.success(), "{}", stderr(&result));
    let err = stderr(&result);
    for expected in [
        "contrib/examples/mirrors-only.json:6:23: registries.conf redirects pulls only",
        "pushes to the registries of the mirrors-only rule \"reg.compliance.example\" still go to their origin",
        "contrib/examples/mirrors-only.json:9:17: registries.conf has no catch-all",
        "it is mirrors-only, so podman reaches every other registry's origin directly",
    ] {
        assert!(err.contains(expected), "{expected}\n{err}");
    }
}

#[test]
fn written_files_are_readable_by_everyone() {
    // Rootless podman and skopeo read the drop-in as a user; tempfile starts files at 0600.
    let out = tempfile::tempdir().unwrap();
    let conf = out.path().join("50-regmirror.conf");
    let hosts = out.path().join("certs.d");
    for args in [
        ["registries-conf", "--out", conf.to_str().unwrap()],
        ["containerd-hosts", "--out", hosts.to_str().unwrap()],
    ] {
        let mut args = args.to_vec();
        args.extend(["--config", "contrib/examples/fleet.json"]);
        let result = regmirror(&args);
        assert!(result.status.success(), "{}", stderr(&result));
    }
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&conf), 0o644);
    assert_eq!(mode(&hosts.join("docker.io/hosts.toml")), 0o644);
    assert_eq!(mode(&hosts.join("_default/hosts.toml")), 0o644);
}

#[test]
fn check_prune_force_and_idempotence() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let config = dir.path().join("..").join(format!(
        "{}-mirrors.json",
        dir.path().file_name().unwrap().to_str().unwrap()
    ));
    let write_config = |rules: &str| {
        std::fs::write(&config, format!(r#"{{"mirror-registries": [{rules}]}}"#)).unwrap()
    };
    let run = |extra: &[&str]| {
        let mut args = vec![
            "containerd-hosts",
            "--config",
            config.to_str().unwrap(),
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        regmirror(&args)
    };
    write_config(
        r#"{"domain": "a.io", "mirrors": ["https://m1"]}, {"domain": "b.io", "mirrors": ["https://m2"]}"#,
    );
    assert!(
        run(&["--check"]).status.code() == Some(1),
        "empty dir differs"
    );
    assert!(run(&[]).status.success());
    let first = snapshot(dir.path());
    let mtime = std::fs::metadata(dir.path().join("a.io/hosts.toml"))
        .unwrap()
        .modified()
        .unwrap();
    let again = run(&[]);
    assert!(
        stdout(&again).contains("0 written, 0 removed, 2 unchanged"),
        "{}",
        stdout(&again)
    );
    assert_eq!(snapshot(dir.path()), first, "a second run changes nothing");
    assert_eq!(
        std::fs::metadata(dir.path().join("a.io/hosts.toml"))
            .unwrap()
            .modified()
            .unwrap(),
        mtime
    );
    assert!(run(&["--check"]).status.success());

    // The config changes: --check shows the diff and exits 1.
    write_config(r#"{"domain": "a.io", "mirrors": ["https://m1", "https://m3"]}"#);
    let check = run(&["--check"]);
    assert_eq!(check.status.code(), Some(1));
    assert!(
        stdout(&check).contains("+[host.\"https://m3\"]"),
        "{}",
        stdout(&check)
    );
    let check = run(&["--check", "--prune"]);
    assert!(
        stdout(&check).contains("-server = \"https://b.io\""),
        "stale b.io shows as removed with --prune: {}",
        stdout(&check)
    );
    assert!(run(&[]).status.success());
    assert!(
        dir.path().join("b.io/hosts.toml").exists(),
        "kept without --prune"
    );
    // --check compares what the same command writes: without --prune, b.io stays and that is
    // up to date (it only names it); with --prune it differs until pruned.
    let check = run(&["--check"]);
    assert!(check.status.success(), "{}", stdout(&check));
    assert!(
        stdout(&check)
            .contains("b.io/hosts.toml: generated for a registry the config no longer names"),
        "{}",
        stdout(&check)
    );
    assert_eq!(run(&["--check", "--prune"]).status.code(), Some(1));
    assert!(run(&["--prune"]).status.success());
    assert!(!dir.path().join("b.io").exists(), "pruned");
    assert!(run(&["--check", "--prune"]).status.success());

    // A hosts.toml a person wrote is left alone without --force, and a user directory is never pruned.
    std::fs::create_dir_all(dir.path().join("c.io")).unwrap();
    std::fs::write(
        dir.path().join("c.io/hosts.toml"),
        "server = \"https://c.io\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("mine.io")).unwrap();
    std::fs::write(
        dir.path().join("mine.io/hosts.toml"),
        "server = \"https://mine.io\"\n",
    )
    .unwrap();
    write_config(
        r#"{"domain": "a.io", "mirrors": ["https://m1"]}, {"domain": "c.io", "mirrors": ["https://m4"]}"#,
    );
    let refused = run(&["--prune"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("c.io/hosts.toml was not generated by regmirror"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("c.io/hosts.toml")).unwrap(),
        "server = \"https://c.io\"\n"
    );
    assert!(dir.path().join("mine.io/hosts.toml").exists());
    assert!(run(&["--force"]).status.success());
    assert!(
        std::fs::read_to_string(dir.path().join("c.io/hosts.toml"))
            .unwrap()
            .contains("https://m4")
    );
    let _ = std::fs::remove_file(&config);
}

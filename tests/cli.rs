//! `regmirror resolve` and `regmirror check` as a user runs them: output, JSON shape, exit codes.

use std::path::PathBuf;
use std::process::{Command, Output};

fn regmirror(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_regmirror"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run regmirror")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn temp_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mirrors.json");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn resolve_json_has_the_documented_shape() {
    let out = regmirror(&[
        "resolve",
        "--config",
        "contrib/examples/exact-rule.json",
        "--json",
        "reg.test1.com/library/nginx:latest",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let value: serde_json::Value =
        serde_json::from_str(&stdout(&out)).expect("exactly one JSON object");
    assert_eq!(
        value,
        serde_json::json!({
            "reference": "reg.test1.com/library/nginx:latest",
            "registry": "reg.test1.com",
            "repository": "library/nginx",
            "tag": "latest",
            "digest": null,
            "rule": "reg.test1.com",
            "endpoints": [
                {"url": "http://mirror.test1.com", "role": "mirror", "tls": "none", "ns": "reg.test1.com",
                 "source": "contrib/examples/exact-rule.json:5:19 mirror-registries[0].mirrors[0]"},
                {"url": "https://mirror.test2.com", "role": "mirror", "tls": "verify", "ns": "reg.test1.com",
                 "source": "contrib/examples/exact-rule.json:5:46 mirror-registries[0].mirrors[1]"},
                {"url": "https://reg.test1.com", "role": "origin", "tls": "verify", "ns": null, "source": "origin"}
            ],
            "omitted_origin": null
        })
    );
    assert!(
        stderr(&out).contains("plain http"),
        "the http mirror is warned about"
    );
}

#[test]
fn resolve_shows_the_origin_a_mirrors_only_rule_omits() {
    let config = "contrib/examples/mirrors-only.json";
    let out = regmirror(&["resolve", "--config", config, "--json", "nginx"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let value: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let urls: Vec<&str> = value["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["url"].as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        ["https://cache-a.internal:5000", "https://mirror.gcr.io"],
        "the `*` rule's mirror, then registry-mirrors, and no origin"
    );
    assert_eq!(
        value["omitted_origin"],
        serde_json::json!({
            "url": "https://registry-1.docker.io",
            "source": "contrib/examples/mirrors-only.json:11:23 mirror-registries[1].mirrors-only"
        })
    );

    let out = regmirror(&[
        "resolve",
        "--config",
        config,
        "reg.compliance.example/team/app:1.0",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "\norigin      https://reg.compliance.example omitted: mirrors-only \
             (contrib/examples/mirrors-only.json:6:23 mirror-registries[0].mirrors-only)\n"
        ),
        "{text}"
    );
    assert!(!text.contains("  origin  "), "no origin row: {text}");

    // The mirror pulled by its own name keeps its origin: it is that mirror.
    let out = regmirror(&[
        "resolve",
        "--config",
        config,
        "--json",
        "cache-a.internal:5000/team/app",
    ]);
    let value: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(value["omitted_origin"], serde_json::Value::Null);
    assert_eq!(value["endpoints"][0]["role"], "origin");
}

#[test]
fn resolve_with_digest_and_no_rule() {
    let digest = format!("sha256:{}", "a".repeat(64));
    let (_dir, path) = temp_config("{}");
    let out = regmirror(&[
        "resolve",
        "--config",
        path.to_str().unwrap(),
        "--json",
        &format!("quay.io/a/b@{digest}"),
    ]);
    assert!(out.status.success());
    let value: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(value["tag"], serde_json::Value::Null);
    assert_eq!(value["digest"], digest.as_str());
    assert_eq!(value["rule"], serde_json::Value::Null);
    assert_eq!(value["endpoints"].as_array().unwrap().len(), 1);
}

/// README shows `$ regmirror resolve ...` sessions; each must print exactly what README says.
#[test]
fn readme_sessions_match_the_binary() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut sessions = 0;
    let mut lines = readme.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(command) = line.strip_prefix("$ regmirror resolve ") else {
            continue;
        };
        let mut expected = String::new();
        while let Some(next) = lines.next_if(|l| !l.starts_with("```")) {
            expected.push_str(next);
            expected.push('\n');
        }
        let mut args = vec!["resolve"];
        args.extend(command.split_whitespace());
        let out = regmirror(&args);
        assert!(out.status.success(), "{command}: {}", stderr(&out));
        assert_eq!(
            stdout(&out),
            expected,
            "README output of `regmirror resolve {command}` is stale"
        );
        sessions += 1;
    }
    assert!(
        sessions >= 2,
        "README should show the examples' resolve output"
    );
}

#[test]
fn bad_reference_exits_2_with_the_reason() {
    let (_dir, path) = temp_config("{}");
    let out = regmirror(&["resolve", "--config", path.to_str().unwrap(), "Nginx"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("must be lowercase"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn bad_config_exits_2_naming_file_line_and_field() {
    let (_dir, path) = temp_config(
        "{\n  \"mirror-registries\": [\n    {\"domain\": \"reg.io\", \"mirrors\": []}\n  ]\n}\n",
    );
    for command in ["check", "resolve"] {
        let mut args = vec![command, "--config", path.to_str().unwrap()];
        if command == "resolve" {
            args.push("nginx");
        }
        let out = regmirror(&args);
        assert_eq!(out.status.code(), Some(2), "{command}");
        let expected = format!(
            "{}:3:37: mirror-registries[0].mirrors: must list at least one mirror URL",
            path.display()
        );
        assert!(
            stderr(&out).contains(&expected),
            "{command}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn missing_config_file_exits_2() {
    let out = regmirror(&["check", "--config", "/nonexistent/mirrors.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/mirrors.json: cannot read"));
}

#[test]
fn check_accepts_valid_files_and_prints_warnings() {
    let out = regmirror(&[
        "check",
        "--config",
        "contrib/examples/catch-all.json",
        "--config",
        "contrib/examples/fleet.json",
    ]);
    // Both files define "*": that is an error naming both places.
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("configured twice: here and at contrib/examples/catch-all.json"));

    let out = regmirror(&["check", "--config", "contrib/examples/fleet.json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("ok: 4 mirror rule(s)"));
    assert!(
        stderr(&out).contains("CIDR 10.20.0.0/16"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(regmirror(&["resolve"]).status.code(), Some(2));
    assert_eq!(regmirror(&["no-such-command"]).status.code(), Some(2));
    assert!(regmirror(&["--help"]).status.success());
}

#[test]
fn serve_takes_its_config_as_registry_serve_does() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(&config, "proxy: {remoteurl: https://a.io, max_rate: 0}\n").unwrap();
    let config = config.to_str().unwrap();
    // The positional path is read (its error names it), like `registry serve CONFIG`.
    let out = regmirror(&["serve", config]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{config}:1:34: proxy.max_rate")),
        "{}",
        stderr(&out)
    );
    let out = regmirror(&["serve", "--config", config, config]);
    assert_eq!(out.status.code(), Some(2), "both at once is a usage error");
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn serve_refuses_a_fleet_secret_too_short_to_sign_with() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        "proxy: {remoteurl: https://a.io}\nhttp: {addr: 127.0.0.1:0, secret: x}\n",
    )
    .unwrap();
    // Before, it started and served: stopped after 10 s, that is a failure too.
    let mut serve = Command::new(env!("CARGO_BIN_EXE_regmirror"))
        .args(["serve", config.to_str().unwrap()])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while serve.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(10) {
            serve.kill().unwrap();
            panic!("serve started with a one-byte http.secret");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = serve.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("http.secret: 1 bytes is too short"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn completions_and_man_pages_come_from_the_command_line() {
    for shell in ["bash", "zsh", "fish"] {
        let out = regmirror(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        for word in ["serve", "containerd-hosts", "first-byte-timeout"] {
            assert!(script.contains(word), "{shell} completes {word}");
        }
    }
    assert_eq!(regmirror(&["completions", "nosh"]).status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let out = regmirror(&["man", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for page in ["regmirror.1", "regmirror-serve.1", "regmirror-shim.1"] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(".TH"), "{page}");
    }
    let serve = std::fs::read_to_string(dir.path().join("regmirror-serve.1")).unwrap();
    assert!(serve.contains("first\\-byte\\-timeout"), "{serve}");
}

/// `regmirror ARGS` in `dir` with `env`, which must exit by itself within 10 s (a configuration
/// refused before start-up): one still running is killed and fails the test. `http.addr` is
/// `127.0.0.1:0` unless `env` says otherwise, so that a `serve` that does start binds nothing
/// fixed.
fn refused(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_regmirror"));
    command
        .args(args)
        .current_dir(dir)
        .env("REGISTRY_HTTP_ADDR", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("run regmirror");
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(10) {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("regmirror {args:?} started instead: {}", stderr(&out));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn file_in(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn serve_and_gc_refuse_a_mirror_file_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let mirrors = file_in(
        &dir,
        "mirrors.json",
        r#"{"mirror-registries": [{"domain": "reg.io", "mirrors": ["https://m.io"]}]}"#,
    );
    let out = refused(dir.path(), &["serve", "--config", &mirrors], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "error: {mirrors}: this is a mirror file (daemon.json format); pass it with --mirrors\n"
        )
    );
    let out = refused(dir.path(), &["gc", "--config", &mirrors], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("this is a mirror file (daemon.json format); gc reads"),
        "{}",
        stderr(&out)
    );
    assert!(
        !dir.path().join("regmirror-data").exists(),
        "nothing was created"
    );
}

#[test]
fn mirror_commands_refuse_a_config_yml_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let config = file_in(
        &dir,
        "config.yml",
        "version: 0.1\nproxy:\n  remoteurl: https://registry-1.docker.io\n",
    );
    let out = regmirror(&["resolve", "--config", &config, "nginx"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "error: {config}: this is a config.yml for `regmirror serve`; resolve reads the \
             daemon.json mirror format\n"
        )
    );
    let out = regmirror(&["registries-conf", "--mirrors", &config, "--check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("registries-conf reads"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_validates_a_config_yml_as_serve_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let good = file_in(
        &dir,
        "config.yml",
        "version: 0.1\nproxy:\n  remoteurl: https://registry-1.docker.io\n  deny: [Library/x]\n",
    );
    let out = regmirror(&["check", "--config", &good]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "ok: {good}: a config.yml for `regmirror serve`, a pull-through cache, 1 warning(s)\n"
        )
    );
    assert!(
        stderr(&out).starts_with(&format!("warning: {good}:4:10: proxy.deny[0]: ")),
        "{}",
        stderr(&out)
    );
    // With a mirror file beside it, both are checked.
    let out = regmirror(&[
        "check",
        "--mirrors",
        &good,
        "--mirrors",
        "contrib/examples/exact-rule.json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 2, "{}", stdout(&out));
    // An error is one located line, as `serve` would print it, and exit code 2.
    let bad = file_in(
        &dir,
        "bad.yml",
        "version: 0.1\nproxy:\n  remoteurl: https://registry-1.docker.io\n  tag_revalidate: soon\n",
    );
    let out = regmirror(&["check", "--mirrors", &bad]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with(&format!("error: {bad}:4:3: proxy.tag_revalidate: ")),
        "{}",
        stderr(&out)
    );
    // The REGISTRY_* environment applies, as for `serve`.
    let out = Command::new(env!("CARGO_BIN_EXE_regmirror"))
        .args(["check", "--config", &good])
        .env("REGISTRY_PROXY_TAG_REVALIDATE", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("error: $REGISTRY_PROXY_TAG_REVALIDATE: proxy.tag_revalidate: "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn mirrors_is_the_flag_of_the_mirror_file_and_config_its_alias() {
    let out = regmirror(&[
        "resolve",
        "--mirrors",
        "contrib/examples/exact-rule.json",
        "--json",
        "reg.test1.com/library/nginx",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let help = stdout(&regmirror(&["check", "--help"]));
    assert!(
        help.contains("--mirrors <FILE>") && help.contains("[alias: --config]"),
        "{help}"
    );
}

#[test]
fn check_names_a_slip_of_a_mirror_key_and_the_files_it_read() {
    let (_dir, path) = temp_config(
        "{\n  \"mirror-registry\": [\n    {\"domain\": \"reg.io\", \"mirrors\": [\"https://m.io\"]}\n  ]\n}\n",
    );
    let path = path.to_str().unwrap();
    let out = regmirror(&["check", "--config", path]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "error: {path}:2:3: mirror-registry: unknown key; did you mean `mirror-registries`?\n"
        )
    );

    let (_dir, empty) = temp_config("{\"debug\": true}\n");
    let empty = empty.to_str().unwrap();
    let out = regmirror(&["check", "--mirrors", empty]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "warning: no mirror-registries rule and no registry-mirrors entry in {empty}"
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_json_syntax_error_has_no_empty_field() {
    let (_dir, path) = temp_config("{\n  \"registry-mirrors\": [\n  ,]\n}\n");
    let path = path.to_str().unwrap();
    let out = regmirror(&["check", "--config", path]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        format!("error: {path}:3:3: invalid JSON: expected value\n")
    );
}

#[test]
fn serve_refuses_a_slip_of_a_key_at_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let config = file_in(
        &dir,
        "config.yml",
        "http:\n  adr: 127.0.0.1:6000\nproxy:\n  remoteurl: https://r.io\n  tag_revalidte: 10m\n  bogus: 1\n",
    );
    let out = refused(dir.path(), &["serve", &config], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "error: {config}:2:3: http.adr: unknown key; did you mean `addr`?\n\
             error: {config}:5:3: proxy.tag_revalidte: unknown key; did you mean \
             `tag_revalidate`?\n"
        )
    );
}

#[test]
fn serve_reports_every_value_error_located() {
    let dir = tempfile::tempdir().unwrap();
    let config = file_in(
        &dir,
        "config.yml",
        "storage:\n  maxsize: lots\nproxy:\n  remoteurl: not a url\n  ttl: forever\n",
    );
    let out = refused(dir.path(), &["serve", &config], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "error: {config}:2:3: storage.maxsize: \"lots\" is not a size like 50GiB\n\
             error: {config}:4:3: proxy.remoteurl: \"not a url\" is not a URL: relative URL \
             without a base\n\
             error: {config}:5:3: proxy.ttl: \"forever\" is not a duration like 168h, 30m or \
             1h30m\n"
        )
    );
    let negative = file_in(
        &dir,
        "negative.yml",
        "proxy: {remoteurl: https://r.io}\nstorage: {maxsize: -1}\n",
    );
    let out = refused(dir.path(), &["gc", "--config", &negative, "--dry-run"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(&format!(
            "{negative}:2:11: storage.maxsize: -1 is not a size like 50GiB"
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn serve_names_the_variable_an_error_comes_from() {
    let dir = tempfile::tempdir().unwrap();
    let config = file_in(&dir, "config.yml", "proxy:\n  remoteurl: https://r.io\n");
    for (variable, value, expected) in [
        (
            "REGISTRY_PROXY_TTL",
            "forever",
            "error: $REGISTRY_PROXY_TTL: proxy.ttl: \"forever\" is not a duration like 168h, \
             30m or 1h30m\n",
        ),
        (
            "REGISTRY_PROXY_ON",
            "maybe",
            "error: $REGISTRY_PROXY_ON: proxy.on: \"maybe\" is not true or false\n",
        ),
    ] {
        let out = refused(dir.path(), &["serve", &config], &[(variable, value)]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert_eq!(stderr(&out), expected);
    }
}

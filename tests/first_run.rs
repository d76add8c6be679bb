//! What a user meets on a first run, as the binary answers it: `resolve --probe` against a
//! registry with a private CA (real distribution, TLS), `registries-conf` into the current
//! directory, `gc` without a storage root and with one (its output names images and reasons,
//! and a root in use gives one exit code with `serve`), the request log's durations, and the
//! systemd units on a host without another package's directories. Everything on 127.0.0.1.

mod peers;

use std::path::Path;
use std::process::{Command, Output};

use peers::{Images, Registry, RegistryOptions, Regmirror, TestCa};

fn regmirror(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_regmirror"))
        .args(args)
        .current_dir(dir)
        .env_remove("REGMIRROR_LOG")
        .output()
        .expect("run regmirror")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A TLS registry whose certificate a private CA signed (for `mirror.test`), holding
/// `library/demo:v1`; the CA's file is in `certs/mirror.test:PORT/ca.crt`, as dockerd reads it.
#[test]
fn resolve_probe_trusts_certs_d_and_fails_when_no_endpoint_serves() {
    let dir = tempfile::tempdir().unwrap();
    let ca = or_skip!(TestCa::new(dir.path(), &["mirror.test"]));
    let registry = or_skip!(Registry::start(RegistryOptions {
        tls: Some(&ca),
        ..Default::default()
    }));
    let images = or_skip!(Images::new());
    images.build("v1", &[("hello", b"hi\n")]);
    images.push("v1", &format!("{}/library/demo:v1", registry.host()), &[]);
    let port = registry.addr.port();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(certs.join(format!("mirror.test:{port}"))).unwrap();
    std::fs::copy(
        &ca.ca_cert,
        certs.join(format!("mirror.test:{port}/ca.crt")),
    )
    .unwrap();
    let empty = dir.path().join("no-certs");
    std::fs::create_dir_all(&empty).unwrap();
    // The origin is never up (port 1 refuses); the mirror serves with the CA trusted.
    let config = dir.path().join("mirrors.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"mirror-registries": [{{"domain": "origin.test:1", "mirrors": ["https://mirror.test:{port}"]}}]}}"#
        ),
    )
    .unwrap();
    let probe = |certs_dir: &Path, json: bool| {
        let mut args = vec![
            "resolve".to_owned(),
            "--probe".to_owned(),
            "--probe-timeout".to_owned(),
            "2".to_owned(),
            "--add-host".to_owned(),
            "mirror.test:127.0.0.1".to_owned(),
            "--add-host".to_owned(),
            "origin.test:127.0.0.1".to_owned(),
            "--certs-dir".to_owned(),
            certs_dir.display().to_string(),
            "--config".to_owned(),
            config.display().to_string(),
        ];
        if json {
            args.push("--json".to_owned());
        }
        args.push("origin.test:1/library/demo:v1".to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        regmirror(dir.path(), &args)
    };

    let trusted = probe(&certs, true);
    assert!(trusted.status.success(), "{}", text(&trusted.stderr));
    let report: serde_json::Value = serde_json::from_slice(&trusted.stdout).unwrap();
    let rows = report["probe"].as_array().unwrap();
    assert_eq!(rows[0]["verdict"], "serves", "{report}");
    assert_eq!(rows[0]["status"], 200);
    assert_eq!(rows[1]["verdict"], "not reached");
    assert_eq!(
        (&rows[1]["status"], &rows[1]["ms"]),
        (&serde_json::Value::Null, &serde_json::Value::Null),
        "a row not reached shows no answer: {report}"
    );

    // Without the CA: the mirror is refused (UnknownIssuer), the origin is down, the run
    // fails; the table is the output, with no library's log line in it.
    let untrusted = probe(&empty, false);
    let (stdout, stderr) = (text(&untrusted.stdout), text(&untrusted.stderr));
    assert_eq!(untrusted.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("UnknownIssuer"), "{stdout}");
    assert!(
        stderr
            .lines()
            .all(|l| !l.contains("WARN") && !l.contains("rustls")),
        "no log line: {stderr}"
    );
    assert!(
        stderr.contains("no endpoint serves origin.test:1/library/demo:v1"),
        "{stderr}"
    );
}

#[test]
fn registries_conf_writes_a_file_named_without_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mirrors.json"),
        r#"{"mirror-registries": [{"domain": "a.io", "mirrors": ["https://m1.a.io"]}]}"#,
    )
    .unwrap();
    let out = regmirror(
        dir.path(),
        &[
            "registries-conf",
            "--config",
            "mirrors.json",
            "--out",
            "plain.conf",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        std::fs::read_to_string(dir.path().join("plain.conf"))
            .unwrap()
            .contains("m1.a.io")
    );
    // An error names the file it is about.
    let out = regmirror(
        dir.path(),
        &[
            "registries-conf",
            "--config",
            "mirrors.json",
            "--out",
            "mirrors.json/x.conf",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("mirrors.json/x.conf"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn gc_without_a_storage_root_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = regmirror(dir.path(), &["gc"]);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}\n{stderr}",
        text(&out.stdout)
    );
    assert!(
        stderr.contains("regmirror-data does not exist: nothing to collect"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing created"
    );
}

/// A cache that pulled `library/demo:v1` from a real registry; `gc` names what it removes and
/// why, and a root in use fails `gc` and a second `serve` alike.
#[test]
fn gc_names_images_and_reasons_and_a_root_in_use_exits_1_from_gc_and_serve() {
    let origin = or_skip!(Registry::start(RegistryOptions::default()));
    let images = or_skip!(Images::new());
    images.build("v1", &[("data", &vec![7u8; 20_000][..])]);
    images.push("v1", &format!("{}/library/demo:v1", origin.host()), &[]);
    let cache = Regmirror::serve(&format!("proxy: {{remoteurl: {}}}", origin.url()), &[]);
    let pulled = tempfile::tempdir().unwrap();
    peers::skopeo_pull(
        &format!("{}/library/demo:v1", cache.host()),
        &pulled.path().join("demo"),
        &[],
    )
    .unwrap();
    let config = cache.dir.path().join("config.yml");
    let config = config.to_str().unwrap();

    // In use: both fail at once with exit code 1, naming the root.
    for args in [
        vec!["gc", "--config", config],
        vec!["serve", "--config", config],
    ] {
        let out = regmirror(cache.dir.path(), &args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("in use by another regmirror process"),
            "{stderr}"
        );
    }

    let dir = cache.stop();
    let small = dir.path().join("small.yml");
    std::fs::write(
        &small,
        format!(
            "proxy: {{remoteurl: {}}}\nstorage: {{filesystem: {{rootdirectory: {}}}, maxsize: 100B}}\n",
            origin.url(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let small = small.to_str().unwrap();
    let out = regmirror(dir.path(), &["gc", "--dry-run", "--config", small]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let image = format!("would remove {}/library/demo:v1 (sha256:", origin.host());
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&image))
        .unwrap_or_else(|| panic!("a line naming the image: {stdout}"));
    assert!(
        line.contains(": over storage.maxsize ") && line.contains(", the least recently used"),
        "{line}"
    );
    assert!(
        stdout.contains("would remove 1 manifest(s), 2 blob(s)"),
        "{stdout}"
    );
    let out = regmirror(dir.path(), &["gc", "--config", small]);
    assert!(
        text(&out.stdout).contains(&format!("removed {}/library/demo:v1 (", origin.host())),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn the_request_log_rounds_durations() {
    let cache = Regmirror::serve("", &[]);
    for path in ["/healthz", "/v2/", "/favicon.ico"] {
        peers::http("GET", cache.addr, path, &[]);
    }
    // A request's line is written once its answer is out: wait for the last one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let log = loop {
        let log = cache.log();
        if log.contains("path=/favicon.ico status=") {
            break log;
        }
        assert!(std::time::Instant::now() < deadline, "{log}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let durations: Vec<&str> = log
        .split(" ms=")
        .skip(1)
        .map(|rest| rest.split_whitespace().next().unwrap())
        .collect();
    assert!(durations.len() >= 3, "{log}");
    for ms in durations {
        let decimals = ms.split('.').nth(1).map_or(0, str::len);
        assert!(decimals <= 1, "ms={ms}, in\n{log}");
    }
}

/// systemd fails a unit whose `ReadOnlyPaths=`/`ReadWritePaths=` names a path that does not
/// exist, unless it starts with `-`. Only the directories regmirror's own package installs
/// (Cargo.toml's `package.metadata.deb` assets) may be required.
#[test]
fn the_units_start_on_a_host_without_other_packages_directories() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap()).unwrap();
    let installed: Vec<String> = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|asset| format!("/{}", asset[1].as_str().unwrap()))
        .collect();
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("systemd")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "service") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            if !key.ends_with("Paths") {
                continue;
            }
            for dir in value.split_whitespace() {
                checked += 1;
                let ours = installed.iter().any(|i| i.starts_with(&format!("{dir}/")));
                assert!(
                    dir.starts_with('-') || ours,
                    "{}: {key}={dir}: not installed by regmirror, so it must be optional (-{dir})",
                    path.display()
                );
            }
        }
    }
    assert!(checked >= 4, "{checked}");
}

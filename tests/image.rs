//! The container image `contrib/image/build` makes (no base image from any registry): its
//! configuration, run by a real dockerd (`docker run --network host`: `--version`, then `serve`
//! answering `/v2/` on loopback), and pushed through regmirror itself into a local repository
//! and pulled back with skopeo, digest for digest. Engine-level: it takes the engine lock.

mod peers;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use peers::{Dockerd, Regmirror, free_port, http, require, run};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The digest of the image a layout's index names.
fn layout_digest(layout: &Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"].as_str().unwrap().to_owned()
}

#[test]
fn the_image_runs_in_dockerd_and_travels_through_regmirror() {
    let _engine = peers::engine_lock();
    or_skip!(require("umoci", "umoci"));
    or_skip!(require("skopeo", "skopeo"));
    let out = tempfile::tempdir().unwrap();
    run(Command::new("contrib/image/build")
        .arg(out.path())
        .env("REGMIRROR", env!("CARGO_BIN_EXE_regmirror"))
        .current_dir(env!("CARGO_MANIFEST_DIR")));
    let layout = out.path().join("oci");

    let inspected = run(Command::new("skopeo")
        .args(["inspect", "--config"])
        .arg(format!("oci:{}:{VERSION}", layout.display())));
    let config: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    let config = &config["config"];
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/bin/regmirror"])
    );
    assert_eq!(
        config["Cmd"],
        serde_json::json!(["serve", "/etc/regmirror/config.yml"])
    );
    assert_eq!(config["User"], "65532:65532", "not root");
    assert!(config["Volumes"]["/var/lib/regmirror"].is_object());
    let labels = &config["Labels"];
    assert_eq!(labels["org.opencontainers.image.title"], "regmirror");
    assert_eq!(labels["org.opencontainers.image.version"], VERSION);
    for label in ["revision", "created", "licenses", "source", "description"] {
        assert!(
            labels[format!("org.opencontainers.image.{label}")].is_string(),
            "{label}"
        );
    }

    let dockerd = or_skip!(Dockerd::start_for_containers("{}"));
    let tar = out.path().join("regmirror.tar");
    let loaded = dockerd.docker(&["load", "-i", tar.to_str().unwrap()]);
    assert!(loaded.status.success(), "{}", dockerd.log());
    let image = format!("regmirror:{VERSION}");
    let version = dockerd.docker(&["run", "--rm", "--network", "host", &image, "--version"]);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("regmirror {VERSION}"),
        "{}",
        String::from_utf8_lossy(&version.stderr)
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let name = format!("regmirror-test-{}", free_port());
    let started = dockerd.docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "-e",
        &format!("REGISTRY_HTTP_ADDR={addr}"),
        &image,
    ]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let answered = loop {
        let answer = std::net::TcpStream::connect(&addr)
            .ok()
            .map(|_| http("GET", addr.parse().unwrap(), "/v2/", &[]).0);
        if answer == Some(200) || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let logs = dockerd.docker(&["logs", &name]);
    dockerd.docker(&["rm", "-f", &name]);
    assert_eq!(
        answered,
        Some(200),
        "serve in the container: {}",
        String::from_utf8_lossy(&logs.stderr)
    );

    // Through regmirror itself, into a local repository and back, digest for digest.
    let cache = Regmirror::serve("local: all", &[]);
    let pushed = format!("docker://{}/regmirror:{VERSION}", cache.host());
    run(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{VERSION}", layout.display()))
        .arg(&pushed));
    let back = out.path().join("back");
    run(Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(&pushed)
        .arg(format!("oci:{}:{VERSION}", back.display())));
    assert_eq!(layout_digest(&back), layout_digest(&layout));
}

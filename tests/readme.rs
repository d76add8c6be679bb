//! The README's first screen, run as a new user runs it: the commands are read from README.md
//! itself, so the page cannot drift from what works. Docker Hub is replaced by a real local
//! distribution registry holding `library/alpine:latest` (`REGISTRY_PROXY_REMOTEURL`, which the
//! README names for exactly this), port 5000 by an ephemeral one, and `docker pull` by the
//! README's skopeo alternative (dockerd has its own tests). Everything stays on 127.0.0.1.

mod peers;

use std::process::Command;

use peers::{Images, Process, Registry, RegistryOptions, free_port, require, run};

/// The first `sh` block of the README's first screen (its commands, comments cut), and the
/// section's text.
fn first_screen() -> (Vec<String>, String) {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("\n## Pull an image through the cache\n")
        .expect("README starts with the cache's first screen");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block");
    let commands = block
        .lines()
        .map(|l| l.split(" # ").next().unwrap().trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    (commands, section.to_owned())
}

#[test]
fn the_first_screen_pulls_an_image_through_the_cache() {
    let (commands, prose) = first_screen();
    let [serve, docker_pull, check] = &commands[..] else {
        panic!("the first screen is: serve, pull, check: {commands:?}");
    };
    assert_eq!(serve, "cargo run --release -- serve &");
    assert!(docker_pull.starts_with("docker pull 127.0.0.1:5000/library/alpine:latest"));
    let skopeo = prose
        .split('`')
        .find(|s| s.starts_with("skopeo copy"))
        .expect("the skopeo alternative");

    let images = or_skip!(Images::new());
    images.build("latest", &[("etc/alpine-release", b"3.21.0\n")]);
    let origin = or_skip!(Registry::start(RegistryOptions::default()));
    images.push(
        "latest",
        &format!("{}/library/alpine:latest", origin.host()),
        &[],
    );
    let work = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let ours = |command: &str| command.replace("127.0.0.1:5000", &addr);

    // `cargo run --release -- serve`, as built for the tests, in a fresh directory.
    let mut cache = Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_regmirror"))
            .arg("serve")
            .current_dir(work.path())
            .env("REGISTRY_PROXY_REMOTEURL", origin.url())
            .env("REGISTRY_HTTP_ADDR", &addr),
        work.path().join("serve.log"),
    );
    peers::wait_for_port(addr.parse().unwrap());
    or_skip!(require("skopeo", "skopeo"));
    run(Command::new("sh")
        .arg("-c")
        .arg(ours(skopeo))
        .current_dir(work.path()));
    assert!(work.path().join("alpine/manifest.json").is_file());
    assert!(
        work.path().join("regmirror-data").is_dir(),
        "data in ./regmirror-data"
    );
    let out = run(Command::new("sh")
        .arg("-c")
        .arg(ours(check))
        .current_dir(work.path()));
    let printed = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert_eq!(
        printed.trim(),
        "x-regmirror-cache: hit",
        "{}",
        cache.log_text()
    );
    assert!(
        prose.contains("x-regmirror-cache: hit"),
        "the README says what it prints"
    );
    cache.stop();
    drop(images);
}

/// README shows `regmirror containerd-hosts` and `registries-conf` sessions with the files they
/// write (`$ cat FILE`): run in a scratch root standing for `/`, each prints what README says and
/// each file holds what README shows.
#[test]
fn the_generated_files_the_readme_shows_are_what_the_generators_write() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let root = tempfile::tempdir().unwrap();
    let root_text = root.path().display().to_string();
    let rooted = |text: &str| text.replace(" /etc/", &format!(" {root_text}/etc/"));
    let (mut commands, mut files) = (0, 0);
    let mut lines = readme.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(session) = line.strip_prefix("$ ") else {
            continue;
        };
        let mut shown = String::new();
        while let Some(next) = lines.next_if(|l| !l.starts_with("```") && !l.starts_with("$ ")) {
            shown.push_str(next);
            shown.push('\n');
        }
        if let Some(path) = session.strip_prefix("cat /etc/") {
            let written = std::fs::read_to_string(root.path().join("etc").join(path))
                .unwrap_or_else(|e| panic!("README shows {path}, not written: {e}"));
            assert_eq!(written, shown, "README's {path} is stale");
            files += 1;
            continue;
        }
        let Some(args) = session.strip_prefix("regmirror ") else {
            continue;
        };
        if !args.starts_with("containerd-hosts") && !args.starts_with("registries-conf") {
            continue;
        }
        let args = rooted(&format!(" {args}"));
        let out = Command::new(env!("CARGO_BIN_EXE_regmirror"))
            .args(args.split_whitespace())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8_lossy(&out.stdout).replace(&root_text, "");
        assert_eq!(
            printed, shown,
            "README's output of `regmirror{args}` is stale"
        );
        commands += 1;
    }
    assert!(
        commands >= 2 && files >= 2,
        "{commands} sessions, {files} files"
    );
}

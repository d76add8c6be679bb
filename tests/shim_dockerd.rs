//! `regmirror shim` in front of the real dockerd 20.10: dockerd runs with HTTPS_PROXY pointing at
//! the shim and a private /etc/docker; `reg.example.test` is mapped to 127.0.0.1 by the shim's
//! `--add-host` (dockerd never resolves it: it sends CONNECT to the proxy). The origin is a TLS
//! distribution registry; mirrors are distribution registries or in-process FAKES for faults no
//! real peer produces (a silent socket, a reset mid-body).

mod peers;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use peers::{Dockerd, Images, Registry, RegistryOptions, Shim, TestCa, engine_lock};

const ORIGIN: &str = "reg.example.test";
const OTHER: &str = "other.example.test";

struct Lab {
    ca_dir: tempfile::TempDir,
    ca: TestCa,
    images: Images,
}

impl Lab {
    fn new() -> Self {
        let ca_dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(ca_dir.path(), &[ORIGIN, OTHER]);
        let images = Images::new();
        images.build(
            "v1",
            &[("hello", b"hello\n"), ("big", &pseudo_random(4 << 20))],
        );
        Lab { ca_dir, ca, images }
    }

    /// A TLS registry holding library/demo:v1.
    fn origin(&self, htpasswd: Option<(&str, &str)>) -> Registry {
        let origin = Registry::start(RegistryOptions {
            tls: Some(&self.ca),
            htpasswd,
            proxy: None,
        });
        let mut extra = Vec::new();
        if let Some((user, password)) = htpasswd {
            extra.push(format!("--dest-creds={user}:{password}"));
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        self.images
            .push("v1", &format!("{}/library/demo:v1", origin.host()), &extra);
        origin
    }

    /// A plain registry holding the same image.
    fn mirror(&self) -> Registry {
        let mirror = Registry::start(RegistryOptions::default());
        self.images
            .push("v1", &format!("{}/library/demo:v1", mirror.host()), &[]);
        mirror
    }

    /// The shim for `ORIGIN:port` with `mirrors`, trusting the test CA for its own upstream calls.
    fn shim(&self, origin: &Registry, mirrors: &[String], extra: &[&str]) -> Shim {
        let port = origin.addr.port();
        let list: Vec<String> = mirrors.iter().map(|m| format!("\"{m}\"")).collect();
        let json = format!(
            r#"{{"mirror-registries": [{{"domain": "{ORIGIN}:{port}", "mirrors": [{}]}}]}}"#,
            list.join(", ")
        );
        let certs = self.ca_dir.path().join("certs.d");
        for name in [ORIGIN, OTHER] {
            let dir = certs.join(format!("{name}:{port}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(&self.ca.ca_cert, dir.join("ca.crt")).unwrap();
        }
        let mut args = vec![
            "--add-host".to_owned(),
            format!("{ORIGIN}:127.0.0.1"),
            "--add-host".to_owned(),
            format!("{OTHER}:127.0.0.1"),
            "--certs-dir".to_owned(),
            certs.display().to_string(),
            "--connect-timeout".to_owned(),
            "1".to_owned(),
            "--first-byte-timeout".to_owned(),
            "1".to_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Shim::start(&json, &args)
    }

    /// dockerd using the shim as its proxy and trusting the shim's CA for the rule's host.
    fn dockerd(&self, shim: &Shim) -> Dockerd {
        let dockerd = Dockerd::start("{}", Some(&shim.url()));
        shim.install_ca(&dockerd.etc.join("certs.d"));
        dockerd
    }

    /// dockerd trusts the test CA for `host` directly (for tunnelled hosts).
    fn trust_test_ca(&self, dockerd: &Dockerd, host: &str) {
        let dir = dockerd.etc.join("certs.d").join(host);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&self.ca.ca_cert, dir.join("ca.crt")).unwrap();
    }
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state = 0x1234_5678_u64;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect()
}

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn pull(dockerd: &Dockerd, image: &str, shim: &Shim) {
    let out = dockerd.docker(&["pull", image]);
    assert!(
        out.status.success(),
        "docker pull {image}: {}\n--- shim\n{}\n--- dockerd\n{}",
        text(&out),
        shim.log(),
        dockerd.log()
    );
}

/// The manifest digest the origin serves for a tag.
fn origin_digest(origin: &Registry, repository: &str, tag: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = peers::run(
        std::process::Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
            .arg(format!("docker://{}/{repository}:{tag}", origin.host()))
            .current_dir(dir.path()),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn pulls_go_through_the_first_mirror_and_keep_the_origin_name() {
    let _engine = engine_lock();
    let lab = Lab::new();
    let origin = lab.origin(None);
    let mirror = lab.mirror();
    let shim = lab.shim(&origin, &[mirror.url()], &[]);
    let dockerd = lab.dockerd(&shim);
    let image = format!("{ORIGIN}:{}/library/demo:v1", origin.addr.port());
    let origin_before = origin.count("GET", "/v2/library/demo/");
    pull(&dockerd, &image, &shim);
    assert_eq!(
        origin.count("GET", "/v2/library/demo/"),
        origin_before,
        "no manifest or blob request reached the origin:\n{}",
        origin.log()
    );

    let repo_digests =
        text(&dockerd.docker(&["inspect", "--format", "{{json .RepoDigests}}", &image]));
    let digest = origin_digest(&origin, "library/demo", "v1");
    assert!(
        repo_digests.contains(&format!(
            "{ORIGIN}:{}/library/demo@{digest}",
            origin.addr.port()
        )),
        "{repo_digests} vs {digest}"
    );
    assert!(
        mirror.count("GET", "/v2/library/demo/manifests/") >= 1,
        "the mirror served the manifest:\n{}\n--- shim\n{}",
        mirror.log(),
        shim.log()
    );
    assert!(
        mirror.count("GET", "/blobs/sha256:") >= 2,
        "the mirror served the blobs"
    );
}

/// A FAKE mirror that accepts connections and never answers; counts connections.
fn silent_mirror() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (format!("http://{addr}"), accepted)
}

#[test]
fn a_silent_mirror_is_skipped_after_one_timeout() {
    let _engine = engine_lock();
    let lab = Lab::new();
    let origin = lab.origin(None);
    let mirror = lab.mirror();
    let (silent, connections) = silent_mirror();
    let shim = lab.shim(&origin, &[silent, mirror.url()], &[]);
    let dockerd = lab.dockerd(&shim);
    let image = format!("{ORIGIN}:{}/library/demo:v1", origin.addr.port());
    let origin_before = origin.count("GET", "/v2/library/demo/");
    let started = std::time::Instant::now();
    pull(&dockerd, &image, &shim);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "within the timeout budget: {:?}",
        started.elapsed()
    );
    let after_first = connections.load(Ordering::SeqCst);
    assert!(after_first >= 1, "the silent mirror was tried");
    assert!(dockerd.docker(&["rmi", &image]).status.success());
    pull(&dockerd, &image, &shim);
    assert_eq!(
        connections.load(Ordering::SeqCst),
        after_first,
        "the breaker kept later requests away from the silent mirror"
    );
    assert_eq!(
        origin.count("GET", "/v2/library/demo/"),
        origin_before,
        "the good mirror served everything"
    );
}

#[test]
fn all_mirrors_down_falls_back_to_the_origin_with_dockerds_credentials() {
    let _engine = engine_lock();
    let lab = Lab::new();
    let origin = lab.origin(Some(("alice", "s3cret")));
    let down = format!("http://127.0.0.1:{}", peers::free_port());
    let shim = lab.shim(&origin, &[down], &[]);
    let dockerd = lab.dockerd(&shim);
    let registry = format!("{ORIGIN}:{}", origin.addr.port());
    let login = dockerd.docker(&["login", "-u", "alice", "-p", "s3cret", &registry]);
    assert!(
        login.status.success(),
        "docker login: {}\n{}",
        text(&login),
        shim.log()
    );
    pull(&dockerd, &format!("{registry}/library/demo:v1"), &shim);
    assert!(origin.count("GET", "/v2/library/demo/manifests/") >= 1);
    assert!(
        !shim.log().contains("s3cret") && !shim.log().contains("YWxpY2U6czNjcmV0"),
        "credentials never logged"
    );
}

#[test]
fn pushes_reach_the_origin_only() {
    let _engine = engine_lock();
    let lab = Lab::new();
    let origin = lab.origin(None);
    let mirror = lab.mirror();
    let shim = lab.shim(&origin, &[mirror.url()], &[]);
    let dockerd = lab.dockerd(&shim);
    let registry = format!("{ORIGIN}:{}", origin.addr.port());
    pull(&dockerd, &format!("{registry}/library/demo:v1"), &shim);
    let mirror_before: Vec<usize> = ["POST", "PUT", "PATCH"]
        .iter()
        .map(|m| mirror.count(m, "/v2/"))
        .collect();
    let pushed = format!("{registry}/team/pushed:v1");
    assert!(
        dockerd
            .docker(&["tag", &format!("{registry}/library/demo:v1"), &pushed])
            .status
            .success()
    );
    let push = dockerd.docker(&["push", &pushed]);
    assert!(
        push.status.success(),
        "docker push: {}\n{}",
        text(&push),
        shim.log()
    );
    assert!(
        origin.count("PUT", "/v2/team/pushed/manifests/v1") == 1,
        "{}",
        origin.log()
    );
    for (method, before) in ["POST", "PUT", "PATCH"].iter().zip(mirror_before) {
        assert_eq!(
            mirror.count(method, "/v2/"),
            before,
            "no {method} reached the mirror"
        );
    }
}

#[test]
fn hosts_without_rules_are_tunnelled() {
    let _engine = engine_lock();
    let lab = Lab::new();
    let origin = lab.origin(None);
    let other = lab.origin(None);
    let shim = lab.shim(&origin, &[lab.mirror().url()], &[]);
    let dockerd = lab.dockerd(&shim);
    let other_host = format!("{OTHER}:{}", other.addr.port());
    lab.trust_test_ca(&dockerd, &other_host);
    let other_before = other.count("GET", "/v2/library/demo/");
    pull(&dockerd, &format!("{other_host}/library/demo:v1"), &shim);
    let log = shim.log();
    assert!(
        log.contains(&format!("authority={other_host} intercept=false")),
        "{log}"
    );
    assert!(
        other.count("GET", "/v2/library/demo/") > other_before,
        "the origin was reached directly"
    );
}

/// A FAKE mirror: 404 for manifests, and blob bodies cut off half-way with a reset.
fn resetting_mirror(source: SocketAddr) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&request)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned();
            let path = line
                .split(' ')
                .nth(1)
                .unwrap_or("/")
                .split('?')
                .next()
                .unwrap()
                .to_owned();
            if line.starts_with("GET ") && path.contains("/blobs/") {
                let (_, _, body) = peers::http("GET", source, &path, &[]);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body[..body.len() / 2]);
                let _ = stream.flush();
                drop(stream); // cut mid-body
            } else {
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_mirror_that_breaks_mid_blob_is_resumed_from_the_next() {
    let _engine = engine_lock();
    let lab = Lab::new();
    let origin = lab.origin(None);
    let mirror = lab.mirror();
    let resetting = resetting_mirror(mirror.addr);
    let shim = lab.shim(&origin, &[resetting, mirror.url()], &[]);
    let dockerd = lab.dockerd(&shim);
    pull(
        &dockerd,
        &format!("{ORIGIN}:{}/library/demo:v1", origin.addr.port()),
        &shim,
    );
    assert!(
        shim.log().contains("resuming from the next endpoint"),
        "{}",
        shim.log()
    );
    assert!(mirror.log().contains("206") || mirror.count("GET", "/blobs/") >= 1);
}

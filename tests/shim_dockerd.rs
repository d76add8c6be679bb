//! `regmirror shim` in front of the real dockerd 20.10: dockerd runs with HTTPS_PROXY pointing at
//! the shim and a private /etc/docker; `reg.example.test` is mapped to 127.0.0.1 by the shim's
//! `--add-host` (dockerd never resolves it: it sends CONNECT to the proxy). The origin is a TLS
//! distribution registry; mirrors are distribution registries or in-process FAKES for faults no
//! real peer produces (a silent socket, a reset mid-body), and the token service of an origin
//! with token auth is an in-process FAKE (distribution ships none).

mod peers;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use peers::{
    Dockerd, Images, Missing, Registry, RegistryOptions, Shim, TestCa, TokenAuth, engine_lock,
};
use rcgen::SigningKey as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const ORIGIN: &str = "reg.example.test";
const OTHER: &str = "other.example.test";
/// The host name of the FAKE token service.
const AUTH: &str = "auth.example.test";
const TOKEN_SERVICE: &str = "regmirror-test-registry";
const TOKEN_ISSUER: &str = "regmirror-test-issuer";

struct Lab {
    ca_dir: tempfile::TempDir,
    ca: TestCa,
    images: Images,
}

impl Lab {
    fn new() -> Result<Self, Missing> {
        let ca_dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(ca_dir.path(), &[ORIGIN, OTHER, AUTH])?;
        let images = Images::new()?;
        images.build(
            "v1",
            &[("hello", b"hello\n"), ("big", &pseudo_random(4 << 20))],
        );
        Ok(Lab { ca_dir, ca, images })
    }

    /// A TLS registry holding library/demo:v1.
    fn origin(&self, htpasswd: Option<(&str, &str)>) -> Result<Registry, Missing> {
        let origin = Registry::start(RegistryOptions {
            tls: Some(&self.ca),
            htpasswd,
            ..Default::default()
        })?;
        let mut extra = Vec::new();
        if let Some((user, password)) = htpasswd {
            extra.push(format!("--dest-creds={user}:{password}"));
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        self.images
            .push("v1", &format!("{}/library/demo:v1", origin.host()), &extra);
        Ok(origin)
    }

    /// A TLS registry with token auth by `issuer`, holding library/demo:v1 (pushed with a token
    /// minted directly: skopeo cannot reach the issuer's host name, which only the shim maps).
    fn token_origin(&self, issuer: &FakeTokenIssuer) -> Result<Registry, Missing> {
        let realm = issuer.realm();
        let origin = Registry::start(RegistryOptions {
            tls: Some(&self.ca),
            token: Some(TokenAuth {
                realm: &realm,
                service: TOKEN_SERVICE,
                issuer: TOKEN_ISSUER,
                rootcertbundle: &issuer.signer_cert,
            }),
            ..Default::default()
        })?;
        let token = issuer.mint("seeder", &["repository:library/demo:pull,push".to_owned()]);
        self.images.push(
            "v1",
            &format!("{}/library/demo:v1", origin.host()),
            &["--dest-registry-token", &token],
        );
        Ok(origin)
    }

    /// A plain registry holding the same image.
    fn mirror(&self) -> Result<Registry, Missing> {
        let mirror = Registry::start(RegistryOptions::default())?;
        self.images
            .push("v1", &format!("{}/library/demo:v1", mirror.host()), &[]);
        Ok(mirror)
    }

    /// The shim for `ORIGIN:port` with `mirrors`, trusting the test CA for its own upstream calls.
    fn shim(&self, origin: &Registry, mirrors: &[String], extra: &[&str]) -> Shim {
        let port = origin.addr.port();
        self.shim_for(&format!("{ORIGIN}:{port}"), &[port], mirrors, extra)
    }

    /// The shim with one rule, for `domain` with `mirrors`, trusting the test CA for its own
    /// upstream calls to the test host names on `ports`.
    fn shim_for(&self, domain: &str, ports: &[u16], mirrors: &[String], extra: &[&str]) -> Shim {
        let list: Vec<String> = mirrors.iter().map(|m| format!("\"{m}\"")).collect();
        let json = format!(
            r#"{{"mirror-registries": [{{"domain": "{domain}", "mirrors": [{}]}}]}}"#,
            list.join(", ")
        );
        self.shim_with(&json, ports, extra)
    }

    /// The shim with the mirror config `json`, trusting the test CA for its own upstream calls to
    /// the test host names on `ports`.
    fn shim_with(&self, json: &str, ports: &[u16], extra: &[&str]) -> Shim {
        let certs = self.ca_dir.path().join("certs.d");
        for port in ports {
            for name in [ORIGIN, OTHER, AUTH] {
                let dir = certs.join(format!("{name}:{port}"));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::copy(&self.ca.ca_cert, dir.join("ca.crt")).unwrap();
            }
        }
        let mut args = vec![
            "--add-host".to_owned(),
            format!("{ORIGIN}:127.0.0.1"),
            "--add-host".to_owned(),
            format!("{OTHER}:127.0.0.1"),
            "--add-host".to_owned(),
            format!("{AUTH}:127.0.0.1"),
            "--certs-dir".to_owned(),
            certs.display().to_string(),
            "--connect-timeout".to_owned(),
            "1".to_owned(),
            "--first-byte-timeout".to_owned(),
            "1".to_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Shim::start(json, &args)
    }

    /// dockerd using the shim as its proxy and trusting the shim's CA for the rule's host.
    fn dockerd(&self, shim: &Shim) -> Result<Dockerd, Missing> {
        let dockerd = Dockerd::start("{}", Some(&shim.url()))?;
        shim.install_ca(&dockerd.etc.join("certs.d"));
        Ok(dockerd)
    }

    /// dockerd trusts the shim's CA for `host` (what `install-ca` writes for an exact rule; a
    /// `*` rule names no host). dockerd verifies a registry's token service with that registry's
    /// trust, so this covers the token service's host too.
    fn trust_shim_ca(&self, dockerd: &Dockerd, shim: &Shim, host: &str) {
        let dir = dockerd.etc.join("certs.d").join(host);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            shim.dir.path().join("state").join("ca.crt"),
            dir.join("regmirror-ca.crt"),
        )
        .unwrap();
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
    let lab = or_skip!(Lab::new());
    let origin = or_skip!(lab.origin(None));
    let mirror = or_skip!(lab.mirror());
    let shim = lab.shim(&origin, &[mirror.url()], &[]);
    let dockerd = or_skip!(lab.dockerd(&shim));
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

#[test]
fn a_mirrors_only_registry_is_never_reached() {
    let _engine = engine_lock();
    let lab = or_skip!(Lab::new());
    let origin = or_skip!(lab.origin(None));
    lab.images
        .push("v1", &format!("{}/library/demo:v2", origin.host()), &[]);
    let mirror = or_skip!(lab.mirror());
    let port = origin.addr.port();
    let json = format!(
        r#"{{"mirror-registries": [{{"domain": "{ORIGIN}:{port}", "mirrors": ["{}"], "mirrors-only": true}}]}}"#,
        mirror.url()
    );
    let shim = lab.shim_with(&json, &[port], &[]);
    let dockerd = or_skip!(lab.dockerd(&shim));
    let before = origin.requests();

    // On the mirror: pulled (the shim answers dockerd's ping itself).
    pull(&dockerd, &format!("{ORIGIN}:{port}/library/demo:v1"), &shim);
    // Only on the origin: a clear error, and the origin never hears of it.
    let out = dockerd.docker(&["pull", &format!("{ORIGIN}:{port}/library/demo:v2")]);
    assert!(!out.status.success(), "v2 is on the origin only");
    assert!(
        text(&out).contains("every mirror failed") && text(&out).contains("mirrors-only"),
        "{}\n--- shim\n{}",
        text(&out),
        shim.log()
    );
    assert_eq!(
        origin.requests(),
        before,
        "the origin was never asked:\n{}",
        origin.log()
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
    let lab = or_skip!(Lab::new());
    let origin = or_skip!(lab.origin(None));
    let mirror = or_skip!(lab.mirror());
    let (silent, connections) = silent_mirror();
    let shim = lab.shim(&origin, &[silent, mirror.url()], &[]);
    let dockerd = or_skip!(lab.dockerd(&shim));
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
    let lab = or_skip!(Lab::new());
    let origin = or_skip!(lab.origin(Some(("alice", "s3cret"))));
    let down = format!("http://127.0.0.1:{}", peers::free_port());
    let shim = lab.shim(&origin, &[down], &[]);
    let dockerd = or_skip!(lab.dockerd(&shim));
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
    let lab = or_skip!(Lab::new());
    let origin = or_skip!(lab.origin(None));
    let mirror = or_skip!(lab.mirror());
    let shim = lab.shim(&origin, &[mirror.url()], &[]);
    let dockerd = or_skip!(lab.dockerd(&shim));
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
    let lab = or_skip!(Lab::new());
    let origin = or_skip!(lab.origin(None));
    let other = or_skip!(lab.origin(None));
    let shim = lab.shim(&origin, &[or_skip!(lab.mirror()).url()], &[]);
    let dockerd = or_skip!(lab.dockerd(&shim));
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
    let lab = or_skip!(Lab::new());
    let origin = or_skip!(lab.origin(None));
    let mirror = or_skip!(lab.mirror());
    let resetting = resetting_mirror(mirror.addr);
    let shim = lab.shim(&origin, &[resetting, mirror.url()], &[]);
    let dockerd = or_skip!(lab.dockerd(&shim));
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

/// One request the FAKE token service received.
#[derive(Debug, Clone)]
struct TokenRequest {
    path: String,
    scopes: Vec<String>,
    /// It carried the expected user's Basic credentials.
    authenticated: bool,
}

/// A FAKE token service: distribution has no token server of its own (Docker Hub's,
/// `auth.docker.io`, is on the internet). It serves `/token` over TLS with the test CA's leaf,
/// answers 401 unless the request carries `user:password` by Basic auth, and otherwise issues a
/// distribution-compatible JWT: RS256, signed with a test key whose self-signed certificate is
/// sent in `x5c` and is the registry's `rootcertbundle`, for the scopes asked. Records every
/// request. Stopped on drop.
struct FakeTokenIssuer {
    addr: SocketAddr,
    /// The signing certificate (PEM), for the registry's `rootcertbundle`.
    signer_cert: PathBuf,
    signer: Arc<Signer>,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    stop: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

struct Signer {
    key: rcgen::KeyPair,
    /// The signing certificate, base64 DER, as `x5c` carries it.
    x5c: String,
}

impl FakeTokenIssuer {
    fn start(ca: &TestCa, user: &str, password: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let signer_cert = dir.path().join("signer.crt");
        let signer_key = dir.path().join("signer.key");
        peers::run(
            std::process::Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=regmirror test token signer", "-keyout"])
                .arg(&signer_key)
                .arg("-out")
                .arg(&signer_cert),
        );
        let signer = Arc::new(Signer {
            key: rcgen::KeyPair::from_pem(&std::fs::read_to_string(&signer_key).unwrap()).unwrap(),
            x5c: STANDARD.encode(CertificateDer::from_pem_file(&signer_cert).unwrap()),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                CertificateDer::pem_file_iter(&ca.cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(&ca.key).unwrap(),
            )
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let issuer = FakeTokenIssuer {
            addr,
            signer_cert,
            signer,
            requests: Arc::default(),
            stop: Arc::default(),
            _dir: dir,
        };
        let tls = Arc::new(tls);
        let basic = format!("Basic {}", STANDARD.encode(format!("{user}:{password}")));
        let (signer, requests, stop) = (
            issuer.signer.clone(),
            issuer.requests.clone(),
            issuer.stop.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (tls, signer, requests, basic) =
                    (tls.clone(), signer.clone(), requests.clone(), basic.clone());
                std::thread::spawn(move || {
                    let _ = answer_token_request(stream, tls, &signer, &requests, &basic);
                });
            }
        });
        issuer
    }

    /// The `realm` the registry's challenges name: reachable by host name only through the shim.
    fn realm(&self) -> String {
        format!("https://{AUTH}:{}/token", self.addr.port())
    }

    fn mint(&self, subject: &str, scopes: &[String]) -> String {
        jwt(&self.signer, subject, scopes)
    }

    fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeTokenIssuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
    }
}

/// A distribution-compatible token for `scopes` (`repository:<name>:<actions>`).
fn jwt(signer: &Signer, subject: &str, scopes: &[String]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|scope| {
            let (kind, rest) = scope.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some(serde_json::json!({
                "type": kind,
                "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }))
        })
        .collect();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [signer.x5c]});
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER,
        "sub": subject,
        "aud": TOKEN_SERVICE,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "access": access,
    });
    let encode = |value: &serde_json::Value| URL_SAFE_NO_PAD.encode(value.to_string());
    let signed = format!("{}.{}", encode(&header), encode(&claims));
    let signature = signer.key.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn answer_token_request(
    stream: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    signer: &Signer,
    requests: &Mutex<Vec<TokenRequest>>,
    basic: &str,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let connection = rustls::ServerConnection::new(tls).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(connection, stream);
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tls.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let target = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .unwrap_or("/")
        .to_owned();
    let authorization = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("authorization")
            .then(|| value.trim().to_owned())
    });
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let scopes: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
        .collect();
    let authenticated = authorization.as_deref() == Some(basic);
    requests.lock().unwrap().push(TokenRequest {
        path: path.to_owned(),
        scopes: scopes.clone(),
        authenticated,
    });
    let (status, extra, body) = if path != "/token" {
        ("404 Not Found", "", String::new())
    } else if !authenticated {
        (
            "401 Unauthorized",
            "WWW-Authenticate: Basic realm=\"fake token service\"\r\n",
            String::new(),
        )
    } else {
        let token = jwt(signer, "alice", &scopes);
        let body = serde_json::json!({"token": token, "access_token": token, "expires_in": 300});
        (
            "200 OK",
            "Content-Type: application/json\r\n",
            body.to_string(),
        )
    };
    write!(
        tls,
        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    tls.conn.send_close_notify();
    tls.flush()
}

#[test]
fn a_catch_all_rule_passes_token_requests_through_to_the_token_service() {
    let _engine = engine_lock();
    let lab = or_skip!(Lab::new());
    let issuer = FakeTokenIssuer::start(&lab.ca, "alice", "s3cret");
    let origin = or_skip!(lab.token_origin(&issuer));
    let registry = format!("{ORIGIN}:{}", origin.addr.port());
    let down = format!("http://127.0.0.1:{}", peers::free_port());
    let shim = lab.shim_for("*", &[origin.addr.port(), issuer.addr.port()], &[down], &[]);
    let dockerd = or_skip!(Dockerd::start("{}", Some(&shim.url())));
    lab.trust_shim_ca(&dockerd, &shim, &registry);

    let login = dockerd.docker(&["login", "-u", "alice", "-p", "s3cret", &registry]);
    assert!(
        login.status.success(),
        "docker login: {}\n--- shim\n{}\n--- issuer\n{:?}",
        text(&login),
        shim.log(),
        issuer.requests()
    );
    pull(&dockerd, &format!("{registry}/library/demo:v1"), &shim);

    assert!(
        origin.count_status("GET", "/v2/library/demo/manifests/", 200) >= 1,
        "the origin served the pull with the token:\n{}",
        origin.log()
    );
    let requests = issuer.requests();
    assert!(
        requests.iter().any(|r| r.path == "/token"
            && r.authenticated
            && r.scopes.iter().any(|s| s == "repository:library/demo:pull")),
        "dockerd's credentials reached the token service with the pull scope: {requests:?}"
    );
    let log = shim.log();
    let auth = format!("authority={AUTH}:{}", issuer.addr.port());
    assert!(
        log.lines().any(|l| l.contains("passed through")
            && l.contains(&auth)
            && l.contains("path=/token")),
        "the token request went through the shim:\n{log}"
    );
    assert!(
        !log.contains("s3cret") && !log.contains("YWxpY2U6czNjcmV0"),
        "credentials never logged"
    );
}

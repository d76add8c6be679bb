//! Per-host trust (dockerd's certs.d layout) for the upstream connections of the cache (`regmirror
//! serve --certs-dir`), the shim (`regmirror shim --certs-dir`) and `regmirror resolve --probe
//! --certs-dir`, against real TLS distribution
//! registries on 127.0.0.1. The registry is named `reg.example.test`, mapped to 127.0.0.1 by
//! `--add-host`: a loopback name (`localhost`, `127.0.0.1`) is an insecure registry, tried without
//! certificate checks, and would prove nothing.

mod peers;

use std::path::{Path, PathBuf};
use std::process::Command;

use peers::{Images, Missing, Registry, RegistryOptions, Regmirror, TestCa, http};
use sha2::{Digest as _, Sha256};

const ORIGIN: &str = "reg.example.test";
const ACCEPT: (&str, &str) = ("Accept", "application/vnd.oci.image.manifest.v1+json");

/// A TLS registry holding library/demo:v1, and a certs.d directory for it.
struct Lab {
    dir: tempfile::TempDir,
    images: Images,
    registry: Registry,
}

impl Lab {
    /// The registry serves `tls`'s certificate and key.
    fn new(tls: &TestCa) -> Result<Self, Missing> {
        let images = Images::new()?;
        images.build("v1", &[("hello", b"hello\n")]);
        let registry = Registry::start(RegistryOptions {
            tls: Some(tls),
            ..Default::default()
        })?;
        images.push("v1", &format!("{}/library/demo:v1", registry.host()), &[]);
        Ok(Lab {
            dir: tempfile::tempdir().unwrap(),
            images,
            registry,
        })
    }

    /// `host:port` as clients name the registry.
    fn upstream(&self) -> String {
        format!("{ORIGIN}:{}", self.registry.addr.port())
    }

    /// A certs.d directory holding `anchor` as `<host:port>/ca.crt`, as Docker's docs say.
    fn certs_d(&self, anchor: &Path) -> PathBuf {
        let certs = self.dir.path().join("certs.d");
        let host = certs.join(self.upstream());
        std::fs::create_dir_all(&host).unwrap();
        std::fs::copy(anchor, host.join("ca.crt")).unwrap();
        certs
    }

    /// `regmirror serve` with this registry as its upstream.
    fn cache(&self, extra: &[&str]) -> Regmirror {
        let add_host = format!("{ORIGIN}:127.0.0.1");
        let mut args = vec!["--add-host", &add_host];
        args.extend(extra);
        Regmirror::serve(
            &format!("proxy: {{remoteurl: https://{}}}", self.upstream()),
            &args,
        )
    }

    /// Pulls library/demo:v1's manifest and its first layer from `addr` (with `?ns=` when
    /// given): every answer 200 with the content's digest. On failure: `log`.
    fn pull(&self, addr: std::net::SocketAddr, ns: Option<&str>, log: &dyn Fn() -> String) {
        let query = ns.map(|ns| format!("?ns={ns}")).unwrap_or_default();
        let ((manifest, _), parts) = self.images.contents("v1");
        let layer = &parts[1].0;
        for path in [
            format!("/v2/library/demo/manifests/v1{query}"),
            format!("/v2/library/demo/blobs/{layer}{query}"),
        ] {
            let (status, head, body) = http("GET", addr, &path, &[ACCEPT]);
            assert_eq!(
                status,
                200,
                "GET {path}: {head}\n{}\n--- log\n{}",
                String::from_utf8_lossy(&body),
                log()
            );
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
            let expected = if path.contains("/manifests/") {
                &manifest
            } else {
                layer
            };
            assert_eq!(&digest, expected, "GET {path}");
        }
        assert!(
            self.registry
                .count_status("GET", "/v2/library/demo/blobs/", 200)
                >= 1,
            "the registry itself served: {}",
            self.registry.log()
        );
        // A connection that succeeds logs no certificate refusal on the way.
        assert!(
            !log().contains("failed to verify TLS certificate"),
            "{}",
            log()
        );
    }
}

#[test]
fn the_cache_trusts_a_certs_d_ca_for_its_upstream() {
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = or_skip!(TestCa::new(ca_dir.path(), &[ORIGIN]));
    let lab = or_skip!(Lab::new(&ca));
    let certs = lab.certs_d(&ca.ca_cert);

    // Without the CA the certificate is refused: TLS is really checked.
    let untrusting = lab.cache(&[]);
    let (status, _, _) = http(
        "GET",
        untrusting.addr,
        "/v2/library/demo/manifests/v1",
        &[ACCEPT],
    );
    assert_ne!(status, 200, "{}", untrusting.log());
    assert!(
        untrusting.log().contains("UnknownIssuer"),
        "{}",
        untrusting.log()
    );

    let cache = lab.cache(&["--certs-dir", certs.to_str().unwrap()]);
    lab.pull(cache.addr, None, &|| cache.log());
}

#[test]
fn a_certs_dir_that_is_not_a_directory_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_regmirror"))
        .args(["serve", "--certs-dir", "/nonexistent/certs.d"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--certs-dir /nonexistent/certs.d: not a directory"),
        "{stderr}"
    );
}

/// A registry certificate made with the command Docker's documentation gives ("Test an insecure
/// registry": `openssl req -newkey rsa:4096 -nodes -sha256 -keyout domain.key -x509 -days 365
/// -out domain.crt`), with the name given on the command line instead of at the prompt. OpenSSL 3
/// marks it `CA:TRUE`; Docker's docs then place it in certs.d as `ca.crt`.
fn docker_documented_certificate(dir: &Path) -> Result<TestCa, Missing> {
    peers::require("openssl", "openssl")?;
    let crt = dir.join("domain.crt");
    let key = dir.join("domain.key");
    peers::run(
        Command::new("openssl")
            .args(["req", "-newkey", "rsa:4096", "-nodes", "-sha256", "-keyout"])
            .arg(&key)
            .args(["-x509", "-days", "365", "-out"])
            .arg(&crt)
            .args(["-subj", &format!("/CN={ORIGIN}")])
            .args([
                "-addext",
                &format!("subjectAltName=DNS:{ORIGIN},IP:127.0.0.1"),
            ]),
    );
    let text = peers::run(
        Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&crt),
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("CA:TRUE"), "{text}");
    Ok(TestCa {
        ca_cert: crt.clone(),
        cert: crt,
        key,
    })
}

#[test]
fn a_registry_certificate_made_as_dockers_docs_say_serves_the_cache() {
    let cert_dir = tempfile::tempdir().unwrap();
    let domain = or_skip!(docker_documented_certificate(cert_dir.path()));
    let lab = or_skip!(Lab::new(&domain));
    let certs = lab.certs_d(&domain.cert);
    let cache = lab.cache(&["--certs-dir", certs.to_str().unwrap()]);
    lab.pull(cache.addr, None, &|| cache.log());

    // The same certificate trusted for another name it does not carry stays refused, with the
    // usual error.
    let other = format!("other.example.test:{}", lab.registry.addr.port());
    let other_certs = lab.dir.path().join("other-certs.d");
    std::fs::create_dir_all(other_certs.join(&other)).unwrap();
    std::fs::copy(&domain.cert, other_certs.join(&other).join("ca.crt")).unwrap();
    let misnamed = Regmirror::serve(
        &format!("proxy: {{remoteurl: https://{other}}}"),
        &[
            "--add-host",
            "other.example.test:127.0.0.1",
            "--certs-dir",
            other_certs.to_str().unwrap(),
        ],
    );
    let (status, _, body) = http(
        "GET",
        misnamed.addr,
        "/v2/library/demo/manifests/v1",
        &[ACCEPT],
    );
    assert_ne!(status, 200, "{}", misnamed.log());
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let message = error["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("certificate not valid for name \"other.example.test\""),
        "{message}"
    );
}

#[test]
fn a_registry_certificate_made_as_dockers_docs_say_serves_the_shim() {
    let cert_dir = tempfile::tempdir().unwrap();
    let domain = or_skip!(docker_documented_certificate(cert_dir.path()));
    let lab = or_skip!(Lab::new(&domain));
    let certs = lab.certs_d(&domain.cert);
    // The rule's only mirror refuses connections: the walk goes on to the origin.
    let rules = format!(
        r#"{{"mirror-registries": [{{"domain": "{}", "mirrors": ["http://127.0.0.1:{}"]}}]}}"#,
        lab.upstream(),
        peers::free_port()
    );
    let add_host = format!("{ORIGIN}:127.0.0.1");
    let shim = peers::Shim::start(
        &rules,
        &[
            "--add-host",
            &add_host,
            "--certs-dir",
            certs.to_str().unwrap(),
        ],
    );
    lab.pull(shim.addr, Some(&lab.upstream()), &|| shim.log());
}

#[test]
fn a_registry_certificate_made_as_dockers_docs_say_serves_resolve_probe() {
    let cert_dir = tempfile::tempdir().unwrap();
    let domain = or_skip!(docker_documented_certificate(cert_dir.path()));
    let lab = or_skip!(Lab::new(&domain));
    let certs = lab.certs_d(&domain.cert);
    let config = lab.dir.path().join("mirrors.json");
    std::fs::write(&config, "{}").unwrap();
    let add_host = format!("{ORIGIN}:127.0.0.1");
    let image = format!("{}/library/demo:v1", lab.upstream());
    let probe = |certs_dir: &Path| {
        Command::new(env!("CARGO_BIN_EXE_regmirror"))
            .args(["resolve", "--probe", "--add-host", &add_host, "--certs-dir"])
            .arg(certs_dir)
            .arg("--config")
            .arg(&config)
            .arg(&image)
            .output()
            .unwrap()
    };
    let out = probe(&certs);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && printed.contains("serves"),
        "{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the certificate in certs.d the only endpoint fails, and so does the probe.
    let empty = tempfile::tempdir().unwrap();
    let out = probe(empty.path());
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

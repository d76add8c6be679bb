//! `regmirror serve` between real peers: the distribution registry as origin, skopeo and
//! containerd (`ctr`) as clients. Images are built with umoci; everything is on 127.0.0.1.

mod peers;

use std::process::Command;
use std::time::Duration;

use peers::{
    Containerd, Dockerd, Images, Missing, Registry, RegistryOptions, Regmirror, engine_lock,
    hosts_toml, skopeo_pull,
};

/// An origin holding `library/demo:v1` (OCI), `library/demo:v2s2` (Docker schema 2) and
/// `library/multi:v1` (a two-platform index).
fn seeded_origin() -> Result<(Registry, Images), Missing> {
    let origin = Registry::start(RegistryOptions::default())?;
    let images = Images::new()?;
    images.build(
        "v1",
        &[
            ("hello", b"hello from v1\n"),
            ("data/big", &vec![7u8; 300_000]),
        ],
    );
    images.push("v1", &format!("{}/library/demo:v1", origin.host()), &[]);
    images.push(
        "v1",
        &format!("{}/library/demo:v2s2", origin.host()),
        &["--format", "v2s2"],
    );
    images.build("arm", &[("hello", b"hello from arm\n")]);
    push_index(&images, &origin);
    Ok((origin, images))
}

/// Builds an OCI index of `v1` (amd64) and `arm` (arm64) and pushes it with `skopeo copy --all`.
fn push_index(images: &Images, origin: &Registry) {
    images.build_index("multi", &[("v1", "linux/amd64"), ("arm", "linux/arm64")]);
    images.push(
        "multi",
        &format!("{}/library/multi:v1", origin.host()),
        &["--all"],
    );
}

/// Pulls `path` from `via` and straight from the origin; both copies must be byte-identical.
fn assert_same_as_origin(via: &str, origin: &Registry, path: &str, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("cached"), dir.path().join("direct"));
    let cached = skopeo_pull(&format!("{via}/{path}"), &a, extra)
        .unwrap_or_else(|e| panic!("pull of {path} through {via}: {e}"));
    let direct = skopeo_pull(&format!("{}/{path}", origin.host()), &b, extra).unwrap();
    assert_eq!(cached, direct, "{path}: manifest bytes differ");
    assert_eq!(
        peers::dir_blobs(&a),
        peers::dir_blobs(&b),
        "{path}: blobs differ"
    );
}

#[test]
fn skopeo_pulls_through_the_cache_byte_identical() {
    let (origin, _images) = or_skip!(seeded_origin());
    let cache = Regmirror::serve(&format!("proxy: {{remoteurl: {}}}", origin.url()), &[]);
    let via = cache.host();
    assert_same_as_origin(&via, &origin, "library/demo:v1", &[]);
    assert_same_as_origin(&via, &origin, "library/demo:v2s2", &[]);
    assert_same_as_origin(&via, &origin, "library/multi:v1", &["--all"]);
    // The path-prefix form names the upstream explicitly (a host:port prefix cannot be written
    // in an image reference, so this one is asked with plain HTTP).
    let accept = [("Accept", "application/vnd.oci.image.manifest.v1+json")];
    let (status, _, prefixed) = peers::http(
        "GET",
        cache.addr,
        &format!("/v2/{}/library/demo/manifests/v1", origin.host()),
        &accept,
    );
    let (_, _, direct) = peers::http("GET", origin.addr, "/v2/library/demo/manifests/v1", &accept);
    assert_eq!(status, 200);
    assert_eq!(prefixed, direct);

    // Pulling again through the cache downloads no blob from the origin.
    let blob_gets = origin.count("GET", "/blobs/sha256:");
    let dir = tempfile::tempdir().unwrap();
    skopeo_pull(
        &format!("{via}/library/demo:v1"),
        &dir.path().join("again"),
        &[],
    )
    .unwrap();
    assert_eq!(
        origin.count("GET", "/blobs/sha256:"),
        blob_gets,
        "served from cache"
    );
}

#[test]
fn cache_serves_with_every_upstream_down() {
    let (mut origin, _images) = or_skip!(seeded_origin());
    let cache = Regmirror::serve(&format!("proxy: {{remoteurl: {}}}", origin.url()), &[]);
    let dir = tempfile::tempdir().unwrap();
    let first = skopeo_pull(
        &format!("{}/library/demo:v1", cache.host()),
        &dir.path().join("a"),
        &[],
    )
    .unwrap();
    origin.stop();

    // A restart while the upstream is down: distribution cannot even start (#4038).
    let data = cache.stop();
    let cache = Regmirror::serve_in(
        data,
        &format!("proxy: {{remoteurl: {}}}", origin.url()),
        &[],
    );
    let again = skopeo_pull(
        &format!("{}/library/demo:v1", cache.host()),
        &dir.path().join("b"),
        &[],
    )
    .expect("cached image pulls with the upstream down");
    assert_eq!(first, again);
    let error = skopeo_pull(
        &format!("{}/library/demo:v2s2", cache.host()),
        &dir.path().join("c"),
        &[],
    )
    .expect_err("an uncached image cannot be pulled");
    assert!(
        error.contains("unreachable") || error.contains("UNAVAILABLE") || error.contains("503"),
        "{error}"
    );
}

#[test]
fn a_mirrors_only_rule_keeps_the_cache_off_its_upstream() {
    let (origin, images) = or_skip!(seeded_origin());
    let mirror = or_skip!(Registry::start(RegistryOptions::default()));
    images.push("v1", &format!("{}/library/demo:v1", mirror.host()), &[]);
    let dir = tempfile::tempdir().unwrap();
    let mirrors = dir.path().join("mirrors.json");
    std::fs::write(
        &mirrors,
        format!(
            r#"{{"mirror-registries": [{{"domain": "{}", "mirrors": ["{}"], "mirrors-only": true}}]}}"#,
            origin.host(),
            mirror.url()
        ),
    )
    .unwrap();
    let cache = Regmirror::serve(
        &format!("proxy: {{remoteurl: {}}}", origin.url()),
        &["--mirrors", mirrors.to_str().unwrap()],
    );
    let before = origin.requests();
    skopeo_pull(
        &format!("{}/library/demo:v1", cache.host()),
        &dir.path().join("a"),
        &[],
    )
    .expect("the mirror holds v1");
    assert!(mirror.count("GET", "/v2/library/demo/blobs/") >= 1);
    skopeo_pull(
        &format!("{}/library/demo:v2s2", cache.host()),
        &dir.path().join("b"),
        &[],
    )
    .expect_err("v2s2 is on the upstream only");
    assert_eq!(
        origin.requests(),
        before,
        "the upstream was never asked:\n{}",
        origin.log()
    );
}

#[test]
fn concurrent_cold_pulls_download_the_blob_once() {
    let origin = or_skip!(Registry::start(RegistryOptions::default()));
    let dir = tempfile::tempdir().unwrap();
    let (file, digest) = peers::random_file(dir.path(), "big", 192 << 20);
    or_skip!(peers::push_blob(origin.addr, "library/big", &file, &digest));
    let cache = Regmirror::serve(&format!("proxy: {{remoteurl: {}}}", origin.url()), &[]);
    let url = format!("{}/v2/library/big/blobs/{digest}", cache.url());
    peers::concurrent_cold_clients(&url, &digest, dir.path(), 8, |_| false);
    assert_eq!(
        origin.count("GET", &format!("/v2/library/big/blobs/{digest}")),
        1,
        "one upstream download:\n{}",
        origin.log()
    );
}

#[test]
fn containerd_pulls_through_the_cache_with_ns() {
    let _engine = engine_lock();
    let (origin, _images) = or_skip!(seeded_origin());
    // The cache's default upstream is an empty registry, not the origin: only ?ns= can route
    // these requests right.
    let empty = or_skip!(Registry::start(RegistryOptions::default()));
    let cache = Regmirror::serve(
        &format!(
            "proxy:\n  remoteregistries:\n  - url: {}\n  - url: {}\n",
            empty.url(),
            origin.url()
        ),
        &[],
    );
    let containerd = or_skip!(Containerd::start());
    let hosts = tempfile::tempdir().unwrap();
    hosts_toml(
        hosts.path(),
        &origin.host(),
        &format!(
            "server = \"{}\"\n\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            origin.url(),
            cache.url()
        ),
    );
    containerd
        .pull(
            hosts.path(),
            &format!("{}/library/demo:v1", origin.host()),
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("ctr pull: {e}\n{}", containerd.log()));
    let served = |kind: &str| {
        cache
            .log()
            .lines()
            .filter(|l| {
                l.contains(kind)
                    && l.contains("status=200")
                    && l.contains(&format!("upstream=\"{}\"", origin.host()))
            })
            .count()
    };
    assert!(
        served("/manifests/") >= 1,
        "manifests came through the cache: {}",
        cache.log()
    );
    assert!(
        served("/blobs/") >= 2,
        "blobs came through the cache: {}",
        cache.log()
    );
    assert_eq!(
        empty.count("GET", "/v2/library"),
        0,
        "nothing went to the default upstream"
    );
    // A multi-arch index pulls the same way.
    containerd
        .pull(
            hosts.path(),
            &format!("{}/library/multi:v1", origin.host()),
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("ctr pull of the index: {e}"));
}

#[test]
fn dockerd_pulls_a_hub_name_through_registry_mirrors() {
    let _engine = engine_lock();
    let (origin, _images) = or_skip!(seeded_origin());
    let cache = Regmirror::serve(&format!("proxy: {{remoteurl: {}}}", origin.url()), &[]);
    let dockerd = or_skip!(Dockerd::start(
        &format!(r#"{{"registry-mirrors": ["{}"]}}"#, cache.url()),
        None,
    ));
    let pull = dockerd.docker(&["pull", "demo:v1"]);
    assert!(
        pull.status.success(),
        "docker pull: {}{}\n{}",
        String::from_utf8_lossy(&pull.stdout),
        String::from_utf8_lossy(&pull.stderr),
        dockerd.log()
    );
    let images = dockerd.docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(String::from_utf8_lossy(&images.stdout).contains("demo:v1"));
    assert!(
        cache.log().contains("/v2/library/demo/manifests/v1"),
        "{}",
        cache.log()
    );
}

#[test]
fn tls_with_skopeo_verifying_a_test_ca() {
    let (origin, _images) = or_skip!(seeded_origin());
    let dir = tempfile::tempdir().unwrap();
    let ca = or_skip!(peers::TestCa::new(dir.path(), &["localhost"]));
    let cert = ca.cert.to_str().unwrap().to_owned();
    let key = ca.key.to_str().unwrap().to_owned();
    let cache = Regmirror::serve_with_env(
        tempfile::tempdir().unwrap(),
        &format!("proxy: {{remoteurl: {}}}", origin.url()),
        &[],
        &[
            ("REGISTRY_HTTP_TLS_CERTIFICATE", &cert),
            ("REGISTRY_HTTP_TLS_KEY", &key),
        ],
    );
    let certs = dir.path().join("trust");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(&ca.ca_cert, certs.join("ca.crt")).unwrap();
    let out = Command::new("skopeo")
        .args(["copy", "--src-cert-dir"])
        .arg(&certs)
        .arg(format!("docker://{}/library/demo:v1", cache.host()))
        .arg(format!("dir:{}", dir.path().join("out").display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo over verified TLS: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cache.log()
    );
    // Without the CA, verification fails: TLS is real.
    let out = Command::new("skopeo")
        .arg("inspect")
        .arg(format!("docker://{}/library/demo:v1", cache.host()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pushes a different image under `library/demo:v1` at the origin.
fn tag_digest(cache: &Regmirror) -> String {
    let accept = [("Accept", "application/vnd.oci.image.manifest.v1+json")];
    let (status, head, _) =
        peers::http("GET", cache.addr, "/v2/library/demo/manifests/v1", &accept);
    assert_eq!(status, 200, "{head}");
    head.lines()
        .find_map(|l| l.strip_prefix("docker-content-digest: "))
        .expect("digest header")
        .trim()
        .to_owned()
}

#[test]
fn a_moved_tag_is_seen_at_once_by_default_and_after_the_window_with_one() {
    let (origin, images) = or_skip!(seeded_origin());
    let revalidating = Regmirror::serve(&format!("proxy: {{remoteurl: {}}}", origin.url()), &[]);
    let windowed = Regmirror::serve(
        &format!("proxy: {{remoteurl: {}, tag_revalidate: 5s}}", origin.url()),
        &[],
    );
    // The new image is built before the window opens: only its push falls inside it.
    images.build("moved", &[("hello", b"a different image\n")]);
    let before = tag_digest(&revalidating);
    assert_eq!(tag_digest(&windowed), before);
    let window = std::time::Instant::now();
    images.push("moved", &format!("{}/library/demo:v1", origin.host()), &[]);
    let after = tag_digest(&revalidating);
    assert_ne!(after, before, "the default revalidates every request");
    assert_eq!(
        tag_digest(&windowed),
        before,
        "within the window the cached tag is served ({:?} into it)",
        window.elapsed()
    );
    std::thread::sleep(Duration::from_millis(5200).saturating_sub(window.elapsed()));
    assert_eq!(
        tag_digest(&windowed),
        after,
        "after the window the move is seen"
    );
}

#[test]
fn a_stale_tag_is_served_with_a_warning_while_the_origin_is_down() {
    let (mut origin, _images) = or_skip!(seeded_origin());
    let cache = Regmirror::serve(&format!("proxy: {{remoteurl: {}}}", origin.url()), &[]);
    let digest = tag_digest(&cache);
    origin.stop();
    let accept = [("Accept", "application/vnd.oci.image.manifest.v1+json")];
    let (status, head, _) =
        peers::http("GET", cache.addr, "/v2/library/demo/manifests/v1", &accept);
    assert_eq!(status, 200);
    assert!(head.contains(&digest));
    assert!(
        head.to_ascii_lowercase().contains("warning: 110 regmirror"),
        "{head}"
    );
    let (_, _, metrics) = peers::http("GET", cache.addr, "/metrics", &[]);
    assert!(
        String::from_utf8_lossy(&metrics)
            .contains("regmirror_cache_requests_total{kind=\"tag\",result=\"stale\"} 1")
    );
}

#[test]
fn htpasswd_with_docker_login() {
    let _engine = engine_lock();
    let (origin, _images) = or_skip!(seeded_origin());
    let dir = tempfile::tempdir().unwrap();
    let file = or_skip!(peers::htpasswd_file(dir.path(), "carol", "pa55word"));
    let cache = Regmirror::serve(
        &format!(
            "proxy: {{remoteurl: {}}}\nauth: {{htpasswd: {{realm: cache, path: {}}}}}",
            origin.url(),
            file.display()
        ),
        &[],
    );
    let (status, head, _) = peers::http("GET", cache.addr, "/v2/", &[]);
    assert_eq!(status, 401);
    assert!(
        head.contains("www-authenticate: Basic realm=\"cache\""),
        "{head}"
    );
    let dockerd = or_skip!(Dockerd::start("{}", None));
    let wrong = dockerd.docker(&["login", "-u", "carol", "-p", "nope", &cache.host()]);
    assert!(!wrong.status.success(), "a wrong password is refused");
    let login = dockerd.docker(&["login", "-u", "carol", "-p", "pa55word", &cache.host()]);
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    let pull = dockerd.docker(&["pull", &format!("{}/library/demo:v1", cache.host())]);
    assert!(
        pull.status.success(),
        "{}{}",
        String::from_utf8_lossy(&pull.stderr),
        dockerd.log()
    );
    assert!(!cache.log().contains("pa55word"));
}

#[test]
fn local_push_alongside_the_cache_with_skopeo_and_dockerd() {
    let _engine = engine_lock();
    let (origin, images) = or_skip!(seeded_origin());
    let cache = Regmirror::serve_with_env(
        tempfile::tempdir().unwrap(),
        &format!(
            "proxy: {{remoteurl: {}}}\nlocal: [{{prefix: myteam/}}]",
            origin.url()
        ),
        &[],
        &[("REGISTRY_STORAGE_DELETE_ENABLED", "true")],
    );
    // skopeo pushes to a local repository and pulls it back, byte-identical.
    images.push("v1", &format!("{}/myteam/app:v1", cache.host()), &[]);
    let dir = tempfile::tempdir().unwrap();
    let pulled = skopeo_pull(
        &format!("{}/myteam/app:v1", cache.host()),
        &dir.path().join("a"),
        &[],
    )
    .unwrap();
    let layout = images.dir.path().join("layout");
    let pushed_index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let v1 = pushed_index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "v1")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let original = std::fs::read(
        layout
            .join("blobs/sha256")
            .join(v1.trim_start_matches("sha256:")),
    )
    .unwrap();
    assert_eq!(
        pulled, original,
        "the pushed manifest comes back byte for byte"
    );
    assert_eq!(
        origin.count("GET", "/v2/myteam/"),
        0,
        "local repositories never go upstream"
    );

    // A push to a proxied repository is refused, naming the local prefixes.
    let out = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{}/library/demo:pushed", cache.host()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("myteam/") || stderr.contains("denied"),
        "{stderr}"
    );

    // dockerd: pull through the cache, push to a local repository, remove, pull back.
    let dockerd = or_skip!(Dockerd::start("{}", None));
    let proxied = format!("{}/library/demo:v1", cache.host());
    let local = format!("{}/myteam/from-docker:v2", cache.host());
    for args in [
        vec!["pull", proxied.as_str()],
        vec!["tag", proxied.as_str(), local.as_str()],
        vec!["push", local.as_str()],
        vec!["rmi", local.as_str(), proxied.as_str()],
        vec!["pull", local.as_str()],
    ] {
        let out = dockerd.docker(&args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            cache.log()
        );
    }

    // Deletes (storage.delete.enabled): the manifest is gone afterwards.
    let accept = [("Accept", "application/vnd.oci.image.manifest.v1+json")];
    let (status, head, _) = peers::http("GET", cache.addr, "/v2/myteam/app/manifests/v1", &accept);
    assert_eq!(status, 200);
    let digest = head
        .lines()
        .find_map(|l| l.strip_prefix("docker-content-digest: "))
        .unwrap()
        .trim()
        .to_owned();
    let (status, _, _) = peers::http(
        "DELETE",
        cache.addr,
        &format!("/v2/myteam/app/manifests/{digest}"),
        &[],
    );
    assert_eq!(status, 202);
    let (status, _, _) = peers::http("GET", cache.addr, "/v2/myteam/app/manifests/v1", &accept);
    assert_eq!(status, 404);
}

#[test]
fn eviction_under_a_size_cap_keeps_shared_layers_and_in_flight_pulls() {
    let curl = or_skip!(peers::require("curl", "curl"));
    let origin = or_skip!(Registry::start(RegistryOptions::default()));
    let images = or_skip!(Images::new());
    // Incompressible content: umoci gzips layers.
    let noise = |seed: u64, len: usize| -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    };
    let base = noise(42, 3_000_000);
    images.build("base", &[("base.bin", &base)]);
    for n in 1..=4u32 {
        let own = noise(u64::from(n) * 7919, 1_000_000);
        images.build_on("base", &format!("img{n}"), &[("own.bin", &own)]);
        images.push(
            &format!("img{n}"),
            &format!("{}/library/img{n}:v1", origin.host()),
            &[],
        );
    }
    // Room for the shared base layer and about two images' own layers.
    let cache = Regmirror::serve_with_env(
        tempfile::tempdir().unwrap(),
        &format!("proxy: {{remoteurl: {}}}", origin.url()),
        &[],
        &[
            ("REGISTRY_STORAGE_MAXSIZE", "6MB"),
            ("REGISTRY_STORAGE_GC_INTERVAL", "1s"),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let pull = |n: u32, into: &str| {
        skopeo_pull(
            &format!("{}/library/img{n}:v1", cache.host()),
            &dir.path().join(into),
            &[],
        )
        .unwrap_or_else(|e| panic!("pull img{n}: {e}"));
    };
    for n in 1..=4 {
        pull(n, &format!("first{n}"));
        std::thread::sleep(Duration::from_millis(1100)); // distinct last-use seconds
    }
    // A slow download of img1's own layer is in flight while the collector evicts img1.
    let own1 = peers::dir_blobs(&dir.path().join("first1"))
        .into_iter()
        .find(|(_, bytes)| bytes.len() > 100_000 && bytes.len() < 2_000_000)
        .map(|(hex, _)| hex)
        .expect("img1's own layer");
    let slow = {
        let url = format!("{}/v2/library/img1/blobs/sha256:{own1}", cache.url());
        let out = dir.path().join("slow");
        std::thread::spawn(move || {
            let status = Command::new(curl)
                .args(["-sS", "-f", "--limit-rate", "150k", "-o"])
                .arg(&out)
                .arg(&url)
                .status()
                .unwrap();
            assert!(status.success());
            let sum = Command::new("sha256sum").arg(&out).output().unwrap();
            String::from_utf8_lossy(&sum.stdout)
                .split(' ')
                .next()
                .unwrap()
                .to_owned()
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cache.log().contains("evicted") {
        assert!(
            std::time::Instant::now() < deadline,
            "no eviction happened: {}",
            cache.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        slow.join().unwrap(),
        own1,
        "the in-flight download completed, digest-correct"
    );

    // The most recent image is still whole in the cache: pulling it asks the origin for no blob.
    let blob_gets = origin.count("GET", "/blobs/sha256:");
    pull(4, "again4");
    assert_eq!(
        origin.count("GET", "/blobs/sha256:"),
        blob_gets,
        "img4 was kept whole"
    );
    // The oldest image was evicted, but not the base layer it shared with img4.
    let base_hex = peers::dir_blobs(&dir.path().join("first4"))
        .into_iter()
        .find(|(_, bytes)| bytes.len() > 2_000_000)
        .map(|(hex, _)| hex)
        .expect("the base layer");
    pull(1, "again1");
    assert!(
        origin.count("GET", "/blobs/sha256:") > blob_gets,
        "img1's own layer came from the origin again"
    );
    assert_eq!(
        origin.count("GET", &format!("/blobs/sha256:{base_hex}")),
        1,
        "the shared base layer was never fetched twice"
    );
    assert_eq!(
        peers::dir_blobs(&dir.path().join("again1")),
        peers::dir_blobs(&dir.path().join("first1"))
    );
}

#[test]
fn client_certificates_are_required_with_clientcas() {
    let curl_binary = or_skip!(peers::require("curl", "curl"));
    let (origin, _images) = or_skip!(seeded_origin());
    let dir = tempfile::tempdir().unwrap();
    let ca = or_skip!(peers::TestCa::new(dir.path(), &["localhost"]));
    let (cert, key, cas) = (
        ca.cert.to_str().unwrap().to_owned(),
        ca.key.to_str().unwrap().to_owned(),
        format!("[{}]", ca.ca_cert.display()),
    );
    let cache = Regmirror::serve_with_env(
        tempfile::tempdir().unwrap(),
        &format!("proxy: {{remoteurl: {}}}", origin.url()),
        &[],
        &[
            ("REGISTRY_HTTP_TLS_CERTIFICATE", &cert),
            ("REGISTRY_HTTP_TLS_KEY", &key),
            ("REGISTRY_HTTP_TLS_CLIENTCAS", &cas),
        ],
    );
    let url = format!("https://localhost:{}/v2/", cache.addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", cache.addr.port());
    let curl = |extra: &[&str]| {
        Command::new(&curl_binary)
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--resolve",
                &resolve,
                "--cacert",
            ])
            .arg(&ca.ca_cert)
            .args(extra)
            .arg(&url)
            .output()
            .unwrap()
    };
    let without = curl(&[]);
    assert!(
        !without.status.success() || String::from_utf8_lossy(&without.stdout) != "200",
        "no client certificate, no access"
    );
    let with = curl(&["--cert", &cert, "--key", &key]);
    assert_eq!(
        String::from_utf8_lossy(&with.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
}

#[test]
fn tag_list_and_catalog_paginate_with_link() {
    let (origin, _images) = or_skip!(seeded_origin());
    let cache = Regmirror::serve(&format!("proxy: {{remoteurl: {}}}", origin.url()), &[]);
    let (status, head, body) =
        peers::http("GET", cache.addr, "/v2/library/demo/tags/list?n=1", &[]);
    assert_eq!(status, 200);
    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        page,
        serde_json::json!({"name": "library/demo", "tags": ["v1"]})
    );
    assert!(
        head.contains("link: </v2/library/demo/tags/list?n=1&last=v1>; rel=\"next\""),
        "{head}"
    );
    let (_, head, body) = peers::http(
        "GET",
        cache.addr,
        "/v2/library/demo/tags/list?n=1&last=v1",
        &[],
    );
    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(page["tags"], serde_json::json!(["v2s2"]));
    assert!(!head.contains("link:"), "last page: {head}");
    // The catalog lists what is cached.
    let accept = [("Accept", "application/vnd.oci.image.index.v1+json")];
    assert_eq!(
        peers::http("GET", cache.addr, "/v2/library/multi/manifests/v1", &accept).0,
        200
    );
    let (_, _, body) = peers::http("GET", cache.addr, "/v2/_catalog", &[]);
    let catalog: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        catalog,
        serde_json::json!({"repositories": ["library/multi"]})
    );
}

/// `OCI-Namespace` (distribution-spec's "Registry Proxying") on every answer about a manifest,
/// blob, tag list or referrers list to a request scoped by `?ns=`, and nowhere else;
/// `Docker-Content-Digest` on every blob and manifest GET and HEAD: proxied (a fill, then a
/// hit) and pushed, whole and Range (206). The redirects to a bucket: tests/cache_s3.rs.
#[test]
fn the_headers_the_spec_asks_of_a_proxy() {
    let origin = or_skip!(Registry::start(RegistryOptions::default()));
    let (manifest, layer) = peers::push_small_image(origin.addr, "library/demo");
    let cache = Regmirror::serve(
        &format!(
            "proxy: {{remoteurl: {}}}\nlocal: [{{prefix: team/}}]",
            origin.url()
        ),
        &[],
    );
    let (local_manifest, local_layer) = peers::push_small_image(cache.addr, "team/app");
    assert_eq!((&local_manifest, &local_layer), (&manifest, &layer));
    let ns = origin.host();
    let ask = |method: &str, path: &str, range: Option<&str>| {
        let headers: Vec<(&str, &str)> = range.iter().map(|r| ("Range", *r)).collect();
        let (status, head, _) = peers::http(method, cache.addr, path, &headers);
        (status, head)
    };
    // Every blob and manifest answer, proxied (with and without `?ns=`) and local: the first
    // blob request (a Range) is a fill, the rest are hits (or join the fill).
    let mut served = std::collections::BTreeSet::new();
    let routes = [
        ("library/demo", Some(ns.as_str())),
        ("library/demo", None),
        ("team/app", None),
    ];
    for (repository, ns) in routes {
        let query = ns.map(|ns| format!("?ns={ns}")).unwrap_or_default();
        let manifests = ["v1".to_owned(), manifest.clone()];
        let cases = manifests
            .iter()
            .map(|reference| (format!("manifests/{reference}"), &manifest))
            .chain([(format!("blobs/{layer}"), &layer)]);
        for (what, digest) in cases {
            let path = format!("/v2/{repository}/{what}{query}");
            // The blob's first request, a Range, starts its fill.
            for (method, range, expected) in [
                ("GET", Some("bytes=10-99"), 206),
                ("GET", None, 200),
                ("HEAD", None, 200),
                ("GET", Some("bytes=10-99"), 206),
            ] {
                if what.starts_with("manifests/") && range.is_some() {
                    continue;
                }
                let (status, head) = ask(method, &path, range);
                let case = format!("{method} {path} {range:?}");
                assert_eq!(status, expected, "{case}: {head}");
                served.extend(peers::header(&head, "x-regmirror-cache"));
                assert_eq!(
                    peers::header(&head, "docker-content-digest").as_deref(),
                    Some(digest.as_str()),
                    "{case}: {head}"
                );
                assert_eq!(
                    peers::header(&head, "oci-namespace").as_deref(),
                    ns,
                    "{case}: {head}"
                );
            }
        }
        // Tag lists, referrers lists and errors (a tag that does not exist) alike.
        for what in [
            "tags/list".to_owned(),
            format!("referrers/{manifest}"),
            "manifests/missing".to_owned(),
        ] {
            let path = format!("/v2/{repository}/{what}{query}");
            let (status, head) = ask("GET", &path, None);
            assert!(matches!(status, 200 | 404), "{path}: {head}");
            assert_eq!(
                peers::header(&head, "oci-namespace").as_deref(),
                ns,
                "{path}: {head}"
            );
        }
    }
    // A fill (`miss`; a request right after its last byte may join it: `joined`), hits and
    // pushed content were all answered.
    for word in ["hit", "local", "miss"] {
        assert!(served.contains(word), "{word} in {served:?}");
    }
    // Nowhere else: the catalog and the ping name no namespace's content.
    for path in [format!("/v2/_catalog?ns={ns}"), format!("/v2/?ns={ns}")] {
        let (status, head) = ask("GET", &path, None);
        assert_eq!(status, 200, "{path}: {head}");
        assert_eq!(
            peers::header(&head, "oci-namespace"),
            None,
            "{path}: {head}"
        );
    }
}

//! `regmirror warm` against a real `regmirror serve` and a real distribution origin: what it
//! warms is what skopeo then pulls without the origin, `--platform` (or the cache's
//! `proxy.platforms`) keeps the other platforms' manifests and blobs out, a missing image fails alone, and the plain output (stdout is a pipe
//! here) is checked line by line. An in-process FAKE upstream (`fake/`) only to count how many
//! requests warm sends at once, which no real registry reports. Everything is on 127.0.0.1.

mod fake;
mod peers;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use peers::{Images, Missing, Registry, RegistryOptions, Regmirror, skopeo_pull};

/// An origin holding `library/demo:v1` (one layer), `library/other:v1` (another image) and
/// `library/multi:v1` (an index of `v1` for linux/amd64 and `arm` for linux/arm64).
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
    images.build("other", &[("hello", b"hello from other\n")]);
    images.push("other", &format!("{}/library/other:v1", origin.host()), &[]);
    images.build("arm", &[("hello", b"hello from arm\n")]);
    images.build_index("multi", &[("v1", "linux/amd64"), ("arm", "linux/arm64")]);
    images.push(
        "multi",
        &format!("{}/library/multi:v1", origin.host()),
        &["--all"],
    );
    Ok((origin, images))
}

/// Runs `regmirror warm --cache URL ARGS` with stdout and stderr piped (no terminal).
fn warm(cache: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_regmirror"))
        .args(["warm", "--cache", cache])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn size(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}

/// One line of warm's plain output: `kind digest size unit how… image`.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Line {
    kind: String,
    digest: String,
    size: String,
    how: String,
    image: String,
}

fn parse_line(line: &str) -> Line {
    let words: Vec<&str> = line.split_whitespace().collect();
    assert!(words.len() >= 6, "not a content line: {line:?}");
    Line {
        kind: words[0].to_owned(),
        digest: words[1].to_owned(),
        size: format!("{} {}", words[2], words[3]),
        how: words[4..words.len() - 1].join(" "),
        image: words[words.len() - 1].to_owned(),
    }
}

fn expected(kind: &str, (digest, bytes): &(String, u64), how: &str, image: &str) -> Line {
    Line {
        kind: kind.to_owned(),
        digest: digest.clone(),
        size: size(*bytes),
        how: how.to_owned(),
        image: image.to_owned(),
    }
}

/// Checks warm's stdout line by line: the content lines (any order for the blobs of one
/// manifest, which are read in parallel) and then the summary, which must start with `summary`.
fn assert_output(stdout: &str, mut lines: Vec<Line>, summary: &str) {
    let all: Vec<&str> = stdout.lines().collect();
    let (last, content) = all.split_last().expect("some output");
    assert!(
        last.starts_with(summary),
        "summary {last:?} should start with {summary:?}\n{stdout}"
    );
    let mut got: Vec<Line> = content.iter().map(|l| parse_line(l)).collect();
    got.sort();
    lines.sort();
    assert_eq!(got, lines, "{stdout}");
}

/// GETs `path` from the cache until it says `X-Regmirror-Cache: hit`; the body. Right after warm
/// read a blob's last byte the cache may still be committing that download (fsync, rename): a
/// request then joins it (`joined`), without asking the origin.
fn until_hit(cache: &Regmirror, path: &str) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, head, body) = peers::http("GET", cache.addr, path, &[]);
        assert_eq!(status, 200, "{path}: {head}");
        let said = peers::oci::header(&head, "x-regmirror-cache");
        if said.as_deref() == Some("hit") {
            return body;
        }
        assert_eq!(said.as_deref(), Some("joined"), "{path}: {head}");
        assert!(Instant::now() < deadline, "{path} never a hit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pull(via: &str, path: &str, dest: &Path, extra: &[&str]) -> Vec<u8> {
    skopeo_pull(&format!("{via}/{path}"), dest, extra)
        .unwrap_or_else(|e| panic!("skopeo pull of {path} through {via}: {e}"))
}

#[test]
fn after_warm_skopeo_pulls_without_asking_the_origin() {
    let (origin, images) = or_skip!(seeded_origin());
    // tag_revalidate: a tag the cache holds is served without asking (by default every pull of
    // a tag costs one HEAD upstream, see the next tests).
    let cache = Regmirror::serve(
        &format!("proxy: {{remoteurl: {}, tag_revalidate: 1h}}", origin.url()),
        &[],
    );
    let image = format!("{}/library/demo:v1", origin.host());
    let (manifest, blobs) = images.contents("v1");
    let run = warm(&cache.url(), &[&image]);
    let stdout = text(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}\n{}",
        text(&run.stderr),
        cache.log()
    );
    let upstream = manifest.1 + blobs.iter().map(|b| b.1).sum::<u64>();
    assert_output(
        &stdout,
        vec![
            expected("manifest", &manifest, "fetched upstream", &image),
            expected("config", &blobs[0], "fetched upstream", &image),
            expected("layer", &blobs[1], "fetched upstream", &image),
        ],
        &format!(
            "warmed 1 of 1 image: 1 manifest, 2 blobs; {} fetched upstream, 0 B already cached; ",
            size(upstream)
        ),
    );
    assert_eq!(blobs.len(), 2, "a config and one layer");
    for (digest, _) in &blobs {
        assert_eq!(
            origin.count("GET", &format!("/v2/library/demo/blobs/{digest}")),
            1,
            "{digest} fetched once"
        );
    }

    // The pull after it: not one request reaches the origin.
    let before = origin.requests();
    let dir = tempfile::tempdir().unwrap();
    let pulled = pull(&cache.host(), "library/demo:v1", &dir.path().join("a"), &[]);
    assert_eq!(
        origin.requests(),
        before,
        "skopeo's pull was served from the cache alone:\n{}",
        origin.log()
    );
    assert_eq!(
        peers::oci::sha256(&pulled),
        manifest.0,
        "the warmed manifest"
    );
    assert_eq!(
        peers::dir_blobs(&dir.path().join("a")).len(),
        2,
        "config and layer pulled"
    );

    // Warming again finds everything cached (once the cache committed the downloads).
    for (digest, _) in &blobs {
        until_hit(&cache, &format!("/v2/library/demo/blobs/{digest}"));
    }
    let run = warm(&cache.url(), &[&image]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert_output(
        &text(&run.stdout),
        vec![
            expected("manifest", &manifest, "cached", &image),
            expected("config", &blobs[0], "cached", &image),
            expected("layer", &blobs[1], "cached", &image),
        ],
        &format!(
            "warmed 1 of 1 image: 1 manifest, 2 blobs; 0 B fetched upstream, {} already cached; ",
            size(upstream)
        ),
    );
    assert_eq!(origin.requests(), before, "nothing asked upstream");
}

/// `warm`'s output when it fetched `multi`'s index and its linux/arm64 child with its blobs, and
/// nothing else.
fn assert_warmed_arm64(run: &Output, images: &Images, image: &str) {
    let (index, _) = images.contents("multi");
    let (arm, arm_blobs) = images.contents("arm");
    let stdout = text(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", text(&run.stderr));
    let upstream = index.1 + arm.1 + arm_blobs.iter().map(|b| b.1).sum::<u64>();
    assert_output(
        &stdout,
        vec![
            expected("index", &index, "fetched upstream", image),
            expected("manifest", &arm, "fetched upstream", image),
            expected("config", &arm_blobs[0], "fetched upstream", image),
            expected("layer", &arm_blobs[1], "fetched upstream", image),
        ],
        &format!(
            "warmed 1 of 1 image: 2 manifests, 2 blobs; {} fetched upstream, 0 B already cached; ",
            size(upstream)
        ),
    );
}

#[test]
fn one_platform_of_an_index_is_warmed_and_the_other_is_not_requested() {
    let (origin, images) = or_skip!(seeded_origin());
    let cache = Regmirror::serve(
        &format!("proxy: {{remoteurl: {}, tag_revalidate: 1h}}", origin.url()),
        &[],
    );
    let image = format!("{}/library/multi:v1", origin.host());
    let (_, children) = images.contents("multi");
    let (arm, _) = images.contents("arm");
    let (amd64, amd64_blobs) = images.contents("v1");
    assert_eq!(children, vec![amd64.clone(), arm.clone()]);
    // Pushing them left HEADs and GETs of these digests in the log: count from here on.
    let asked = |digest: &str| origin.count("GET", digest) + origin.count("HEAD", digest);
    let amd64_digests: Vec<&String> = std::iter::once(&amd64.0)
        .chain(amd64_blobs.iter().map(|b| &b.0))
        .collect();
    let pushed: Vec<usize> = amd64_digests.iter().map(|d| asked(d)).collect();

    let run = warm(&cache.url(), &["--platform", "linux/arm64", &image]);
    assert_warmed_arm64(&run, &images, &image);
    // The origin saw the arm64 child and its blobs, and nothing of linux/amd64.
    assert_eq!(
        origin.count("GET", &format!("/v2/library/multi/manifests/{}", arm.0)),
        1
    );
    for (digest, before) in amd64_digests.iter().zip(pushed) {
        assert_eq!(
            asked(digest),
            before,
            "amd64's {digest} (its manifest, config or layer) was not requested:\n{}",
            origin.log()
        );
    }

    // skopeo pulling the arm64 image: nothing reaches the origin.
    let before = origin.requests();
    let dir = tempfile::tempdir().unwrap();
    let pulled = pull(
        &cache.host(),
        "library/multi:v1",
        &dir.path().join("arm"),
        &["--override-os", "linux", "--override-arch", "arm64"],
    );
    assert_eq!(peers::oci::sha256(&pulled), arm.0, "the arm64 manifest");
    assert_eq!(
        origin.requests(),
        before,
        "the warmed platform pulls from the cache alone:\n{}",
        origin.log()
    );

    // On a terminal (script(1) gives it one) warm draws bars and still ends with the summary.
    let output = Command::new(or_skip!(peers::require("script", "bsdutils")))
        .args(["-qec"])
        .arg(format!(
            "{} warm --cache {} {}/library/other:v1",
            env!("CARGO_BIN_EXE_regmirror"),
            cache.url(),
            origin.host()
        ))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let terminal = text(&output.stdout);
    assert!(
        output.status.success(),
        "{terminal}{}",
        text(&output.stderr)
    );
    assert!(
        terminal.contains("warmed 1 of 1 image: 1 manifest, 2 blobs;")
            && terminal.contains("fetched upstream"),
        "{terminal}"
    );
}

#[test]
fn the_caches_proxy_platforms_keep_warm_to_them_and_other_platforms_are_served_on_request() {
    let (origin, images) = or_skip!(seeded_origin());
    let cache = Regmirror::serve(
        &format!(
            "proxy: {{remoteurl: {}, tag_revalidate: 1h, platforms: [linux/arm64]}}",
            origin.url()
        ),
        &[],
    );
    let image = format!("{}/library/multi:v1", origin.host());
    let (amd64, amd64_blobs) = images.contents("v1");
    let asked = |digest: &str| origin.count("GET", digest) + origin.count("HEAD", digest);
    let amd64_digests: Vec<&String> = std::iter::once(&amd64.0)
        .chain(amd64_blobs.iter().map(|b| &b.0))
        .collect();
    let pushed: Vec<usize> = amd64_digests.iter().map(|d| asked(d)).collect();

    // No --platform: the cache's proxy.platforms decide.
    let run = warm(&cache.url(), &[&image]);
    assert_warmed_arm64(&run, &images, &image);
    for (digest, before) in amd64_digests.iter().zip(&pushed) {
        assert_eq!(
            asked(digest),
            *before,
            "amd64's {digest} was not fetched:\n{}",
            origin.log()
        );
    }

    // The other platform is still served when a client asks for it.
    let dir = tempfile::tempdir().unwrap();
    let pulled = pull(
        &cache.host(),
        "library/multi:v1",
        &dir.path().join("amd64"),
        &["--override-os", "linux", "--override-arch", "amd64"],
    );
    assert_eq!(peers::oci::sha256(&pulled), amd64.0, "the amd64 manifest");
    assert!(asked(&amd64.0) > pushed[0], "fetched on request");

    // --platform still wins over the cache's list.
    let run = warm(&cache.url(), &["--platform", "linux/amd64", &image]);
    let stdout = text(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", text(&run.stderr));
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("manifest ") && l.contains(&amd64.0)),
        "{stdout}"
    );
}

#[test]
fn a_missing_image_fails_alone_and_routing_is_by_ns() {
    let (origin, images) = or_skip!(seeded_origin());
    // The cache's default upstream is an empty registry: only `?ns=` routes warm's requests to
    // the origin. The default tag_revalidate (0): every pull of a tag asks with a HEAD.
    let empty = or_skip!(Registry::start(RegistryOptions::default()));
    let cache = Regmirror::serve(
        &format!(
            "proxy:\n  remoteregistries:\n  - url: {}\n  - url: {}\n",
            empty.url(),
            origin.url()
        ),
        &[],
    );
    let host = origin.host();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.txt");
    std::fs::write(
        &list,
        format!(
            "# before the rollout\n{host}/library/demo:v1\n\n   {host}/library/missing:v1   # not pushed\n"
        ),
    )
    .unwrap();
    // The cache as `serve` prints its address, a bare host:port: http.
    let run = warm(
        &cache.addr.to_string(),
        &[
            "--file",
            list.to_str().unwrap(),
            "--jobs",
            "2",
            &format!("{host}/library/other:v1"),
        ],
    );
    let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
    assert_eq!(run.status.code(), Some(1), "{stdout}\n{stderr}");
    let failures: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: warm "))
        .collect();
    assert_eq!(failures.len(), 1, "{stderr}");
    assert!(
        failures[0].starts_with(&format!(
            "error: warm {host}/library/missing:v1: manifest v1: HTTP 404 MANIFEST_UNKNOWN"
        )),
        "{stderr}"
    );
    // The other two completed, every line naming its own image.
    let demo = format!("{host}/library/demo:v1");
    let other = format!("{host}/library/other:v1");
    let (demo_manifest, demo_blobs) = images.contents("v1");
    let (other_manifest, other_blobs) = images.contents("other");
    let mut lines = vec![
        expected("manifest", &demo_manifest, "fetched upstream", &demo),
        expected("manifest", &other_manifest, "fetched upstream", &other),
    ];
    for (blobs, image) in [(&demo_blobs, &demo), (&other_blobs, &other)] {
        lines.push(expected("config", &blobs[0], "fetched upstream", image));
        lines.push(expected("layer", &blobs[1], "fetched upstream", image));
    }
    assert_output(
        &stdout,
        lines,
        "warmed 2 of 3 images: 2 manifests, 4 blobs; ",
    );
    assert_eq!(
        empty.count("GET", "/v2/library"),
        0,
        "nothing went to the default upstream"
    );

    // What warm filled is what a containerd client's requests (`?ns=`) get: hits, as the cache
    // says in X-Regmirror-Cache.
    let layer = &demo_blobs[1].0;
    let body = until_hit(&cache, &format!("/v2/library/demo/blobs/{layer}?ns={host}"));
    assert_eq!(peers::oci::sha256(&body), *layer);
    assert_eq!(
        origin.count("GET", &format!("/blobs/{layer}")),
        1,
        "one download of the layer"
    );
    let gets = origin.count("GET", "");
    let (status, head, _) = peers::http(
        "GET",
        cache.addr,
        &format!("/v2/library/demo/manifests/v1?ns={host}"),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
    );
    assert_eq!(status, 200);
    assert_eq!(
        peers::oci::header(&head, "x-regmirror-cache").as_deref(),
        Some("hit"),
        "the tag revalidated (a HEAD), its manifest from the cache"
    );
    assert_eq!(origin.count("GET", ""), gets, "no GET upstream");
}

#[test]
fn bad_input_exits_2_and_an_unreachable_cache_fails_each_image() {
    let dir = tempfile::tempdir().unwrap();
    let nothing = format!("http://127.0.0.1:{}", peers::free_port());
    let bad = |args: &[&str], says: &str| {
        let run = warm(&nothing, args);
        let stderr = text(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(run.stdout.is_empty(), "{args:?}: nothing warmed");
    };
    bad(&["Nginx:Latest"], "Nginx:Latest: invalid reference format");
    let missing = dir.path().join("missing.txt");
    bad(
        &["--file", missing.to_str().unwrap()],
        &format!("{}: cannot read", missing.display()),
    );
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "nginx\n\n# fine\nbad//name\n").unwrap();
    bad(
        &["--file", list.to_str().unwrap()],
        &format!("{}:4: bad//name:", list.display()),
    );
    bad(&["--platform", "linux", "nginx"], "--platform");
    bad(&[], "no image to warm");
    let run = Command::new(env!("CARGO_BIN_EXE_regmirror"))
        .args(["warm", "--cache", "ftp://127.0.0.1/", "nginx"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2), "{}", text(&run.stderr));

    // Nothing listens there: each image fails, named, and the run exits 1.
    let run = warm(&nothing, &["nginx", "ghcr.io/org/img:1"]);
    let stderr = text(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    for image in ["docker.io/library/nginx:latest", "ghcr.io/org/img:1"] {
        assert!(
            stderr.contains(&format!("error: warm {image}: manifest ")),
            "{stderr}"
        );
    }
    assert!(
        text(&run.stdout).starts_with("warmed 0 of 2 images: 0 manifests, 0 blobs;"),
        "{}",
        text(&run.stdout)
    );
}

#[test]
fn a_cache_with_htpasswd_is_warmed_with_docker_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, cache) = or_skip!(peers::demo_behind_a_password(
        dir.path(),
        "carol",
        "pa55word"
    ));
    let image = format!("{}/library/demo:v1", origin.host());
    let run = warm(&cache.url(), &[&image]);
    let stderr = text(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: warm {image}: manifest v1: HTTP 401 UNAUTHORIZED"
        )),
        "{stderr}"
    );

    // The entry `docker login` writes for the cache.
    let config = dir.path().join("config.json");
    let write = |host: &str| {
        std::fs::write(
            &config,
            format!(
                r#"{{"auths": {{"{host}": {{"username": "carol", "password": "pa55word"}}}}}}"#
            ),
        )
        .unwrap()
    };
    write("elsewhere.example:5000");
    let run = warm(
        &cache.url(),
        &["--credentials", config.to_str().unwrap(), &image],
    );
    assert_eq!(run.status.code(), Some(2), "{}", text(&run.stderr));
    assert!(
        text(&run.stderr).contains(&format!("no credentials for {}", cache.host())),
        "{}",
        text(&run.stderr)
    );
    write(&cache.host());
    let run = warm(
        &cache.url(),
        &["--credentials", config.to_str().unwrap(), &image],
    );
    let stdout = text(&run.stdout);
    assert!(run.status.success(), "{stdout}{}", text(&run.stderr));
    assert!(
        stdout
            .lines()
            .last()
            .unwrap()
            .starts_with("warmed 1 of 1 image: 1 manifest, 2 blobs;"),
        "{stdout}"
    );
    assert!(!cache.log().contains("pa55word"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_of_many_children_is_read_jobs_at_a_time() {
    use axum::http::Method;
    use bytes::Bytes;
    use fake::{Cache, Canned, FakeUpstream, digest_of, random_bytes};
    use serde_json::json;

    const CHILDREN: usize = 40;
    const JOBS: usize = 4;
    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    let repository = "library/many";
    let upstream = FakeUpstream::start().await;
    let config = Bytes::from_static(br#"{"architecture":"amd64","os":"linux"}"#);
    let layer = random_bytes(10_000, 3);
    let descriptor = |media_type: &str, bytes: &[u8]| json!({"mediaType": media_type, "digest": digest_of(bytes), "size": bytes.len()});
    for blob in [&config, &layer] {
        upstream.blob(
            repository,
            &digest_of(blob),
            blob.clone(),
            1,
            Duration::ZERO,
        );
    }
    // Children that differ by an annotation and share their blobs, each answer held a while so
    // that requests sent together overlap at the upstream.
    let mut children = Vec::new();
    for n in 0..CHILDREN {
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)],
            "annotations": {"n": n.to_string()},
        })
        .to_string();
        let digest = digest_of(manifest.as_bytes());
        upstream.manifest(repository, &digest, &manifest);
        let path = format!("/v2/{repository}/manifests/{digest}");
        upstream.delay(&path, Duration::from_millis(50));
        let mut child = descriptor(OCI_MANIFEST, manifest.as_bytes());
        child["platform"] = json!({"architecture": "amd64", "os": "linux"});
        children.push((path, child));
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": children.iter().map(|(_, c)| c.clone()).collect::<Vec<_>>(),
    })
    .to_string();
    let canned = Canned {
        status: 200,
        content_type: OCI_INDEX,
        body: Bytes::from(index),
        pieces: 1,
        pause: Duration::ZERO,
    };
    let tag = format!("/v2/{repository}/manifests/v1");
    upstream.answer(Method::GET, &tag, canned.clone());
    upstream.answer(Method::HEAD, &tag, canned);
    let cache = Cache::start(&format!("proxy: {{remoteurl: {}}}", upstream.url())).await;

    let cache_url = format!("http://{}", cache.addr);
    let image = format!("{}/{repository}:v1", upstream.addr);
    let run = tokio::task::spawn_blocking(move || {
        warm(&cache_url, &["--jobs", &JOBS.to_string(), &image])
    })
    .await
    .unwrap();
    assert!(
        run.status.success(),
        "{}{}",
        text(&run.stdout),
        text(&run.stderr)
    );
    for (path, _) in &children {
        assert_eq!(upstream.hits(Method::GET, path), 1, "{path}");
    }
    // The cache asks its upstream only while warm waits for an answer, so the upstream sees at
    // most what warm sends at once.
    let most = upstream.state.gets.most();
    assert!(
        most <= JOBS,
        "{most} manifest and blob requests at once with --jobs {JOBS}"
    );
}

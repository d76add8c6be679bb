//! The status page in a real browser: headless Chromium loads `/` of a running cache after pulls,
//! during an outage of one upstream (a real distribution registry, stopped) and while a download
//! from the other is in progress, and the test reads the DOM it built. The second upstream is an
//! in-process FAKE, for the one thing a real registry here cannot do: send a blob slowly enough
//! to be seen in flight. Chromium is kept off the network: every name but 127.0.0.1 resolves to
//! nothing and any other request goes to a dead proxy. A screenshot is saved as
//! target/status-page.png for people to look at (docs/status-page.png is a copy).

mod fake;
mod peers;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use fake::{Cache, FakeUpstream, client, digest_of, random_bytes};

/// Runs headless Chromium on `url` with `extra` arguments; returns its stdout.
fn headless(binary: &PathBuf, url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(binary)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--proxy-server=http://127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The OCI manifest and index types, as a pulling client accepts them.
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// GETs `url`: (status, `Retry-After`, body).
async fn get(url: &str) -> (u16, Option<String>, String) {
    let response = client()
        .get(url)
        .header("accept", ACCEPT)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, response.text().await.unwrap())
}

/// The part of `dom` from the element with `id` to the end of its list or table.
fn section<'a>(dom: &'a str, id: &str) -> &'a str {
    let from = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {dom}"));
    let rest = &dom[from..];
    let end = ["</ul>", "</table>", "</p>"]
        .iter()
        .filter_map(|tag| rest.find(tag))
        .min()
        .unwrap_or(rest.len());
    &rest[..end]
}

/// Two upstreams: a real distribution registry that is stopped mid-test (an outage), and the
/// FAKE that sends a blob slowly (a download in flight). The page must show the outage as it is:
/// the breaker resting or probing with "down since", the storage the pulls filled, the failures
/// apart from a client's 404, one line per stale tag; unknown paths are 404 and no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_fills_an_outage_storage_and_errors_in_a_browser() {
    let binary = or_skip!(peers::require("chromium", "chromium"));
    let images = or_skip!(peers::Images::new());
    let layer = random_bytes(300_000, 3);
    let (mut registry, images) = or_skip!(
        tokio::task::spawn_blocking(move || {
            images.build("v1", &[("data", &layer[..])]);
            let registry = peers::Registry::start(peers::RegistryOptions::default())?;
            images.push("v1", &format!("{}/library/demo:v1", registry.host()), &[]);
            Ok::<_, peers::Missing>((registry, images))
        })
        .await
        .unwrap()
    );
    let upstream = FakeUpstream::start().await;
    let small = random_bytes(20_000, 1);
    let small_digest = digest_of(&small);
    upstream.blob("library/app", &small_digest, small, 1, Duration::ZERO);
    // 60 pieces 200 ms apart: about 12 s in flight.
    let big = random_bytes(6_000_000, 2);
    let big_digest = digest_of(&big);
    upstream.blob(
        "library/big",
        &big_digest,
        big,
        60,
        Duration::from_millis(200),
    );
    let cache = Cache::start(&format!(
        "proxy: {{remoteregistries: [{{url: {}}}, {{url: {}}}]}}",
        registry.url(),
        upstream.url()
    ))
    .await;
    let fake_ns = format!("?ns={}", upstream.addr);

    // The registry's image through the cache (the default upstream): about 300 KiB stored.
    let (status, _, manifest) = get(&cache.url("/v2/library/demo/manifests/v1")).await;
    assert_eq!(status, 200, "{manifest}");
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let mut blobs = vec![manifest["config"]["digest"].as_str().unwrap().to_owned()];
    for layer in manifest["layers"].as_array().unwrap() {
        blobs.push(layer["digest"].as_str().unwrap().to_owned());
    }
    let mut pulled = 0;
    for digest in &blobs {
        pulled += cache
            .get_until_hit(&format!("/v2/library/demo/blobs/{digest}"))
            .await
            .len();
    }
    assert!(pulled > 300_000, "{pulled}");
    // A tag that does not exist: the registry answers 404, which is an answer.
    let (status, _, _) = get(&cache.url("/v2/library/demo/manifests/nope")).await;
    assert_eq!(status, 404);

    // The fake's small blob: a miss, then GETs until one is a hit: a GET right after the
    // download may still join it (the last byte is out before the blob is committed), so
    // exactly one hit is counted.
    let small_url = cache.url(&format!("/v2/library/app/blobs/{small_digest}{fake_ns}"));
    let mut answers = Vec::new();
    for _ in 0..100 {
        let response = client().get(&small_url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let cache = response.headers()["x-regmirror-cache"]
            .to_str()
            .unwrap()
            .to_owned();
        response.bytes().await.unwrap();
        answers.push(cache);
        if answers.last().unwrap() == "hit" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answers.first().unwrap(), "miss");
    assert_eq!(answers.last().unwrap(), "hit", "{answers:?}");

    // The outage: the registry stops. Its tag is served stale, twice; a blob it never sent
    // cannot be, and while its endpoint rests the answer comes at once with Retry-After.
    let registry_name = registry.host();
    let registry = tokio::task::spawn_blocking(move || {
        registry.stop();
        registry
    })
    .await
    .unwrap();
    for _ in 0..2 {
        let (status, _, body) = get(&cache.url("/v2/library/demo/manifests/v1")).await;
        assert_eq!(status, 200, "served stale: {body}");
    }
    let missing = format!("sha256:{}", "ab".repeat(32));
    let (status, retry_after, body) =
        get(&cache.url(&format!("/v2/library/demo/blobs/{missing}"))).await;
    assert_eq!(status, 503, "{body}");
    let retry_after = retry_after.expect("Retry-After while the endpoint rests");
    assert!(
        body.contains(&format!("not asked again for {retry_after} s")),
        "the body and Retry-After say one number ({retry_after}): {body}"
    );

    // A browser's own request for /favicon.ico: 404, and no error of the registry's.
    let (status, _, body) = get(&cache.url("/favicon.ico")).await;
    assert_eq!(status, 404, "{body}");
    let metrics = cache.metrics().await;
    assert!(
        !metrics.contains("code=\"UNSUPPORTED\"") && !metrics.contains("code=\"NOT_FOUND\""),
        "unknown paths are not counted as errors:\n{metrics}"
    );

    let big_url = cache.url(&format!("/v2/library/big/blobs/{big_digest}{fake_ns}"));
    let in_flight = tokio::spawn(async move {
        let response = client().get(&big_url).send().await.unwrap();
        response.bytes().await.unwrap().len()
    });
    tokio::time::sleep(Duration::from_millis(600)).await;

    let page = cache.url("/");
    let dom = {
        let (binary, page) = (binary.clone(), page.clone());
        tokio::task::spawn_blocking(move || headless(&binary, &page, &["--dump-dom"]))
            .await
            .unwrap()
    };
    assert!(dom.contains("<h1>regmirror "), "{dom}");
    let rows: Vec<&str> = dom.split("<tr class=\"upstream\">").skip(1).collect();
    let row = |name: &str| {
        *rows
            .iter()
            .find(|r| r.contains(&format!("<b>{name}</b>")))
            .unwrap_or_else(|| panic!("a row for {name}: {dom}"))
    };
    let fake_row = row(&upstream.addr.to_string());
    assert!(
        fake_row.contains("<td class=\"hits\">1</td>"),
        "the one hit is counted: {fake_row}"
    );
    assert!(fake_row.contains("data-state=\"healthy\""), "{fake_row}");
    let down_row = row(&registry_name);
    assert!(
        (down_row.contains("data-state=\"resting\"")
            || down_row.contains("data-state=\"probing\""))
            && down_row.contains("down since"),
        "the stopped registry's breaker says what the walk does: {down_row}"
    );
    let last_failure = down_row
        .split("class=\"last-failure\"")
        .nth(1)
        .expect("a last failure cell");
    assert!(
        last_failure.contains("UNAVAILABLE") && !last_failure.contains("MANIFEST_UNKNOWN"),
        "the outage, not a client's 404: {last_failure}"
    );
    let fills = section(&dom, "fills");
    assert!(
        fills.contains("role=\"progressbar\"") && fills.contains("library/big"),
        "a bar for the download in flight: {fills}"
    );
    let storage = section(&dom, "storage");
    assert!(
        !storage.contains(">0 B stored") && storage.contains("KiB stored"),
        "what the pulls stored: {storage}"
    );
    let failures = section(&dom, "errors");
    assert!(failures.contains("503 UNAVAILABLE"), "{failures}");
    assert!(!failures.contains("MANIFEST_UNKNOWN"), "{failures}");
    let client_errors = section(&dom, "client_errors");
    assert!(
        client_errors.contains("404 MANIFEST_UNKNOWN"),
        "a client's 404 listed apart: {client_errors}"
    );
    let stale = section(&dom, "stale");
    assert_eq!(
        stale.matches("<li>").count(),
        1,
        "one line per tag: {stale}"
    );
    assert!(
        stale.contains("library/demo:v1") && stale.contains("2 times"),
        "{stale}"
    );

    let screenshot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    let shot = screenshot.clone();
    tokio::task::spawn_blocking(move || {
        headless(
            &binary,
            &page,
            &[
                &format!("--screenshot={}", shot.display()),
                "--window-size=1280,1040",
                "--hide-scrollbars",
            ],
        )
    })
    .await
    .unwrap();
    assert!(
        std::fs::metadata(&screenshot).unwrap().len() > 10_000,
        "a screenshot at {}",
        screenshot.display()
    );

    // The same data as JSON, once the download is over: 12 s after the outage began, the rest
    // of the stopped registry's endpoint is over, and nothing asked it since. It is not healthy
    // ("closed" before): the next request probes it.
    assert_eq!(in_flight.await.unwrap(), 6_000_000);
    let data: serde_json::Value = client()
        .get(cache.url("/_regmirror/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fake = data["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == upstream.addr.to_string().as_str())
        .unwrap();
    assert_eq!(fake["hits"], 1);
    let breaker = &data["upstreams"][0]["endpoints"][0]["breaker"];
    assert_eq!(
        (&breaker["state"], &breaker["probe_in_flight"]),
        (&serde_json::json!("probing"), &serde_json::json!(false)),
        "{breaker}"
    );
    assert!(breaker["down_seconds"].as_u64().unwrap() >= 5, "{breaker}");
    assert!(
        data["storage"]["stored_bytes"].as_u64().unwrap() >= pulled as u64,
        "{}",
        data["storage"]
    );
    drop((images, registry));
}

#[tokio::test]
async fn with_auth_the_status_page_needs_it_too() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = or_skip!(peers::htpasswd_file(dir.path(), "ops", "s3cret-pass"));
    let cache = Cache::start(&format!(
        "proxy: {{remoteurl: {}, username: hubuser, password: hub-token-secret}}\nauth: {{htpasswd: {{path: {}}}}}\n",
        upstream.url(),
        file.display()
    ))
    .await;
    for path in ["/", "/_regmirror/status"] {
        let refused = client().get(cache.url(path)).send().await.unwrap();
        assert_eq!(refused.status(), 401, "{path}");
        let page = client()
            .get(cache.url(path))
            .basic_auth("ops", Some("s3cret-pass"))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200, "{path}");
        let text = page.text().await.unwrap();
        for secret in ["hub-token-secret", "s3cret-pass", "hubuser"] {
            assert!(!text.contains(secret), "{path} shows no credential");
        }
    }
}

/// The fetch policy's refusals in a real browser: one line per upstream and rule, with the
/// pattern, the count and the last repository refused. No upstream is needed: a refused request
/// never reaches one (the configured one is a closed port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_lists_what_the_fetch_policy_refused() {
    let binary = or_skip!(peers::require("chromium", "chromium"));
    let cache = Cache::start(
        "proxy: {remoteurl: http://127.0.0.1:9, allow: [\"library/*\"], deny: [\"library/secret-*\"]}",
    )
    .await;
    for path in [
        "/v2/library/secret-app/manifests/v1",
        "/v2/library/secret-db/manifests/v1",
        "/v2/team/app/manifests/v1",
    ] {
        let (status, _, body) = get(&cache.url(path)).await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    let page = cache.url("/");
    let dom = tokio::task::spawn_blocking(move || headless(&binary, &page, &["--dump-dom"]))
        .await
        .unwrap();
    assert!(dom.contains("Refused by the fetch policy: 3"), "{dom}");
    let policy = section(&dom, "policy");
    assert_eq!(policy.matches("<li>").count(), 2, "{policy}");
    assert!(
        policy.contains(
            "<code>proxy.deny[0]</code> <code>library/secret-*</code>: 2 refused, last \
             <code>library/secret-db</code>"
        ),
        "{policy}"
    );
    assert!(
        policy.contains("<code>proxy.allow</code>: 1 refused, last <code>team/app</code>"),
        "{policy}"
    );
}

//! The status page in a real browser: headless Chromium loads `/` of a running cache after a pull
//! and while a download is in progress, and the test reads the DOM it built. The upstream is an
//! in-process FAKE, for the one thing a real registry here cannot do: send a blob slowly enough
//! to be seen in flight. Chromium is kept off the network: every name but 127.0.0.1 resolves to
//! nothing and any other request goes to a dead proxy. A screenshot is saved as
//! target/status-page.png for people to look at.

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

#[tokio::test]
async fn the_status_page_shows_upstreams_hits_and_fills_in_a_browser() {
    let binary = peers::require("chromium", "chromium");
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
    let cache = Cache::start(&format!("proxy: {{remoteurl: {}}}", upstream.url())).await;
    let small_url = cache.url(&format!("/v2/library/app/blobs/{small_digest}"));
    // A miss, then GETs until one is a hit: a GET right after the download may still join it
    // (the last byte is out before the blob is committed), so exactly one hit is counted.
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
    let big_url = cache.url(&format!("/v2/library/big/blobs/{big_digest}"));
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
    let upstream_name = upstream.addr.to_string();
    assert!(dom.contains("<h1>regmirror "), "{dom}");
    let row = dom
        .split("<tr class=\"upstream\">")
        .nth(1)
        .expect("an upstream row");
    assert!(
        row.contains(&upstream_name),
        "the upstream is listed: {row}"
    );
    assert!(
        row.contains("<td class=\"hits\">1</td>"),
        "the one hit is counted: {row}"
    );
    let fills = dom.split("id=\"fills\"").nth(1).expect("a fills table");
    assert!(
        fills.contains("role=\"progressbar\"") && fills.contains("library/big"),
        "a bar for the download in flight: {fills}"
    );
    let screenshot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    let shot = screenshot.clone();
    tokio::task::spawn_blocking(move || {
        headless(
            &binary,
            &page,
            &[
                &format!("--screenshot={}", shot.display()),
                "--window-size=1280,1100",
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

    // The same data as JSON.
    let data: serde_json::Value = client()
        .get(cache.url("/_regmirror/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(data["upstreams"][0]["name"], upstream_name.as_str());
    assert_eq!(data["upstreams"][0]["hits"], 1);
    assert_eq!(in_flight.await.unwrap(), 6_000_000);
}

#[tokio::test]
async fn with_auth_the_status_page_needs_it_too() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = peers::htpasswd_file(dir.path(), "ops", "s3cret-pass");
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

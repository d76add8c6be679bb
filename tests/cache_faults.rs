//! The cache against an in-process FAKE upstream, for faults no real registry produces: content
//! that does not match its digest, a body that arrives slowly (to watch single flight and
//! streaming), an answer held until every client asked (single flight), an upstream that
//! disappears, and repositories the upstream refuses.
//! Everything runs on 127.0.0.1 with ephemeral ports.

mod fake;

use std::time::{Duration, Instant};

use axum::http::Method;
use bytes::Bytes;
use fake::{
    Cache, Canned, FakeUpstream, client, digest_of, files_under, random_bytes, raw_get,
    silent_listener,
};

#[tokio::test]
async fn wrong_blob_bytes_are_never_served_or_stored() {
    let upstream = FakeUpstream::start().await;
    let good = random_bytes(300_000, 1);
    let claimed = digest_of(&good);
    let mut evil = good.to_vec();
    evil[150_000] ^= 0xff;
    upstream.blob(
        "library/demo",
        &claimed,
        Bytes::from(evil),
        4,
        Duration::from_millis(20),
    );
    let cache = Cache::start(&format!("proxy: {{remoteurl: {}}}", upstream.url())).await;

    for attempt in 0..2 {
        let response = client()
            .get(cache.url(&format!("/v2/library/demo/blobs/{claimed}")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "the fill starts streaming before the digest is known"
        );
        assert!(
            response.bytes().await.is_err(),
            "attempt {attempt}: a body with the wrong digest must end in an error, not cleanly"
        );
        assert_eq!(cache.committed_blobs(), 0, "nothing committed");
    }
    assert_eq!(
        upstream.hits(Method::GET, &format!("/v2/library/demo/blobs/{claimed}")),
        2,
        "no cached copy"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(cache.temp_files(), 0, "the temp file is deleted");
}

#[tokio::test]
async fn wrong_manifest_digest_is_refused() {
    let upstream = FakeUpstream::start().await;
    let real = r#"{"schemaVersion":2,"layers":[]}"#;
    let claimed = digest_of(b"something else");
    upstream.manifest("library/demo", &claimed, real);
    let cache = Cache::start(&format!("proxy: {{remoteurl: {}}}", upstream.url())).await;
    let response = client()
        .get(cache.url(&format!("/v2/library/demo/manifests/{claimed}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DIGEST_INVALID");
    assert_eq!(cache.committed_blobs(), 0);
}

#[tokio::test]
async fn concurrent_misses_share_one_download_and_stream_early() {
    let upstream = FakeUpstream::start().await;
    let blob = random_bytes(2_000_000, 2);
    let digest = digest_of(&blob);
    // 20 pieces, 50 ms apart: the upstream needs about a second.
    upstream.blob(
        "library/demo",
        &digest,
        blob.clone(),
        20,
        Duration::from_millis(50),
    );
    let cache = Cache::start(&format!("proxy: {{remoteurl: {}}}", upstream.url())).await;
    let url = cache.url(&format!("/v2/library/demo/blobs/{digest}"));

    let started = Instant::now();
    let mut clients = Vec::new();
    for i in 0..8u64 {
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(40 * i)).await;
            let mut response = client().get(&url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let first = response.chunk().await.unwrap().unwrap();
            let first_byte_at = started.elapsed();
            let mut body = first.to_vec();
            while let Some(chunk) = response.chunk().await.unwrap() {
                body.extend_from_slice(&chunk);
            }
            (first_byte_at, body)
        }));
    }
    let mut first_bytes = Vec::new();
    for handle in clients {
        let (first_byte_at, body) = handle.await.unwrap();
        assert_eq!(digest_of(&body), digest, "every client gets the exact blob");
        first_bytes.push(first_byte_at);
    }
    let total = started.elapsed();
    assert_eq!(
        upstream.hits(Method::GET, &format!("/v2/library/demo/blobs/{digest}")),
        1,
        "one upstream download"
    );
    assert!(
        first_bytes[0] < total / 2,
        "the first client is streamed as bytes arrive ({:?} of {total:?})",
        first_bytes[0]
    );

    // A Range request on the now cached blob.
    let response = client()
        .get(&url)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 206);
    assert_eq!(
        response.headers()["content-range"],
        "bytes 1000-1999/2000000"
    );
    assert_eq!(response.bytes().await.unwrap(), blob.slice(1000..2000));
}

#[tokio::test]
async fn range_requests_on_a_miss() {
    let upstream = FakeUpstream::start().await;
    let blob = random_bytes(1_000_000, 3);
    let digest = digest_of(&blob);
    upstream.blob(
        "library/demo",
        &digest,
        blob.clone(),
        10,
        Duration::from_millis(30),
    );
    let cache = Cache::start(&format!("proxy: {{remoteurl: {}}}", upstream.url())).await;
    let response = client()
        .get(cache.url(&format!("/v2/library/demo/blobs/{digest}")))
        .header("range", "bytes=700000-")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 206);
    assert_eq!(
        response.headers()["content-range"],
        "bytes 700000-999999/1000000"
    );
    assert_eq!(response.bytes().await.unwrap(), blob.slice(700_000..));
    let response = client()
        .get(cache.url(&format!("/v2/library/demo/blobs/{digest}")))
        .header("range", "bytes=2000000-")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 416);
}

#[tokio::test]
async fn cached_content_survives_the_upstream_and_a_restart() {
    let upstream = FakeUpstream::start().await;
    let layer = random_bytes(50_000, 4);
    let layer_digest = digest_of(&layer);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[{{"digest":"{layer_digest}"}}]}}"#
    );
    let manifest_digest = digest_of(manifest.as_bytes());
    upstream.manifest("library/demo", "v1", &manifest);
    upstream.blob(
        "library/demo",
        &layer_digest,
        layer.clone(),
        1,
        Duration::ZERO,
    );
    let remote = upstream.url();
    let cache = Cache::start(&format!("proxy: {{remoteurl: {remote}}}")).await;
    let get = |path: String| async move { client().get(path).send().await.unwrap() };
    assert_eq!(
        get(cache.url("/v2/library/demo/manifests/v1"))
            .await
            .status(),
        200
    );
    assert_eq!(
        get(cache.url(&format!("/v2/library/demo/blobs/{layer_digest}")))
            .await
            .bytes()
            .await
            .unwrap(),
        layer
    );

    // The upstream goes away and the cache restarts: it starts anyway and serves what it has.
    drop(upstream);
    let dir = cache.stop().await;
    let cache = Cache::start_in(dir, &format!("proxy: {{remoteurl: {remote}}}")).await;
    let response = get(cache.url("/v2/library/demo/manifests/v1")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["docker-content-digest"],
        manifest_digest.as_str()
    );
    assert!(
        response.headers()["warning"]
            .to_str()
            .unwrap()
            .contains("serving the cached tag")
    );
    assert_eq!(response.bytes().await.unwrap(), manifest.as_bytes());
    let response = get(cache.url(&format!("/v2/library/demo/manifests/{manifest_digest}"))).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        get(cache.url(&format!("/v2/library/demo/blobs/{layer_digest}")))
            .await
            .bytes()
            .await
            .unwrap(),
        layer
    );

    // Uncached content: a clear error naming the upstream.
    let response = get(cache.url("/v2/library/demo/manifests/v2")).await;
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{body}"
    );
}

#[tokio::test]
async fn private_blobs_stay_with_the_repository_that_fetched_them() {
    let upstream = FakeUpstream::start().await;
    let layer = random_bytes(10_000, 5);
    let layer_digest = digest_of(&layer);
    let manifest = format!(r#"{{"schemaVersion":2,"layers":[{{"digest":"{layer_digest}"}}]}}"#);
    upstream.manifest("team/private", "v1", &manifest);
    upstream.blob(
        "team/private",
        &layer_digest,
        layer.clone(),
        1,
        Duration::ZERO,
    );
    let cache = Cache::start(&format!("proxy: {{remoteurl: {}}}", upstream.url())).await;
    let get = |path: String| async move { client().get(path).send().await.unwrap() };
    assert_eq!(
        get(cache.url("/v2/team/private/manifests/v1"))
            .await
            .status(),
        200
    );
    assert_eq!(
        get(cache.url(&format!("/v2/team/private/blobs/{layer_digest}")))
            .await
            .status(),
        200
    );
    // A hit from disk puts the small blob in the blob memo.
    let blob_path = format!("/v2/team/private/blobs/{layer_digest}");
    assert_eq!(cache.get_until_hit(&blob_path).await, layer);

    // Another repository asks for the same blob: the upstream does not confirm it (404), and
    // the copy in memory is no more its to read than the one on disk.
    let response = get(cache.url(&format!("/v2/other/repo/blobs/{layer_digest}"))).await;
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "BLOB_UNKNOWN");

    // Once the upstream says the other repository can read it, the cached copy is served.
    upstream.blob(
        "other/repo",
        &layer_digest,
        layer.clone(),
        1,
        Duration::ZERO,
    );
    let response = get(cache.url(&format!("/v2/other/repo/blobs/{layer_digest}"))).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), layer);
    assert_eq!(
        upstream.hits(Method::GET, &format!("/v2/other/repo/blobs/{layer_digest}")),
        0,
        "served from cache"
    );
}

#[tokio::test]
async fn dynamic_upstreams_cannot_reach_private_addresses() {
    let upstream = FakeUpstream::start().await;
    upstream.manifest("library/demo", "v1", r#"{"schemaVersion":2,"layers":[]}"#);
    let cache = Cache::start("proxy: {on: true}").await;
    // An IP literal (checked before any request) and a name (checked in the resolver, on the
    // addresses it connects to; `localhost` comes from /etc/hosts), each asked twice: a refusal
    // is 403 DENIED naming the rule, every time (a policy does not rest like a failure, which
    // would answer 503 the second time).
    let port = upstream.addr.port();
    for (ns, rule) in [
        (
            format!("127.0.0.1:{port}"),
            "refusing upstream 127.0.0.1: 127.0.0.1 is in 127.0.0.0/8 (loopback, RFC 1122)",
        ),
        (format!("localhost:{port}"), "refusing upstream localhost: "),
    ] {
        for _ in 0..2 {
            let response = client()
                .get(cache.url(&format!("/v2/library/demo/manifests/v1?ns={ns}")))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 403, "{ns}");
            assert!(!response.headers().contains_key("retry-after"), "{ns}");
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["errors"][0]["code"], "DENIED", "{body}");
            let message = body["errors"][0]["message"].as_str().unwrap();
            assert!(
                message.contains(rule) && message.contains("proxy.allow_private_upstreams"),
                "{message}"
            );
        }
    }
    assert_eq!(
        upstream.hits(Method::HEAD, "/v2/library/demo/manifests/v1")
            + upstream.hits(Method::GET, "/v2/library/demo/manifests/v1"),
        0,
        "never contacted"
    );

    // Allowed explicitly, the same request goes through: a loopback registry is insecure, as
    // dockerd treats it, so plain http is tried after https.
    let cache = Cache::start("proxy: {on: true, allow_private_upstreams: true}").await;
    let response = client()
        .get(cache.url(&format!(
            "/v2/library/demo/manifests/v1?ns={}",
            upstream.addr
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        upstream.hits(Method::GET, "/v2/library/demo/manifests/v1"),
        1
    );
}

#[tokio::test]
async fn errors_and_routing_surface() {
    let upstream = FakeUpstream::start().await;
    let cache = Cache::start(&format!("proxy: {{remoteurl: {}}}", upstream.url())).await;
    let get = |path: String| async move { client().get(path).send().await.unwrap() };
    let response = get(cache.url("/v2/")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    for (path, status, code) in [
        (
            "/v2/library/demo/manifests/missing",
            404,
            "MANIFEST_UNKNOWN",
        ),
        ("/v2/Bad/manifests/v1", 400, "NAME_INVALID"),
        ("/v2/library/demo/blobs/sha256:abc", 400, "DIGEST_INVALID"),
    ] {
        let response = get(cache.url(path)).await;
        assert_eq!(response.status(), status, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], code, "{path}");
    }
    // A path clients would normalise is refused as sent (written raw: reqwest would normalise it).
    let raw = raw_get(cache.addr, "/v2/a/../b/manifests/v1").await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(raw.contains("NAME_INVALID"), "{raw}");
    let response = client()
        .put(cache.url("/v2/library/demo/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(get(cache.url("/healthz")).await.status(), 200);
    let metrics = cache.metrics().await;
    assert!(
        metrics.contains("regmirror_errors_total{code=\"MANIFEST_UNKNOWN\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn own_fetches_walk_the_mirrors_first() {
    let origin = FakeUpstream::start().await;
    let mirror = FakeUpstream::start().await;
    let manifest = r#"{"schemaVersion":2,"layers":[]}"#;
    origin.manifest("library/demo", "v1", manifest);
    origin.manifest(
        "library/demo",
        "v2",
        r#"{"schemaVersion":2,"layers":[],"annotations":{"v":"2"}}"#,
    );
    mirror.manifest("library/demo", "v1", manifest);
    let mirrors = format!(
        r#"{{"mirror-registries": [{{"domain": "{}", "mirrors": ["{}"]}}]}}"#,
        origin.addr,
        mirror.url()
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::start_with_mirrors(
        dir,
        &format!("proxy: {{remoteurl: {}}}", origin.url()),
        Some(&mirrors),
    )
    .await;
    let get = |path: String| async move { client().get(path).send().await.unwrap() };
    assert_eq!(
        get(cache.url("/v2/library/demo/manifests/v1"))
            .await
            .status(),
        200
    );
    assert_eq!(
        mirror.hits(Method::GET, "/v2/library/demo/manifests/v1"),
        1,
        "the mirror served it"
    );
    assert_eq!(
        origin.hits(Method::GET, "/v2/library/demo/manifests/v1"),
        0,
        "the origin was not asked"
    );
    // The mirror lacks v2: the walk falls back to the origin.
    assert_eq!(
        get(cache.url("/v2/library/demo/manifests/v2"))
            .await
            .status(),
        200
    );
    assert_eq!(
        mirror.hits(Method::HEAD, "/v2/library/demo/manifests/v2"),
        1
    );
    assert_eq!(origin.hits(Method::GET, "/v2/library/demo/manifests/v2"), 1);
}

#[tokio::test]
async fn a_silent_mirror_costs_its_timeout_once() {
    let origin = FakeUpstream::start().await;
    origin.manifest("library/demo", "v1", r#"{"schemaVersion":2,"layers":[]}"#);
    let (silent, silent_task) = silent_listener().await;
    let mirrors = format!(
        r#"{{"mirror-registries": [{{"domain": "{}", "mirrors": ["http://{silent}"]}}]}}"#,
        origin.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::start_with_mirrors(
        dir,
        &format!("proxy: {{remoteurl: {}}}", origin.url()),
        Some(&mirrors),
    )
    .await;
    let get = |path: String| async move { client().get(path).send().await.unwrap() };

    let started = Instant::now();
    assert_eq!(
        get(cache.url("/v2/library/demo/manifests/v1"))
            .await
            .status(),
        200
    );
    let first = started.elapsed();
    assert!(
        first >= Duration::from_millis(900),
        "the silent mirror was tried: {first:?}"
    );
    assert!(
        first < Duration::from_millis(3500),
        "within the timeout budget: {first:?}"
    );

    let started = Instant::now();
    assert_eq!(
        get(cache.url("/v2/library/demo/manifests/v1"))
            .await
            .status(),
        200
    );
    let second = started.elapsed();
    assert!(
        second < Duration::from_millis(500),
        "the breaker skips the silent mirror: {second:?}"
    );
    silent_task.abort();
}

#[tokio::test]
async fn shutdown_lets_in_flight_responses_finish() {
    let upstream = FakeUpstream::start().await;
    let blob = random_bytes(500_000, 9);
    let digest = digest_of(&blob);
    upstream.blob(
        "library/demo",
        &digest,
        blob.clone(),
        10,
        Duration::from_millis(40),
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::start_in(dir, &format!("proxy: {{remoteurl: {}}}", upstream.url())).await;
    let mut response = client()
        .get(cache.url(&format!("/v2/library/demo/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    let mut body = response.chunk().await.unwrap().unwrap().to_vec();
    let addr = cache.addr;
    let stopping = tokio::spawn(cache.stop());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections once stopping"
    );
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    assert_eq!(digest_of(&body), digest, "the in-flight response completed");
    stopping.await.unwrap();
}

#[tokio::test]
async fn concurrent_tag_requests_share_one_revalidation() {
    let upstream = FakeUpstream::start().await;
    upstream.manifest("library/demo", "v1", r#"{"schemaVersion":2,"layers":[]}"#);
    upstream.delay("/v2/library/demo/manifests/v1", Duration::from_millis(300));
    let cache = Cache::start(&format!("proxy: {{remoteurl: {}}}", upstream.url())).await;
    let url = cache.url("/v2/library/demo/manifests/v1");
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { client().get(url).send().await.unwrap().status() })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(
        upstream.hits(Method::HEAD, "/v2/library/demo/manifests/v1"),
        1,
        "one revalidation in flight"
    );
    assert_eq!(
        upstream.hits(Method::GET, "/v2/library/demo/manifests/v1"),
        1,
        "one GET for the new digest"
    );
    // The next request revalidates again (the default window is 0), by HEAD only.
    assert_eq!(client().get(&url).send().await.unwrap().status(), 200);
    assert_eq!(
        upstream.hits(Method::HEAD, "/v2/library/demo/manifests/v1"),
        2
    );
    assert_eq!(
        upstream.hits(Method::GET, "/v2/library/demo/manifests/v1"),
        1,
        "never a GET when the digest is unchanged"
    );
}

#[tokio::test]
async fn serve_stale_on_404_keeps_a_tag_the_upstream_lost() {
    let upstream = FakeUpstream::start().await;
    let manifest = r#"{"schemaVersion":2,"layers":[]}"#;
    upstream.manifest("library/demo", "v1", manifest);
    let cache = Cache::start(&format!(
        "proxy: {{remoteurl: {}, serve_stale_on_404: true}}",
        upstream.url()
    ))
    .await;
    let url = cache.url("/v2/library/demo/manifests/v1");
    assert_eq!(client().get(&url).send().await.unwrap().status(), 200);
    upstream.state.canned.lock().unwrap().clear();
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["warning"]
            .to_str()
            .unwrap()
            .contains("HTTP 404")
    );

    // Without the option a 404 means the tag is gone.
    let upstream = FakeUpstream::start().await;
    upstream.manifest("library/demo", "v1", manifest);
    let cache = Cache::start(&format!("proxy: {{remoteurl: {}}}", upstream.url())).await;
    let url = cache.url("/v2/library/demo/manifests/v1");
    assert_eq!(client().get(&url).send().await.unwrap().status(), 200);
    upstream.state.canned.lock().unwrap().clear();
    assert_eq!(client().get(&url).send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn credentials_never_follow_a_redirect_to_another_host() {
    let registry = FakeUpstream::start().await;
    let storage = FakeUpstream::start().await;
    let blob = random_bytes(10_000, 11);
    let digest = digest_of(&blob);
    let path = format!("/v2/library/demo/blobs/{digest}");
    storage.blob("library/demo", &digest, blob.clone(), 1, Duration::ZERO);
    // alice:s3cret
    *registry.state.basic.lock().unwrap() = Some("Basic YWxpY2U6czNjcmV0".to_owned());
    registry.state.redirects.lock().unwrap().insert(
        path.clone(),
        format!("{}{path}", storage.url().replace("127.0.0.1", "localhost")),
    );
    let cache = Cache::start(&format!(
        "proxy: {{remoteurl: {}, username: alice, password: s3cret}}",
        registry.url()
    ))
    .await;
    let response = client().get(cache.url(&path)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), blob);
    let at_registry = registry
        .state
        .authorizations
        .lock()
        .unwrap()
        .get(&path)
        .cloned()
        .unwrap();
    assert!(
        at_registry
            .iter()
            .any(|a| a.as_deref() == Some("Basic YWxpY2U6czNjcmV0")),
        "the registry got the credentials"
    );
    let at_storage = storage
        .state
        .authorizations
        .lock()
        .unwrap()
        .get(&path)
        .cloned()
        .unwrap();
    assert!(
        at_storage.iter().all(Option::is_none),
        "blob storage never sees them: {at_storage:?}"
    );
}

/// The blob file under a cache's storage root, by its hex name.
fn blob_file(cache: &Cache, digest: &str) -> std::path::PathBuf {
    let hex = digest.split_once(':').unwrap().1;
    files_under(cache.dir.path())
        .into_iter()
        .find(|path| path.file_name().is_some_and(|name| name == hex))
        .unwrap_or_else(|| panic!("no file for {digest}"))
}

#[tokio::test]
async fn hot_small_blobs_are_served_from_memory_within_limits_blob_memo() {
    let upstream = FakeUpstream::start().await;
    let small = random_bytes(20_000, 9);
    let digest = digest_of(&small);
    upstream.blob("library/demo", &digest, small.clone(), 1, Duration::ZERO);
    let path = format!("/v2/library/demo/blobs/{digest}");
    for (limits, memo) in [("", true), ("\nlimits: {blob_memo: 0}", false)] {
        let cache =
            Cache::start(&format!("proxy: {{remoteurl: {}}}{limits}", upstream.url())).await;
        let before = upstream.hits(Method::GET, &path);
        // A fill, then a hit read from disk (remembered, unless the memo is off).
        let response = client().get(cache.url(&path)).send().await.unwrap();
        assert_eq!(response.bytes().await.unwrap(), small);
        assert_eq!(cache.get_until_hit(&path).await, small);
        // Without the file, only the memory can answer without asking the upstream again.
        std::fs::remove_file(blob_file(&cache, &digest)).unwrap();
        let response = client().get(cache.url(&path)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.bytes().await.unwrap(), small);
        let downloads = upstream.hits(Method::GET, &path) - before;
        assert_eq!(downloads, if memo { 1 } else { 2 }, "blob memo on: {memo}");
        if memo {
            let metrics = cache.metrics().await;
            assert!(
                metrics.contains("regmirror_memo_bytes{memo=\"blob\"} 20000"),
                "{metrics}"
            );
            let response = client()
                .get(cache.url(&path))
                .header("Range", "bytes=100-199")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 206);
            assert_eq!(response.bytes().await.unwrap(), small.slice(100..200));
        }
    }
}

/// The FAKE holds the referrers answer until every client's request reached the cache: either
/// as a request of its own upstream (8 of them: no single flight) or as one that joined the
/// request in flight (the `joined` count in /metrics). No timing involved.
#[tokio::test]
async fn concurrent_referrers_requests_share_one_upstream_request() {
    let upstream = FakeUpstream::start().await;
    let subject = digest_of(b"subject");
    let path = format!("/v2/library/demo/referrers/{subject}");
    let referrer = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest_of(b"signature"),
        "size": 9,
        "artifactType": "application/example",
    });
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [referrer],
    });
    upstream.answer(
        Method::GET,
        &path,
        Canned {
            status: 200,
            content_type: "application/vnd.oci.image.index.v1+json",
            body: Bytes::from(index.to_string()),
            pieces: 1,
            pause: Duration::ZERO,
        },
    );
    let gate = upstream.hold(&path);
    let cache = Cache::start(&format!("proxy: {{remoteurl: {}}}", upstream.url())).await;
    let url = cache.url(&path);
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let response = client().get(url).send().await.unwrap();
                let status = response.status();
                (status, response.json::<serde_json::Value>().await.unwrap())
            })
        })
        .collect();
    let joined = "regmirror_cache_requests_total{kind=\"referrers\",result=\"joined\"} 7";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if upstream.hits(Method::GET, &path) >= 8 || cache.metrics().await.contains(joined) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the 8 requests never reached the cache"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gate.send(true).unwrap();
    for request in requests {
        let (status, listed) = request.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(listed["manifests"], serde_json::json!([referrer]));
    }
    assert_eq!(
        upstream.hits(Method::GET, &path),
        1,
        "one upstream request in flight per subject"
    );
    // Done: the next request (the default window is 0) asks again.
    assert_eq!(client().get(&url).send().await.unwrap().status(), 200);
    assert_eq!(upstream.hits(Method::GET, &path), 2);
}

//! Hardening of the cache against hostile or careless peers, each case a defect a review
//! reproduced: redirects and token realms into the internal network, token lifetimes that
//! overflow, token answers too large to read, slow upstreams holding a digest for everyone,
//! forged access confirmations, the local namespace reachable as an upstream, overflowing
//! ranges, leaks after failures, and server-level limits (header and handshake timeouts,
//! connection limit). The upstream is the in-process FAKE of `fake/` (none of these faults comes
//! from a real registry); everything stays on 127.0.0.1.

mod fake;
mod peers;

use std::time::{Duration, Instant};

use axum::http::Method;
use bytes::Bytes;
use fake::{Bearer, Cache, Canned, FakeUpstream, client, digest_of, random_bytes};
use regmirror::config::MirrorUrl;
use regmirror::resolve::TlsMode;
use regmirror::upstream::{
    AddressPolicy, HostOverrides, HostRoots, Target, Timeouts, UpstreamClient, UpstreamRequest,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn json_code(body: &serde_json::Value) -> &str {
    body["errors"][0]["code"].as_str().unwrap_or("")
}

/// A client-named (untrusted) target on a "public" name that `--add-host` maps to loopback, as a
/// public registry under an attacker's control would be.
fn public_target(port: u16) -> Target {
    let url = MirrorUrl::parse(&format!("http://public.test:{port}")).unwrap();
    Target::origin(&url, None, TlsMode::None).untrusted()
}

fn guarded_client() -> UpstreamClient {
    UpstreamClient::new(
        HostOverrides::parse(&["public.test:127.0.0.1".to_owned()]).unwrap(),
        AddressPolicy::new(false),
        Timeouts::default(),
        &HostRoots::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_redirect_into_the_internal_network_is_refused() {
    let internal = FakeUpstream::start().await;
    internal.manifest("x/y", "v1", r#"{"secret":"instance metadata"}"#);
    let public = FakeUpstream::start().await;
    public.state.redirects.lock().unwrap().insert(
        "/v2/x/y/manifests/v1".into(),
        format!("{}/v2/x/y/manifests/v1", internal.url()),
    );
    let client = guarded_client();
    let request = UpstreamRequest::pull(Method::GET, "x/y", "/v2/x/y/manifests/v1".into());
    let error = client
        .send(&public_target(public.addr.port()), &request)
        .await
        .expect_err("the redirect must not be followed");
    assert!(error.summary().contains("refusing"), "{}", error.summary());
    assert_eq!(internal.hits(Method::GET, "/v2/x/y/manifests/v1"), 0);
    assert_eq!(public.hits(Method::GET, "/v2/x/y/manifests/v1"), 1);
}

#[tokio::test]
async fn a_token_realm_in_the_internal_network_is_refused() {
    let internal = FakeUpstream::start().await;
    *internal.state.bearer.lock().unwrap() = Some(Bearer {
        realm: "unused".into(),
        token: "internal".into(),
        expires_in: 300,
    });
    let public = FakeUpstream::start().await;
    *public.state.bearer.lock().unwrap() = Some(Bearer {
        realm: format!("{}/token", internal.url()),
        token: "t".into(),
        expires_in: 300,
    });
    let client = guarded_client();
    let request = UpstreamRequest::pull(Method::GET, "x/y", "/v2/x/y/manifests/v1".into());
    let error = client
        .send(&public_target(public.addr.port()), &request)
        .await
        .expect_err("the realm must not be fetched");
    assert!(error.summary().contains("refusing"), "{}", error.summary());
    assert_eq!(internal.hits(Method::GET, "/token"), 0, "never contacted");
}

#[tokio::test]
async fn a_dynamic_upstream_cannot_redirect_the_cache_into_the_internal_network() {
    let internal = FakeUpstream::start().await;
    let secret = r#"{"schemaVersion":2,"secret":"instance metadata"}"#;
    internal.manifest("x/y", "v1", secret);
    let public = FakeUpstream::start().await;
    public.state.redirects.lock().unwrap().insert(
        "/v2/x/y/manifests/v1".into(),
        format!("{}/v2/x/y/manifests/v1", internal.url()),
    );
    // `public.test:PORT` stands for a public registry: listed as insecure (so plain http is
    // tried, as dockerd does) and mapped to loopback by --add-host, which the operator trusts.
    let authority = format!("public.test:{}", public.addr.port());
    let mirrors = format!(r#"{{"insecure-registries": ["{authority}"]}}"#);
    let cache = Cache::launch(
        tempfile::tempdir().unwrap(),
        "proxy: {on: true}",
        Some(&mirrors),
        &["public.test:127.0.0.1"],
    )
    .await;
    let response = client()
        .get(cache.url(&format!("/v2/x/y/manifests/v1?ns={authority}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        403,
        "a refusal by the address policy is DENIED"
    );
    let body = response.text().await.unwrap();
    assert!(
        body.contains("DENIED") && body.contains("refusing"),
        "{body}"
    );
    assert!(body.contains("127.0.0.0/8 (loopback, RFC 1122)"), "{body}");
    assert!(!body.contains("instance metadata"), "{body}");
    assert!(
        public.hits(Method::HEAD, "/v2/x/y/manifests/v1") >= 1,
        "the public upstream was asked"
    );
    assert_eq!(internal.hits(Method::HEAD, "/v2/x/y/manifests/v1"), 0);
    assert_eq!(internal.hits(Method::GET, "/v2/x/y/manifests/v1"), 0);
}

#[tokio::test]
async fn a_token_that_never_expires_wedges_nothing() {
    let upstream = FakeUpstream::start().await;
    *upstream.state.bearer.lock().unwrap() = Some(Bearer {
        realm: format!("{}/token", upstream.url()),
        token: "t0k3n".into(),
        expires_in: u64::MAX,
    });
    let blob = random_bytes(100_000, 21);
    let digest = digest_of(&blob);
    upstream.blob("library/demo", &digest, blob.clone(), 1, Duration::ZERO);
    upstream.manifest("library/demo", "v1", r#"{"schemaVersion":2,"layers":[]}"#);
    let cache = Cache::start(&format!("proxy: {{remoteurl: {}}}", upstream.url())).await;
    for attempt in 0..2 {
        let response = client()
            .get(cache.url(&format!("/v2/library/demo/blobs/{digest}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "blob, attempt {attempt}");
        assert_eq!(response.bytes().await.unwrap(), blob);
        let response = client()
            .get(cache.url("/v2/library/demo/manifests/v1"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "tag, attempt {attempt}");
    }
    assert_eq!(
        upstream.hits(Method::GET, "/token"),
        1,
        "the token is reused"
    );
}

#[tokio::test]
async fn a_token_answer_over_1_mib_is_refused() {
    // A FAKE token service: 64 MiB generated as it is sent, without Content-Length, and 2 MiB
    // declared in Content-Length.
    let tokens = FakeUpstream::start().await;
    tokens
        .state
        .endless
        .lock()
        .unwrap()
        .insert("/streamed".into(), 64 << 20);
    let declared = Canned {
        status: 200,
        content_type: "application/json",
        body: Bytes::from(vec![b' '; 2 << 20]),
        pieces: 1,
        pause: Duration::ZERO,
    };
    tokens.answer(Method::GET, "/declared", declared);
    for realm in ["streamed", "declared"] {
        let upstream = FakeUpstream::start().await;
        *upstream.state.bearer.lock().unwrap() = Some(Bearer {
            realm: format!("{}/{realm}", tokens.url()),
            token: "t0k3n".into(),
            expires_in: 300,
        });
        let path = "/v2/library/demo/manifests/v1";
        upstream.manifest("library/demo", "v1", r#"{"schemaVersion":2,"layers":[]}"#);
        let cache = Cache::start(&format!("proxy: {{remoteurl: {}}}", upstream.url())).await;
        let response = client().get(cache.url(path)).send().await.unwrap();
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap();
        let message = body["errors"][0]["message"].as_str().unwrap_or("");
        assert_eq!(
            (status.as_u16(), json_code(&body)),
            (503, "UNAVAILABLE"),
            "{body}"
        );
        assert!(
            message.contains(&format!("token service {}/{realm}", tokens.url()))
                && message.contains("larger than 1048576 bytes"),
            "{realm}: {message}"
        );
        assert!(tokens.hits(Method::GET, &format!("/{realm}")) >= 1);
        let sent = upstream.state.authorizations.lock().unwrap()[path].clone();
        assert!(
            sent.iter().all(|a| a.is_none()),
            "no token was ever sent: {sent:?}"
        );
    }
}

#[tokio::test]
async fn a_slow_upstream_does_not_hold_a_digest_for_requests_routed_elsewhere() {
    let slow = FakeUpstream::start().await;
    let fast = FakeUpstream::start().await;
    let blob = random_bytes(400_000, 22);
    let digest = digest_of(&blob);
    // 40 pieces 250 ms apart: the slow upstream needs 10 s.
    slow.blob(
        "library/demo",
        &digest,
        blob.clone(),
        40,
        Duration::from_millis(250),
    );
    fast.blob("library/demo", &digest, blob.clone(), 1, Duration::ZERO);
    let cache = Cache::start(&format!(
        "proxy: {{remoteregistries: [{{url: {}}}, {{url: {}}}]}}",
        slow.url(),
        fast.url()
    ))
    .await;
    let path = format!("/v2/library/demo/blobs/{digest}");
    let mut trickle = client()
        .get(cache.url(&format!("{path}?ns={}", slow.addr)))
        .send()
        .await
        .unwrap();
    assert_eq!(trickle.status(), 200);
    let _first = trickle.chunk().await.unwrap();
    let started = Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        client()
            .get(cache.url(&format!("{path}?ns={}", fast.addr)))
            .send(),
    )
    .await
    .expect("answered")
    .unwrap();
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(5), response.bytes())
        .await
        .expect("the healthy upstream's client is not held by the slow fill")
        .unwrap();
    assert_eq!(body, blob);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        fast.hits(Method::GET, &path),
        1,
        "the healthy upstream was asked"
    );
}

#[tokio::test]
async fn a_fill_slower_than_the_minimum_rate_is_abandoned() {
    let upstream = FakeUpstream::start().await;
    let blob = random_bytes(1_000_000, 23);
    let digest = digest_of(&blob);
    // 100 KB/s for 10 s, a tenth of the 1 MiB/s minimum.
    upstream.blob(
        "library/demo",
        &digest,
        blob.clone(),
        100,
        Duration::from_millis(100),
    );
    let cache = Cache::start(&format!(
        "proxy: {{remoteurl: {}}}\nlimits: {{fill_min_rate: 1MiB}}",
        upstream.url()
    ))
    .await;
    let started = Instant::now();
    let response = client()
        .get(cache.url(&format!("/v2/library/demo/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    let outcome = response.bytes().await;
    assert!(outcome.is_err(), "the client sees a cut connection");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "cut after the grace (the 5 s read timeout), not after the whole trickle: {:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cache.temp_files(), 0, "the temp file is gone");
    assert_eq!(cache.committed_blobs(), 0);
}

#[tokio::test]
async fn blobs_over_the_size_limit_are_refused_before_and_while_downloading() {
    let upstream = FakeUpstream::start().await;
    let blob = random_bytes(2 << 20, 24);
    let digest = digest_of(&blob);
    upstream.blob("library/demo", &digest, blob.clone(), 4, Duration::ZERO);
    let cache = Cache::start(&format!(
        "proxy: {{remoteurl: {}}}\nlimits: {{max_blob_size: 1MiB}}",
        upstream.url()
    ))
    .await;
    let url = cache.url(&format!("/v2/library/demo/blobs/{digest}"));
    // Content-Length says 2 MiB: refused before a byte is stored.
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 400, "refused up front");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json_code(&body), "SIZE_INVALID");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("limits.max_blob_size"),
        "{body}"
    );
    // Without Content-Length: cut once the limit is passed.
    upstream
        .state
        .chunked
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let response = client().get(&url).send().await.unwrap();
    assert!(response.bytes().await.is_err(), "cut at the limit");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cache.temp_files(), 0);
    assert_eq!(cache.committed_blobs(), 0);
}

/// Pushes `bytes` to the local repository `repository` in one request.
async fn push_blob(cache: &Cache, repository: &str, bytes: &Bytes) -> String {
    let digest = digest_of(bytes);
    let response = client()
        .post(cache.url(&format!("/v2/{repository}/blobs/uploads/?digest={digest}")))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    digest
}

#[tokio::test]
async fn an_upstream_confirming_a_digest_does_not_get_content_cached_elsewhere() {
    let attacker = FakeUpstream::start().await;
    attacker
        .state
        .confirm_all_heads
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let cache = Cache::start(&format!(
        "proxy: {{remoteregistries: [{{url: {}}}]}}\nlocal: [{{prefix: team/}}]",
        attacker.url()
    ))
    .await;
    let private = Bytes::from_static(b"a private layer pushed to team/app");
    let digest = push_blob(&cache, "team/app", &private).await;
    let via = |repository: &str| {
        cache.url(&format!(
            "/v2/{repository}/blobs/{digest}?ns={}",
            attacker.addr
        ))
    };
    let response = client().get(via("evil/x")).send().await.unwrap();
    assert_ne!(
        response.status(),
        200,
        "a HEAD 200 from the attacker grants nothing"
    );
    assert_ne!(response.bytes().await.unwrap_or_default(), private);

    // A manifest of the attacker's referencing the local digest links nothing either.
    let manifest = format!(r#"{{"schemaVersion":2,"layers":[{{"digest":"{digest}"}}]}}"#);
    attacker.manifest("evil/y", "v1", &manifest);
    let response = client()
        .get(cache.url(&format!("/v2/evil/y/manifests/v1?ns={}", attacker.addr)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client().get(via("evil/y")).send().await.unwrap();
    assert_ne!(response.status(), 200);
    assert_ne!(response.bytes().await.unwrap_or_default(), private);
    // The pushed content itself is intact and served to its own repository.
    let response = client()
        .get(cache.url(&format!("/v2/team/app/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.bytes().await.unwrap(), private);
}

#[tokio::test]
async fn the_local_namespace_is_not_an_upstream() {
    let cache = Cache::start("proxy: {on: true}\nlocal: [{prefix: team/}]").await;
    let layer = Bytes::from_static(b"layer");
    let layer_digest = push_blob(&cache, "team/app", &layer).await;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"digest":"{layer_digest}"}},"layers":[]}}"#
    );
    let response = client()
        .put(cache.url("/v2/team/app/manifests/v1"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let response = client()
        .get(cache.url("/v2/team/app/manifests/v1?ns=local"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json_code(&body), "NAME_UNKNOWN", "{body}");
    // The pushed tag is untouched.
    let response = client()
        .get(cache.url("/v2/team/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("warning").is_none());
}

#[tokio::test]
async fn a_second_server_on_a_live_storage_root_leaves_it_alone() {
    let cache = Cache::start("local: all").await;
    let response = client()
        .post(cache.url("/v2/team/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let first = Bytes::from_static(b"first half, ");
    let response = client()
        .patch(cache.url(&location))
        .body(first.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    let text = format!(
        "local: all\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: 127.0.0.1:0}}\n",
        cache.dir.path().display()
    );
    let config =
        regmirror::config::cache::CacheConfig::parse("second.yml", Some(&text), &[]).unwrap();
    let second = regmirror::cache::server::Server::bind(regmirror::cache::server::ServeOptions {
        config,
        mirrors: None,
        overrides: HostOverrides::default(),
        host_roots: regmirror::upstream::HostRoots::default(),
        grace: Duration::from_secs(1),
        timeouts: Timeouts::default(),
    })
    .await;
    let Err(error) = second else {
        panic!("a second server must not start on a live storage root");
    };
    assert!(error.to_string().contains("in use"), "{error}");

    let second_half = Bytes::from_static(b"second half");
    let whole = [first.as_ref(), second_half.as_ref()].concat();
    let response = client()
        .put(cache.url(&format!("{location}?digest={}", digest_of(&whole))))
        .body(second_half)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "the upload in progress survived");
}

#[tokio::test]
async fn ranges_at_the_edge_of_u64() {
    let upstream = FakeUpstream::start().await;
    let blob = random_bytes(10_000, 25);
    let digest = digest_of(&blob);
    upstream.blob("library/demo", &digest, blob.clone(), 1, Duration::ZERO);
    let cache = Cache::start(&format!("proxy: {{remoteurl: {}}}", upstream.url())).await;
    let url = cache.url(&format!("/v2/library/demo/blobs/{digest}"));
    assert_eq!(
        client()
            .get(&url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        blob
    );
    for (range, start) in [
        ("bytes=0-18446744073709551615", 0usize),
        ("bytes=5-18446744073709551615", 5),
        ("bytes=9999-18446744073709551614", 9999),
    ] {
        let response = client()
            .get(&url)
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 206, "{range}");
        assert_eq!(
            response.headers()["content-length"],
            (blob.len() - start).to_string().as_str(),
            "{range}"
        );
        assert_eq!(
            response.bytes().await.unwrap(),
            blob.slice(start..),
            "{range}"
        );
    }
    let response = client()
        .get(&url)
        .header("range", "bytes=18446744073709551615-")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 416);
}

#[tokio::test]
async fn a_failed_fill_leaves_no_repository_behind() {
    let upstream = FakeUpstream::start().await;
    let good = random_bytes(50_000, 26);
    let claimed = digest_of(&good);
    let mut evil = good.to_vec();
    evil[10] ^= 1;
    upstream.blob(
        "someorg/never-completed",
        &claimed,
        Bytes::from(evil),
        1,
        Duration::ZERO,
    );
    let cache = Cache::start(&format!("proxy: {{remoteurl: {}}}", upstream.url())).await;
    let response = client()
        .get(cache.url(&format!("/v2/someorg/never-completed/blobs/{claimed}")))
        .send()
        .await
        .unwrap();
    assert!(response.bytes().await.is_err());
    let catalog: serde_json::Value = client()
        .get(cache.url("/v2/_catalog"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(catalog["repositories"], serde_json::json!([]), "{catalog}");
}

#[tokio::test]
async fn abandoned_and_oversized_uploads() {
    let cache =
        Cache::start("local: all\nlimits: {upload_lifetime: 1s, max_blob_size: 1MiB}").await;
    let response = client()
        .post(cache.url("/v2/team/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let response = client()
        .patch(cache.url(&location))
        .body(vec![7u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let response = client().get(cache.url(&location)).send().await.unwrap();
    assert_eq!(response.status(), 404, "expired");
    assert_eq!(cache.temp_files(), 0, "its file is gone");

    let response = client()
        .post(cache.url("/v2/team/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let response = client()
        .patch(cache.url(&location))
        .body(vec![7u8; 2 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json_code(&body), "SIZE_INVALID", "{body}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(cache.temp_files(), 0);
}

/// Reads until the server closes the connection; returns how long that took.
async fn time_until_closed(stream: &mut tokio::net::TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("still open after {limit:?}"),
        }
    }
}

#[tokio::test]
async fn a_client_that_sends_its_head_slowly_is_disconnected() {
    let cache = Cache::start("local: all\nlimits: {header_timeout: 1s}").await;
    let mut stream = tokio::net::TcpStream::connect(cache.addr).await.unwrap();
    stream.write_all(b"GET /v2/ HTTP/1.1\r\n").await.unwrap();
    let dripping = async {
        for i in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let line = format!("x-drip-{i}: 1\r\n");
            if stream.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), dripping).await;
    let closed = time_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(closed < Duration::from_secs(5), "{closed:?}");
    // An idle keep-alive connection goes the same way.
    let mut idle = tokio::net::TcpStream::connect(cache.addr).await.unwrap();
    let closed = time_until_closed(&mut idle, Duration::from_secs(4)).await;
    assert!(closed >= Duration::from_millis(900), "{closed:?}");
}

#[tokio::test]
async fn a_tls_handshake_that_never_comes_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let ca = or_skip!(peers::TestCa::new(dir.path(), &["localhost"]));
    let cache = Cache::launch(
        tempfile::tempdir().unwrap(),
        &format!(
            "local: all\nlimits: {{tls_handshake_timeout: 1s}}\nhttp: {{addr: 127.0.0.1:0, tls: {{certificate: {}, key: {}}}}}",
            ca.cert.display(),
            ca.key.display()
        ),
        None,
        &[],
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(cache.addr).await.unwrap();
    let closed = time_until_closed(&mut stream, Duration::from_secs(4)).await;
    assert!(closed < Duration::from_secs(3), "{closed:?}");
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let cache = Cache::start("local: all\nlimits: {max_connections: 4}").await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::net::TcpStream::connect(cache.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting = tokio::spawn({
        let url = cache.url("/healthz");
        async move { client().get(url).send().await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !waiting.is_finished(),
        "the fifth connection is not served yet"
    );
    held.pop();
    let status = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("served once a slot is free")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn client_chosen_names_do_not_grow_the_metrics() {
    let cache = Cache::start("proxy: {on: true}").await;
    // 300 registries a client names (refused: private addresses) and 300 random digests.
    for i in 0..300 {
        let response = client()
            .get(cache.url(&format!(
                "/v2/x/y/blobs/{}?ns=10.0.{}.{}",
                digest_of(&[i as u8, (i >> 8) as u8]),
                i / 250,
                i % 250
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403);
    }
    let metrics = cache.metrics().await;
    assert!(
        metrics.contains(r#"regmirror_upstream_requests_total{upstream="dynamic",status="0"} 300"#),
        "{metrics}"
    );
    assert!(!metrics.contains("10.0."), "{metrics}");
    assert!(metrics.len() < 16 << 10, "{} bytes", metrics.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_patches_for_one_range_append_it_once() {
    let cache = Cache::start("local: all").await;
    let blob = random_bytes(256 * 1024, 12);
    let digest = digest_of(&blob);
    let half = blob.len() / 2;
    let started = client()
        .post(cache.url("/v2/team/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let location = cache.url(started.headers()["location"].to_str().unwrap());
    let range = format!("0-{}", blob.len() - 1);
    let patch = |body: reqwest::Body| {
        client()
            .patch(&location)
            .header("content-range", &range)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
    };
    // The first PATCH sends half of its chunk and holds the rest back...
    let (more, rest) = tokio::sync::mpsc::channel::<Bytes>(1);
    let body = futures_util::stream::unfold(rest, |mut rest| async move {
        let chunk = rest.recv().await?;
        Some((Ok::<_, std::io::Error>(chunk), rest))
    });
    let first = tokio::spawn(patch(reqwest::Body::wrap_stream(body)));
    more.send(blob.slice(..half)).await.unwrap();
    // ... until the cache wrote that half to the upload's file: the first PATCH holds the upload.
    let spool = cache.dir.path().join("tmp");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fake::files_under(&spool)
        .iter()
        .any(|f| std::fs::metadata(f).is_ok_and(|m| m.len() == half as u64))
    {
        assert!(
            Instant::now() < deadline,
            "the first half never reached the spool"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A second PATCH for the same range meanwhile: refused as distribution refuses it.
    let second = patch(reqwest::Body::from(blob.clone())).await.unwrap();
    assert_eq!(second.status(), 416);
    let body: serde_json::Value = second.json().await.unwrap();
    assert_eq!(json_code(&body), "RANGE_INVALID", "{body}");
    // The first one ends; the push completes with the bytes once.
    more.send(blob.slice(half..)).await.unwrap();
    drop(more);
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), 202);
    assert_eq!(first.headers()["range"], range.as_str());
    let put = client()
        .put(format!("{location}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
    let pulled = client()
        .get(cache.url(&format!("/v2/team/app/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(pulled.bytes().await.unwrap(), blob);
}

//! The cache against an in-process FAKE upstream, for faults no real registry produces: content
//! that does not match its digest, a body that arrives slowly (to watch single flight and
//! streaming), an upstream that disappears, and repositories the upstream refuses.
//! Everything runs on 127.0.0.1 with ephemeral ports.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use regmirror::cache::server::{ServeOptions, Server};
use regmirror::config::cache::CacheConfig;
use regmirror::config::{ConfigSource, MirrorConfig};
use regmirror::upstream::{HostOverrides, Timeouts};
use sha2::{Digest as _, Sha256};

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// What the fake answers for one path.
#[derive(Clone)]
struct Canned {
    status: u16,
    content_type: &'static str,
    body: Bytes,
    /// Sent in this many pieces with a pause between them.
    pieces: usize,
    pause: Duration,
}

/// A FAKE registry: canned answers per (method, path), request counts per (method, path).
#[derive(Default)]
struct FakeState {
    canned: Mutex<HashMap<(Method, String), Canned>>,
    /// Answers for these paths wait this long first.
    delays: Mutex<HashMap<String, Duration>>,
    hits: Mutex<HashMap<(Method, String), usize>>,
    /// When set, every request needs exactly this Authorization header (else 401 Basic).
    basic: Mutex<Option<String>>,
    /// Paths answered with a 307 to another URL (blob storage).
    redirects: Mutex<HashMap<String, String>>,
    /// Authorization headers received, per path.
    authorizations: Mutex<HashMap<String, Vec<Option<String>>>>,
}

struct FakeUpstream {
    addr: SocketAddr,
    state: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeUpstream {
    async fn start() -> Self {
        let state = Arc::new(FakeState::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new()
            .fallback(fake_handler)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        FakeUpstream { addr, state, task }
    }

    fn answer(&self, method: Method, path: &str, canned: Canned) {
        self.state
            .canned
            .lock()
            .unwrap()
            .insert((method, path.to_owned()), canned);
    }

    /// A blob served (GET and HEAD) as `body`, claimed to be `digest`.
    fn blob(&self, repository: &str, digest: &str, body: Bytes, pieces: usize, pause: Duration) {
        let path = format!("/v2/{repository}/blobs/{digest}");
        let canned = Canned {
            status: 200,
            content_type: "application/octet-stream",
            body,
            pieces,
            pause,
        };
        self.answer(Method::GET, &path, canned.clone());
        self.answer(Method::HEAD, &path, canned);
    }

    fn manifest(&self, repository: &str, reference: &str, body: &str) {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let canned = Canned {
            status: 200,
            content_type: "application/vnd.oci.image.manifest.v1+json",
            body: Bytes::from(body.to_owned()),
            pieces: 1,
            pause: Duration::ZERO,
        };
        self.answer(Method::GET, &path, canned.clone());
        self.answer(Method::HEAD, &path, canned);
    }

    fn delay(&self, path: &str, delay: Duration) {
        self.state
            .delays
            .lock()
            .unwrap()
            .insert(path.to_owned(), delay);
    }

    fn hits(&self, method: Method, path: &str) -> usize {
        *self
            .state
            .hits
            .lock()
            .unwrap()
            .get(&(method, path.to_owned()))
            .unwrap_or(&0)
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn fake_handler(State(state): State<Arc<FakeState>>, request: Request) -> Response {
    let key = (request.method().clone(), request.uri().path().to_owned());
    *state.hits.lock().unwrap().entry(key.clone()).or_default() += 1;
    let authorization = request
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    state
        .authorizations
        .lock()
        .unwrap()
        .entry(key.1.clone())
        .or_default()
        .push(authorization.clone());
    let required = state.basic.lock().unwrap().clone();
    if required.is_some() && authorization != required {
        let mut response = Response::new(Body::from(r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        response.headers_mut().insert(
            "www-authenticate",
            HeaderValue::from_static("Basic realm=\"fake\""),
        );
        return response;
    }
    let redirect = state.redirects.lock().unwrap().get(&key.1).cloned();
    if let Some(location) = redirect {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
        response
            .headers_mut()
            .insert("location", HeaderValue::from_str(&location).unwrap());
        return response;
    }
    let delay = state.delays.lock().unwrap().get(&key.1).copied();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let canned = state.canned.lock().unwrap().get(&key).cloned();
    let Some(canned) = canned else {
        let mut response = Response::new(Body::from(r#"{"errors":[{"code":"NOT_FOUND"}]}"#));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    };
    let length = canned.body.len();
    let digest = digest_of(&canned.body);
    let body = if key.0 == Method::HEAD {
        Body::empty()
    } else {
        let piece = length.div_ceil(canned.pieces.max(1)).max(1);
        let chunks: Vec<Bytes> = canned
            .body
            .chunks(piece)
            .map(Bytes::copy_from_slice)
            .collect();
        let pause = canned.pause;
        Body::from_stream(futures_util::stream::unfold(
            chunks.into_iter().enumerate(),
            move |mut it| async move {
                let (i, chunk) = it.next()?;
                if i > 0 {
                    tokio::time::sleep(pause).await;
                }
                Some((Ok::<_, std::io::Error>(chunk), it))
            },
        ))
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(canned.status).unwrap();
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        HeaderValue::from_static(canned.content_type),
    );
    headers.insert(
        "content-length",
        HeaderValue::from_str(&length.to_string()).unwrap(),
    );
    headers.insert(
        "docker-content-digest",
        HeaderValue::from_str(&digest).unwrap(),
    );
    response
}

/// The cache under test, in-process, with its data in a temp dir.
struct Cache {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Cache {
    async fn start(yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, yaml).await
    }

    async fn start_in(dir: tempfile::TempDir, yaml: &str) -> Self {
        Self::start_with_mirrors(dir, yaml, None).await
    }

    async fn start_with_mirrors(dir: tempfile::TempDir, yaml: &str, mirrors: Option<&str>) -> Self {
        let text = format!(
            "{yaml}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: 127.0.0.1:0}}\n",
            dir.path().display()
        );
        let config = CacheConfig::parse("test.yml", Some(&text), &[]).unwrap();
        let mirrors = mirrors.map(|text| {
            let source = ConfigSource {
                path: "mirrors.json",
                text,
            };
            MirrorConfig::from_sources(&[source]).unwrap()
        });
        let options = ServeOptions {
            config,
            mirrors,
            overrides: HostOverrides::default(),
            grace: Duration::from_secs(1),
            timeouts: Timeouts {
                connect: Duration::from_secs(1),
                first_byte: Duration::from_secs(1),
                read: Duration::from_secs(5),
            },
        };
        let server = Server::bind(options).await.unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server.run(async { drop(stopped.await) }).await.unwrap();
        });
        Cache {
            addr,
            dir,
            stop,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Shuts the server down and hands back its data directory.
    async fn stop(self) -> tempfile::TempDir {
        let _ = self.stop.send(());
        self.task.await.unwrap();
        self.dir
    }

    fn committed_blobs(&self) -> usize {
        walk_files(&self.dir.path().join("blobs"))
    }

    fn temp_files(&self) -> usize {
        walk_files(&self.dir.path().join("tmp"))
    }
}

fn walk_files(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { walk_files(&p) } else { 1 })
        .sum()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn random_bytes(len: usize, seed: u64) -> Bytes {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

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

    // Another repository asks for the same blob: the upstream does not confirm it (404).
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
    let response = client()
        .get(cache.url(&format!(
            "/v2/library/demo/manifests/v1?ns={}",
            upstream.addr
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("refusing upstream 127.0.0.1"),
        "{body}"
    );
    assert_eq!(
        upstream.hits(Method::HEAD, "/v2/library/demo/manifests/v1"),
        0,
        "never contacted"
    );

    // Allowed explicitly, the same request goes through.
    let cache = Cache::start("proxy: {on: true, allow_private_upstreams: true}").await;
    // Dynamic upstreams speak https; the fake speaks http, so the attempt fails at TLS, but it was made.
    let response = client()
        .get(cache.url(&format!(
            "/v2/library/demo/manifests/v1?ns={}",
            upstream.addr
        )))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        !body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("refusing"),
        "{body}"
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
    let metrics = get(cache.url("/metrics")).await.text().await.unwrap();
    assert!(
        metrics.contains("regmirror_errors_total{code=\"MANIFEST_UNKNOWN\"} 1"),
        "{metrics}"
    );
}

/// One HTTP/1.1 GET written by hand, for paths an HTTP client library would rewrite.
async fn raw_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
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

/// A FAKE mirror that accepts connections and never answers.
async fn silent_listener() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
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

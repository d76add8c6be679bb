//! Test doubles shared by the cache's test binaries: an in-process FAKE registry for faults no
//! real registry produces (content that does not match its digest, slow or cut bodies, bodies
//! held at a byte until released, `Range` honoured or ignored at will, redirects
//! into the internal network, hostile token services, upstreams that confirm anything), the cache
//! itself started in-process on an ephemeral port, and small HTTP helpers. Everything runs on
//! 127.0.0.1.
#![allow(dead_code)] // each test binary uses a subset

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use regmirror::cache::server::{ServeOptions, Server};
use regmirror::config::cache::CacheConfig;
use regmirror::config::{ConfigSource, MirrorConfig};
use regmirror::upstream::{HostOverrides, HostRoots, Timeouts};
use sha2::{Digest as _, Sha256};

pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// What the fake answers for one path.
#[derive(Clone)]
pub struct Canned {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
    /// Sent in this many pieces with a pause between them.
    pub pieces: usize,
    pub pause: Duration,
}

/// A FAKE registry: canned answers per (method, path), request counts per (method, path).
#[derive(Default)]
pub struct FakeState {
    pub canned: Mutex<HashMap<(Method, String), Canned>>,
    /// Answers for these paths wait this long first.
    pub delays: Mutex<HashMap<String, Duration>>,
    /// Answers for these paths wait until their gate opens ([`FakeUpstream::hold`]).
    pub gates: Mutex<HashMap<String, tokio::sync::watch::Receiver<bool>>>,
    pub hits: Mutex<HashMap<(Method, String), usize>>,
    /// Canned bodies whose last piece was handed to the connection, per path.
    pub finished_bodies: Mutex<HashMap<String, usize>>,
    /// When set, every request needs exactly this Authorization header (else 401 Basic).
    pub basic: Mutex<Option<String>>,
    /// Paths answered with a 307 to another URL (blob storage).
    pub redirects: Mutex<HashMap<String, String>>,
    /// Authorization headers received, per path.
    pub authorizations: Mutex<HashMap<String, Vec<Option<String>>>>,
    /// When set, `/v2/` requests need its Bearer token and `/token` hands it out.
    pub bearer: Mutex<Option<Bearer>>,
    /// HEAD of any blob or manifest answers 200, whether the fake has it or not (an upstream
    /// that "confirms" whatever it is asked).
    pub confirm_all_heads: AtomicBool,
    /// Bodies go without Content-Length (chunked).
    pub chunked: AtomicBool,
    /// Paths answered 200 with this many zero bytes, generated as they are sent, without
    /// Content-Length (an upstream that sends far more than anyone should read).
    pub endless: Mutex<HashMap<String, u64>>,
    /// A FAKE Docker Hub pull budget: every answer states it (`ratelimit-*` headers, HEADs
    /// included); a manifest GET spends one pull, and with none left it is answered 429.
    pub pull_budget: Mutex<Option<PullBudget>>,
    /// When set, every request is answered 429 with this `Retry-After` (seconds).
    pub throttle: Mutex<Option<u64>>,
    /// GETs of manifests and blobs being answered, from their arrival to their answer's head
    /// (delays included).
    pub gets: Concurrency,
    /// Canned GETs honour `Range: bytes=<n>-` (206); else a `Range` is ignored (the whole body).
    pub ranges: AtomicBool,
    /// The `Range` header of every GET, per path (`None`: none).
    pub range_headers: Mutex<HashMap<String, Vec<Option<String>>>>,
    /// Canned bodies of these paths send nothing from the gate's byte on until it opens.
    pub body_gates: Mutex<HashMap<String, Gate>>,
}

/// Holds a canned body's bytes from `at` on until `open` is set.
#[derive(Clone)]
pub struct Gate {
    pub at: usize,
    pub open: Arc<AtomicBool>,
}

/// A count of requests in progress and the most there were at once.
#[derive(Default)]
pub struct Concurrency {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl Concurrency {
    /// The most requests that were in progress at once.
    pub fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }

    fn enter(&self) -> Entered<'_> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        Entered(self)
    }
}

/// One request counted in a [`Concurrency`] until dropped.
struct Entered<'a>(&'a Concurrency);

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FakeState {
    /// How many canned bodies of `path` were sent up to their last piece.
    pub fn finished(&self, path: &str) -> usize {
        *self.finished_bodies.lock().unwrap().get(path).unwrap_or(&0)
    }

    fn body_finished(&self, path: String) {
        *self
            .finished_bodies
            .lock()
            .unwrap()
            .entry(path)
            .or_default() += 1;
    }
}

/// Docker Hub's limit headers as the fake states them.
#[derive(Clone, Copy)]
pub struct PullBudget {
    pub limit: u64,
    pub remaining: u64,
    /// `Retry-After` of the 429 once nothing is left.
    pub retry_after: u64,
}

/// A FAKE token service on the fake itself.
#[derive(Clone)]
pub struct Bearer {
    /// The `realm` of the challenge (the fake's own `/token`, or anywhere else).
    pub realm: String,
    pub token: String,
    pub expires_in: u64,
}

pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub state: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeUpstream {
    pub async fn start() -> Self {
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

    pub fn answer(&self, method: Method, path: &str, canned: Canned) {
        self.state
            .canned
            .lock()
            .unwrap()
            .insert((method, path.to_owned()), canned);
    }

    /// Holds the body of `path` from byte `at` on until the returned flag is set.
    pub fn gate(&self, path: &str, at: usize) -> Arc<AtomicBool> {
        let open = Arc::new(AtomicBool::new(false));
        let gate = Gate {
            at,
            open: open.clone(),
        };
        self.state
            .body_gates
            .lock()
            .unwrap()
            .insert(path.to_owned(), gate);
        open
    }

    /// A blob served (GET and HEAD) as `body`, claimed to be `digest`.
    pub fn blob(
        &self,
        repository: &str,
        digest: &str,
        body: Bytes,
        pieces: usize,
        pause: Duration,
    ) {
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

    pub fn manifest(&self, repository: &str, reference: &str, body: &str) {
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

    pub fn delay(&self, path: &str, delay: Duration) {
        self.state
            .delays
            .lock()
            .unwrap()
            .insert(path.to_owned(), delay);
    }

    /// Holds every answer for `path` (counted as a hit on arrival) until the gate returned is
    /// opened with `send(true)` (or dropped).
    pub fn hold(&self, path: &str) -> tokio::sync::watch::Sender<bool> {
        let (open, gate) = tokio::sync::watch::channel(false);
        self.state
            .gates
            .lock()
            .unwrap()
            .insert(path.to_owned(), gate);
        open
    }

    pub fn hits(&self, method: Method, path: &str) -> usize {
        *self
            .state
            .hits
            .lock()
            .unwrap()
            .get(&(method, path.to_owned()))
            .unwrap_or(&0)
    }

    pub fn url(&self) -> String {
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
    let bearer = state.bearer.lock().unwrap().clone();
    if let Some(bearer) = bearer {
        if key.1 == "/token" {
            let body = serde_json::json!({"token": bearer.token, "expires_in": bearer.expires_in});
            return Response::new(Body::from(body.to_string()));
        }
        if authorization.as_deref() != Some(&format!("Bearer {}", bearer.token)) {
            let mut response = Response::new(Body::from(r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#));
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            let challenge = format!("Bearer realm=\"{}\",service=\"fake\"", bearer.realm);
            response.headers_mut().insert(
                "www-authenticate",
                HeaderValue::from_str(&challenge).unwrap(),
            );
            return response;
        }
    }
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
    let throttle = *state.throttle.lock().unwrap();
    if let Some(retry_after) = throttle {
        return too_many_requests(retry_after);
    }
    let budget = {
        let mut budget = state.pull_budget.lock().unwrap();
        let pull = key.0 == Method::GET && key.1.contains("/manifests/");
        match budget.as_mut() {
            Some(b) if pull && b.remaining == 0 => {
                let mut response = too_many_requests(b.retry_after);
                budget_headers(&mut response, b);
                return response;
            }
            Some(b) if pull => {
                b.remaining -= 1;
                Some(*b)
            }
            other => other.copied(),
        }
    };
    let content = key.1.contains("/manifests/") || key.1.contains("/blobs/");
    let entered = (key.0 == Method::GET && content).then(|| state.gets.enter());
    let range = request
        .headers()
        .get("range")
        .map(|v| v.to_str().unwrap().to_owned());
    if key.0 == Method::GET {
        let mut ranges = state.range_headers.lock().unwrap();
        ranges.entry(key.1.clone()).or_default().push(range.clone());
    }
    let from = range
        .filter(|_| state.ranges.load(Ordering::Relaxed))
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok());
    let mut response = answer(&state, &key, from).await;
    drop(entered);
    if let Some(budget) = budget {
        budget_headers(&mut response, &budget);
    }
    response
}

fn too_many_requests(retry_after: u64) -> Response {
    let mut response = Response::new(Body::from(
        r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"pull limit"}]}"#,
    ));
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    response
        .headers_mut()
        .insert("retry-after", HeaderValue::from(retry_after));
    response
}

fn budget_headers(response: &mut Response, budget: &PullBudget) {
    let headers = response.headers_mut();
    for (name, value) in [
        ("ratelimit-limit", budget.limit),
        ("ratelimit-remaining", budget.remaining),
    ] {
        headers.insert(
            name,
            HeaderValue::from_str(&format!("{value};w=21600")).unwrap(),
        );
    }
    headers.insert(
        "docker-ratelimit-source",
        HeaderValue::from_static("127.0.0.1"),
    );
}

/// The canned (or redirected, delayed, endless) answer for `key`, from byte `from` on when a
/// range is honoured.
async fn answer(state: &Arc<FakeState>, key: &(Method, String), from: Option<usize>) -> Response {
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
    let gate = state.gates.lock().unwrap().get(&key.1).cloned();
    if let Some(mut gate) = gate {
        let _ = gate.wait_for(|open| *open).await;
    }
    let endless = state.endless.lock().unwrap().get(&key.1).copied();
    if let Some(total) = endless {
        let chunk = Bytes::from(vec![0u8; 1 << 20]);
        let stream = futures_util::stream::unfold(total, move |left| {
            let chunk = chunk.clone();
            async move {
                (left > 0).then(|| {
                    let n = left.min(chunk.len() as u64);
                    (Ok::<_, std::io::Error>(chunk.slice(..n as usize)), left - n)
                })
            }
        });
        let mut response = Response::new(Body::from_stream(stream));
        response.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
        );
        return response;
    }
    let canned = state.canned.lock().unwrap().get(key).cloned();
    let confirmed = key.0 == Method::HEAD && state.confirm_all_heads.load(Ordering::Relaxed);
    if canned.is_none() && confirmed {
        let mut response = Response::new(Body::empty());
        response
            .headers_mut()
            .insert("content-length", HeaderValue::from_static("1"));
        return response;
    }
    let Some(canned) = canned else {
        let mut response = Response::new(Body::from(r#"{"errors":[{"code":"NOT_FOUND"}]}"#));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    };
    let length = canned.body.len();
    let digest = digest_of(&canned.body);
    let from = from.filter(|&from| from < length && key.0 == Method::GET);
    let body = if key.0 == Method::HEAD {
        Body::empty()
    } else {
        canned_body(state, key, &canned, from.unwrap_or(0))
    };
    let mut response = Response::new(body);
    *response.status_mut() = match from {
        Some(_) => StatusCode::PARTIAL_CONTENT,
        None => StatusCode::from_u16(canned.status).unwrap(),
    };
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        HeaderValue::from_static(canned.content_type),
    );
    if !state.chunked.load(Ordering::Relaxed) {
        let sent = length - from.unwrap_or(0);
        headers.insert(
            "content-length",
            HeaderValue::from_str(&sent.to_string()).unwrap(),
        );
    }
    if let Some(from) = from {
        let span = format!("bytes {from}-{}/{length}", length - 1);
        headers.insert("content-range", HeaderValue::from_str(&span).unwrap());
    }
    headers.insert(
        "docker-content-digest",
        HeaderValue::from_str(&digest).unwrap(),
    );
    response
}

/// A canned body from byte `from` on, in its pieces with their pauses, held at its gate (if
/// any) until the gate opens.
fn canned_body(
    state: &Arc<FakeState>,
    key: &(Method, String),
    canned: &Canned,
    from: usize,
) -> Body {
    let length = canned.body.len();
    let piece = length.div_ceil(canned.pieces.max(1)).max(1);
    let gate = state.body_gates.lock().unwrap().get(&key.1).cloned();
    let mut cuts: Vec<usize> = (0..length).step_by(piece).collect();
    cuts.extend(gate.as_ref().map(|g| g.at).filter(|&at| at < length));
    cuts.push(from);
    cuts.retain(|&cut| cut >= from && cut < length);
    cuts.sort_unstable();
    cuts.dedup();
    let chunks: Vec<(usize, Bytes)> = cuts
        .iter()
        .enumerate()
        .map(|(i, &start)| {
            let end = cuts.get(i + 1).copied().unwrap_or(length);
            (start, canned.body.slice(start..end))
        })
        .collect();
    let pause = canned.pause;
    let last = chunks.len().saturating_sub(1);
    let (state, path) = (state.clone(), key.1.clone());
    Body::from_stream(futures_util::stream::unfold(
        chunks.into_iter().enumerate(),
        move |mut it| {
            let (state, path, gate) = (state.clone(), path.clone(), gate.clone());
            async move {
                let (i, (start, chunk)) = it.next()?;
                if i > 0 {
                    tokio::time::sleep(pause).await;
                }
                if let Some(gate) = gate.filter(|g| start >= g.at) {
                    while !gate.open.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                if i == last {
                    state.body_finished(path);
                }
                Some((Ok::<_, std::io::Error>(chunk), it))
            }
        },
    ))
}

/// The cache under test, in-process, with its data in a temp dir.
pub struct Cache {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Cache {
    pub async fn start(yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, yaml).await
    }

    pub async fn start_in(dir: tempfile::TempDir, yaml: &str) -> Self {
        Self::start_with_mirrors(dir, yaml, None).await
    }

    pub async fn start_with_mirrors(
        dir: tempfile::TempDir,
        yaml: &str,
        mirrors: Option<&str>,
    ) -> Self {
        Self::launch(dir, yaml, mirrors, &[]).await
    }

    /// The general form: `mirrors` is a daemon.json-format text, `add_hosts` are `NAME:IP`.
    pub async fn launch(
        dir: tempfile::TempDir,
        yaml: &str,
        mirrors: Option<&str>,
        add_hosts: &[&str],
    ) -> Self {
        // A test that configures `http` itself must give `addr: 127.0.0.1:0` too.
        let http = if yaml.lines().any(|l| l.starts_with("http:")) {
            ""
        } else {
            "http: {addr: 127.0.0.1:0}\n"
        };
        let text = format!(
            "{yaml}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\n{http}",
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
            overrides: HostOverrides::parse(
                &add_hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
            )
            .unwrap(),
            host_roots: HostRoots::default(),
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

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GETs `path` until the cache answers `X-Regmirror-Cache: hit` (a GET right after a fill's
    /// last byte may still join the fill); the body.
    pub async fn get_until_hit(&self, path: &str) -> Bytes {
        for _ in 0..100 {
            let response = client().get(self.url(path)).send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            let hit = response.headers()["x-regmirror-cache"] == "hit";
            let body = response.bytes().await.unwrap();
            if hit {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{path} was never a hit");
    }

    /// The `/metrics` exposition text.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Shuts the server down and hands back its data directory.
    pub async fn stop(self) -> tempfile::TempDir {
        let _ = self.stop.send(());
        self.task.await.unwrap();
        self.dir
    }

    pub fn committed_blobs(&self) -> usize {
        walk_files(&self.dir.path().join("blobs"))
    }

    pub fn temp_files(&self) -> usize {
        walk_files(&self.dir.path().join("tmp"))
    }
}

pub fn walk_files(dir: &std::path::Path) -> usize {
    files_under(dir).len()
}

/// Every file below `dir`, at any depth (none when `dir` does not exist).
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .flat_map(|p| if p.is_dir() { files_under(&p) } else { vec![p] })
        .collect()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub fn random_bytes(len: usize, seed: u64) -> Bytes {
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

/// A FAKE mirror that accepts connections and never answers.
pub async fn silent_listener() -> (SocketAddr, tokio::task::JoinHandle<()>) {
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

/// One HTTP/1.1 GET written by hand, for paths an HTTP client library would rewrite.
pub async fn raw_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

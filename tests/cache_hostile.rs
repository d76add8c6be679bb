//! Hostile upstreams, round two: each case a defect a review reproduced against the release
//! binary. A referrers answer of 16 pages x 20,000 descriptors (and a tag-schema index as long)
//! that wedged the server and grew its metadata by 200 MB; manifests served as `text/html` on
//! the cache's own origin; one upstream holding every fill slot and reserving the disk by the
//! length it announced. The upstreams are in-process FAKES (no real registry answers like
//! this); everything stays on 127.0.0.1.

mod fake;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use fake::{Cache, Canned, FakeUpstream, client, digest_of};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DESCRIPTORS_PER_PAGE: usize = 20_000;

/// A FAKE upstream whose referrers API answers every subject with 20,000 descriptors a page and
/// a `Link` to one more page, forever (or, once `small` is set, with one descriptor); with
/// `tag_schema` set, the API is missing (404) and the index tagged `sha256-<hex>` is as long.
struct Flood {
    pages: AtomicUsize,
    small: AtomicBool,
    tag_schema: AtomicBool,
    /// The tag schema's index and its digest, made once.
    tag_index: (String, String),
}

/// An index of 20,000 descriptors, written directly (a test build's serde would take seconds).
fn flood_page(page: usize, count: usize) -> String {
    use std::fmt::Write as _;
    let mut body = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":["#);
    for i in 0..count {
        if i > 0 {
            body.push(',');
        }
        write!(
            body,
            r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{page:032x}{i:032x}","size":1000}}"#
        )
        .unwrap();
    }
    body.push_str("]}");
    body
}

async fn flood(State(flood): State<Arc<Flood>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let tag_schema = flood.tag_schema.load(Ordering::SeqCst);
    let mut response = if path.contains("/referrers/") && !tag_schema {
        let page = flood.pages.fetch_add(1, Ordering::SeqCst);
        if flood.small.load(Ordering::SeqCst) {
            Response::new(Body::from(flood_page(page, 1)))
        } else {
            let mut response = Response::new(Body::from(flood_page(page, DESCRIPTORS_PER_PAGE)));
            let link = format!("<{path}?last=page{page}>; rel=\"next\"");
            response
                .headers_mut()
                .insert("link", HeaderValue::from_str(&link).unwrap());
            response
        }
    } else if path.contains("/manifests/sha256-") && tag_schema {
        flood.pages.fetch_add(1, Ordering::SeqCst);
        let (body, digest) = flood.tag_index.clone();
        let mut response = Response::new(Body::from(body));
        response.headers_mut().insert(
            "docker-content-digest",
            HeaderValue::from_str(&digest).unwrap(),
        );
        response
    } else {
        let mut response = Response::new(Body::from(r#"{"errors":[{"code":"NOT_FOUND"}]}"#));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    };
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static(OCI_INDEX));
    response
}

async fn start_flood() -> (SocketAddr, Arc<Flood>) {
    let tag_index = flood_page(0, DESCRIPTORS_PER_PAGE);
    let digest = digest_of(tag_index.as_bytes());
    let state = Arc::new(Flood {
        pages: AtomicUsize::new(0),
        small: AtomicBool::new(false),
        tag_schema: AtomicBool::new(false),
        tag_index: (tag_index, digest),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new()
        .fallback(flood)
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (addr, state)
}

/// The longest `/healthz` took while `work` ran.
async fn slowest_health_check_during<F: Future>(cache: &Cache, work: F) -> (F::Output, Duration) {
    let url = cache.url("/healthz");
    let done = Arc::new(AtomicBool::new(false));
    let probe = tokio::spawn({
        let done = done.clone();
        async move {
            let mut slowest = Duration::ZERO;
            while !done.load(Ordering::SeqCst) {
                let started = Instant::now();
                let status = client().get(&url).send().await.unwrap().status();
                assert_eq!(status, 200);
                slowest = slowest.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            slowest
        }
    });
    let output = work.await;
    done.store(true, Ordering::SeqCst);
    (output, probe.await.unwrap())
}

fn metadata_bytes(cache: &Cache) -> u64 {
    std::fs::metadata(cache.dir.path().join("metadata.redb"))
        .unwrap()
        .len()
}

async fn referrers(
    cache: &Cache,
    subject: &str,
) -> (reqwest::header::HeaderMap, Vec<serde_json::Value>) {
    let response = client()
        .get(cache.url(&format!("/v2/team/app/referrers/{subject}")))
        .send()
        .await
        .unwrap();
    let headers = response.headers().clone();
    if response.status() != 200 {
        panic!("{}: {:?}", response.status(), response.text().await);
    }
    let body: serde_json::Value = response.json().await.unwrap();
    (headers, body["manifests"].as_array().unwrap().clone())
}

fn warnings(headers: &reqwest::header::HeaderMap) -> Vec<String> {
    headers
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_referrers_flood_is_cut_at_the_limits_in_one_record_without_stalling_the_server() {
    let (upstream, flood) = start_flood().await;
    let cache = Cache::start(&format!(
        "proxy: {{remoteurl: http://{upstream}, tag_revalidate: 0s}}"
    ))
    .await;
    let before = metadata_bytes(&cache);
    let (subject1, subject2) = (digest_of(b"image one"), digest_of(b"image two"));
    let started = Instant::now();
    let (answers, slowest) = slowest_health_check_during(&cache, async {
        tokio::join!(referrers(&cache, &subject1), referrers(&cache, &subject2))
    })
    .await;
    let took = started.elapsed();
    for (headers, listed) in [answers.0, answers.1] {
        assert_eq!(listed.len(), 1000, "limits.max_referrers' default");
        let warnings = warnings(&headers);
        assert!(
            warnings.iter().any(|w| w.starts_with("299 ")
                && w.contains("limits.max_referrers: 1000")
                && w.contains("1000 are listed")),
            "{warnings:?}"
        );
    }
    // Before: 16 pages read per request, 320,000 records written one transaction each (64 s,
    // /healthz 7-30 s, metadata.redb 1.3 -> 207 MB).
    assert_eq!(
        flood.pages.load(Ordering::SeqCst),
        2,
        "one page each, no more"
    );
    let grown = metadata_bytes(&cache).saturating_sub(before);
    assert!(grown < 8 << 20, "metadata.redb grew by {grown} bytes");
    assert!(
        slowest < Duration::from_secs(3),
        "/healthz took {slowest:?}"
    );
    eprintln!(
        "two floods answered in {took:?}; slowest /healthz {slowest:?}; metadata +{grown} bytes"
    );

    // Asked again, the small answer replaces the whole list at once (320,000 deletes before).
    flood.small.store(true, Ordering::SeqCst);
    let (headers, listed) = referrers(&cache, &subject1).await;
    assert_eq!(listed.len(), 1);
    assert!(warnings(&headers).is_empty(), "{:?}", warnings(&headers));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_schema_index_as_long_is_cut_the_same_way() {
    let (upstream, flood) = start_flood().await;
    flood.tag_schema.store(true, Ordering::SeqCst);
    let cache = Cache::start(&format!(
        "proxy: {{remoteurl: http://{upstream}, tag_revalidate: 1h}}\nlimits: {{max_referrers: 50}}"
    ))
    .await;
    let (headers, listed) = referrers(&cache, &digest_of(b"image")).await;
    let asked = flood.pages.load(Ordering::SeqCst);
    assert_eq!(listed.len(), 50);
    let warnings = warnings(&headers);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("limits.max_referrers: 50")),
        "{warnings:?}"
    );
    // Within the window the record answers, with the same warning.
    let (headers, again) = referrers(&cache, &digest_of(b"image")).await;
    assert_eq!((again, self::warnings(&headers)), (listed, warnings));
    assert_eq!(flood.pages.load(Ordering::SeqCst), asked, "not asked again");
}

#[tokio::test]
async fn manifests_are_never_served_as_html_and_every_answer_says_nosniff() {
    let script = r#"{"schemaVersion":2,"config":{},"layers":[],"x":"<script>alert(1)</script>"}"#;
    let upstream = FakeUpstream::start().await;
    for method in [Method::GET, Method::HEAD] {
        let html = Canned {
            status: 200,
            content_type: "text/html",
            body: Bytes::from(script),
            pieces: 1,
            pause: Duration::ZERO,
        };
        upstream.answer(method, "/v2/team/app/manifests/v1", html);
    }
    let cache = Cache::start(&format!(
        "proxy: {{remoteurl: {}}}\nlocal: [{{prefix: mine/}}]",
        upstream.url()
    ))
    .await;
    // Fetched from an upstream that says text/html: stored and served as an image manifest.
    for _ in 0..2 {
        let response = client()
            .get(cache.url("/v2/team/app/manifests/v1"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        assert_eq!(response.bytes().await.unwrap(), script.as_bytes());
    }
    // Pushed as text/html: refused, as distribution does (it answered 201 before).
    let push = client()
        .put(cache.url("/v2/mine/app/manifests/v1"))
        .header("content-type", "text/html")
        .body(script)
        .send()
        .await
        .unwrap();
    assert_eq!(push.status(), 400);
    let body: serde_json::Value = push.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_INVALID");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("text/html is not a manifest media type"),
        "{body}"
    );
    // Every answer says nosniff: errors, the status page, health, unknown paths.
    for path in [
        "/v2/",
        "/v2/mine/app/manifests/nope",
        "/",
        "/healthz",
        "/nothing",
    ] {
        let response = client().get(cache.url(path)).send().await.unwrap();
        assert_eq!(
            response
                .headers()
                .get("x-content-type-options")
                .map(|v| v.to_str().unwrap()),
            Some("nosniff"),
            "{path}"
        );
    }
}

/// A FAKE upstream that announces every blob as 1 GiB and sends 40 KB every 100 ms.
async fn start_trickler() -> SocketAddr {
    async fn trickle(_request: Request) -> Response {
        let chunks = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 40_000])), ()))
        });
        let mut response = Response::new(Body::from_stream(chunks));
        response
            .headers_mut()
            .insert("content-length", HeaderValue::from_static("1073741824"));
        response
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, axum::Router::new().fallback(trickle))
            .await
            .unwrap()
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_upstream_holds_neither_every_fill_slot_nor_the_disk_it_claims() {
    use std::os::unix::fs::MetadataExt as _;
    let healthy = FakeUpstream::start().await;
    let layer = fake::random_bytes(100_000, 7);
    let layer_digest = digest_of(&layer);
    healthy.blob(
        "library/app",
        &layer_digest,
        layer.clone(),
        1,
        Duration::ZERO,
    );
    let hostile = start_trickler().await;
    let cache = Cache::start(&format!(
        "proxy: {{remoteregistries: [{{url: {}}}, {{url: http://{hostile}}}]}}\n\
         limits: {{max_fills: 4}}",
        healthy.url()
    ))
    .await;
    let mut held = Vec::new();
    let mut statuses = Vec::new();
    for i in 0..4u8 {
        let path = format!("/v2/evil/app/blobs/{}?ns={hostile}", digest_of(&[i]));
        let response = client().get(cache.url(&path)).send().await.unwrap();
        statuses.push(response.status().as_u16());
        held.push(response);
    }
    // Three of four slots at most (limits.max_fills_per_upstream's default); before, all four.
    assert_eq!(statuses, [200, 200, 200, 429]);
    let refused: serde_json::Value = held.pop().unwrap().json().await.unwrap();
    assert!(
        refused
            .to_string()
            .contains("limits.max_fills_per_upstream"),
        "{refused}"
    );
    // The default upstream still gets a download (429 before).
    let response = client()
        .get(cache.url(&format!("/v2/library/app/blobs/{layer_digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), layer);
    // Disk: reserved as bytes arrive, not by the 1 GiB each claims (4 GiB for 4 before).
    let trickles = || {
        let mut files = fake::files_under(&cache.dir.path().join("tmp"));
        files.retain(|f| std::fs::metadata(f).unwrap().len() != layer.len() as u64);
        files
    };
    while !trickles()
        .iter()
        .all(|f| std::fs::metadata(f).unwrap().blocks() > 0)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reserved: u64 = trickles()
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().blocks() * 512)
        .sum();
    assert!(
        reserved <= 3 * (8 << 20) + (4 << 20),
        "{reserved} bytes allocated for 3 trickles"
    );
    eprintln!("3 trickles claiming 1 GiB each: {reserved} bytes allocated (4 GiB for 4 before)");
    drop(held);
}

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
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use fake::{Cache, client, digest_of};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DESCRIPTORS_PER_PAGE: usize = 20_000;

/// A FAKE upstream whose referrers API answers every subject with 20,000 descriptors a page and
/// a `Link` to one more page, forever (or, once `small` is set, with one descriptor); with
/// `tag_schema` set, the API is missing (404) and the index tagged `sha256-<hex>` is as long.
#[derive(Default)]
struct Flood {
    pages: AtomicUsize,
    small: AtomicBool,
    tag_schema: AtomicBool,
}

fn descriptor(page: usize, i: usize) -> serde_json::Value {
    serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{page:032x}{i:032x}"),
        "size": 1000,
    })
}

fn index(descriptors: Vec<serde_json::Value>) -> String {
    serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors})
        .to_string()
}

async fn flood(State(flood): State<Arc<Flood>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let not_found = || {
        let mut response = Response::new(Body::from(r#"{"errors":[{"code":"NOT_FOUND"}]}"#));
        *response.status_mut() = StatusCode::NOT_FOUND;
        response
    };
    let tag_schema = flood.tag_schema.load(Ordering::SeqCst);
    let body = if path.contains("/referrers/") && !tag_schema {
        let page = flood.pages.fetch_add(1, Ordering::SeqCst);
        if flood.small.load(Ordering::SeqCst) {
            index(vec![descriptor(page, 0)])
        } else {
            let descriptors = (0..DESCRIPTORS_PER_PAGE)
                .map(|i| descriptor(page, i))
                .collect();
            let mut response = Response::new(Body::from(index(descriptors)));
            let link = format!("<{path}?last=page{page}>; rel=\"next\"");
            response
                .headers_mut()
                .insert("link", HeaderValue::from_str(&link).unwrap());
            response
                .headers_mut()
                .insert("content-type", HeaderValue::from_static(OCI_INDEX));
            return response;
        }
    } else if path.contains("/manifests/sha256-") && tag_schema {
        flood.pages.fetch_add(1, Ordering::SeqCst);
        index(
            (0..DESCRIPTORS_PER_PAGE)
                .map(|i| descriptor(0, i))
                .collect(),
        )
    } else {
        return not_found();
    };
    let mut response = Response::new(Body::from(body.clone()));
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static(OCI_INDEX));
    headers.insert(
        "docker-content-digest",
        HeaderValue::from_str(&digest_of(body.as_bytes())).unwrap(),
    );
    response
}

async fn start_flood() -> (SocketAddr, Arc<Flood>) {
    let state = Arc::new(Flood::default());
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

//! How the cache treats its upstreams, against an in-process FAKE upstream for what no real
//! registry here produces: Docker Hub's pull-budget headers and 429 answers, an upstream that
//! accepts connections and never answers, and a slow one to queue behind `max_concurrent`.
//! Everything runs on 127.0.0.1 with ephemeral ports.

mod fake;

use std::time::{Duration, Instant};

use axum::http::Method;
use fake::{Cache, FakeUpstream, PullBudget, client, digest_of, random_bytes, silent_listener};

const MANIFEST: &str = r#"{"schemaVersion":2,"layers":[]}"#;

async fn get(url: String) -> reqwest::Response {
    client().get(url).send().await.unwrap()
}

fn warning(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("warning")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_low_pull_budget_keeps_the_rest_for_content_not_cached() {
    let upstream = FakeUpstream::start().await;
    for repository in ["library/a", "library/b", "library/c", "library/d"] {
        upstream.manifest(repository, "v1", MANIFEST);
    }
    // 3 of 20 pulls left; the default reserve is 10% of the limit: 2.
    *upstream.state.pull_budget.lock().unwrap() = Some(PullBudget {
        limit: 20,
        remaining: 3,
        retry_after: 30,
    });
    let cache = Cache::start(&format!("proxy: {{remoteurl: {}}}", upstream.url())).await;
    let tag = |repository: &str| cache.url(&format!("/v2/{repository}/manifests/v1"));
    let hits = |repository: &str, method: Method| {
        upstream.hits(method, &format!("/v2/{repository}/manifests/v1"))
    };

    // Not in reserve yet: a cached tag is revalidated (HEAD, free on Docker Hub).
    assert_eq!(
        get(tag("library/a")).await.status(),
        200,
        "spends one: 2 left"
    );
    assert_eq!(get(tag("library/a")).await.status(), 200);
    assert_eq!(hits("library/a", Method::HEAD), 2);
    assert_eq!(
        get(tag("library/b")).await.status(),
        200,
        "spends one: 1 left"
    );

    // 1 of 20 is under the reserve: cached tags are served without asking...
    let answer = get(tag("library/a")).await;
    assert_eq!(answer.status(), 200);
    assert!(
        warning(&answer).contains("1 of 20 pulls left"),
        "{:?}",
        answer.headers()
    );
    assert_eq!(hits("library/a", Method::HEAD), 2, "no request upstream");
    // ... and what is not cached still goes upstream, spending the last pull.
    assert_eq!(
        get(tag("library/c")).await.status(),
        200,
        "spends the last one"
    );
    let text = cache.metrics().await;
    for expected in [
        "regmirror_upstream_ratelimit_limit{upstream=\"127.0.0.1:",
        "regmirror_upstream_ratelimit_remaining{upstream=\"127.0.0.1:",
        "regmirror_cache_requests_total{kind=\"tag\",result=\"reserve\"} 1",
    ] {
        assert!(text.contains(expected), "{expected} in\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("regmirror_upstream_ratelimit_remaining{") && l.ends_with(" 0")),
        "{text}"
    );

    let status: serde_json::Value = get(cache.url("/_regmirror/status"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        status["upstreams"][0]["pull_budget"],
        serde_json::json!({"limit": 20, "remaining": 0}),
        "the status page shows the budget too"
    );

    // Nothing left: the upstream answers 429; the client hears 429 with its Retry-After.
    let refused = get(tag("library/d")).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "30");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS");
    // Until then nothing goes to that upstream: the next miss is refused at once...
    let before = hits("library/d", Method::HEAD) + hits("library/d", Method::GET);
    let again = get(tag("library/d")).await;
    assert_eq!(again.status(), 429);
    let wait: u64 = again.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&wait), "retry-after {wait}");
    assert_eq!(
        hits("library/d", Method::HEAD) + hits("library/d", Method::GET),
        before,
        "no request while the upstream said to wait"
    );
    // ... while cached content is still served.
    assert_eq!(get(tag("library/b")).await.status(), 200);
    println!(
        "upstream requests: a HEAD {} GET {}, b HEAD {} GET {}, c HEAD {} GET {}, d HEAD {} GET {}",
        hits("library/a", Method::HEAD),
        hits("library/a", Method::GET),
        hits("library/b", Method::HEAD),
        hits("library/b", Method::GET),
        hits("library/c", Method::HEAD),
        hits("library/c", Method::GET),
        hits("library/d", Method::HEAD),
        hits("library/d", Method::GET),
    );
}

#[tokio::test]
async fn a_budget_the_head_states_under_the_reserve_keeps_the_cached_tag() {
    let upstream = FakeUpstream::start().await;
    let path = "/v2/library/a/manifests/v1";
    upstream.manifest("library/a", "v1", MANIFEST);
    *upstream.state.pull_budget.lock().unwrap() = Some(PullBudget {
        limit: 100,
        remaining: 50,
        retry_after: 30,
    });
    let cache = Cache::start(&format!("proxy: {{remoteurl: {}}}", upstream.url())).await;
    assert_eq!(get(cache.url(path)).await.status(), 200, "cached: 49 left");

    // The upstream moves the tag, and its budget falls to 5 of 100 (under the default 10%
    // reserve) without the cache having seen an answer saying so: only the HEAD tells it.
    let moved = r#"{"schemaVersion":2,"layers":[],"annotations":{"moved":"yes"}}"#;
    upstream.manifest("library/a", "v1", moved);
    upstream
        .state
        .pull_budget
        .lock()
        .unwrap()
        .as_mut()
        .unwrap()
        .remaining = 5;
    let answer = get(cache.url(path)).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-regmirror-cache"], "reserve");
    let said = warning(&answer);
    assert!(
        said.contains("5 of 100 pulls left"),
        "{:?}",
        answer.headers()
    );
    assert_eq!(
        answer.text().await.unwrap(),
        MANIFEST,
        "the cached manifest"
    );
    assert_eq!(upstream.hits(Method::HEAD, path), 2, "one HEAD each");
    assert_eq!(
        upstream.hits(Method::GET, path),
        1,
        "no pull spent on the moved tag"
    );
    assert_eq!(
        upstream
            .state
            .pull_budget
            .lock()
            .unwrap()
            .unwrap()
            .remaining,
        5
    );
}

#[tokio::test]
async fn a_429_serves_the_cache_stale_and_rests_the_upstream_until_retry_after() {
    let upstream = FakeUpstream::start().await;
    upstream.manifest("library/cached", "v1", MANIFEST);
    let blob = random_bytes(10_000, 7);
    let digest = digest_of(&blob);
    upstream.blob("library/cached", &digest, blob.clone(), 1, Duration::ZERO);
    let cache = Cache::start(&format!("proxy: {{remoteurl: {}}}", upstream.url())).await;
    let tag = cache.url("/v2/library/cached/manifests/v1");
    let blob_url = cache.url(&format!("/v2/library/cached/blobs/{digest}"));
    assert_eq!(get(tag.clone()).await.status(), 200);
    assert_eq!(get(blob_url.clone()).await.bytes().await.unwrap(), blob);

    *upstream.state.throttle.lock().unwrap() = Some(2);
    let stale = get(tag.clone()).await;
    assert_eq!(stale.status(), 200, "the cached tag, stale");
    assert!(warning(&stale).contains("429"), "{:?}", stale.headers());
    let miss = get(cache.url("/v2/library/other/manifests/v1")).await;
    assert_eq!(miss.status(), 429);
    assert!(miss.headers().contains_key("retry-after"));
    let total = || upstream.state.hits.lock().unwrap().values().sum::<usize>();
    let before = total();
    for _ in 0..5 {
        assert_eq!(get(tag.clone()).await.status(), 200);
        assert_eq!(get(blob_url.clone()).await.status(), 200);
        assert_eq!(
            get(cache.url("/v2/library/other/manifests/v1"))
                .await
                .status(),
            429
        );
    }
    assert_eq!(total(), before, "no request before Retry-After");

    // After Retry-After one probe goes; the upstream answers again and is used again.
    *upstream.state.throttle.lock().unwrap() = None;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let fresh = get(tag.clone()).await;
    assert_eq!(fresh.status(), 200);
    assert_eq!(warning(&fresh), "", "revalidated");
    assert_eq!(
        get(cache.url("/v2/library/other/manifests/v1"))
            .await
            .status(),
        404,
        "the upstream's own answer"
    );
}

#[tokio::test]
async fn an_endless_retry_after_reaches_the_client_capped_at_6_hours() {
    let upstream = FakeUpstream::start().await;
    *upstream.state.throttle.lock().unwrap() = Some(u64::MAX);
    let cache = Cache::start(&format!("proxy: {{remoteurl: {}}}", upstream.url())).await;
    // The first answer carries the upstream's own 429; the next ones the rest it imposed.
    for (n, path) in ["library/a", "library/b"].iter().enumerate() {
        let refused = get(cache.url(&format!("/v2/{path}/manifests/v1"))).await;
        assert_eq!(refused.status(), 429);
        let wait: u64 = refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=6 * 3600).contains(&wait), "answer {n}: {wait}");
    }
}

#[tokio::test]
async fn with_every_endpoint_resting_a_miss_fails_at_once() {
    let (silent, silent_task) = silent_listener().await;
    let cache = Cache::start(&format!("proxy: {{remoteurl: http://{silent}}}")).await;
    let started = Instant::now();
    let first = get(cache.url("/v2/library/x/manifests/v1")).await;
    assert_eq!(first.status(), 503);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the first one waits for the timeout"
    );
    let started = Instant::now();
    let second = get(cache.url("/v2/library/y/manifests/v1")).await;
    let took = started.elapsed();
    assert_eq!(second.status(), 503);
    assert!(took < Duration::from_millis(300), "at once: {took:?}");
    let wait: u64 = second.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&wait), "retry-after {wait}");
    let body: serde_json::Value = second.json().await.unwrap();
    let message = body["errors"][0]["message"].as_str().unwrap().to_owned();
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    assert!(
        message.contains(&silent.to_string()) && message.contains("not asked again for"),
        "names the endpoint and when it is retried: {message}"
    );
    silent_task.abort();
}

#[tokio::test]
async fn max_concurrent_queues_requests_fairly_and_refuses_past_the_queue_timeout() {
    let upstream = FakeUpstream::start().await;
    let blobs: Vec<(bytes::Bytes, String)> = (0..3)
        .map(|i| {
            let blob = random_bytes(400_000, 10 + i);
            let digest = digest_of(&blob);
            // 4 pieces 400 ms apart: each download takes about 1.2 s.
            upstream.blob(
                "library/slow",
                &digest,
                blob.clone(),
                4,
                Duration::from_millis(400),
            );
            (blob, digest)
        })
        .collect();
    let cache = Cache::start(&format!(
        "proxy:\n  remoteregistries:\n  - url: {}\n    max_concurrent: 1\nlimits: {{upstream_queue_timeout: 2s}}\n",
        upstream.url()
    ))
    .await;
    let url = |digest: &str| cache.url(&format!("/v2/library/slow/blobs/{digest}"));
    let started = Instant::now();
    let requests: Vec<_> = blobs
        .iter()
        .map(|(_, digest)| {
            let url = url(digest);
            tokio::spawn(async move {
                let response = client().get(url).send().await.unwrap();
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let body = response.bytes().await.unwrap_or_default();
                (status, headers, body, started.elapsed())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.unwrap());
    }
    // One at a time: the first is served, the second waits for the first body to end, the
    // third would wait past the 2 s queue timeout and is refused.
    answers.sort_by_key(|a| (a.0, a.3));
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(statuses, [200, 200, 429]);
    assert!(
        blobs.iter().any(|(blob, _)| *blob == answers[0].2)
            && blobs.iter().any(|(blob, _)| *blob == answers[1].2)
    );
    assert!(
        answers[1].3 >= answers[0].3 + Duration::from_millis(1000),
        "the second download started after the first ended: {:?} then {:?}",
        answers[0].3,
        answers[1].3
    );
    assert!(
        answers[2].3 >= Duration::from_millis(2000),
        "refused at the queue timeout: {:?}",
        answers[2].3
    );
    let refusal = String::from_utf8_lossy(&answers[2].2).into_owned();
    assert!(refusal.contains("max_concurrent"), "{refusal}");
    assert!(answers[2].1.contains_key("retry-after"));
    let text = cache.metrics().await;
    let queued_count = text
        .lines()
        .find(|l| l.starts_with("regmirror_upstream_queue_seconds_count{"))
        .unwrap_or_default();
    assert!(queued_count.ends_with(" 3"), "{text}");
}

#[tokio::test]
async fn max_rate_paces_requests_to_the_upstream() {
    let upstream = FakeUpstream::start().await;
    for i in 0..6 {
        upstream.manifest(&format!("library/r{i}"), "v1", MANIFEST);
    }
    let cache = Cache::start(&format!(
        "proxy:\n  remoteurl: {}\n  max_rate: 10\n",
        upstream.url()
    ))
    .await;
    let started = Instant::now();
    let requests: Vec<_> = (0..6)
        .map(|i| {
            let url = cache.url(&format!("/v2/library/r{i}/manifests/v1"));
            tokio::spawn(async move { get(url).await.status() })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), 200, "queued, never dropped");
    }
    // 6 tags = 12 upstream requests (HEAD, then GET) at 10 per second.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1100), "paced: {took:?}");
    let text = cache.metrics().await;
    let queued_sum: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("regmirror_upstream_queue_seconds_sum{"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(queued_sum > 1.0, "queue time in /metrics: {queued_sum}");
}

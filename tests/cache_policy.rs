//! The fetch policy (`allow`/`deny` on `proxy` and per `remoteregistries[]` entry) against a real
//! distribution origin holding images under several names: a refused repository is 403 DENIED
//! naming its rule (manifests, blobs, tags and referrers), costs the origin no request (its access log), is counted in `/metrics` and
//! on the status page, content cached before a config change is refused after the restart (and
//! no longer listed in the catalog), and pushed (local) repositories are not subject to it. Everything is on 127.0.0.1.

mod peers;

use peers::{Images, Missing, Registry, RegistryOptions, Regmirror};

/// An origin holding the same small image as `library/demo:v1`, `team/app:v1` and
/// `team/internal/tool:v1`.
fn seeded_origin() -> Result<(Registry, Images), Missing> {
    let origin = Registry::start(RegistryOptions::default())?;
    let images = Images::new()?;
    images.build("v1", &[("hello", b"hello from v1\n")]);
    for name in ["library/demo", "team/app", "team/internal/tool"] {
        images.push("v1", &format!("{}/{name}:v1", origin.host()), &[]);
    }
    Ok((origin, images))
}

const ACCEPT: (&str, &str) = (
    "accept",
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
);

/// The origin's access-log lines for any request whose path holds `fragment`.
fn asked(origin: &Registry, fragment: &str) -> usize {
    ["GET", "HEAD"]
        .iter()
        .map(|m| origin.count(m, fragment))
        .sum()
}

/// GETs `path` from the cache and expects 403 DENIED naming `rule`: the OCI error JSON.
fn assert_denied(cache: &Regmirror, path: &str, rule: &str) {
    let (status, head, body) = peers::http("GET", cache.addr, path, &[ACCEPT]);
    assert_eq!(status, 403, "{path}: {head}");
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let first = &error["errors"][0];
    assert_eq!(first["code"], "DENIED", "{error}");
    let message = first["message"].as_str().unwrap();
    assert!(
        message.contains(rule) && message.contains("fetch policy"),
        "{path}: the message names {rule}: {message}"
    );
}

#[test]
fn refused_repositories_cost_no_upstream_request_and_stay_refused_when_cached() {
    let (origin, images) = or_skip!(seeded_origin());
    let ((_, _), blobs) = images.contents("v1");
    let layer = &blobs[1].0;
    let config = |deny: &str| {
        format!(
            "proxy:\n  deny: [{deny}]\n  remoteregistries:\n  - url: {}\n    tag_revalidate: 1h\n    allow: [\"library/*\", \"team/**\"]\nlocal: [{{prefix: mine/}}]\n",
            origin.url()
        )
    };
    let cache = Regmirror::serve(&config("\"team/internal/**\", \"mine/**\""), &[]);

    // Allowed: library/demo and team/app are fetched, and cached.
    for name in ["library/demo", "team/app"] {
        let (status, head, _) = peers::http(
            "GET",
            cache.addr,
            &format!("/v2/{name}/manifests/v1"),
            &[ACCEPT],
        );
        assert_eq!(status, 200, "{name}: {head}");
    }
    let (status, _, _) = peers::http(
        "GET",
        cache.addr,
        &format!("/v2/library/demo/blobs/{layer}"),
        &[],
    );
    assert_eq!(status, 200);

    // Refused: by the global deny, and by the entry's allow list; manifests, blobs and tags.
    let pushed = asked(&origin, "/v2/team/internal/");
    assert_denied(
        &cache,
        "/v2/team/internal/tool/manifests/v1",
        "refused by proxy.deny[0] (\"team/internal/**\")",
    );
    assert_denied(
        &cache,
        &format!("/v2/team/internal/tool/blobs/{layer}"),
        "proxy.deny[0]",
    );
    assert_denied(&cache, "/v2/team/internal/tool/tags/list", "proxy.deny[0]");
    assert_denied(
        &cache,
        &format!("/v2/team/internal/tool/referrers/{layer}"),
        "proxy.deny[0]",
    );
    assert_denied(
        &cache,
        "/v2/other/thing/manifests/v1",
        "not matched by proxy.remoteregistries[0].allow",
    );
    assert_eq!(
        asked(&origin, "/v2/team/internal/"),
        pushed,
        "a refused repository costs the origin nothing:\n{}",
        origin.log()
    );
    assert_eq!(asked(&origin, "/v2/other/"), 0, "{}", origin.log());

    // Pushed repositories are not subject to it: `mine/**` in proxy.deny names nothing local.
    images.push("v1", &format!("{}/mine/app:v1", cache.host()), &[]);
    let (status, head, _) = peers::http("GET", cache.addr, "/v2/mine/app/manifests/v1", &[ACCEPT]);
    assert_eq!(status, 200, "a pushed image: {head}");

    // Counted, by upstream and rule, and on the status page.
    let (_, _, metrics) = peers::http("GET", cache.addr, "/metrics", &[]);
    let metrics = String::from_utf8(metrics).unwrap();
    let upstream = origin.host();
    for (rule, count) in [("proxy.deny[0]", 4), ("proxy.remoteregistries[0].allow", 1)] {
        let line = format!(
            "regmirror_policy_refusals_total{{upstream=\"{upstream}\",rule=\"{rule}\"}} {count}"
        );
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    let (_, _, status) = peers::http("GET", cache.addr, "/_regmirror/status", &[]);
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    let refusals = status["policy_refusals"].as_array().unwrap();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert_eq!(refusals[0]["rule"], "proxy.deny[0]");
    assert_eq!(refusals[0]["refused"], 4);
    assert_eq!(refusals[0]["last_repository"], "team/internal/tool");

    // Cached content is served until the policy changes; after a restart that denies it, it is
    // refused too, and the origin is still not asked.
    let (_, head, _) = peers::http(
        "GET",
        cache.addr,
        "/v2/library/demo/manifests/v1",
        &[ACCEPT],
    );
    let served = peers::header(&head, "x-regmirror-cache");
    assert!(
        matches!(served.as_deref(), Some("hit" | "fresh")),
        "from the cache (within tag_revalidate): {head}"
    );
    let dir = cache.stop();
    let before = origin.requests();
    let cache = Regmirror::serve_in(dir, &config("\"library/demo\""), &[]);
    assert_denied(
        &cache,
        "/v2/library/demo/manifests/v1",
        "refused by proxy.deny[0] (\"library/demo\")",
    );
    assert_denied(
        &cache,
        &format!("/v2/library/demo/blobs/{layer}"),
        "proxy.deny[0]",
    );
    assert_eq!(
        origin.requests(),
        before,
        "the refusals of cached content ask the origin nothing:\n{}",
        origin.log()
    );
    let (status, head, _) = peers::http("GET", cache.addr, "/v2/team/app/manifests/v1", &[ACCEPT]);
    assert_eq!(status, 200, "still allowed: {head}");
    // The catalog no longer lists what the policy refuses.
    let (_, _, catalog) = peers::http("GET", cache.addr, "/v2/_catalog", &[]);
    let catalog: serde_json::Value = serde_json::from_slice(&catalog).unwrap();
    assert_eq!(
        catalog["repositories"],
        serde_json::json!(["mine/app", "team/app"]),
        "{catalog}"
    );
}

#[test]
fn a_pattern_that_can_never_match_is_a_warning_at_start() {
    let cache = Regmirror::serve(
        "proxy:\n  remoteurl: http://127.0.0.1:9\n  deny: [\"Library/*\"]\n",
        &[],
    );
    let log = cache.log();
    assert!(
        log.contains(":3:10: proxy.deny[0]: \"Library/*\" can never match a repository name: repository names are lowercase"),
        "{log}"
    );
}

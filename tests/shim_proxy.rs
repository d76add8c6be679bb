//! The shim as a registry endpoint (origin-form `/v2/…?ns=`) and as a plain-http proxy
//! (absolute-form), without an engine: mirror credentials, configuration reload, paths outside
//! the registry API, mirrors-only rules, `?ns=` values that are not a host, and `regmirror
//! resolve --probe`, against real distribution registries on 127.0.0.1.

mod peers;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peers::{Images, Missing, Registry, RegistryOptions, Shim, header, http};

const ACCEPT: (&str, &str) = ("Accept", "application/vnd.oci.image.manifest.v1+json");

fn seeded(
    images: &Images,
    options: RegistryOptions<'_>,
    creds: Option<&str>,
) -> Result<Registry, Missing> {
    let registry = Registry::start(options)?;
    let extra: Vec<String> = creds
        .map(|c| format!("--dest-creds={c}"))
        .into_iter()
        .collect();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    images.push(
        "v1",
        &format!("{}/library/demo:v1", registry.host()),
        &extra,
    );
    Ok(registry)
}

fn rules(origin: &Registry, mirrors: &[String]) -> String {
    let list: Vec<String> = mirrors.iter().map(|m| format!("\"{m}\"")).collect();
    format!(
        r#"{{"mirror-registries": [{{"domain": "{}", "mirrors": [{}]}}]}}"#,
        origin.host(),
        list.join(",")
    )
}

fn manifest_via(shim: &Shim, origin: &Registry) -> u16 {
    http(
        "GET",
        shim.addr,
        &format!("/v2/library/demo/manifests/v1?ns={}", origin.host()),
        &[ACCEPT],
    )
    .0
}

#[test]
fn mirrors_get_their_own_credentials_never_the_clients() {
    let images = or_skip!(Images::new());
    images.build("v1", &[("hello", b"hi\n")]);
    let origin = or_skip!(seeded(&images, RegistryOptions::default(), None));
    let mirror = or_skip!(seeded(
        &images,
        RegistryOptions {
            htpasswd: Some(("mirroruser", "mirrorpass")),
            ..Default::default()
        },
        Some("mirroruser:mirrorpass"),
    ));
    let json = rules(&origin, &[mirror.url()]);

    // Without credentials for the mirror: it answers 401, the walk moves on to the origin.
    let shim = Shim::start(&json, &[]);
    let origin_before = origin.count("GET", "/v2/library/demo/manifests/");
    assert_eq!(manifest_via(&shim, &origin), 200);
    assert_eq!(
        origin.count("GET", "/v2/library/demo/manifests/"),
        origin_before + 1,
        "served by the origin"
    );

    // With them, the mirror serves; the origin is not asked.
    let credentials = shim.dir.path().join("config.json");
    std::fs::write(
        &credentials,
        format!(
            r#"{{"auths": {{"{}": {{"auth": "bWlycm9ydXNlcjptaXJyb3JwYXNz"}}}}}}"#,
            mirror.host()
        ),
    )
    .unwrap();
    let shim = Shim::start(
        &json,
        &["--mirror-credentials", credentials.to_str().unwrap()],
    );
    let origin_before = origin.count("GET", "/v2/library/demo/manifests/");
    let mirror_before = mirror.count_status("GET", "/v2/library/demo/manifests/", 200);
    let (status, _, _) = http(
        "GET",
        shim.addr,
        &format!("/v2/library/demo/manifests/v1?ns={}", origin.host()),
        &[
            ACCEPT,
            ("Authorization", "Bearer client-token-for-the-origin"),
        ],
    );
    assert_eq!(status, 200);
    assert_eq!(
        mirror.count_status("GET", "/v2/library/demo/manifests/", 200),
        mirror_before + 1
    );
    assert_eq!(
        origin.count("GET", "/v2/library/demo/manifests/"),
        origin_before
    );
    assert!(!mirror.log().contains("client-token-for-the-origin"));
    assert!(
        !shim.log().contains("mirrorpass") && !shim.log().contains("bWlycm9ydXNlcjptaXJyb3JwYXNz")
    );
}

#[test]
fn rules_reload_on_sighup_and_file_change() {
    let images = or_skip!(Images::new());
    images.build("v1", &[("hello", b"hi\n")]);
    let origin = or_skip!(seeded(&images, RegistryOptions::default(), None));
    let first = or_skip!(seeded(&images, RegistryOptions::default(), None));
    let second = or_skip!(seeded(&images, RegistryOptions::default(), None));
    let shim = Shim::start(&rules(&origin, &[first.url()]), &[]);
    let count = |r: &Registry| r.count("GET", "/v2/library/demo/manifests/v1");
    let (a, b) = (count(&first), count(&second));
    assert_eq!(manifest_via(&shim, &origin), 200);
    assert_eq!((count(&first), count(&second)), (a + 1, b));

    std::fs::write(shim.config_path(), rules(&origin, &[second.url()])).unwrap();
    shim.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(manifest_via(&shim, &origin), 200);
        if count(&second) > b {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new rule never took effect: {}",
            shim.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(shim.log().contains("mirror configuration reloaded"));

    // A broken file keeps the previous rules.
    std::fs::write(shim.config_path(), "{ not json").unwrap();
    shim.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    let before = count(&second);
    assert_eq!(manifest_via(&shim, &origin), 200);
    assert_eq!(count(&second), before + 1);
    assert!(shim.log().contains("keeping the previous rules"));
}

#[test]
fn resolve_probe_reports_which_endpoint_serves() {
    let images = or_skip!(Images::new());
    images.build("v1", &[("hello", b"hi\n")]);
    let origin = or_skip!(seeded(&images, RegistryOptions::default(), None));
    let mirror = or_skip!(seeded(&images, RegistryOptions::default(), None));
    let down = format!("http://127.0.0.1:{}", peers::free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("m.json");
    std::fs::write(&config, rules(&origin, &[down.clone(), mirror.url()])).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_regmirror"))
        .args([
            "resolve",
            "--probe",
            "--json",
            "--probe-timeout",
            "2",
            "--config",
        ])
        .arg(&config)
        .arg(format!("{}/library/demo:v1", origin.host()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let probe = report["probe"].as_array().unwrap();
    assert_eq!(probe[0]["url"], down.as_str());
    assert!(
        probe[0]["verdict"]
            .as_str()
            .unwrap()
            .starts_with("skipped: "),
        "{report}"
    );
    assert_eq!(probe[1]["url"], mirror.url().as_str());
    assert_eq!(probe[1]["status"], 200);
    assert_eq!(probe[1]["verdict"], "serves");
    assert_eq!(probe.last().unwrap()["verdict"], "not reached");
}

/// A rule for every registry whose only mirror is down.
fn catch_all_with_a_dead_mirror() -> String {
    format!(
        r#"{{"mirror-registries": [{{"domain": "*", "mirrors": ["http://127.0.0.1:{}"]}}]}}"#,
        peers::free_port()
    )
}

#[test]
fn paths_outside_the_registry_api_reach_their_host_under_a_catch_all_rule() {
    let origin = or_skip!(Registry::start(RegistryOptions::default()));
    let shim = Shim::start(&catch_all_with_a_dead_mirror(), &[]);
    // Absolute form, as a client with HTTP_PROXY sends it: distribution answers `/` itself.
    let (status, head, _) = http(
        "GET",
        shim.addr,
        &format!("http://{}/?probe=1", origin.host()),
        &[],
    );
    assert_eq!(status, 200, "{head}\n{}", shim.log());
    assert!(
        head.to_ascii_lowercase()
            .contains("cache-control: no-cache"),
        "the registry's own answer: {head}"
    );
    assert_eq!(origin.count("GET", " /?probe=1 "), 1, "{}", origin.log());
    assert!(shim.log().contains("passed through"), "{}", shim.log());
}

#[test]
fn hosts_without_rules_get_the_clients_own_authorization() {
    let origin = or_skip!(Registry::start(RegistryOptions {
        htpasswd: Some(("alice", "s3cret")),
        ..Default::default()
    }));
    let other = format!("http://127.0.0.1:{}", peers::free_port());
    let shim = Shim::start(
        &format!(
            r#"{{"mirror-registries": [{{"domain": "elsewhere.example.test", "mirrors": ["{other}"]}}]}}"#
        ),
        &[],
    );
    let ping = |headers: &[(&str, &str)]| {
        http(
            "GET",
            shim.addr,
            &format!("http://{}/v2/", origin.host()),
            headers,
        )
        .0
    };
    assert_eq!(ping(&[]), 401);
    assert_eq!(
        ping(&[("Authorization", "Basic YWxpY2U6czNjcmV0")]),
        200,
        "{}",
        shim.log()
    );
    assert!(
        !shim.log().contains("YWxpY2U6czNjcmV0"),
        "credentials never logged"
    );
}

#[test]
fn a_pull_whose_endpoints_all_rest_fails_at_once() {
    // An origin that accepts connections and never answers (each of its two endpoints rests 5 s
    // after its timeout), and a FAKE mirror that answers 429 with an hour's `Retry-After`, so its
    // rest cannot end during the test however slow the first pull is.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = silent.local_addr().unwrap().to_string();
    let mirror = format!("http://{}", throttling_fake(3600));
    let json =
        format!(r#"{{"mirror-registries": [{{"domain": "{origin}", "mirrors": ["{mirror}"]}}]}}"#);
    let shim = Shim::start(
        &json,
        &["--first-byte-timeout", "1", "--connect-timeout", "1"],
    );
    let path = format!("/v2/library/demo/manifests/v1?ns={origin}");
    let started = Instant::now();
    let (status, _, _) = http("GET", shim.addr, &path, &[ACCEPT]);
    assert_eq!(status, 503, "{}", shim.log());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the first pull waits for the origin's timeout"
    );
    let started = Instant::now();
    let (status, head, body) = http("GET", shim.addr, &path, &[ACCEPT]);
    let took = started.elapsed();
    assert_eq!(status, 503);
    assert!(took < Duration::from_millis(500), "at once: {took:?}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: "),
        "{head}"
    );
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains(&mirror)
            && message.contains(&origin)
            && message.contains("not asked again for"),
        "names every endpoint and when it is retried: {message}"
    );
    drop(silent);
}

#[test]
fn an_endless_retry_after_is_relayed_capped_at_6_hours() {
    // The mirror and the origin are FAKEs that answer 429 with the largest `Retry-After` there
    // is; the shim relays the origin's answer as it is, all but that.
    let origin = throttling_fake(u64::MAX).to_string();
    let mirror = format!("http://{}", throttling_fake(u64::MAX));
    let json =
        format!(r#"{{"mirror-registries": [{{"domain": "{origin}", "mirrors": ["{mirror}"]}}]}}"#);
    let shim = Shim::start(&json, &[]);
    let (status, head, _) = http(
        "GET",
        shim.addr,
        &format!("/v2/library/demo/manifests/v1?ns={origin}"),
        &[ACCEPT],
    );
    assert_eq!(status, 429, "{head}\n{}", shim.log());
    assert_eq!(
        header(&head, "retry-after").as_deref(),
        Some("21600"),
        "{head}"
    );
}

/// FAKE registry: answers every request with 429 and `Retry-After: SECONDS` (a real registry
/// does so only when its rate limit is spent). Serves until the test process ends.
fn throttling_fake(seconds: u64) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {seconds}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    addr
}

fn mirrors_only(origin: &Registry, mirrors: &[String]) -> String {
    let list: Vec<String> = mirrors.iter().map(|m| format!("\"{m}\"")).collect();
    format!(
        r#"{{"mirror-registries": [{{"domain": "{}", "mirrors": [{}], "mirrors-only": true}}]}}"#,
        origin.host(),
        list.join(",")
    )
}

#[test]
fn a_mirrors_only_registry_is_never_reached() {
    let images = or_skip!(Images::new());
    images.build("v1", &[("hello", b"hi\n")]);
    let origin = or_skip!(seeded(&images, RegistryOptions::default(), None));
    images.push("v1", &format!("{}/library/demo:v2", origin.host()), &[]);
    let mirror = or_skip!(seeded(&images, RegistryOptions::default(), None));
    let dead = format!("http://127.0.0.1:{}", peers::free_port());
    let shim = Shim::start(&mirrors_only(&origin, &[dead.clone(), mirror.url()]), &[]);
    let before = origin.requests();
    let text = |body: &[u8]| String::from_utf8_lossy(body).into_owned();

    // On the mirror: served by it, origin-form and absolute-form, manifest and blob.
    let (status, _, manifest) = http(
        "GET",
        shim.addr,
        &format!("/v2/library/demo/manifests/v1?ns={}", origin.host()),
        &[ACCEPT],
    );
    assert_eq!(status, 200, "{}", shim.log());
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let (status, _, blob) = http(
        "GET",
        shim.addr,
        &format!("http://{}/v2/library/demo/blobs/{layer}", origin.host()),
        &[],
    );
    assert_eq!(status, 200, "{}", shim.log());
    assert!(!blob.is_empty());

    // Only on the origin: every mirror failed, and the shim says so itself.
    let (status, _, body) = http(
        "GET",
        shim.addr,
        &format!("http://{}/v2/library/demo/manifests/v2", origin.host()),
        &[
            ACCEPT,
            ("Authorization", "Bearer client-token-for-the-origin"),
        ],
    );
    let body = text(&body);
    assert_eq!(status, 503, "{body}");
    for expected in [
        "\"UNAVAILABLE\"",
        &format!("{}: every mirror failed (", origin.host()),
        &dead,
        &format!("{}: HTTP 404 Not Found", mirror.url()),
        &format!(
            "the origin https://{} is never tried (mirrors-only, {}:1:",
            origin.host(),
            shim.config_path().display()
        ),
    ] {
        assert!(body.contains(expected), "{expected}\n{body}");
    }

    // The ping is answered by the shim, without a challenge.
    let (status, head, _) = http(
        "GET",
        shim.addr,
        &format!("http://{}/v2/", origin.host()),
        &[],
    );
    assert_eq!(status, 200);
    assert_eq!(
        header(
            &head.to_ascii_lowercase(),
            "docker-distribution-api-version"
        )
        .as_deref(),
        Some("registry/2.0"),
        "{head}"
    );
    // A push has nowhere to go.
    let (status, _, body) = http(
        "POST",
        shim.addr,
        &format!("/v2/library/demo/blobs/uploads/?ns={}", origin.host()),
        &[],
    );
    assert_eq!(status, 403);
    assert!(text(&body).contains("\"DENIED\""), "{}", text(&body));
    // Nor is a path outside the registry API forwarded to the registry's host.
    let (status, _, body) = http(
        "GET",
        shim.addr,
        &format!("http://{}/?probe=1", origin.host()),
        &[],
    );
    assert_eq!(status, 403);
    assert!(text(&body).contains("not forwarded"), "{}", text(&body));

    // Every mirror answered 404: the request's not-found code, naming the mirror.
    let only = Shim::start(&mirrors_only(&origin, &[mirror.url()]), &[]);
    let (status, _, body) = http(
        "GET",
        only.addr,
        &format!("/v2/library/demo/manifests/v2?ns={}", origin.host()),
        &[ACCEPT],
    );
    let body = text(&body);
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("\"MANIFEST_UNKNOWN\"")
            && body.contains(&format!("{}: HTTP 404", mirror.url())),
        "{body}"
    );

    assert_eq!(
        origin.requests(),
        before,
        "the origin was never asked:\n{}",
        origin.log()
    );
    assert!(!mirror.log().contains("client-token-for-the-origin"));
}

#[test]
fn the_status_page_shows_rules_breakers_and_failovers() {
    let images = or_skip!(Images::new());
    images.build("v1", &[("hello", b"hi\n")]);
    let origin = or_skip!(seeded(&images, RegistryOptions::default(), None));
    let mirror = or_skip!(seeded(&images, RegistryOptions::default(), None));
    let dead = format!("http://127.0.0.1:{}", peers::free_port());
    let shim = Shim::start(&rules(&origin, &[dead.clone(), mirror.url()]), &[]);
    assert_eq!(manifest_via(&shim, &origin), 200);
    let (status, head, body) = http("GET", shim.addr, "/_regmirror/status", &[]);
    assert_eq!(status, 200, "{head}");
    let data: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let rule = &data["rules"][0];
    assert_eq!(rule["domain"], origin.host().as_str());
    assert_eq!(rule["mirrors"][0]["url"], dead.as_str());
    assert_eq!(
        rule["mirrors"][0]["breaker"]["why"], "unreachable",
        "{rule}"
    );
    assert!(
        rule["mirrors"][0]["breaker"]["down_since"].is_u64(),
        "{rule}"
    );
    assert_eq!(rule["mirrors"][1]["pulls"], 1);
    let failover = data["recent_failovers"][0]["text"].as_str().unwrap();
    assert!(
        failover.contains(&format!("served by {} after {dead}", mirror.url())),
        "{failover}"
    );
    let (status, head, page) = http("GET", shim.addr, "/", &[]);
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("text/html"), "{head}");
    let page = String::from_utf8_lossy(&page);
    assert!(page.contains(&mirror.url()) && page.contains("<h2>Last failovers</h2>"));
}

/// FAKE internal service (an admin API on loopback that must never be reached through the shim;
/// no real peer plays it): records the first bytes of every connection it accepts, whatever
/// they are (an HTTP head, a TLS hello), and answers 200. Serves until the test process ends.
fn recording_fake() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 4096];
            let read = stream.read(&mut request).unwrap_or(0);
            record
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&request[..read]).into_owned());
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (addr, seen)
}

#[test]
fn an_ns_that_is_not_a_bare_host_is_refused_and_sends_nothing() {
    let (internal, seen) = recording_fake();
    let port = internal.port();
    let shim = Shim::start(
        r#"{"mirror-registries": [{"domain": "elsewhere.example.test", "mirrors": ["http://127.0.0.1:9"]}]}"#,
        &[],
    );
    let body = b"{\"wipe\": true}";
    for (method, path) in [
        // The issue's attack: path and query injected into the origin URL.
        (
            "DELETE",
            format!("/v2/x/manifests/t?ns=127.0.0.1:{port}%2Fadmin%2Fwipe%3Fall%3D1%26"),
        ),
        (
            "POST",
            format!("/v2/x/blobs/uploads/?ns=127.0.0.1:{port}%2Fadmin%23"),
        ),
        (
            "GET",
            format!("/v2/x/manifests/t?ns=admin%3Asecret%40127.0.0.1:{port}"),
        ),
        (
            "GET",
            format!("/v2/x/manifests/t?ns=http%3A%2F%2F127.0.0.1:{port}"),
        ),
        (
            "GET",
            format!("/v2/x/manifests/t?ns=%5B%3A%3A1%5D:{port}%2Fadmin"),
        ),
        ("GET", format!("/v2/x/manifests/t?ns=127.0.0.1:{port}%20")),
        ("GET", format!("/v2/x/manifests/t?ns=2130706433:{port}")),
        ("GET", "/v2/x/manifests/t?ns=127.0.0.1:99999".to_owned()),
        ("GET", "/v2/x/manifests/t?ns=".to_owned()),
        ("HEAD", format!("/v2/x/manifests/t?ns=127.0.0.1:{port}%2F")),
    ] {
        let (status, head, answer) = peers::http_with_body(
            method,
            shim.addr,
            &path,
            &[("Authorization", "Bearer client-token")],
            body,
        );
        assert_eq!(status, 400, "{method} {path}: {head}\n{}", shim.log());
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{head}"
        );
        if method != "HEAD" {
            let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
            let error = &answer["errors"][0];
            assert_eq!(error["code"], "NAME_INVALID", "{method} {path}: {answer}");
            assert!(
                error["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("invalid ?ns="),
                "{answer}"
            );
        }
    }
    assert_eq!(
        *seen.lock().unwrap(),
        Vec::<String>::new(),
        "the internal service was reached:\n{}",
        shim.log()
    );
    assert!(
        shim.log()
            .contains("refused a request with an invalid ?ns="),
        "{}",
        shim.log()
    );

    // Control: the fake does record what reaches it (on loopback, a host the client names is
    // reached as the client could reach it itself), and only the registry API path goes there.
    let (status, _, _) = http(
        "GET",
        shim.addr,
        &format!("/v2/x/manifests/t?ns=127.0.0.1:{port}"),
        &[],
    );
    assert_eq!(status, 200, "{}", shim.log());
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter()
            .any(|head| head.starts_with("GET /v2/x/manifests/t HTTP/1.1\r\n")),
        "{seen:?}"
    );
}

/// The shim scopes an origin-form request by `?ns=` as a registry does, so its answers about a
/// manifest, blob, tag list or referrers list carry `OCI-Namespace` whoever served them: here
/// `regmirror serve` as the origin of a registry without a rule (asked without `ns`), and as
/// the mirror of one with a rule (asked with the `ns` the walk adds). A request without `?ns=`
/// (absolute-form) gets none, whatever the mirror said.
#[test]
fn answers_to_ns_requests_carry_oci_namespace() {
    let origin = or_skip!(Registry::start(RegistryOptions::default()));
    let (manifest, layer) = peers::push_small_image(origin.addr, "library/demo");
    let mirror = peers::Regmirror::serve(&format!("proxy: {{remoteurl: {}}}", origin.url()), &[]);
    let shim = Shim::start(&rules(&origin, &[mirror.url()]), &[]);
    for registry in [origin.host(), mirror.host()] {
        for (method, what) in [
            ("GET", "manifests/v1".to_owned()),
            ("HEAD", format!("manifests/{manifest}")),
            ("GET", format!("blobs/{layer}")),
            ("GET", "tags/list".to_owned()),
            ("GET", "manifests/missing".to_owned()),
        ] {
            let path = format!("/v2/library/demo/{what}?ns={registry}");
            let (status, head, _) = http(method, shim.addr, &path, &[ACCEPT]);
            assert!(matches!(status, 200 | 404), "{method} {path}: {head}");
            if status == 200 && !what.starts_with("tags/") {
                assert!(
                    header(&head, "x-regmirror-cache").is_some(),
                    "served by regmirror serve: {head}"
                );
            }
            assert_eq!(
                header(&head, "oci-namespace"),
                Some(registry.clone()),
                "{method} {path}: {head}"
            );
        }
    }
    let path = format!("http://{}/v2/library/demo/manifests/v1", origin.host());
    let (status, head, _) = http("GET", shim.addr, &path, &[ACCEPT]);
    assert_eq!(status, 200, "{head}");
    assert!(
        header(&head, "x-regmirror-cache").is_some(),
        "served by the mirror: {head}"
    );
    assert_eq!(header(&head, "oci-namespace"), None, "{head}");
}

//! The status page: what an operator looks at first. `GET /` answers HTML (rendered on the server
//! in [`crate::page`]'s frame: readable without script, refreshed every 2 s with it),
//! `GET /_regmirror/status` the same data as JSON. Both are behind `auth.htpasswd` when it is set, and neither shows a
//! credential: upstreams appear by name and URL, errors by their OCI message.
//!
//! Errors are of two kinds: failures (an answer of 429 or 5xx: an upstream down or throttling,
//! the storage failing), which are also an upstream's "last failure", and client errors (any
//! other 4xx: a tag that does not exist, a refused name), listed apart: an upstream answering
//! 404 answered. The stored bytes are measured by each collection and kept current between
//! collections by counting what is committed ([`StoredBytes`]).
//!
//! What it keeps is bounded: counters per metrics label (configured upstreams, `local`,
//! `dynamic`), the last errors ([`RecentLines`]), the last [`page::RECENT`] stale tags (one line
//! per tag, counted), the 1,000 most pulled images.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde_json::{Value, json};

use super::fill::FillProgress;
use crate::page::{self, RecentLines, bytes, duration, escape};
use crate::registry::CacheOutcome;
use crate::upstream::Health;

/// Images whose pulls are counted at most.
const MAX_IMAGES: usize = 1000;
/// The JSON's path.
pub const JSON_PATH: &str = "/_regmirror/status";

/// Counters of one upstream (by metrics label), updated without a lock on the hot path.
#[derive(Debug, Default)]
pub struct UpstreamCounters {
    requests: AtomicU64,
    hits: AtomicU64,
    bytes_cache: AtomicU64,
    bytes_upstream: AtomicU64,
    /// The last failure (429 or 5xx) answered for this upstream.
    last_failure: Mutex<Option<(SystemTime, String)>>,
}

impl UpstreamCounters {
    /// Blob bytes sent to a client, from the store (`cached`) or from a fill.
    pub fn bytes(&self, cached: bool, n: u64) {
        let counter = if cached {
            &self.bytes_cache
        } else {
            &self.bytes_upstream
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// One answered registry request, as the status page counts it.
#[derive(Debug)]
pub struct Answered<'a> {
    pub label: &'a str,
    /// The counters of `label` ([`Status::counters`]).
    pub counters: &'a UpstreamCounters,
    pub repository: &'a str,
    /// The tag, for manifest requests by tag.
    pub tag: Option<&'a str>,
    /// How the cache served it; none for an error or a push.
    pub cache: Option<CacheOutcome>,
    pub status: u16,
    /// The OCI error code and message, for an error answer.
    pub error: Option<(&'a str, &'a str)>,
    pub method: &'a str,
    pub path: &'a str,
}

/// Everything the page shows that the rest of the cache does not keep.
#[derive(Debug)]
pub struct Status {
    started: Instant,
    listen: Mutex<String>,
    upstreams: Mutex<HashMap<String, Arc<UpstreamCounters>>>,
    images: Mutex<HashMap<(String, String), u64>>,
    stale_total: AtomicU64,
    stale: StaleTags,
    failures: RecentLines,
    client_errors: RecentLines,
    stored: Arc<StoredBytes>,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            started: Instant::now(),
            listen: Mutex::new(String::new()),
            upstreams: Mutex::default(),
            images: Mutex::default(),
            stale_total: AtomicU64::new(0),
            stale: StaleTags::default(),
            failures: RecentLines::default(),
            client_errors: RecentLines::default(),
            stored: Arc::default(),
        }
    }
}

/// The bytes the store keeps: measured by a collection, plus what was committed since.
#[derive(Debug, Default)]
pub struct StoredBytes {
    /// Bytes of new content committed since start-up (only grows).
    committed: AtomicU64,
    measured: Mutex<Option<Measured>>,
}

#[derive(Debug, Clone, Copy)]
struct Measured {
    bytes: u64,
    at: SystemTime,
    /// `committed` when the collection read its inventory.
    committed_then: u64,
}

/// Where the commit count stood when a collection began (see [`StoredBytes::mark`]).
#[derive(Debug, Clone, Copy)]
pub struct CommitMark(u64);

impl StoredBytes {
    /// New content of `bytes` was committed (a blob or manifest the store did not hold).
    pub fn committed(&self, bytes: u64) {
        self.committed.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Taken before a collection reads its inventory: what is committed after it is counted on
    /// top of the collection's measure.
    pub fn mark(&self) -> CommitMark {
        CommitMark(self.committed.load(Ordering::Relaxed))
    }

    /// A collection's result: the store keeps `bytes` (after its evictions).
    pub fn measured(&self, bytes: u64, mark: CommitMark) {
        *lock(&self.measured) = Some(Measured {
            bytes,
            at: SystemTime::now(),
            committed_then: mark.0,
        });
    }

    /// (bytes stored now, when they were last measured, bytes committed since), once measured.
    fn now(&self) -> Option<(u64, SystemTime, u64)> {
        let measured = (*lock(&self.measured))?;
        let since = self
            .committed
            .load(Ordering::Relaxed)
            .saturating_sub(measured.committed_then);
        Some((measured.bytes.saturating_add(since), measured.at, since))
    }
}

/// The last [`page::RECENT`] tags served stale: one entry per tag, with how many times and
/// when last.
#[derive(Debug, Default)]
struct StaleTags {
    /// Oldest first.
    tags: Mutex<Vec<(String, u64, SystemTime)>>,
}

impl StaleTags {
    fn push(&self, tag: String) {
        let mut tags = lock(&self.tags);
        let count = match tags.iter().position(|(t, _, _)| *t == tag) {
            Some(i) => tags.remove(i).1,
            None => 0,
        };
        if tags.len() == page::RECENT {
            tags.remove(0);
        }
        tags.push((tag, count + 1, SystemTime::now()));
    }

    /// Newest first: `[{"tag": "…", "served": 3, "seconds_ago": 5}, …]`.
    fn json(&self) -> Vec<Value> {
        let now = SystemTime::now();
        lock(&self.tags)
            .iter()
            .rev()
            .map(|(tag, served, at)| {
                let ago = now.duration_since(*at).unwrap_or_default().as_secs();
                json!({"tag": tag, "served": served, "seconds_ago": ago})
            })
            .collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Status {
    pub fn set_listen(&self, addr: String) {
        *lock(&self.listen) = addr;
    }

    /// The counters of `label` (a bounded metrics label).
    pub fn counters(&self, label: &str) -> Arc<UpstreamCounters> {
        let mut upstreams = lock(&self.upstreams);
        if let Some(counters) = upstreams.get(label) {
            return counters.clone();
        }
        let counters = Arc::new(UpstreamCounters::default());
        upstreams.insert(label.to_owned(), counters.clone());
        counters
    }

    /// The stored bytes, counted by fills, pushes and collections.
    pub fn stored(&self) -> &Arc<StoredBytes> {
        &self.stored
    }

    pub fn answered(&self, a: &Answered<'_>) {
        let counters = a.counters;
        counters.requests.fetch_add(1, Ordering::Relaxed);
        if a.cache.is_some_and(CacheOutcome::is_hit) {
            counters.hits.fetch_add(1, Ordering::Relaxed);
        }
        if let Some((code, message)) = a.error {
            let text = format!("{} {} -> {} {code}: {message}", a.method, a.path, a.status);
            if is_failure(a.status) {
                *lock(&counters.last_failure) =
                    Some((SystemTime::now(), format!("{code}: {message}")));
                self.failures.push(text);
            } else {
                self.client_errors.push(text);
            }
        }
        if a.cache == Some(CacheOutcome::Stale) {
            self.stale_total.fetch_add(1, Ordering::Relaxed);
            let tag = a.tag.unwrap_or("?");
            self.stale
                .push(format!("{}: {}:{tag}", a.label, a.repository));
        }
        if let (Some(_), None) = (a.tag, a.error) {
            let mut images = lock(&self.images);
            let key = (a.label.to_owned(), a.repository.to_owned());
            if images.len() >= MAX_IMAGES && !images.contains_key(&key) {
                // Full: the least pulled image makes room (ties: any of them).
                if let Some(least) = images
                    .iter()
                    .min_by_key(|(_, n)| **n)
                    .map(|(k, _)| k.clone())
                {
                    images.remove(&least);
                }
            }
            *images.entry(key).or_default() += 1;
        }
    }

    /// The data of the page. `upstreams` are the upstreams to list; `fills` the downloads in
    /// flight; `max_size` is `storage.maxsize`.
    pub(crate) fn snapshot(
        &self,
        upstreams: &[UpstreamView],
        fills: &[FillProgress],
        max_size: Option<u64>,
    ) -> Value {
        let now = SystemTime::now();
        let instant = Instant::now();
        let ago = |at: SystemTime| now.duration_since(at).unwrap_or_default().as_secs();
        let counted = lock(&self.upstreams).clone();
        let mut listed: Vec<Value> = Vec::new();
        let mut names: Vec<&str> = upstreams.iter().map(|u| u.label.as_str()).collect();
        for label in counted.keys() {
            if !names.contains(&label.as_str()) {
                names.push(label);
            }
        }
        for name in names {
            let view = upstreams.iter().find(|u| u.label == name);
            let url = view.map_or("", |u| u.url.as_str());
            let endpoints: Vec<Value> = view
                .map(|u| u.endpoints.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|e| {
                    json!({
                        "url": e.url,
                        "role": e.role,
                        "breaker": page::health_json(e.health, instant, now),
                    })
                })
                .collect();
            let budget = view
                .and_then(|u| u.budget)
                .map(|(limit, remaining)| json!({"limit": limit, "remaining": remaining}));
            let counters = counted.get(name).cloned().unwrap_or_default();
            let requests = counters.requests.load(Ordering::Relaxed);
            let hits = counters.hits.load(Ordering::Relaxed);
            let last_failure = lock(&counters.last_failure)
                .clone()
                .map(|(at, text)| json!({"seconds_ago": ago(at), "error": text}));
            listed.push(json!({
                "name": name,
                "url": url,
                "requests": requests,
                "hits": hits,
                "hit_ratio": if requests == 0 { 0.0 } else { hits as f64 / requests as f64 },
                "bytes_from_cache": counters.bytes_cache.load(Ordering::Relaxed),
                "bytes_from_upstream": counters.bytes_upstream.load(Ordering::Relaxed),
                "last_failure": last_failure,
                "endpoints": endpoints,
                "pull_budget": budget,
            }));
        }
        let mut images: Vec<((String, String), u64)> = lock(&self.images)
            .iter()
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        images.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let stored = self.stored.now();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "listen": *lock(&self.listen),
            "upstreams": listed,
            "fills": fills.iter().map(fill_json).collect::<Vec<_>>(),
            "storage": {
                "stored_bytes": stored.map(|s| s.0),
                "measured_seconds_ago": stored.map(|s| ago(s.1)),
                "committed_since_bytes": stored.map(|s| s.2),
                "max_size": max_size,
            },
            "top_images": images.iter().take(10).map(|((label, repository), pulls)| {
                json!({"upstream": label, "repository": repository, "pulls": pulls})
            }).collect::<Vec<_>>(),
            "stale_tags_served": self.stale_total.load(Ordering::Relaxed),
            "stale_tags": self.stale.json(),
            "recent_failures": self.failures.json(),
            "recent_client_errors": self.client_errors.json(),
        })
    }
}

/// An answer that says the cache or its upstream failed (429, 5xx), not the client.
fn is_failure(status: u16) -> bool {
    status == 429 || status >= 500
}

/// An upstream as the page lists it.
#[derive(Debug, Clone)]
pub struct UpstreamView {
    /// Its metrics label.
    pub label: String,
    pub url: String,
    /// The endpoints its fetches walk, in order (`--mirrors` first, then the upstream).
    pub endpoints: Vec<EndpointView>,
    /// (limit, remaining) of the pull budget it stated last.
    pub budget: Option<(u64, u64)>,
}

/// One endpoint of an upstream's walk and its breaker.
#[derive(Debug, Clone)]
pub struct EndpointView {
    pub url: String,
    /// `mirror` or `origin`.
    pub role: &'static str,
    pub health: Health,
}

/// A download in flight as the page shows it, with its rate.
fn fill_json(fill: &FillProgress) -> Value {
    let rate = fill.written as f64 / fill.elapsed.as_secs_f64().max(0.001);
    json!({
        "upstream": fill.upstream,
        "repository": fill.repository,
        "digest": fill.digest,
        "written": fill.written,
        "size": fill.size,
        "bytes_per_second": rate.round() as u64,
        "followers": fill.followers,
    })
}

/// The page: `data` (a [`Status::snapshot`]) as HTML, every value escaped.
pub fn html(data: &Value) -> String {
    let mut page = String::new();
    let _ = write!(
        page,
        "<h1>regmirror {}</h1><p class=\"muted\">listening on {} · up {} · refreshed every 2 s</p>",
        text(&data["version"]),
        text(&data["listen"]),
        duration(n(&data["uptime_seconds"]))
    );
    upstreams_html(&mut page, data);
    fills_html(&mut page, data);
    storage_html(&mut page, &data["storage"]);
    page.push_str(
        "<h2>Most pulled images</h2><table id=\"images\"><tr><th>image</th><th>pulls</th></tr>",
    );
    for i in data["top_images"].as_array().into_iter().flatten() {
        let _ = write!(
            page,
            "<tr><td>{}/{}</td><td>{}</td></tr>",
            text(&i["upstream"]),
            text(&i["repository"]),
            n(&i["pulls"])
        );
    }
    let _ = write!(
        page,
        "</table><h2>Stale tags served: {}</h2><p class=\"muted\">Served from cache because the upstream failed.</p><ul id=\"stale\">",
        n(&data["stale_tags_served"])
    );
    for s in data["stale_tags"].as_array().into_iter().flatten() {
        let times = match n(&s["served"]) {
            1 => "once".to_owned(),
            served => format!("{served} times"),
        };
        let _ = write!(
            page,
            "<li>{} <span class=\"muted\">({times}, last {} ago)</span></li>",
            text(&s["tag"]),
            duration(n(&s["seconds_ago"]))
        );
    }
    page.push_str("</ul>");
    for (title, note, id, key) in [
        (
            "Last failures",
            "Answers of 429 or 5xx: an upstream down or throttling, or the cache failing.",
            "errors",
            "recent_failures",
        ),
        (
            "Last client errors",
            "Other 4xx: what clients asked for that does not exist or is refused (an upstream answering 404 is an answer).",
            "client_errors",
            "recent_client_errors",
        ),
    ] {
        let _ = write!(
            page,
            "<h2>{title}</h2><p class=\"muted\">{note}</p><ul id=\"{id}\">"
        );
        for e in data[key].as_array().into_iter().flatten() {
            let _ = write!(
                page,
                "<li><code>{}</code> <span class=\"muted\">({} ago)</span></li>",
                text(&e["text"]),
                duration(n(&e["seconds_ago"]))
            );
        }
        page.push_str("</ul>");
    }
    let _ = write!(
        page,
        "<p class=\"muted\">The same as JSON: <a href=\"{JSON_PATH}\">{JSON_PATH}</a></p>"
    );
    page::frame("regmirror status", &page)
}

/// A JSON value as escaped text (`-` for null).
fn text(v: &Value) -> String {
    escape(&match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    })
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn upstreams_html(page: &mut String, data: &Value) {
    page.push_str("<h2>Upstreams</h2><table id=\"upstreams\"><tr><th>upstream</th><th>requests</th><th>hits</th><th>hit ratio</th><th>from cache</th><th>from upstream</th><th>endpoints and breakers</th><th>pull budget</th><th>last failure</th></tr>");
    for u in data["upstreams"].as_array().into_iter().flatten() {
        let budget = match &u["pull_budget"] {
            Value::Null => "<span class=\"muted\">not stated</span>".to_owned(),
            b => format!("{} of {} left", n(&b["remaining"]), n(&b["limit"])),
        };
        let last_failure = match &u["last_failure"] {
            Value::Null => "-".to_owned(),
            e => format!(
                "<span class=\"warn\">{}</span> ({} ago)",
                text(&e["error"]),
                duration(n(&e["seconds_ago"]))
            ),
        };
        let mut endpoints = String::new();
        for e in u["endpoints"].as_array().into_iter().flatten() {
            let _ = write!(
                endpoints,
                "<div class=\"endpoint\"><code>{}</code> <span class=\"muted\">{}</span><br>{}</div>",
                text(&e["url"]),
                text(&e["role"]),
                page::health_html(&e["breaker"])
            );
        }
        if endpoints.is_empty() {
            endpoints.push('-');
        }
        let _ = write!(
            page,
            "<tr class=\"upstream\"><td><b>{}</b><br><code class=\"muted\">{}</code></td><td class=\"requests\">{}</td><td class=\"hits\">{}</td><td>{:.0}%</td><td>{}</td><td>{}</td><td class=\"endpoints\">{endpoints}</td><td>{budget}</td><td class=\"last-failure\">{last_failure}</td></tr>",
            text(&u["name"]),
            text(&u["url"]),
            n(&u["requests"]),
            n(&u["hits"]),
            u["hit_ratio"].as_f64().unwrap_or(0.0) * 100.0,
            bytes(n(&u["bytes_from_cache"])),
            bytes(n(&u["bytes_from_upstream"])),
        );
    }
    page.push_str("</table>");
}

fn fills_html(page: &mut String, data: &Value) {
    page.push_str("<h2>Downloads in progress</h2>");
    let fills = data["fills"].as_array().cloned().unwrap_or_default();
    if fills.is_empty() {
        page.push_str("<p class=\"muted\" id=\"fills\">none</p>");
        return;
    }
    page.push_str("<table id=\"fills\"><tr><th>blob</th><th>progress</th><th>rate</th><th>followers</th></tr>");
    for f in &fills {
        let written = n(&f["written"]);
        let (bar, of) = match f["size"].as_u64() {
            Some(size) if size > 0 => (
                format!("{:.1}", written as f64 * 100.0 / size as f64),
                format!("{} of {}", bytes(written), bytes(size)),
            ),
            _ => ("0".to_owned(), format!("{} of ?", bytes(written))),
        };
        let _ = write!(
            page,
            "<tr class=\"fill\"><td>{}/{}<br><code class=\"muted\">{}</code></td><td><span class=\"bar\" role=\"progressbar\" aria-valuenow=\"{bar}\"><span style=\"width:{bar}%\"></span></span> {of}</td><td>{}/s</td><td>{}</td></tr>",
            text(&f["upstream"]),
            text(&f["repository"]),
            text(&f["digest"]),
            bytes(n(&f["bytes_per_second"])),
            n(&f["followers"]),
        );
    }
    page.push_str("</table>");
}

fn storage_html(page: &mut String, storage: &Value) {
    page.push_str("<h2>Storage</h2><p id=\"storage\">");
    match (
        storage["stored_bytes"].as_u64(),
        storage["max_size"].as_u64(),
    ) {
        (Some(stored), Some(max)) => {
            let share = (stored as f64 * 100.0 / max.max(1) as f64).min(100.0);
            let _ = write!(
                page,
                "<span class=\"bar\" role=\"progressbar\" aria-valuenow=\"{share:.1}\"><span style=\"width:{share:.1}%\"></span></span> {} of storage.maxsize {}",
                bytes(stored),
                bytes(max)
            );
        }
        (Some(stored), None) => {
            let _ = write!(page, "{} stored (no storage.maxsize)", bytes(stored));
        }
        (None, max) => {
            let _ = write!(
                page,
                "not measured yet (at start-up); storage.maxsize {}",
                max.map_or("none".to_owned(), bytes)
            );
        }
    }
    if let Some(ago) = storage["measured_seconds_ago"].as_u64() {
        let _ = write!(
            page,
            " <span class=\"muted\">(measured {} ago, {} of it stored since)</span>",
            duration(ago),
            bytes(n(&storage["committed_since_bytes"]))
        );
    }
    page.push_str("</p>");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn answered<'a>(
        counters: &'a UpstreamCounters,
        cache: Option<CacheOutcome>,
        tag: Option<&'a str>,
        error: Option<(&'a str, &'a str)>,
    ) -> Answered<'a> {
        Answered {
            label: "docker.io",
            counters,
            repository: "library/<script>",
            tag,
            cache,
            status: if error.is_some() { 503 } else { 200 },
            error,
            method: "GET",
            path: "/v2/library/x/manifests/v1",
        }
    }

    #[test]
    fn counts_hits_errors_stale_tags_and_pulls() {
        let status = Status::default();
        let hub = status.counters("docker.io");
        status.set_listen("127.0.0.1:5000".into());
        status.answered(&answered(&hub, Some(CacheOutcome::Hit), Some("v1"), None));
        status.answered(&answered(&hub, Some(CacheOutcome::Miss), Some("v1"), None));
        status.answered(&answered(&hub, Some(CacheOutcome::Stale), Some("v1"), None));
        status.answered(&answered(
            &hub,
            None,
            None,
            Some(("UNAVAILABLE", "upstream down")),
        ));
        hub.bytes(true, 2048);
        let fills = [FillProgress {
            upstream: "docker.io".into(),
            repository: "library/big".into(),
            digest: "sha256:ab".into(),
            written: 50,
            size: Some(200),
            elapsed: Duration::from_secs(1),
            followers: 3,
        }];
        let upstreams = [UpstreamView {
            label: "docker.io".to_owned(),
            url: "https://registry-1.docker.io".to_owned(),
            endpoints: vec![EndpointView {
                url: "https://registry-1.docker.io".to_owned(),
                role: "origin",
                health: Health::Healthy,
            }],
            budget: Some((100, 76)),
        }];
        let data = status.snapshot(&upstreams, &fills, Some(1 << 30));
        let listed = &data["upstreams"][0];
        assert_eq!(
            (listed["requests"].as_u64(), listed["hits"].as_u64()),
            (Some(4), Some(1))
        );
        assert_eq!(listed["bytes_from_cache"], 2048);
        assert!(
            listed["last_failure"]["error"]
                .as_str()
                .unwrap()
                .contains("upstream down")
        );
        assert_eq!(listed["endpoints"][0]["breaker"]["state"], "healthy");
        assert_eq!(data["stale_tags_served"], 1);
        assert_eq!(
            data["top_images"][0]["pulls"], 3,
            "error answers are not pulls"
        );
        assert_eq!(data["fills"][0]["followers"], 3);
        let page = html(&data);
        assert!(page.contains("aria-valuenow=\"25.0\""), "a fill bar at 25%");
        assert!(page.contains("library/&lt;script&gt;"), "escaped");
        assert!(!page.contains("library/<script>"));
        assert!(page.contains("not measured yet"));
        assert!(page.contains("76 of 100 left"), "the pull budget");
    }

    #[test]
    fn what_it_keeps_is_bounded() {
        let status = Status::default();
        let hub = status.counters("docker.io");
        for i in 0..MAX_IMAGES + 50 {
            let repository = format!("r{i}");
            status.answered(&Answered {
                repository: &repository,
                ..answered(&hub, Some(CacheOutcome::Miss), Some("v1"), None)
            });
            status.answered(&answered(&hub, None, None, Some(("X", "y"))));
        }
        assert_eq!(lock(&status.images).len(), MAX_IMAGES);
        assert_eq!(status.failures.json().len(), crate::page::RECENT);
    }

    #[test]
    fn a_client_404_is_no_upstream_failure() {
        let status = Status::default();
        let hub = status.counters("docker.io");
        status.answered(&Answered {
            status: 404,
            ..answered(&hub, None, None, Some(("MANIFEST_UNKNOWN", "no such tag")))
        });
        let data = status.snapshot(&[], &[], None);
        assert_eq!(data["upstreams"][0]["last_failure"], Value::Null);
        assert_eq!(data["recent_failures"].as_array().unwrap().len(), 0);
        assert!(
            data["recent_client_errors"][0]["text"]
                .as_str()
                .unwrap()
                .contains("404 MANIFEST_UNKNOWN")
        );
        status.answered(&answered(&hub, None, None, Some(("UNAVAILABLE", "down"))));
        let data = status.snapshot(&[], &[], None);
        assert!(
            data["upstreams"][0]["last_failure"]["error"]
                .as_str()
                .unwrap()
                .starts_with("UNAVAILABLE")
        );
    }

    #[test]
    fn a_blob_served_by_redirect_is_a_hit() {
        let status = Status::default();
        let hub = status.counters("docker.io");
        status.answered(&answered(&hub, Some(CacheOutcome::Redirect), None, None));
        let data = status.snapshot(&[], &[], None);
        assert_eq!(
            data["upstreams"][0]["hits"], 1,
            "a replica redirecting to its bucket"
        );
    }

    #[test]
    fn stale_tags_are_one_line_per_tag_with_a_count() {
        let status = Status::default();
        let hub = status.counters("docker.io");
        for tag in ["v1", "v1", "v2", "v1"] {
            status.answered(&answered(&hub, Some(CacheOutcome::Stale), Some(tag), None));
        }
        let data = status.snapshot(&[], &[], None);
        assert_eq!(data["stale_tags_served"], 4);
        let tags = data["stale_tags"].as_array().unwrap();
        assert_eq!(tags.len(), 2, "{tags:?}");
        assert_eq!(tags[0]["tag"], "docker.io: library/<script>:v1");
        assert_eq!(tags[0]["served"], 3);
        assert_eq!(tags[1]["served"], 1);
        assert!(html(&data).contains("(3 times, last 0s ago)"));
        for i in 0..crate::page::RECENT + 5 {
            status.stale.push(format!("t{i}"));
        }
        assert_eq!(status.stale.json().len(), crate::page::RECENT, "bounded");
    }

    #[test]
    fn stored_bytes_count_commits_after_the_measure() {
        let stored = StoredBytes::default();
        stored.committed(100);
        assert_eq!(stored.now(), None, "not measured yet");
        let mark = stored.mark();
        // Committed while the collection ran: not in its inventory, counted on top.
        stored.committed(20);
        stored.measured(1000, mark);
        stored.committed(5);
        let (bytes, _, since) = stored.now().unwrap();
        assert_eq!((bytes, since), (1025, 25));
        stored.measured(10, stored.mark());
        assert_eq!(stored.now().unwrap().0, 10, "a collection measures again");
    }
}

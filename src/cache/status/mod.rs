//! The status page: what an operator looks at first. `GET /` answers HTML (rendered on the server
//! in [`crate::page`]'s frame: readable without script, refreshed every 2 s with it),
//! `GET /_regmirror/status` the same data as JSON. Both are behind `auth.htpasswd` when it is set, and neither shows a
//! credential: upstreams appear by name and URL, errors by their OCI message.
//!
//! Errors are of two kinds: failures (an answer of 429 or 5xx: an upstream down or throttling,
//! the storage failing), which are also an upstream's "last failure", and client errors (any
//! other 4xx: a tag that does not exist, a refused name), listed apart: an upstream answering
//! 404 answered. The stored bytes are measured by each collection and kept current between
//! collections by counting what is committed ([`StoredBytes`], which the store's writers count
//! and the page reads).
//!
//! What it keeps is bounded: counters per metrics label (configured upstreams, `local`,
//! `dynamic`), the last errors ([`RecentLines`]), the last [`page::RECENT`] stale tags (one line
//! per tag, counted), the 1,000 most pulled images, the fetch policy's refusals (one line per
//! upstream label and rule of the configuration, counted, with the last repository refused).

mod html;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde::Serialize;
use serde_json::Value;

use super::fill::FillProgress;
use super::routing::Route;
use super::store::StoredBytes;
use super::upstreams::Upstreams;
use crate::config::cache::Refusal;
use crate::page::{self, RecentLine, RecentLines};
use crate::registry::CacheOutcome;
use crate::sync::lock;
use crate::upstream::Health;
pub(crate) use html::html;

/// Images whose pulls are counted at most.
const MAX_IMAGES: usize = 1000;
/// The JSON's path.
pub(crate) const JSON_PATH: &str = "/_regmirror/status";

/// Counters of one upstream (by metrics label), updated without a lock on the hot path.
#[derive(Debug, Default)]
pub(crate) struct UpstreamCounters {
    requests: AtomicU64,
    hits: AtomicU64,
    bytes_cache: AtomicU64,
    bytes_upstream: AtomicU64,
    /// The last failure (429 or 5xx) answered for this upstream.
    last_failure: Mutex<Option<(SystemTime, String)>>,
}

impl UpstreamCounters {
    /// Blob bytes sent to a client, from the store (`cached`) or from a fill.
    pub(crate) fn bytes(&self, cached: bool, n: u64) {
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
pub(crate) struct Answered<'a> {
    pub(crate) label: &'a str,
    /// The counters of `label` ([`Status::counters`]).
    pub(crate) counters: &'a UpstreamCounters,
    pub(crate) repository: &'a str,
    /// The tag, for manifest requests by tag.
    pub(crate) tag: Option<&'a str>,
    /// How the cache served it; none for an error or a push.
    pub(crate) cache: Option<CacheOutcome>,
    pub(crate) status: u16,
    /// The OCI error code and message, for an error answer.
    pub(crate) error: Option<(&'a str, &'a str)>,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
}

/// Everything the page shows that the rest of the cache does not keep.
#[derive(Debug)]
pub(crate) struct Status {
    started: Instant,
    listen: Mutex<String>,
    upstreams: Mutex<HashMap<String, Arc<UpstreamCounters>>>,
    images: Mutex<HashMap<(String, String), u64>>,
    stale_total: AtomicU64,
    stale: StaleTags,
    failures: RecentLines,
    client_errors: RecentLines,
    stored: Arc<StoredBytes>,
    /// (upstream label, rule) -> the refusals it made.
    refusals: Mutex<HashMap<(String, String), Refused>>,
}

/// What one rule of the fetch policy refused for one upstream label.
#[derive(Debug, Clone)]
struct Refused {
    pattern: Option<String>,
    count: u64,
    last_repository: String,
    last: SystemTime,
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
            refusals: Mutex::default(),
        }
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

    /// Newest first.
    fn tags(&self) -> Vec<StaleTag> {
        let now = SystemTime::now();
        lock(&self.tags)
            .iter()
            .rev()
            .map(|(tag, served, at)| StaleTag {
                seconds_ago: now.duration_since(*at).unwrap_or_default().as_secs(),
                served: *served,
                tag: tag.clone(),
            })
            .collect()
    }
}

impl Status {
    pub(crate) fn set_listen(&self, addr: String) {
        *lock(&self.listen) = addr;
    }

    /// The counters of `label` (a bounded metrics label).
    pub(crate) fn counters(&self, label: &str) -> Arc<UpstreamCounters> {
        let mut upstreams = lock(&self.upstreams);
        if let Some(counters) = upstreams.get(label) {
            return counters.clone();
        }
        let counters = Arc::new(UpstreamCounters::default());
        upstreams.insert(label.to_owned(), counters.clone());
        counters
    }

    /// The stored bytes, counted by fills, pushes and collections.
    pub(crate) fn stored(&self) -> &Arc<StoredBytes> {
        &self.stored
    }

    /// A request for `repository` of upstream `label` the fetch policy refused.
    pub(crate) fn refused(&self, label: &str, repository: &str, refusal: &Refusal) {
        let mut refusals = lock(&self.refusals);
        let entry = refusals
            .entry((label.to_owned(), refusal.rule.clone()))
            .or_insert_with(|| Refused {
                pattern: refusal.pattern.clone(),
                count: 0,
                last_repository: String::new(),
                last: SystemTime::now(),
            });
        entry.count += 1;
        entry.last_repository = repository.to_owned();
        entry.last = SystemTime::now();
    }

    pub(crate) fn answered(&self, a: &Answered<'_>) {
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

    /// The data of the page. `upstreams` are the configured upstreams (the others counted are
    /// listed after them); `fills` the downloads in flight; `max_size` is `storage.maxsize`.
    pub(crate) fn snapshot(
        &self,
        upstreams: &[UpstreamView],
        fills: &[FillProgress],
        max_size: Option<u64>,
    ) -> Snapshot {
        let now = SystemTime::now();
        let ago = |at: SystemTime| now.duration_since(at).unwrap_or_default().as_secs();
        let counted = lock(&self.upstreams).clone();
        let mut names: Vec<&str> = upstreams.iter().map(|u| u.label.as_str()).collect();
        for label in counted.keys() {
            if !names.contains(&label.as_str()) {
                names.push(label);
            }
        }
        let listed = names
            .into_iter()
            .map(|name| {
                let view = upstreams.iter().find(|u| u.label == name);
                let counters = counted.get(name).cloned().unwrap_or_default();
                UpstreamSnapshot::new(name, view, &counters, now)
            })
            .collect();
        let mut images: Vec<((String, String), u64)> = lock(&self.images)
            .iter()
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        images.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let stored = self.stored.now();
        let mut policy_refusals: Vec<PolicyRefusal> = lock(&self.refusals)
            .iter()
            .map(|((upstream, rule), r)| PolicyRefusal {
                last_repository: r.last_repository.clone(),
                pattern: r.pattern.clone(),
                refused: r.count,
                rule: rule.clone(),
                seconds_ago: ago(r.last),
                upstream: upstream.clone(),
            })
            .collect();
        policy_refusals.sort_by(|a, b| (&a.upstream, &a.rule).cmp(&(&b.upstream, &b.rule)));
        Snapshot {
            fills: fills.iter().map(FillSnapshot::new).collect(),
            listen: lock(&self.listen).clone(),
            policy_refusals,
            recent_client_errors: self.client_errors.lines(),
            recent_failures: self.failures.lines(),
            stale_tags: self.stale.tags(),
            stale_tags_served: self.stale_total.load(Ordering::Relaxed),
            storage: StorageSnapshot {
                committed_since_bytes: stored.map(|s| s.2),
                max_size,
                measured_seconds_ago: stored.map(|s| ago(s.1)),
                stored_bytes: stored.map(|s| s.0),
            },
            top_images: images
                .into_iter()
                .take(10)
                .map(|((upstream, repository), pulls)| TopImage {
                    pulls,
                    repository,
                    upstream,
                })
                .collect(),
            upstreams: listed,
            uptime_seconds: self.started.elapsed().as_secs(),
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// What the status page shows: `GET /_regmirror/status` answers it as JSON, and [`html`]
/// renders it. The fields of these types are in alphabetical order, the order the JSON's keys
/// have always had.
#[derive(Debug, Serialize)]
pub(crate) struct Snapshot {
    fills: Vec<FillSnapshot>,
    listen: String,
    policy_refusals: Vec<PolicyRefusal>,
    recent_client_errors: Vec<RecentLine>,
    recent_failures: Vec<RecentLine>,
    stale_tags: Vec<StaleTag>,
    stale_tags_served: u64,
    storage: StorageSnapshot,
    top_images: Vec<TopImage>,
    upstreams: Vec<UpstreamSnapshot>,
    uptime_seconds: u64,
    version: &'static str,
}

/// An upstream: its counters, its endpoints and their breakers, its pull budget.
#[derive(Debug, Serialize)]
struct UpstreamSnapshot {
    bytes_from_cache: u64,
    bytes_from_upstream: u64,
    endpoints: Vec<EndpointSnapshot>,
    hit_ratio: f64,
    hits: u64,
    last_failure: Option<LastFailure>,
    name: String,
    pull_budget: Option<PullBudget>,
    requests: u64,
    url: String,
}

impl UpstreamSnapshot {
    /// `name` with its counters; `view` when it is configured (else no URL nor endpoints).
    fn new(
        name: &str,
        view: Option<&UpstreamView>,
        counters: &UpstreamCounters,
        now: SystemTime,
    ) -> Self {
        let instant = Instant::now();
        let requests = counters.requests.load(Ordering::Relaxed);
        let hits = counters.hits.load(Ordering::Relaxed);
        UpstreamSnapshot {
            bytes_from_cache: counters.bytes_cache.load(Ordering::Relaxed),
            bytes_from_upstream: counters.bytes_upstream.load(Ordering::Relaxed),
            endpoints: view
                .map(|u| u.endpoints.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|e| EndpointSnapshot {
                    breaker: page::health_json(e.health, instant, now),
                    role: e.role,
                    url: e.url.clone(),
                })
                .collect(),
            hit_ratio: if requests == 0 {
                0.0
            } else {
                hits as f64 / requests as f64
            },
            hits,
            last_failure: lock(&counters.last_failure)
                .clone()
                .map(|(at, error)| LastFailure {
                    error,
                    seconds_ago: now.duration_since(at).unwrap_or_default().as_secs(),
                }),
            name: name.to_owned(),
            pull_budget: view
                .and_then(|u| u.budget)
                .map(|(limit, remaining)| PullBudget { limit, remaining }),
            requests,
            url: view.map_or(String::new(), |u| u.url.clone()),
        }
    }
}

/// One endpoint of an upstream's walk: its breaker as [`page::health_json`] tells it.
#[derive(Debug, Serialize)]
struct EndpointSnapshot {
    breaker: Value,
    role: &'static str,
    url: String,
}

#[derive(Debug, Serialize)]
struct LastFailure {
    error: String,
    seconds_ago: u64,
}

#[derive(Debug, Serialize)]
struct PullBudget {
    limit: u64,
    remaining: u64,
}

/// A download in flight, with its rate.
#[derive(Debug, Serialize)]
struct FillSnapshot {
    bytes_per_second: u64,
    digest: String,
    followers: u64,
    repository: String,
    size: Option<u64>,
    upstream: String,
    written: u64,
}

impl FillSnapshot {
    fn new(fill: &FillProgress) -> Self {
        let rate = fill.written as f64 / fill.elapsed.as_secs_f64().max(0.001);
        FillSnapshot {
            bytes_per_second: rate.round() as u64,
            digest: fill.digest.clone(),
            followers: fill.followers,
            repository: fill.repository.clone(),
            size: fill.size,
            upstream: fill.upstream.clone(),
            written: fill.written,
        }
    }
}

/// The bytes stored, once a collection measured them.
#[derive(Debug, Serialize)]
struct StorageSnapshot {
    committed_since_bytes: Option<u64>,
    max_size: Option<u64>,
    measured_seconds_ago: Option<u64>,
    stored_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
struct TopImage {
    pulls: u64,
    repository: String,
    upstream: String,
}

/// The requests one rule of the fetch policy refused for one upstream.
#[derive(Debug, Serialize)]
struct PolicyRefusal {
    last_repository: String,
    /// The deny pattern that matched; none for an allow list that matched nothing.
    pattern: Option<String>,
    refused: u64,
    rule: String,
    seconds_ago: u64,
    upstream: String,
}

/// A tag served stale: how many times, and when last.
#[derive(Debug, Serialize)]
struct StaleTag {
    seconds_ago: u64,
    served: u64,
    tag: String,
}

/// An answer that says the cache or its upstream failed (429, 5xx), not the client.
fn is_failure(status: u16) -> bool {
    status == 429 || status >= 500
}

/// Every configured upstream as the page lists it: its endpoints in the order its fetches walk
/// them, each with its breaker, and the pull budget it stated.
pub(crate) fn upstream_views(upstreams: &Upstreams) -> Vec<UpstreamView> {
    let (router, client) = (upstreams.router(), upstreams.client());
    router
        .configured()
        .into_iter()
        .map(|u| {
            let origin = u.origin();
            let url = origin.map_or(String::new(), |o| o.base.to_string());
            let budget = origin
                .and_then(|o| client.budget(&o.base))
                .map(|b| (b.limit, b.remaining));
            let label = u.label().to_owned();
            // The walk of any repository of it: `--mirrors` rules are per registry.
            let walk = Route {
                upstream: u,
                repository: String::new(),
            };
            let endpoints = router
                .targets(&walk)
                .iter()
                .map(|t| EndpointView {
                    url: t.base.to_string(),
                    role: if t.is_mirror() { "mirror" } else { "origin" },
                    health: client.health(&t.base),
                })
                .collect();
            UpstreamView {
                label,
                url,
                endpoints,
                budget,
            }
        })
        .collect()
}

/// An upstream as the page lists it.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamView {
    /// Its metrics label.
    pub(crate) label: String,
    pub(crate) url: String,
    /// The endpoints its fetches walk, in order (`--mirrors` first, then the upstream).
    pub(crate) endpoints: Vec<EndpointView>,
    /// (limit, remaining) of the pull budget it stated last.
    pub(crate) budget: Option<(u64, u64)>,
}

/// One endpoint of an upstream's walk and its breaker.
#[derive(Debug, Clone)]
pub(crate) struct EndpointView {
    pub(crate) url: String,
    /// `mirror` or `origin`.
    pub(crate) role: &'static str,
    pub(crate) health: Health,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The snapshot as `/_regmirror/status` answers it.
    fn json(snapshot: &Snapshot) -> Value {
        serde_json::to_value(snapshot).unwrap()
    }

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
        let snapshot = status.snapshot(&upstreams, &fills, Some(1 << 30));
        let data = json(&snapshot);
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
        let page = html(&snapshot);
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
        let data = json(&status.snapshot(&[], &[], None));
        assert_eq!(data["upstreams"][0]["last_failure"], Value::Null);
        assert_eq!(data["recent_failures"].as_array().unwrap().len(), 0);
        assert!(
            data["recent_client_errors"][0]["text"]
                .as_str()
                .unwrap()
                .contains("404 MANIFEST_UNKNOWN")
        );
        status.answered(&answered(&hub, None, None, Some(("UNAVAILABLE", "down"))));
        let data = json(&status.snapshot(&[], &[], None));
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
        let data = json(&status.snapshot(&[], &[], None));
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
        let snapshot = status.snapshot(&[], &[], None);
        let data = json(&snapshot);
        assert_eq!(data["stale_tags_served"], 4);
        let tags = data["stale_tags"].as_array().unwrap();
        assert_eq!(tags.len(), 2, "{tags:?}");
        assert_eq!(tags[0]["tag"], "docker.io: library/<script>:v1");
        assert_eq!(tags[0]["served"], 3);
        assert_eq!(tags[1]["served"], 1);
        assert!(html(&snapshot).contains("(3 times, last 0s ago)"));
        for i in 0..crate::page::RECENT + 5 {
            status.stale.push(format!("t{i}"));
        }
        assert_eq!(status.stale.tags().len(), crate::page::RECENT, "bounded");
    }

    #[test]
    fn policy_refusals_are_one_line_per_upstream_and_rule() {
        let status = Status::default();
        let deny = Refusal {
            rule: "proxy.deny[0]".into(),
            pattern: Some("library/*".into()),
        };
        let allow = Refusal {
            rule: "proxy.allow".into(),
            pattern: None,
        };
        status.refused("docker.io", "library/a", &deny);
        status.refused("docker.io", "library/<b>", &deny);
        status.refused("dynamic", "other/x", &allow);
        let snapshot = status.snapshot(&[], &[], None);
        let data = json(&snapshot);
        let lines = data["policy_refusals"].as_array().unwrap();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            (
                &lines[0]["rule"],
                &lines[0]["refused"],
                &lines[0]["last_repository"]
            ),
            (&"proxy.deny[0]".into(), &2.into(), &"library/<b>".into())
        );
        assert_eq!(lines[1]["upstream"], "dynamic");
        let page = html(&snapshot);
        assert!(page.contains("Refused by the fetch policy: 3"), "{page}");
        assert!(
            page.contains("<b>docker.io</b>: <code>proxy.deny[0]</code> <code>library/*</code>: 2 refused, last <code>library/&lt;b&gt;</code>"),
            "{page}"
        );
    }
}

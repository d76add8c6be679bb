//! Prometheus metrics, kept and written by the `prometheus-client` crate (the OpenMetrics
//! project's Rust client: correct label escaping and histograms).
//!
//! - `regmirror_cache_requests_total{kind,result}` (result: a [`CacheOutcome`]'s word);
//! - `regmirror_http_request_seconds{kind}`: a histogram of every request's duration;
//! - `regmirror_bytes_served_total{source}` (cache, fill);
//! - `regmirror_upstream_requests_total{upstream,status}` and
//!   `regmirror_upstream_request_seconds{upstream}` (a histogram);
//! - `regmirror_upstream_queue_seconds{upstream}`: time requests waited for their turn under the
//!   upstream's `max_concurrent`/`max_rate` (a histogram);
//! - `regmirror_upstream_ratelimit_limit{upstream}` and `..._remaining{upstream}`: the pull budget
//!   a configured upstream stated in its last answer (`ratelimit-limit`, `ratelimit-remaining`);
//! - `regmirror_fills_in_flight`, `regmirror_buffer_bytes` (blob data in flight),
//!   `regmirror_memo_bytes{memo}` (manifest, blob: what the memos hold),
//!   `regmirror_errors_total{code}`, and on a shared bucket `regmirror_fleet_fills_total{role}`
//!   (led, took_over, followed, waited);
//! - `regmirror_policy_refusals_total{upstream,rule}`: requests the fetch policy refused, by the
//!   rule that refused them (`proxy.deny[0]`, `proxy.allow`).
//!
//! Label values are bounded whatever clients send: `upstream` is a configured upstream's name,
//! `local`, or `dynamic` for every registry a client named with `proxy.on` (see
//! [`crate::cache::routing::Upstream::label`]); kinds, results and codes are fixed sets; rules
//! are the configuration's keys.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

use crate::registry::CacheOutcome;

/// The exposition's content type.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: &'static str,
    result: CacheOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamStatusLabels {
    upstream: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    upstream: String,
    rule: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemoLabels {
    memo: &'static str,
}

/// Levels read at each scrape.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Levels {
    pub(crate) fills: usize,
    pub(crate) buffer_bytes: usize,
    pub(crate) manifest_memo_bytes: usize,
    pub(crate) blob_memo_bytes: usize,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Request durations from 1 ms to about 16 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: HistogramFamily<KindLabels>,
    bytes: Family<SourceLabels, Counter>,
    upstream: Family<UpstreamStatusLabels, Counter>,
    upstream_latency: HistogramFamily<UpstreamLabels>,
    upstream_queue: HistogramFamily<UpstreamLabels>,
    ratelimit_limit: Family<UpstreamLabels, Gauge>,
    ratelimit_remaining: Family<UpstreamLabels, Gauge>,
    fills: Gauge,
    buffers: Gauge,
    memos: Family<MemoLabels, Gauge>,
    errors: Family<CodeLabels, Counter>,
    fleet: Family<RoleLabels, Counter>,
    refusals: Family<RuleLabels, Counter>,
}

/// Where served bytes came from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source {
    Cache,
    Fill,
}

/// A family of latency histograms, one per label set.
fn histograms<L: Clone + std::hash::Hash + Eq>() -> HistogramFamily<L> {
    Family::new_with_constructor(latency_histogram)
}

/// Registers `metric` as `name` with its `help`; returns it (a handle to the same metric).
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::default();
        Metrics {
            requests: registered(
                &mut r,
                "regmirror_cache_requests",
                "Registry requests by kind and how the cache answered them",
                Family::default(),
            ),
            durations: registered(
                &mut r,
                "regmirror_http_request_seconds",
                "How long requests took to answer (headers), by kind",
                histograms(),
            ),
            bytes: registered(
                &mut r,
                "regmirror_bytes_served",
                "Blob bytes sent to clients, from the store or from fills in flight",
                Family::default(),
            ),
            upstream: registered(
                &mut r,
                "regmirror_upstream_requests",
                "Upstream answers by upstream and HTTP status (0: no answer)",
                Family::default(),
            ),
            upstream_latency: registered(
                &mut r,
                "regmirror_upstream_request_seconds",
                "How long upstreams took to answer",
                histograms(),
            ),
            upstream_queue: registered(
                &mut r,
                "regmirror_upstream_queue_seconds",
                "How long requests waited for their turn under an upstream's \
                 max_concurrent/max_rate",
                histograms(),
            ),
            ratelimit_limit: registered(
                &mut r,
                "regmirror_upstream_ratelimit_limit",
                "Pulls per window the upstream allows, as its last answer stated \
                 (ratelimit-limit)",
                Family::default(),
            ),
            ratelimit_remaining: registered(
                &mut r,
                "regmirror_upstream_ratelimit_remaining",
                "Pulls left in the window, as the upstream's last answer stated \
                 (ratelimit-remaining)",
                Family::default(),
            ),
            fills: registered(
                &mut r,
                "regmirror_fills_in_flight",
                "Upstream downloads in progress",
                Gauge::default(),
            ),
            buffers: registered(
                &mut r,
                "regmirror_buffer_bytes",
                "Blob data held in memory for clients and fills (limits.buffer_memory)",
                Gauge::default(),
            ),
            memos: registered(
                &mut r,
                "regmirror_memo_bytes",
                "Bytes held by the in-memory memos (limits.manifest_memo, limits.blob_memo)",
                Family::default(),
            ),
            errors: registered(
                &mut r,
                "regmirror_errors",
                "Error answers by OCI error code",
                Family::default(),
            ),
            fleet: registered(
                &mut r,
                "regmirror_fleet_fills",
                "Fills on a shared bucket by this replica's role: led (held the lease), took_over \
                 (an expired one), followed (streamed another replica's download), waited",
                Family::default(),
            ),
            refusals: registered(
                &mut r,
                "regmirror_policy_refusals",
                "Requests the fetch policy (proxy.allow, proxy.deny) refused, by upstream and rule",
                Family::default(),
            ),
            registry: r,
        }
    }
}

impl Metrics {
    /// `kind`: manifest, blob, tag.
    pub(crate) fn request(&self, kind: &'static str, result: CacheOutcome) {
        self.requests
            .get_or_create(&RequestLabels { kind, result })
            .inc();
    }

    /// A request answered after `took`; `kind` is its API area (manifest, blob, ...).
    pub(crate) fn answered(&self, kind: &'static str, took: Duration) {
        self.durations
            .get_or_create(&KindLabels { kind })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn bytes(&self, source: Source, n: u64) {
        let source = match source {
            Source::Cache => "cache",
            Source::Fill => "fill",
        };
        self.bytes.get_or_create(&SourceLabels { source }).inc_by(n);
    }

    /// An upstream answer (status 0 = no answer) and how long it took. `upstream` is a bounded
    /// label (see the module docs).
    pub(crate) fn upstream(&self, upstream: &str, status: u16, latency: Duration) {
        self.upstream
            .get_or_create(&UpstreamStatusLabels {
                upstream: upstream.to_owned(),
                status,
            })
            .inc();
        self.upstream_latency
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
            })
            .observe(latency.as_secs_f64());
    }

    /// A request waited `queued` for its turn under the upstream's request limits.
    pub(crate) fn queued(&self, upstream: &str, queued: Duration) {
        self.upstream_queue
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
            })
            .observe(queued.as_secs_f64());
    }

    /// The pull budget a configured upstream stated.
    pub(crate) fn budget(&self, upstream: &str, limit: u64, remaining: u64) {
        let labels = UpstreamLabels {
            upstream: upstream.to_owned(),
        };
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.ratelimit_limit
            .get_or_create(&labels)
            .set(gauge(limit));
        self.ratelimit_remaining
            .get_or_create(&labels)
            .set(gauge(remaining));
    }

    /// A fill on a shared bucket: `led`, `took_over`, `followed` or `waited`.
    pub(crate) fn fleet(&self, role: &'static str) {
        self.fleet.get_or_create(&RoleLabels { role }).inc();
    }

    /// A request the fetch policy refused by `rule`.
    pub(crate) fn refused(&self, upstream: &str, rule: &str) {
        self.refusals
            .get_or_create(&RuleLabels {
                upstream: upstream.to_owned(),
                rule: rule.to_owned(),
            })
            .inc();
    }

    pub(crate) fn error(&self, code: &'static str) {
        self.errors.get_or_create(&CodeLabels { code }).inc();
    }

    /// The exposition text, with `levels` read now.
    pub(crate) fn render(&self, levels: Levels) -> String {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.fills.set(gauge(levels.fills));
        self.buffers.set(gauge(levels.buffer_bytes));
        for (memo, bytes) in [
            ("manifest", levels.manifest_memo_bytes),
            ("blob", levels.blob_memo_bytes),
        ] {
            self.memos
                .get_or_create(&MemoLabels { memo })
                .set(gauge(bytes));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.request("blob", CacheOutcome::Hit);
        m.request("blob", CacheOutcome::Hit);
        m.bytes(Source::Fill, 10);
        m.upstream("docker.io", 200, Duration::from_millis(500));
        m.upstream("we\"ird\nname", 0, Duration::from_millis(1));
        m.answered("manifest", Duration::from_millis(3));
        m.error("BLOB_UNKNOWN");
        m.queued("docker.io", Duration::from_millis(300));
        m.budget("docker.io", 100, 76);
        m.refused("docker.io", "proxy.deny[0]");
        let text = m.render(Levels {
            fills: 3,
            buffer_bytes: 1024,
            manifest_memo_bytes: 10,
            blob_memo_bytes: 20,
        });
        for expected in [
            "regmirror_cache_requests_total{kind=\"blob\",result=\"hit\"} 2",
            "regmirror_bytes_served_total{source=\"fill\"} 10",
            "regmirror_upstream_requests_total{upstream=\"docker.io\",status=\"200\"} 1",
            "regmirror_upstream_request_seconds_sum{upstream=\"docker.io\"} 0.5",
            "regmirror_upstream_request_seconds_bucket{le=\"0.512\",upstream=\"docker.io\"} 1",
            "regmirror_http_request_seconds_count{kind=\"manifest\"} 1",
            "regmirror_fills_in_flight 3",
            "regmirror_buffer_bytes 1024",
            "regmirror_memo_bytes{memo=\"manifest\"} 10",
            "regmirror_memo_bytes{memo=\"blob\"} 20",
            "regmirror_errors_total{code=\"BLOB_UNKNOWN\"} 1",
            "regmirror_upstream_queue_seconds_bucket{le=\"0.512\",upstream=\"docker.io\"} 1",
            "regmirror_upstream_ratelimit_limit{upstream=\"docker.io\"} 100",
            "regmirror_upstream_ratelimit_remaining{upstream=\"docker.io\"} 76",
            "regmirror_policy_refusals_total{upstream=\"docker.io\",rule=\"proxy.deny[0]\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(expected), "{expected} in\n{text}");
        }
        assert!(
            text.contains(r#"upstream="we\"ird\nname""#),
            "label values are escaped:\n{text}"
        );
    }

    #[test]
    fn the_grafana_dashboard_asks_for_metrics_that_exist() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../contrib/grafana/regmirror.json")).unwrap();
        // Families appear once they have a sample: give each one.
        let metrics = Metrics::default();
        metrics.request("blob", CacheOutcome::Hit);
        metrics.answered("blob", Duration::from_millis(1));
        metrics.bytes(Source::Cache, 1);
        metrics.upstream("docker.io", 200, Duration::from_millis(1));
        metrics.queued("docker.io", Duration::from_millis(1));
        metrics.budget("docker.io", 100, 50);
        metrics.fleet("led");
        metrics.error("BLOB_UNKNOWN");
        metrics.refused("docker.io", "proxy.deny[0]");
        let exposed = metrics.render(Levels::default());
        let mut asked = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for (start, _) in expr.match_indices("regmirror_") {
                    let name: String = expr[start..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let family = ["_bucket", "_total", "_sum", "_count"]
                        .iter()
                        .find_map(|suffix| name.strip_suffix(suffix))
                        .unwrap_or(&name);
                    assert!(
                        exposed.contains(&format!("# TYPE {family} ")),
                        "{name} in {:?} is not exposed:\n{exposed}",
                        panel["title"]
                    );
                    asked += 1;
                }
            }
        }
        assert!(asked >= 10, "{asked}");
    }
}

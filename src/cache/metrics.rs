//! Prometheus metrics in the text exposition format, kept in atomics and small labelled maps.
//!
//! `regmirror_cache_requests_total{kind,result}` (hit, miss, stale, error),
//! `regmirror_bytes_served_total{source}` (cache, fill), `regmirror_upstream_requests_total
//! {upstream,status}`, `regmirror_upstream_request_seconds_{sum,count}{upstream}`,
//! `regmirror_fills_in_flight`, `regmirror_errors_total{code}`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    bytes_from_cache: AtomicU64,
    bytes_from_fill: AtomicU64,
    upstream: Mutex<BTreeMap<(String, u16), u64>>,
    upstream_latency: Mutex<BTreeMap<String, (f64, u64)>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

/// Where served bytes came from.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    Cache,
    Fill,
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    *map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default() += 1;
}

impl Metrics {
    /// `kind`: manifest, blob, tag. `result`: hit, miss, stale, error.
    pub fn request(&self, kind: &'static str, result: &'static str) {
        bump(&self.requests, (kind, result));
    }

    pub fn bytes(&self, source: Source, n: u64) {
        match source {
            Source::Cache => &self.bytes_from_cache,
            Source::Fill => &self.bytes_from_fill,
        }
        .fetch_add(n, Ordering::Relaxed);
    }

    /// An upstream answer (status 0 = no answer) and how long it took.
    pub fn upstream(&self, upstream: &str, status: u16, latency: Duration) {
        bump(&self.upstream, (upstream.to_owned(), status));
        let mut latencies = self
            .upstream_latency
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let entry = latencies.entry(upstream.to_owned()).or_default();
        entry.0 += latency.as_secs_f64();
        entry.1 += 1;
    }

    pub fn error(&self, code: &'static str) {
        bump(&self.errors, code);
    }

    /// The exposition text; `fills` is the current number of fills in flight.
    pub fn render(&self, fills: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE regmirror_cache_requests_total counter");
        for ((kind, result), n) in &*self.requests.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = writeln!(
                out,
                "regmirror_cache_requests_total{{kind=\"{kind}\",result=\"{result}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# TYPE regmirror_bytes_served_total counter");
        let cache = self.bytes_from_cache.load(Ordering::Relaxed);
        let fill = self.bytes_from_fill.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "regmirror_bytes_served_total{{source=\"cache\"}} {cache}"
        );
        let _ = writeln!(
            out,
            "regmirror_bytes_served_total{{source=\"fill\"}} {fill}"
        );
        let _ = writeln!(out, "# TYPE regmirror_upstream_requests_total counter");
        for ((upstream, status), n) in &*self.upstream.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = writeln!(
                out,
                "regmirror_upstream_requests_total{{upstream=\"{upstream}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# TYPE regmirror_upstream_request_seconds summary");
        for (upstream, (sum, count)) in &*self
            .upstream_latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            let _ = writeln!(
                out,
                "regmirror_upstream_request_seconds_sum{{upstream=\"{upstream}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "regmirror_upstream_request_seconds_count{{upstream=\"{upstream}\"}} {count}"
            );
        }
        let _ = writeln!(out, "# TYPE regmirror_fills_in_flight gauge");
        let _ = writeln!(out, "regmirror_fills_in_flight {fills}");
        let _ = writeln!(out, "# TYPE regmirror_errors_total counter");
        for (code, n) in &*self.errors.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = writeln!(out, "regmirror_errors_total{{code=\"{code}\"}} {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters() {
        let m = Metrics::default();
        m.request("blob", "hit");
        m.request("blob", "hit");
        m.bytes(Source::Fill, 10);
        m.upstream("docker.io", 200, Duration::from_millis(500));
        m.error("BLOB_UNKNOWN");
        let text = m.render(3);
        assert!(text.contains("regmirror_cache_requests_total{kind=\"blob\",result=\"hit\"} 2"));
        assert!(text.contains("regmirror_bytes_served_total{source=\"fill\"} 10"));
        assert!(text.contains(
            "regmirror_upstream_requests_total{upstream=\"docker.io\",status=\"200\"} 1"
        ));
        assert!(
            text.contains("regmirror_upstream_request_seconds_sum{upstream=\"docker.io\"} 0.5")
        );
        assert!(text.contains("regmirror_fills_in_flight 3"));
        assert!(text.contains("regmirror_errors_total{code=\"BLOB_UNKNOWN\"} 1"));
    }
}

//! The shim's status page, on its own listen address in origin form: `GET /` (HTML, in
//! [`crate::page`]'s frame) and `GET /_regmirror/status` (JSON). It shows the rules with each
//! endpoint's breaker (healthy, resting until when, or probing; down since when), the pulls each endpoint served, the last failovers (a pull served by a
//! later endpoint than the first) and the last failed pulls. Nothing it shows is a credential:
//! endpoints appear by URL (mirror URLs carry none), requests by registry and path.
//!
//! Bounded: pulls are counted for at most 1,000 endpoints; failovers and failures are
//! [`RecentLines`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{Value, json};

use crate::page::{self, RecentLines, duration, escape};
use crate::resolve::RuleSummary;
use crate::sync::lock;

/// The JSON's path.
pub const JSON_PATH: &str = "/_regmirror/status";
const MAX_ENDPOINTS: usize = 1000;

/// What the shim's page shows beyond its rules and breakers.
#[derive(Debug)]
pub struct ShimStatus {
    started: Instant,
    pulls: Mutex<HashMap<String, u64>>,
    failovers: RecentLines,
    failures: RecentLines,
}

impl Default for ShimStatus {
    fn default() -> Self {
        ShimStatus {
            started: Instant::now(),
            pulls: Mutex::default(),
            failovers: RecentLines::default(),
            failures: RecentLines::default(),
        }
    }
}

impl ShimStatus {
    /// A pull of `path` on `registry` answered by `served_by`, after `passed` (the endpoints
    /// before it that failed or rested): a failover when there were any.
    pub fn served(&self, registry: &str, path: &str, served_by: &str, passed: &[&str]) {
        {
            let mut pulls = lock(&self.pulls);
            if pulls.len() < MAX_ENDPOINTS || pulls.contains_key(served_by) {
                *pulls.entry(served_by.to_owned()).or_default() += 1;
            }
        }
        if !passed.is_empty() {
            self.failovers.push(format!(
                "{registry} {path}: served by {served_by} after {}",
                passed.join(", ")
            ));
        }
    }

    /// A pull no endpoint answered.
    pub fn failed(&self, registry: &str, path: &str, why: &str) {
        self.failures.push(format!("{registry} {path}: {why}"));
    }

    /// The page's data: `rules` as configured, `breaker` an endpoint's breaker
    /// ([`page::health_json`]).
    pub fn snapshot(
        &self,
        listen: &str,
        rules: &[RuleSummary],
        breaker: impl Fn(&str) -> Value,
    ) -> Value {
        let pulls = lock(&self.pulls).clone();
        let endpoint = |url: &str| {
            json!({
                "url": url,
                "breaker": breaker(url),
                "pulls": pulls.get(url).copied().unwrap_or(0),
            })
        };
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "listen": listen,
            "rules": rules.iter().map(|r| json!({
                "domain": &*r.rule.domain,
                "location": &*r.rule.location,
                "mirrors_only": r.mirrors_only,
                "mirrors": r.mirrors.iter().map(|m| endpoint(m)).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "recent_failovers": self.failovers.json(),
            "recent_failures": self.failures.json(),
        })
    }
}

/// The page: `data` (a [`ShimStatus::snapshot`]) as HTML, every value escaped.
pub fn html(data: &Value) -> String {
    let text = |v: &Value| {
        escape(&match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let mut main = String::new();
    let _ = write!(
        main,
        "<h1>regmirror shim {}</h1><p class=\"muted\">listening on {} · up {} · refreshed every 2 s</p><h2>Rules</h2><table id=\"rules\"><tr><th>rule</th><th>mirror</th><th>pulls served</th><th>breaker</th></tr>",
        text(&data["version"]),
        text(&data["listen"]),
        duration(n(&data["uptime_seconds"]))
    );
    for rule in data["rules"].as_array().into_iter().flatten() {
        let mirrors = rule["mirrors"].as_array().cloned().unwrap_or_default();
        let only = if rule["mirrors_only"].as_bool() == Some(true) {
            " <span class=\"warn\">mirrors only</span>"
        } else {
            ""
        };
        for (i, mirror) in mirrors.iter().enumerate() {
            let head = if i == 0 {
                format!(
                    "<b>{}</b>{only}<br><code class=\"muted\">{}</code>",
                    text(&rule["domain"]),
                    text(&rule["location"])
                )
            } else {
                String::new()
            };
            let _ = write!(
                main,
                "<tr class=\"endpoint\"><td>{head}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                text(&mirror["url"]),
                n(&mirror["pulls"]),
                page::health_html(&mirror["breaker"])
            );
        }
    }
    for (title, key) in [
        ("Last failovers", "recent_failovers"),
        ("Last failed pulls", "recent_failures"),
    ] {
        let _ = write!(main, "</table><h2>{title}</h2><ul id=\"{key}\">");
        for entry in data[key].as_array().into_iter().flatten() {
            let _ = write!(
                main,
                "<li><code>{}</code> <span class=\"muted\">({} ago)</span></li>",
                text(&entry["text"]),
                duration(n(&entry["seconds_ago"]))
            );
        }
        main.push_str("</ul><table>");
    }
    let _ = write!(
        main,
        "</table><p class=\"muted\">The same as JSON: <a href=\"{JSON_PATH}\">{JSON_PATH}</a></p>"
    );
    page::frame("regmirror shim status", &main)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigSource, MirrorConfig};
    use crate::resolve::Resolver;

    #[test]
    fn rules_breakers_pulls_and_failovers() {
        let config = MirrorConfig::from_sources(&[ConfigSource {
            path: "m.json",
            text: r#"{"mirror-registries": [{"domain": "*", "mirrors": ["http://m1:5000", "https://m2"], "mirrors-only": true}]}"#,
        }])
        .unwrap();
        let rules = Resolver::new(config).unwrap().rules();
        let status = ShimStatus::default();
        status.served("reg.io", "/v2/a/manifests/v1", "http://m1:5000", &[]);
        status.served(
            "reg.io",
            "/v2/a/blobs/x",
            "https://m<2>",
            &["http://m1:5000"],
        );
        status.failed("reg.io", "/v2/<b>/manifests/v1", "every mirror failed");
        let data = status.snapshot("127.0.0.1:3128", &rules, |url| {
            if url.contains("m1") {
                json!({"state": "probing", "why": "unreachable"})
            } else {
                json!({"state": "healthy"})
            }
        });
        assert_eq!(data["rules"][0]["domain"], "*");
        assert_eq!(data["rules"][0]["mirrors_only"], true);
        assert_eq!(data["rules"][0]["mirrors"][0]["pulls"], 1);
        assert_eq!(
            data["rules"][0]["mirrors"][0]["breaker"]["state"],
            "probing"
        );
        assert!(
            data["recent_failovers"][0]["text"]
                .as_str()
                .unwrap()
                .contains("after http://m1:5000")
        );
        let page = html(&data);
        assert!(page.contains("mirrors only"));
        assert!(page.contains("/v2/&lt;b&gt;/manifests"), "escaped");
        assert!(page.contains("every mirror failed"));
        assert!(
            page.contains("unreachable; the next request tries it"),
            "{page}"
        );
    }
}

//! The status page as HTML, rendered from a [`Snapshot`] in [`crate::page`]'s frame, every value
//! escaped.

use std::fmt::Write as _;

use super::{JSON_PATH, Snapshot, StorageSnapshot};
use crate::page::{self, bytes, duration, escape};

/// The page.
pub(crate) fn html(data: &Snapshot) -> String {
    let mut page = String::new();
    let _ = write!(
        page,
        "<h1>regmirror {}</h1><p class=\"muted\">listening on {} · up {} · refreshed every 2 s</p>",
        escape(data.version),
        escape(&data.listen),
        duration(data.uptime_seconds)
    );
    upstreams_html(&mut page, data);
    fills_html(&mut page, data);
    storage_html(&mut page, &data.storage);
    page.push_str(
        "<h2>Most pulled images</h2><table id=\"images\"><tr><th>image</th><th>pulls</th></tr>",
    );
    for i in &data.top_images {
        let _ = write!(
            page,
            "<tr><td>{}/{}</td><td>{}</td></tr>",
            escape(&i.upstream),
            escape(&i.repository),
            i.pulls
        );
    }
    let _ = write!(
        page,
        "</table><h2>Stale tags served: {}</h2><p class=\"muted\">Served from cache because the upstream failed.</p><ul id=\"stale\">",
        data.stale_tags_served
    );
    for s in &data.stale_tags {
        let times = match s.served {
            1 => "once".to_owned(),
            served => format!("{served} times"),
        };
        let _ = write!(
            page,
            "<li>{} <span class=\"muted\">({times}, last {} ago)</span></li>",
            escape(&s.tag),
            duration(s.seconds_ago)
        );
    }
    page.push_str("</ul>");
    refusals_html(&mut page, data);
    for (title, note, id, lines) in [
        (
            "Last failures",
            "Answers of 429 or 5xx: an upstream down or throttling, or the cache failing.",
            "errors",
            &data.recent_failures,
        ),
        (
            "Last client errors",
            "Other 4xx: what clients asked for that does not exist or is refused (an upstream answering 404 is an answer).",
            "client_errors",
            &data.recent_client_errors,
        ),
    ] {
        let _ = write!(
            page,
            "<h2>{title}</h2><p class=\"muted\">{note}</p><ul id=\"{id}\">"
        );
        for e in lines {
            let _ = write!(
                page,
                "<li><code>{}</code> <span class=\"muted\">({} ago)</span></li>",
                escape(&e.text),
                duration(e.seconds_ago)
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

fn upstreams_html(page: &mut String, data: &Snapshot) {
    page.push_str("<h2>Upstreams</h2><table id=\"upstreams\"><tr><th>upstream</th><th>requests</th><th>hits</th><th>hit ratio</th><th>from cache</th><th>from upstream</th><th>endpoints and breakers</th><th>pull budget</th><th>last failure</th></tr>");
    for u in &data.upstreams {
        let budget = match &u.pull_budget {
            None => "<span class=\"muted\">not stated</span>".to_owned(),
            Some(b) => format!("{} of {} left", b.remaining, b.limit),
        };
        let last_failure = match &u.last_failure {
            None => "-".to_owned(),
            Some(e) => format!(
                "<span class=\"warn\">{}</span> ({} ago)",
                escape(&e.error),
                duration(e.seconds_ago)
            ),
        };
        let mut endpoints = String::new();
        for e in &u.endpoints {
            let _ = write!(
                endpoints,
                "<div class=\"endpoint\"><code>{}</code> <span class=\"muted\">{}</span><br>{}</div>",
                escape(&e.url),
                escape(e.role),
                page::health_html(&e.breaker)
            );
        }
        if endpoints.is_empty() {
            endpoints.push('-');
        }
        let _ = write!(
            page,
            "<tr class=\"upstream\"><td><b>{}</b><br><code class=\"muted\">{}</code></td><td class=\"requests\">{}</td><td class=\"hits\">{}</td><td>{:.0}%</td><td>{}</td><td>{}</td><td class=\"endpoints\">{endpoints}</td><td>{budget}</td><td class=\"last-failure\">{last_failure}</td></tr>",
            escape(&u.name),
            escape(&u.url),
            u.requests,
            u.hits,
            u.hit_ratio * 100.0,
            bytes(u.bytes_from_cache),
            bytes(u.bytes_from_upstream),
        );
    }
    page.push_str("</table>");
}

fn refusals_html(page: &mut String, data: &Snapshot) {
    let total: u64 = data.policy_refusals.iter().map(|r| r.refused).sum();
    let _ = write!(
        page,
        "<h2>Refused by the fetch policy: {total}</h2><p class=\"muted\">Requests for repositories proxy.allow or proxy.deny (or an upstream's own) refuse: 403 DENIED, nothing fetched or served.</p><ul id=\"policy\">"
    );
    for r in &data.policy_refusals {
        let pattern = r
            .pattern
            .as_deref()
            .map_or(String::new(), |p| format!(" <code>{}</code>", escape(p)));
        let _ = write!(
            page,
            "<li><b>{}</b>: <code>{}</code>{pattern}: {} refused, last <code>{}</code> <span class=\"muted\">({} ago)</span></li>",
            escape(&r.upstream),
            escape(&r.rule),
            r.refused,
            escape(&r.last_repository),
            duration(r.seconds_ago)
        );
    }
    page.push_str("</ul>");
}

fn fills_html(page: &mut String, data: &Snapshot) {
    page.push_str("<h2>Downloads in progress</h2>");
    if data.fills.is_empty() {
        page.push_str("<p class=\"muted\" id=\"fills\">none</p>");
        return;
    }
    page.push_str("<table id=\"fills\"><tr><th>blob</th><th>progress</th><th>rate</th><th>followers</th></tr>");
    for f in &data.fills {
        let written = f.written;
        let (bar, of) = match f.size {
            Some(size) if size > 0 => (
                format!("{:.1}", written as f64 * 100.0 / size as f64),
                format!("{} of {}", bytes(written), bytes(size)),
            ),
            _ => ("0".to_owned(), format!("{} of ?", bytes(written))),
        };
        let _ = write!(
            page,
            "<tr class=\"fill\"><td>{}/{}<br><code class=\"muted\">{}</code></td><td><span class=\"bar\" role=\"progressbar\" aria-valuenow=\"{bar}\"><span style=\"width:{bar}%\"></span></span> {of}</td><td>{}/s</td><td>{}</td></tr>",
            escape(&f.upstream),
            escape(&f.repository),
            escape(&f.digest),
            bytes(f.bytes_per_second),
            f.followers,
        );
    }
    page.push_str("</table>");
}

fn storage_html(page: &mut String, storage: &StorageSnapshot) {
    page.push_str("<h2>Storage</h2><p id=\"storage\">");
    match (storage.stored_bytes, storage.max_size) {
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
    if let Some(ago) = storage.measured_seconds_ago {
        let _ = write!(
            page,
            " <span class=\"muted\">(measured {} ago, {} of it stored since)</span>",
            duration(ago),
            bytes(storage.committed_since_bytes.unwrap_or(0))
        );
    }
    page.push_str("</p>");
}

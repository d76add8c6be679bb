//! The pieces the cache's and the shim's status pages share: the page frame (style, and the few
//! lines of script that refresh it every 2 s by fetching it again and swapping its `<main>`),
//! HTML escaping, how sizes, durations and times read, an endpoint's breaker ([`health_json`],
//! [`health_html`]), and [`RecentLines`] (the last few errors or failovers). No I/O.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::registry::whole_seconds;
use crate::sync::lock;
use crate::upstream::Health;

/// Lines a [`RecentLines`] keeps.
pub const RECENT: usize = 20;

/// The last [`RECENT`] lines of something (errors, failovers, stale tags), each with its time.
#[derive(Debug, Default)]
pub struct RecentLines {
    lines: Mutex<VecDeque<(SystemTime, String)>>,
}

impl RecentLines {
    pub fn push(&self, text: String) {
        let mut lines = lock(&self.lines);
        if lines.len() == RECENT {
            lines.pop_front();
        }
        lines.push_back((SystemTime::now(), text));
    }

    /// Newest first: `[{"seconds_ago": 3, "text": "…"}, …]`.
    pub fn json(&self) -> Vec<Value> {
        self.lines()
            .into_iter()
            .map(|line| json!({"seconds_ago": line.seconds_ago, "text": line.text}))
            .collect()
    }

    /// Newest first.
    pub fn lines(&self) -> Vec<RecentLine> {
        let now = SystemTime::now();
        let lines = lock(&self.lines);
        lines
            .iter()
            .rev()
            .map(|(at, text)| RecentLine {
                seconds_ago: now.duration_since(*at).unwrap_or_default().as_secs(),
                text: text.clone(),
            })
            .collect()
    }
}

/// One of the [`RecentLines`], as a page shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecentLine {
    pub seconds_ago: u64,
    pub text: String,
}

/// A whole page: `title` and `main` (already HTML) in the shared frame. The page loads nothing
/// from elsewhere and reads the same without script.
pub fn frame(title: &str, main: &str) -> String {
    format!(
        concat!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
            "<meta name=\"viewport\" content=\"width=device-width\"><title>{}</title>",
            "<style>body{{font:14px system-ui,sans-serif;margin:1.5em;color:#222}}",
            "table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{padding:.25em .8em;",
            "text-align:left;border-bottom:1px solid #ddd}}th{{background:#f4f4f4}}",
            ".bar{{width:14em;height:.9em;background:#eee;display:inline-block;",
            "vertical-align:middle}}.bar span{{display:block;height:100%;background:#3a7}}",
            ".warn{{color:#b50}}.ok{{color:#283}}.muted{{color:#777}}code{{font-size:12px}}",
            "dl{{margin:0}}dt{{font-weight:bold;margin-top:.6em}}dd{{margin:0 0 0 1.5em}}",
            "</style></head>",
            "<body><main>{}</main>",
            "<script>setInterval(async()=>{{try{{const r=await fetch(location.pathname,",
            "{{cache:'no-store'}});if(!r.ok)return;const d=new DOMParser().parseFromString(",
            "await r.text(),'text/html');document.querySelector('main').replaceWith(",
            "d.querySelector('main'))}}catch(e){{}}}},2000)</script></body></html>"
        ),
        escape(title),
        main
    )
}

/// `text` safe inside HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

/// `1h 2m 3s`.
pub fn duration(seconds: u64) -> String {
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

/// Unix seconds as the time of day: `14:03:05 UTC`.
pub fn clock(unix: u64) -> String {
    let day = unix % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        day / 3600,
        day % 3600 / 60,
        day % 60
    )
}

/// An endpoint's breaker as the pages' JSON has it: `{"state": "healthy"}`, or `resting` (why,
/// the seconds until the next probe and when that is) or `probing` (whether a probe is in
/// flight now), each with when the endpoint went down (`down_since`, Unix seconds) and for how
/// long. `now` and `wall` are the same moment on the two clocks.
pub fn health_json(health: Health, now: Instant, wall: SystemTime) -> Value {
    let unix = |at: Instant| {
        let wall_at = if at <= now {
            wall.checked_sub(now - at)
        } else {
            wall.checked_add(at - now)
        };
        wall_at
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
    };
    let down = |since: Instant| now.saturating_duration_since(since).as_secs();
    match health {
        Health::Healthy => json!({"state": "healthy"}),
        Health::Resting { trip, until, since } => json!({
            "state": "resting",
            "why": trip.as_str(),
            "retry_in_seconds": whole_seconds(until.saturating_duration_since(now)),
            "until": unix(until),
            "down_since": unix(since),
            "down_seconds": down(since),
        }),
        Health::Probing {
            trip,
            since,
            in_flight,
        } => json!({
            "state": "probing",
            "why": trip.as_str(),
            "probe_in_flight": in_flight,
            "down_since": unix(since),
            "down_seconds": down(since),
        }),
    }
}

/// A [`health_json`] value as a table cell: what the walk does with the endpoint, and since
/// when it is down.
pub fn health_html(health: &Value) -> String {
    let n = |key: &str| health[key].as_u64().unwrap_or(0);
    let why = escape(health["why"].as_str().unwrap_or(""));
    let state = health["state"].as_str().unwrap_or("healthy");
    let now = match state {
        "resting" => format!(
            "<span class=\"warn\">resting</span>: {why}; skipped until {} (next probe in {} s)",
            clock(n("until")),
            n("retry_in_seconds")
        ),
        "probing" if health["probe_in_flight"].as_bool() == Some(true) => {
            format!("<span class=\"warn\">probing</span>: {why}; a request tries it now")
        }
        "probing" => {
            format!("<span class=\"warn\">probing</span>: {why}; the next request tries it")
        }
        _ => return "<span class=\"breaker ok\" data-state=\"healthy\">healthy</span>".to_owned(),
    };
    format!(
        "<span class=\"breaker\" data-state=\"{state}\">{now}<br><span class=\"muted\">down since {} ({})</span></span>",
        clock(n("down_since")),
        duration(n("down_seconds"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_escape_and_read_well() {
        let page = frame("a <b>", "<p>x</p>");
        assert!(page.contains("<title>a &lt;b&gt;</title>"));
        assert!(page.contains("<main><p>x</p></main>"));
        assert!(page.contains("setInterval(async()=>{try{"), "{page}");
        assert_eq!(escape("\"'&"), "&quot;&#39;&amp;");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(duration(3723), "1h 2m 3s");
        assert_eq!(clock(86_400 * 3 + 3723), "01:02:03 UTC");
    }

    #[test]
    fn a_breaker_reads_as_what_the_walk_does_and_since_when() {
        use crate::upstream::Trip;
        let now = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(86_400 + 3600);
        let healthy = health_json(Health::Healthy, now, wall);
        assert_eq!(healthy, json!({"state": "healthy"}));
        assert!(health_html(&healthy).contains(">healthy<"));
        let resting = health_json(
            Health::Resting {
                trip: Trip::Unreachable,
                until: now + Duration::from_millis(2500),
                since: now - Duration::from_secs(70),
            },
            now,
            wall,
        );
        assert_eq!(resting["retry_in_seconds"], 3, "rounded up, as Retry-After");
        assert_eq!(resting["down_seconds"], 70);
        let cell = health_html(&resting);
        assert!(cell.contains("resting</span>: unreachable"), "{cell}");
        assert!(cell.contains("skipped until 01:00:02 UTC"), "{cell}");
        assert!(cell.contains("down since 00:58:50 UTC (1m 10s)"), "{cell}");
        let probing = health_json(
            Health::Probing {
                trip: Trip::ServerError,
                since: now,
                in_flight: false,
            },
            now,
            wall,
        );
        assert!(health_html(&probing).contains("failing; the next request tries it"));
    }

    #[test]
    fn recent_lines_keep_the_newest_first() {
        let recent = RecentLines::default();
        for i in 0..RECENT + 5 {
            recent.push(format!("line {i}"));
        }
        let lines = recent.json();
        assert_eq!(lines.len(), RECENT);
        assert_eq!(lines[0]["text"], format!("line {}", RECENT + 4));
        assert_eq!(lines[RECENT - 1]["text"], "line 5");
    }
}

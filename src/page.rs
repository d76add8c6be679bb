//! The pieces the cache's and the shim's status pages share: the page frame (style, and the few
//! lines of script that refresh it every 2 s by fetching it again and swapping its `<main>`),
//! HTML escaping, how sizes and durations read, and [`RecentLines`] (the last few errors or
//! failovers). No I/O.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

/// Lines a [`RecentLines`] keeps.
pub const RECENT: usize = 20;

/// The last [`RECENT`] lines of something (errors, failovers, stale tags), each with its time.
#[derive(Debug, Default)]
pub struct RecentLines {
    lines: Mutex<VecDeque<(SystemTime, String)>>,
}

impl RecentLines {
    pub fn push(&self, text: String) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == RECENT {
            lines.pop_front();
        }
        lines.push_back((SystemTime::now(), text));
    }

    /// Newest first: `[{"seconds_ago": 3, "text": "…"}, …]`.
    pub fn json(&self) -> Vec<Value> {
        let now = SystemTime::now();
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .iter()
            .rev()
            .map(|(at, text)| {
                let ago = now.duration_since(*at).unwrap_or_default().as_secs();
                json!({"seconds_ago": ago, "text": text})
            })
            .collect()
    }
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
            ".warn{{color:#b50}}.muted{{color:#777}}code{{font-size:12px}}</style></head>",
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

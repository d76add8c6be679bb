//! What upstreams say about their pull budget, read from every answer: Docker Hub's
//! `ratelimit-limit: 100;w=21600` and `ratelimit-remaining: 76;w=21600` (sent on every answer,
//! HEADs included, which do not count as pulls), the IETF draft's `RateLimit-Limit`,
//! `RateLimit-Remaining` and `RateLimit-Reset`, and `Retry-After` on a 429 (seconds or an HTTP
//! date). Kept per endpoint, bounded like the breakers: endpoints include hosts clients name.
//!
//! [`MAX_RETRY_AFTER`] is the one cap on an upstream's `Retry-After`: [`retry_after`] never
//! reads a longer wait (so neither the breakers nor an error a client gets hold one), and
//! [`cap_retry_after`] shortens one in an answer relayed as it is.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::sync::lock;
use reqwest::header::{HeaderMap, RETRY_AFTER};

/// The longest `Retry-After` honoured or passed on: an upstream cannot shut itself off, or
/// tell a client to stay away, for longer.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(6 * 3600);
/// How long a 429 without `Retry-After` keeps requests away from its endpoint.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);
/// How long an observation without a window (`w=` or `RateLimit-Reset`) is believed.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);
/// Endpoints with a recorded budget at most.
pub const MAX_ENDPOINTS: usize = 4096;

/// An endpoint's pull budget as its last answer stated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Pulls allowed per window.
    pub limit: u64,
    /// Pulls left in the current window.
    pub remaining: u64,
    /// The window, when the upstream names it.
    pub window: Option<Duration>,
    pub observed: Instant,
}

impl Budget {
    /// The budget an answer states, if it states both limit and remaining.
    pub fn parse(headers: &HeaderMap, now: Instant) -> Option<Budget> {
        let (limit, limit_window) = quota(headers.get("ratelimit-limit")?.to_str().ok()?)?;
        let (remaining, remaining_window) =
            quota(headers.get("ratelimit-remaining")?.to_str().ok()?)?;
        let reset = headers
            .get("ratelimit-reset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let window = remaining_window.or(limit_window).or(reset);
        Some(Budget {
            limit,
            remaining: remaining.min(limit),
            window: window.map(Duration::from_secs),
            observed: now,
        })
    }

    /// Whether the observation still says something: after its window every pull it counted
    /// has expired.
    pub fn is_current(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.observed) < self.window.unwrap_or(DEFAULT_WINDOW)
    }
}

/// `100;w=21600` -> (100, Some(21600)); `100` -> (100, None).
fn quota(value: &str) -> Option<(u64, Option<u64>)> {
    let mut parts = value.split(';');
    let count = parts.next()?.trim().parse().ok()?;
    let window = parts
        .filter_map(|p| p.trim().strip_prefix("w="))
        .find_map(|w| w.trim().parse().ok());
    Some((count, window))
}

/// How long a 429 (or 503) asks the client to wait: `Retry-After` in seconds or as an HTTP date,
/// at most [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Shortens the `Retry-After` of an answer relayed to a client as it is, when it asks for more
/// than [`MAX_RETRY_AFTER`] (in seconds or as a date): it becomes the cap, in seconds. A value
/// that is not a wait is left alone.
pub fn cap_retry_after(headers: &mut HeaderMap, now: SystemTime) {
    if retry_after(headers, now) != Some(MAX_RETRY_AFTER) {
        return;
    }
    headers.insert(RETRY_AFTER, MAX_RETRY_AFTER.as_secs().into());
}

/// The last budget each endpoint stated.
#[derive(Debug, Default)]
pub struct Budgets {
    by_endpoint: Mutex<HashMap<String, Budget>>,
}

impl Budgets {
    /// Records the budget `headers` state for `endpoint`, if they state one.
    pub fn observe(&self, endpoint: &str, headers: &HeaderMap, now: Instant) {
        let Some(budget) = Budget::parse(headers, now) else {
            return;
        };
        let mut budgets = lock(&self.by_endpoint);
        if budgets.len() >= MAX_ENDPOINTS && !budgets.contains_key(endpoint) {
            budgets.retain(|_, b| b.is_current(now));
            if budgets.len() >= MAX_ENDPOINTS {
                return;
            }
        }
        budgets.insert(endpoint.to_owned(), budget);
    }

    /// `endpoint`'s budget, while its observation is current.
    pub fn get(&self, endpoint: &str, now: Instant) -> Option<Budget> {
        let budgets = lock(&self.by_endpoint);
        budgets.get(endpoint).copied().filter(|b| b.is_current(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn docker_hub_headers() {
        let now = Instant::now();
        let hub = headers(&[
            ("ratelimit-limit", "100;w=21600"),
            ("ratelimit-remaining", "76;w=21600"),
            ("docker-ratelimit-source", "203.0.113.7"),
        ]);
        let budget = Budget::parse(&hub, now).unwrap();
        assert_eq!((budget.limit, budget.remaining), (100, 76));
        assert_eq!(budget.window, Some(Duration::from_secs(21600)));
        assert!(budget.is_current(now + Duration::from_secs(21599)));
        assert!(!budget.is_current(now + Duration::from_secs(21600)));
    }

    #[test]
    fn draft_headers_and_nonsense() {
        let now = Instant::now();
        let draft = headers(&[
            ("ratelimit-limit", "50"),
            ("ratelimit-remaining", "70"),
            ("ratelimit-reset", "30"),
        ]);
        let budget = Budget::parse(&draft, now).unwrap();
        assert_eq!((budget.limit, budget.remaining), (50, 50), "capped");
        assert_eq!(budget.window, Some(Duration::from_secs(30)));
        let bare = headers(&[("ratelimit-limit", "5"), ("ratelimit-remaining", "1")]);
        let budget = Budget::parse(&bare, now).unwrap();
        assert!(budget.is_current(now + DEFAULT_WINDOW - Duration::from_secs(1)));
        assert!(!budget.is_current(now + DEFAULT_WINDOW));
        for broken in [
            headers(&[("ratelimit-limit", "100;w=21600")]),
            headers(&[("ratelimit-limit", "many"), ("ratelimit-remaining", "1")]),
            headers(&[("ratelimit-limit", "-1"), ("ratelimit-remaining", "1")]),
            HeaderMap::new(),
        ] {
            assert_eq!(Budget::parse(&broken, now), None, "{broken:?}");
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            retry_after(&headers(&[("retry-after", "120")]), now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &later)]), now),
            Some(Duration::from_secs(90))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &past)]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn retry_after_is_capped_when_read_and_when_relayed() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let cap = MAX_RETRY_AFTER.as_secs().to_string();
        let next_year = httpdate::fmt_http_date(now + Duration::from_secs(365 * 86400));
        for (sent, read, relayed) in [
            ("18446744073709551615", MAX_RETRY_AFTER, cap.as_str()),
            ("21601", MAX_RETRY_AFTER, cap.as_str()),
            (next_year.as_str(), MAX_RETRY_AFTER, cap.as_str()),
            (cap.as_str(), MAX_RETRY_AFTER, cap.as_str()),
            ("21599", Duration::from_secs(21599), "21599"),
            ("120", Duration::from_secs(120), "120"),
        ] {
            let mut answer = headers(&[("retry-after", sent)]);
            assert_eq!(retry_after(&answer, now), Some(read), "{sent}");
            cap_retry_after(&mut answer, now);
            assert_eq!(answer["retry-after"], relayed, "{sent}");
        }
        let mut unreadable = headers(&[("retry-after", "soon")]);
        cap_retry_after(&mut unreadable, now);
        assert_eq!(unreadable["retry-after"], "soon");
    }

    #[test]
    fn budgets_are_bounded_and_expire() {
        let budgets = Budgets::default();
        let now = Instant::now();
        let hub = headers(&[
            ("ratelimit-limit", "100;w=60"),
            ("ratelimit-remaining", "3;w=60"),
        ]);
        for i in 0..MAX_ENDPOINTS + 10 {
            budgets.observe(&format!("https://h{i}"), &hub, now);
        }
        assert_eq!(budgets.by_endpoint.lock().unwrap().len(), MAX_ENDPOINTS);
        assert_eq!(budgets.get("https://h0", now).unwrap().remaining, 3);
        assert_eq!(
            budgets.get("https://h0", now + Duration::from_secs(60)),
            None
        );
        let later = now + Duration::from_secs(60);
        budgets.observe("https://new", &hub, later);
        assert!(budgets.get("https://new", later).is_some());
    }
}

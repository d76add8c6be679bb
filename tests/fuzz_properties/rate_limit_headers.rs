//! What upstreams say about their limits: `Budget::parse` on arbitrary `ratelimit-*` headers,
//! `retry_after` and `cap_retry_after` on an arbitrary `Retry-After`. Never panics; a budget
//! never has more pulls left than its limit; no wait is read past `MAX_RETRY_AFTER`, and a
//! capped header reads at most that.
//!
//! Input: `name: value` lines.
//!
//! The fuzz target `rate_limit_headers` (fuzz/fuzz_targets/rate_limit_headers.rs) runs it under libFuzzer;
//! tests/fuzz_corpus.rs replays the committed corpus (fuzz/corpus/rate_limit_headers/) through it.

use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};
use regmirror::upstream::{Budget, MAX_RETRY_AFTER, cap_retry_after, retry_after};

/// The property, for one input.
pub fn check(input: &str) {
    let mut headers = HeaderMap::new();
    for line in input.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            headers.append(name, value);
        }
    }
    let now = Instant::now();
    if let Some(budget) = Budget::parse(&headers, now) {
        assert!(budget.remaining <= budget.limit, "{budget:?}");
        budget.is_current(now + Duration::from_secs(u32::MAX as u64));
    }
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    if let Some(wait) = retry_after(&headers, at) {
        assert!(wait <= MAX_RETRY_AFTER);
    }
    cap_retry_after(&mut headers, at);
    if let Some(wait) = retry_after(&headers, at) {
        assert!(wait <= MAX_RETRY_AFTER);
    }
}

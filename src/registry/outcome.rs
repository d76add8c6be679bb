//! How `regmirror serve` served a manifest, blob or referrers request, as one word: the request
//! log's `cache=`, the `X-Regmirror-Cache` header ([`super::CACHE_HEADER`]) that `regmirror
//! warm` reads, the `result` label of `regmirror_cache_requests_total` and the status page's
//! hits. The words are spelled here and nowhere else. Pure.

use std::fmt;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// How the cache served one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheOutcome {
    /// From what the cache holds (for a tag: after the upstream confirmed it).
    Hit,
    /// A tag within its upstream's `tag_revalidate` window, served without asking.
    Fresh,
    /// From what the cache holds because the upstream failed.
    Stale,
    /// A tag served without asking: the upstream's pull budget is under its reserve.
    Reserve,
    /// Content pushed to a local repository.
    Local,
    /// A held blob, answered with a redirect to where the bucket serves it.
    Redirect,
    /// From the upstream, by joining a download another request started.
    Joined,
    /// From the upstream, fetched for this request.
    Miss,
}

impl CacheOutcome {
    /// Every outcome.
    pub const ALL: [CacheOutcome; 8] = [
        CacheOutcome::Hit,
        CacheOutcome::Fresh,
        CacheOutcome::Stale,
        CacheOutcome::Reserve,
        CacheOutcome::Local,
        CacheOutcome::Redirect,
        CacheOutcome::Joined,
        CacheOutcome::Miss,
    ];

    /// Its word.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Fresh => "fresh",
            CacheOutcome::Stale => "stale",
            CacheOutcome::Reserve => "reserve",
            CacheOutcome::Local => "local",
            CacheOutcome::Redirect => "redirect",
            CacheOutcome::Joined => "joined",
            CacheOutcome::Miss => "miss",
        }
    }

    /// The outcome a word names (as the header carries it, surrounding spaces allowed).
    pub fn parse(word: &str) -> Option<Self> {
        let word = word.trim();
        Self::ALL.into_iter().find(|o| o.as_str() == word)
    }

    /// Whether the answer came from what the cache held rather than from the upstream now.
    pub fn is_cached(self) -> bool {
        !matches!(self, CacheOutcome::Miss | CacheOutcome::Joined)
    }

    /// Whether the status page counts it as a hit: held content served as the cache's own
    /// answer. A stale answer is held content too, but served because the upstream failed: the
    /// page counts those apart.
    pub fn is_hit(self) -> bool {
        self.is_cached() && self != CacheOutcome::Stale
    }
}

impl fmt::Display for CacheOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `result` label of the cache's request counter is the word.
impl EncodeLabelValue for CacheOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_say_where_the_answer_came_from() {
        for outcome in CacheOutcome::ALL {
            assert_eq!(CacheOutcome::parse(outcome.as_str()), Some(outcome));
            assert_eq!(outcome.to_string(), outcome.as_str());
        }
        assert_eq!(CacheOutcome::parse(" hit "), Some(CacheOutcome::Hit));
        assert_eq!(CacheOutcome::parse("something-new"), None);
        let cached: Vec<&str> = CacheOutcome::ALL
            .into_iter()
            .filter(|o| o.is_cached())
            .map(CacheOutcome::as_str)
            .collect();
        assert_eq!(
            cached,
            ["hit", "fresh", "stale", "reserve", "local", "redirect"]
        );
        let hits: Vec<&str> = CacheOutcome::ALL
            .into_iter()
            .filter(|o| o.is_hit())
            .map(CacheOutcome::as_str)
            .collect();
        assert_eq!(hits, ["hit", "fresh", "reserve", "local", "redirect"]);
    }
}

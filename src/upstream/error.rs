//! Why no endpoint produced a response, as a type: the walk's outcome (every endpoint
//! unreachable, throttled with its wait, resting, not found, refused by the address policy, or
//! failed otherwise), each with the summary of every endpoint's failure. [`registry_error`] is
//! the one mapping of it to the error a registry client gets, for the cache and the shim alike.
//!
//! [`registry_error`]: UpstreamError::registry_error

use std::time::Duration;

use super::limit::Refused;
use crate::registry::{ErrorCode, RegistryError};

/// Why no endpoint produced a response. Every variant carries the summary of the failures
/// (`endpoint: why; endpoint: why`), which is its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// Every failure was a timeout or a refused connection: the upstream is down.
    #[error("{summary}")]
    Unreachable { summary: String },
    /// Nothing was sent: every endpoint rests after recent failures, the first of them taking
    /// a request again after `wait`.
    #[error("{summary}")]
    Resting { summary: String, wait: Duration },
    /// Nothing was sent, and the client should hear 429: every endpoint rests and the last one
    /// because it answered 429, or the request waited too long for its turn under the
    /// upstream's own limits. `wait`: when to try again.
    #[error("{summary}")]
    Throttled { summary: String, wait: Duration },
    /// Every endpoint answered HTTP 404: none of them has it.
    #[error("{summary}")]
    NotFound { summary: String },
    /// The last endpoint was refused by the address policy (`guard::AddressRefused`): a rule,
    /// not a failure, so the client hears 403 DENIED and the endpoint does not rest.
    #[error("{summary}")]
    Denied { summary: String },
    /// Anything else: HTTP errors, a token service's refusal, a URL that cannot be built.
    #[error("{summary}")]
    Failed { summary: String },
}

/// What a walk saw of its endpoints when none produced a response (see
/// [`UpstreamError::walked`]).
#[derive(Debug)]
pub(super) struct Walked {
    pub(super) summary: String,
    /// Every failure was a timeout or a refused connection.
    pub(super) unreachable: bool,
    /// Every endpoint rests: the shortest wait among them.
    pub(super) retry_after: Option<Duration>,
    /// Every endpoint rests, the last one after a 429.
    pub(super) throttled: bool,
    /// Every endpoint answered 404.
    pub(super) not_found: bool,
    /// The last endpoint was refused by the address policy.
    pub(super) denied: bool,
}

impl UpstreamError {
    /// One endpoint's failure: a timeout or refused connection (`unreachable`), or another.
    pub(super) fn new(summary: String, unreachable: bool) -> Self {
        if unreachable {
            UpstreamError::Unreachable { summary }
        } else {
            UpstreamError::Failed { summary }
        }
    }

    /// A target the address policy refused.
    pub(super) fn denied(summary: String) -> Self {
        UpstreamError::Denied { summary }
    }

    /// A request the upstream's own limits kept queued too long (`limit::RequestLimiter`).
    pub fn queued(refused: Refused) -> Self {
        UpstreamError::Throttled {
            summary: refused.to_string(),
            wait: Duration::from_secs(1),
        }
    }

    /// The outcome of a walk in which no endpoint produced a response.
    pub(super) fn walked(walk: Walked) -> Self {
        let Walked {
            summary,
            unreachable,
            retry_after,
            throttled,
            not_found,
            denied,
        } = walk;
        match retry_after {
            _ if denied => UpstreamError::Denied { summary },
            Some(wait) if throttled => UpstreamError::Throttled { summary, wait },
            Some(wait) => UpstreamError::Resting { summary, wait },
            None if not_found => UpstreamError::NotFound { summary },
            None => UpstreamError::new(summary, unreachable),
        }
    }

    /// Every endpoint's failure, in one line.
    pub fn summary(&self) -> &str {
        match self {
            UpstreamError::Unreachable { summary }
            | UpstreamError::Resting { summary, .. }
            | UpstreamError::Throttled { summary, .. }
            | UpstreamError::NotFound { summary }
            | UpstreamError::Denied { summary }
            | UpstreamError::Failed { summary } => summary,
        }
    }

    /// Every failure was a timeout or a refused connection (or nothing was tried).
    pub(super) fn is_unreachable(&self) -> bool {
        matches!(self, UpstreamError::Unreachable { .. })
    }

    /// The address policy refused the endpoint.
    pub(super) fn is_denied(&self) -> bool {
        matches!(self, UpstreamError::Denied { .. })
    }

    /// The client should hear 429.
    pub fn is_throttled(&self) -> bool {
        matches!(self, UpstreamError::Throttled { .. })
    }

    /// Every endpoint answered 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, UpstreamError::NotFound { .. })
    }

    /// When nothing was sent: when to try again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            UpstreamError::Resting { wait, .. } | UpstreamError::Throttled { wait, .. } => {
                Some(*wait)
            }
            UpstreamError::Unreachable { .. }
            | UpstreamError::NotFound { .. }
            | UpstreamError::Denied { .. }
            | UpstreamError::Failed { .. } => None,
        }
    }

    /// The error a registry client gets, `who` naming the upstream: 403 DENIED when the address
    /// policy refused it (the message names the rule; no retry helps), 429 when the upstream
    /// throttles (or the request waited too long for its turn), else 503; with `Retry-After`
    /// when nothing was sent.
    pub fn registry_error(&self, who: &str) -> RegistryError {
        let summary = self.summary();
        let answer = match self {
            UpstreamError::Denied { .. } => {
                return RegistryError::new(ErrorCode::Denied, format!("{who}: {summary}"));
            }
            UpstreamError::Throttled { .. } => RegistryError::new(
                ErrorCode::TooManyRequests,
                format!("{who}: rate-limited: {summary}"),
            ),
            UpstreamError::Unreachable { .. }
            | UpstreamError::Resting { .. }
            | UpstreamError::NotFound { .. }
            | UpstreamError::Failed { .. } => RegistryError::new(
                ErrorCode::Unavailable,
                format!("{who}: unreachable: {summary}"),
            ),
        };
        answer.with_retry_after(self.retry_after())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walked(retry_after: Option<u64>, throttled: bool, not_found: bool, denied: bool) -> Walked {
        Walked {
            summary: "a: why".to_owned(),
            unreachable: true,
            retry_after: retry_after.map(Duration::from_secs),
            throttled,
            not_found,
            denied,
        }
    }

    #[test]
    fn a_walk_ends_in_one_outcome_and_one_answer() {
        let cases = [
            (walked(None, false, false, true), ErrorCode::Denied, None),
            (
                walked(Some(3), true, false, false),
                ErrorCode::TooManyRequests,
                Some(3),
            ),
            (
                walked(Some(2), false, false, false),
                ErrorCode::Unavailable,
                Some(2),
            ),
            (
                walked(None, false, true, false),
                ErrorCode::Unavailable,
                None,
            ),
            (
                walked(None, false, false, false),
                ErrorCode::Unavailable,
                None,
            ),
        ];
        for (walk, code, retry_after) in cases {
            let error = UpstreamError::walked(walk);
            let answer = error.registry_error("upstream u");
            assert_eq!(
                (answer.code, answer.retry_after),
                (code, retry_after),
                "{error:?}"
            );
            assert!(answer.message.ends_with("a: why"), "{}", answer.message);
        }
        let queued = UpstreamError::queued(Refused::Concurrency {
            limit: 2,
            waited: Duration::from_secs(5),
        });
        let answer = queued.registry_error("upstream u");
        assert_eq!(answer.code, ErrorCode::TooManyRequests);
        assert_eq!(answer.retry_after, Some(1));
        assert!(
            answer
                .message
                .contains("rate-limited: 2 requests in flight (max_concurrent)")
        );
    }
}

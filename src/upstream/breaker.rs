//! A circuit breaker per endpoint, so a dead or silent mirror costs its timeout once, not once
//! per request.
//!
//! Closed: requests go through; a failure (transport error, timeout, 5xx) opens it. Open: the
//! endpoint is skipped until the cool-down ends. Half-open: one request probes it; success closes
//! the breaker, failure opens it again with the cool-down doubled (up to `MAX_COOL_DOWN`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const FIRST_COOL_DOWN: Duration = Duration::from_secs(5);
pub const MAX_COOL_DOWN: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
enum State {
    Open {
        until: Instant,
        cool_down: Duration,
    },
    /// A probe is in flight; others skip the endpoint meanwhile.
    HalfOpen {
        cool_down: Duration,
    },
}

/// Breakers by endpoint URL; an endpoint without an entry is closed.
#[derive(Debug, Default)]
pub struct Breakers {
    states: Mutex<HashMap<String, State>>,
}

/// What the walker may do with an endpoint now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// The single half-open probe.
    Probe,
    Skipped,
}

impl Breakers {
    pub fn admit(&self, endpoint: &str, now: Instant) -> Admission {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        match states.get(endpoint).copied() {
            None => Admission::Allowed,
            Some(State::Open { until, cool_down }) if now >= until => {
                states.insert(endpoint.to_owned(), State::HalfOpen { cool_down });
                Admission::Probe
            }
            Some(State::Open { .. } | State::HalfOpen { .. }) => Admission::Skipped,
        }
    }

    pub fn success(&self, endpoint: &str) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.remove(endpoint);
    }

    pub fn failure(&self, endpoint: &str, now: Instant) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let next = match states.get(endpoint).copied() {
            None => State::Open {
                until: now + FIRST_COOL_DOWN,
                cool_down: FIRST_COOL_DOWN,
            },
            Some(State::HalfOpen { cool_down }) => {
                let cool_down = (cool_down * 2).min(MAX_COOL_DOWN);
                State::Open {
                    until: now + cool_down,
                    cool_down,
                }
            }
            Some(open @ State::Open { .. }) => open,
        };
        states.insert(endpoint.to_owned(), next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_probes_and_backs_off() {
        let b = Breakers::default();
        let t0 = Instant::now();
        assert_eq!(b.admit("m", t0), Admission::Allowed);
        b.failure("m", t0);
        assert_eq!(
            b.admit("m", t0 + Duration::from_secs(1)),
            Admission::Skipped
        );
        let t1 = t0 + FIRST_COOL_DOWN;
        assert_eq!(b.admit("m", t1), Admission::Probe);
        assert_eq!(b.admit("m", t1), Admission::Skipped, "one probe at a time");
        b.failure("m", t1);
        assert_eq!(
            b.admit("m", t1 + FIRST_COOL_DOWN),
            Admission::Skipped,
            "cool-down doubled"
        );
        let t2 = t1 + FIRST_COOL_DOWN * 2;
        assert_eq!(b.admit("m", t2), Admission::Probe);
        b.success("m");
        assert_eq!(b.admit("m", t2), Admission::Allowed);
        assert_eq!(b.admit("other", t0), Admission::Allowed);
    }

    #[test]
    fn cool_down_is_capped() {
        let b = Breakers::default();
        let mut now = Instant::now();
        b.failure("m", now);
        for _ in 0..20 {
            now += MAX_COOL_DOWN;
            assert_eq!(b.admit("m", now), Admission::Probe);
            b.failure("m", now);
        }
        assert_eq!(b.admit("m", now + MAX_COOL_DOWN), Admission::Probe);
    }
}

//! A circuit breaker per endpoint, so a dead, silent or throttling endpoint costs its timeout
//! once, not once per request.
//!
//! Closed: requests go through; a failure opens it: a transport error or timeout (the endpoint
//! is unreachable), a 5xx answer, or a 429 (throttled: open until the endpoint's `Retry-After`).
//! Open: the endpoint is skipped until the cool-down ends. Half-open: one request probes it;
//! success closes the breaker, failure opens it again with the cool-down doubled (up to
//! `MAX_COOL_DOWN`). A probe that ends with neither (its caller went away mid-request) must not
//! leave the endpoint half-open forever: the walker holds a [`Probe`] guard whose drop hands the
//! probe to the next request.
//!
//! Each open state remembers when the endpoint first failed in a row (`since`), for the status
//! pages' "down since" ([`Breakers::health`]).
//!
//! Endpoints include hosts clients name (dynamic upstreams), so the map is bounded: beyond
//! [`MAX_ENDPOINTS`] entries, expired ones are dropped and a new failing endpoint is not tracked
//! (it is then treated as closed, the safe default).

use crate::sync::lock;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const FIRST_COOL_DOWN: Duration = Duration::from_secs(5);
pub const MAX_COOL_DOWN: Duration = Duration::from_secs(300);
/// Endpoints with a breaker state at most.
pub const MAX_ENDPOINTS: usize = 4096;

/// Why an endpoint's breaker opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trip {
    /// A transport error or a timeout.
    Unreachable,
    /// A 5xx answer: the endpoint answers, so the last endpoint of a walk is still asked.
    ServerError,
    /// A 429 answer: nothing is sent until its `Retry-After`.
    Throttled,
}

impl Trip {
    /// How an operator reads it: `unreachable`, `failing` or `answered 429`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trip::Unreachable => "unreachable",
            Trip::ServerError => "failing",
            Trip::Throttled => "answered 429",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Open {
        until: Instant,
        cool_down: Duration,
        trip: Trip,
        /// The first failure of this run of failures.
        since: Instant,
    },
    /// A probe is in flight; others skip the endpoint meanwhile.
    HalfOpen {
        cool_down: Duration,
        trip: Trip,
        since: Instant,
    },
}

/// An endpoint's breaker as the status pages show it: what the walk does with it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Requests go through.
    Healthy,
    /// Skipped until `until`; failing since `since`.
    Resting {
        trip: Trip,
        until: Instant,
        since: Instant,
    },
    /// Its rest is over: the next request probes it, or (`in_flight`) one does now.
    Probing {
        trip: Trip,
        since: Instant,
        in_flight: bool,
    },
}

/// Breakers by endpoint URL; an endpoint without an entry is closed.
#[derive(Debug, Default)]
pub struct Breakers {
    states: Mutex<HashMap<String, State>>,
}

/// An endpoint the walker skips, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resting {
    pub trip: Trip,
    /// When the next probe may go; `None` while a probe is in flight.
    pub until: Option<Instant>,
}

/// What the walker may do with an endpoint now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// The single half-open probe.
    Probe,
    Skipped(Resting),
}

impl Breakers {
    pub fn admit(&self, endpoint: &str, now: Instant) -> Admission {
        let mut states = lock(&self.states);
        match states.get(endpoint).copied() {
            None => Admission::Allowed,
            Some(State::Open {
                until,
                cool_down,
                trip,
                since,
            }) if now >= until => {
                states.insert(
                    endpoint.to_owned(),
                    State::HalfOpen {
                        cool_down,
                        trip,
                        since,
                    },
                );
                Admission::Probe
            }
            Some(State::Open { until, trip, .. }) => Admission::Skipped(Resting {
                trip,
                until: Some(until),
            }),
            Some(State::HalfOpen { trip, .. }) => Admission::Skipped(Resting { trip, until: None }),
        }
    }

    /// What the walk does with `endpoint` now, without changing its state.
    pub fn health(&self, endpoint: &str, now: Instant) -> Health {
        let states = lock(&self.states);
        match states.get(endpoint).copied() {
            None => Health::Healthy,
            Some(State::Open {
                until, trip, since, ..
            }) if now < until => Health::Resting { trip, until, since },
            Some(State::Open { trip, since, .. }) => Health::Probing {
                trip,
                since,
                in_flight: false,
            },
            Some(State::HalfOpen { trip, since, .. }) => Health::Probing {
                trip,
                since,
                in_flight: true,
            },
        }
    }

    /// A probe that ended without an answer either way: the next request probes again.
    pub fn abandon(&self, endpoint: &str, now: Instant) {
        let mut states = lock(&self.states);
        if let Some(State::HalfOpen {
            cool_down,
            trip,
            since,
        }) = states.get(endpoint).copied()
        {
            states.insert(
                endpoint.to_owned(),
                State::Open {
                    until: now,
                    cool_down,
                    trip,
                    since,
                },
            );
        }
    }

    pub fn success(&self, endpoint: &str) {
        let mut states = lock(&self.states);
        states.remove(endpoint);
    }

    /// An unreachable endpoint or a 5xx answer.
    pub fn failure(&self, endpoint: &str, now: Instant, trip: Trip) {
        self.open(endpoint, now, trip, None);
    }

    /// A 429 answer: closed to requests for `retry_after` (as `ratelimit::retry_after` read it,
    /// capped there).
    pub fn throttled(&self, endpoint: &str, now: Instant, retry_after: Duration) {
        self.open(endpoint, now, Trip::Throttled, Some(retry_after));
    }

    fn open(&self, endpoint: &str, now: Instant, trip: Trip, rest: Option<Duration>) {
        let mut states = lock(&self.states);
        if states.len() >= MAX_ENDPOINTS && !states.contains_key(endpoint) {
            states.retain(|_, state| !matches!(state, State::Open { until, .. } if *until <= now));
            if states.len() >= MAX_ENDPOINTS {
                return;
            }
        }
        let (cool_down, since) = match states.get(endpoint).copied() {
            None => (FIRST_COOL_DOWN, now),
            Some(State::HalfOpen {
                cool_down, since, ..
            }) => ((cool_down * 2).min(MAX_COOL_DOWN), since),
            // Already open (requests that were in flight when it opened): a throttled answer
            // still moves `until` to its Retry-After; a failure changes nothing.
            Some(State::Open {
                cool_down, since, ..
            }) if rest.is_some() => (cool_down, since),
            Some(State::Open { .. }) => return,
        };
        states.insert(
            endpoint.to_owned(),
            State::Open {
                until: now + rest.unwrap_or(cool_down),
                cool_down,
                trip,
                since,
            },
        );
    }
}

/// The one half-open probe of an endpoint, held while it is in flight: dropped without
/// [`Probe::resolved`], it gives the probe back ([`Breakers::abandon`]).
pub struct Probe<'a> {
    breakers: &'a Breakers,
    endpoint: &'a str,
    resolved: bool,
}

impl<'a> Probe<'a> {
    pub fn new(breakers: &'a Breakers, endpoint: &'a str) -> Self {
        Probe {
            breakers,
            endpoint,
            resolved: false,
        }
    }

    /// The probe's outcome was recorded (success or failure).
    pub fn resolved(mut self) {
        self.resolved = true;
    }
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        if !self.resolved {
            self.breakers.abandon(self.endpoint, Instant::now());
        }
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
        b.failure("m", t0, Trip::Unreachable);
        assert_eq!(
            b.admit("m", t0 + Duration::from_secs(1)),
            Admission::Skipped(Resting {
                trip: Trip::Unreachable,
                until: Some(t0 + FIRST_COOL_DOWN)
            })
        );
        let t1 = t0 + FIRST_COOL_DOWN;
        assert_eq!(b.admit("m", t1), Admission::Probe);
        assert_eq!(
            b.admit("m", t1),
            Admission::Skipped(Resting {
                trip: Trip::Unreachable,
                until: None
            }),
            "one probe at a time"
        );
        b.failure("m", t1, Trip::Unreachable);
        assert!(
            matches!(b.admit("m", t1 + FIRST_COOL_DOWN), Admission::Skipped(_)),
            "cool-down doubled"
        );
        let t2 = t1 + FIRST_COOL_DOWN * 2;
        assert_eq!(b.admit("m", t2), Admission::Probe);
        b.success("m");
        assert_eq!(b.admit("m", t2), Admission::Allowed);
        assert_eq!(b.admit("other", t0), Admission::Allowed);
    }

    #[test]
    fn health_says_what_the_walk_does_and_since_when_the_endpoint_is_down() {
        let b = Breakers::default();
        let t0 = Instant::now();
        assert_eq!(b.health("m", t0), Health::Healthy);
        b.failure("m", t0, Trip::Unreachable);
        assert_eq!(
            b.health("m", t0 + Duration::from_secs(1)),
            Health::Resting {
                trip: Trip::Unreachable,
                until: t0 + FIRST_COOL_DOWN,
                since: t0
            }
        );
        // The rest is over and nobody asked yet: not closed, the next request probes it.
        let t1 = t0 + FIRST_COOL_DOWN;
        let probing = |in_flight| Health::Probing {
            trip: Trip::Unreachable,
            since: t0,
            in_flight,
        };
        assert_eq!(b.health("m", t1), probing(false));
        assert_eq!(b.admit("m", t1), Admission::Probe);
        assert_eq!(b.health("m", t1), probing(true));
        // The probe fails: it rests again, down since the first failure.
        b.failure("m", t1, Trip::Unreachable);
        assert_eq!(
            b.health("m", t1),
            Health::Resting {
                trip: Trip::Unreachable,
                until: t1 + FIRST_COOL_DOWN * 2,
                since: t0
            }
        );
        b.success("m");
        assert_eq!(b.health("m", t1), Health::Healthy);
    }

    #[test]
    fn a_probe_dropped_unresolved_is_handed_to_the_next_request() {
        let b = Breakers::default();
        let t0 = Instant::now();
        b.failure("m", t0, Trip::Unreachable);
        let t1 = t0 + FIRST_COOL_DOWN;
        assert_eq!(b.admit("m", t1), Admission::Probe);
        drop(Probe::new(&b, "m"));
        assert_eq!(b.admit("m", t1), Admission::Probe, "not half-open forever");
        let probe = Probe::new(&b, "m");
        b.success("m");
        probe.resolved();
        assert_eq!(b.admit("m", t1), Admission::Allowed);
    }

    #[test]
    fn the_number_of_endpoints_is_bounded() {
        let b = Breakers::default();
        let t0 = Instant::now();
        for i in 0..MAX_ENDPOINTS + 100 {
            b.failure(&format!("http://h{i}"), t0, Trip::Unreachable);
        }
        assert_eq!(b.states.lock().unwrap().len(), MAX_ENDPOINTS);
        // Once their cool-down is over, new failures take their places.
        let later = t0 + FIRST_COOL_DOWN;
        b.failure("http://new", later, Trip::Unreachable);
        assert!(matches!(
            b.admit("http://new", later),
            Admission::Skipped(_)
        ));
        assert!(b.states.lock().unwrap().len() <= MAX_ENDPOINTS);
    }

    #[test]
    fn cool_down_is_capped() {
        let b = Breakers::default();
        let mut now = Instant::now();
        b.failure("m", now, Trip::Unreachable);
        for _ in 0..20 {
            now += MAX_COOL_DOWN;
            assert_eq!(b.admit("m", now), Admission::Probe);
            b.failure("m", now, Trip::Unreachable);
        }
        assert_eq!(b.admit("m", now + MAX_COOL_DOWN), Admission::Probe);
    }

    #[test]
    fn a_throttled_endpoint_rests_until_its_retry_after_then_takes_one_probe() {
        let b = Breakers::default();
        let t0 = Instant::now();
        b.throttled("m", t0, Duration::from_secs(60));
        let resting = Admission::Skipped(Resting {
            trip: Trip::Throttled,
            until: Some(t0 + Duration::from_secs(60)),
        });
        assert_eq!(b.admit("m", t0 + FIRST_COOL_DOWN * 2), resting);
        assert_eq!(
            b.health("m", t0),
            Health::Resting {
                trip: Trip::Throttled,
                until: t0 + Duration::from_secs(60),
                since: t0
            },
            "reading the health changes nothing"
        );
        assert_eq!(b.health("other", t0), Health::Healthy);
        // A request that was in flight fails meanwhile: the rest stays the upstream's word.
        b.failure("m", t0 + Duration::from_secs(1), Trip::Unreachable);
        assert_eq!(b.admit("m", t0 + Duration::from_secs(59)), resting);
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(b.admit("m", t1), Admission::Probe);
        assert!(matches!(b.admit("m", t1), Admission::Skipped(_)));
        // The probe is throttled again: the new Retry-After counts.
        let hour = Duration::from_secs(3600);
        b.throttled("m", t1, hour);
        assert_eq!(
            b.admit("m", t1 + hour - Duration::from_secs(1)),
            Admission::Skipped(Resting {
                trip: Trip::Throttled,
                until: Some(t1 + hour)
            })
        );
        assert_eq!(b.admit("m", t1 + hour), Admission::Probe);
        b.success("m");
        assert_eq!(b.admit("m", t1 + hour), Admission::Allowed);
    }
}

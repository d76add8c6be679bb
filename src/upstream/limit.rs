//! Request limits per upstream: `max_concurrent` requests in flight (a download is in flight
//! until its body ends) and `max_rate` requests per second, both first come, first served. A
//! request that would wait longer than the queue timeout is refused at once with an error that
//! names the limit, never dropped silently.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::sync::lock;
use bytes::Bytes;
use reqwest::Response;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// One upstream's limits and queue.
#[derive(Debug)]
pub struct RequestLimiter {
    max_concurrent: Option<(usize, Arc<Semaphore>)>,
    /// `1 / max_rate`, and when the next request may go.
    pace: Option<(Duration, Mutex<Instant>)>,
    queue_timeout: Duration,
}

/// Why a request was not sent: the queue before one of the limits was longer than
/// `limits.upstream_queue_timeout`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `limit` requests were in flight for all of `waited`.
    #[error(
        "{limit} requests in flight (max_concurrent) kept this one queued for {waited:?} \
         (limits.upstream_queue_timeout)"
    )]
    Concurrency { limit: usize, waited: Duration },
    /// At one request per `interval`, this one's turn was further than `waited` away.
    #[error(
        "requests are queued past {waited:?} (limits.upstream_queue_timeout) at max_rate \
         {:.3}/s", 1.0 / .interval.as_secs_f64()
    )]
    Rate {
        waited: Duration,
        interval: Duration,
    },
}

/// A request's place among those in flight, held until its response body ends.
#[derive(Debug)]
pub struct Admitted {
    permit: Option<OwnedSemaphorePermit>,
}

impl RequestLimiter {
    /// `None` when there is nothing to limit. `max_rate` is in requests per second.
    pub fn new(
        max_concurrent: Option<usize>,
        max_rate: Option<f64>,
        queue_timeout: Duration,
    ) -> Option<Self> {
        if max_concurrent.is_none() && max_rate.is_none() {
            return None;
        }
        Some(RequestLimiter {
            max_concurrent: max_concurrent.map(|n| (n, Arc::new(Semaphore::new(n)))),
            pace: max_rate.map(|rate| {
                (
                    Duration::from_secs_f64(1.0 / rate),
                    Mutex::new(Instant::now()),
                )
            }),
            queue_timeout,
        })
    }

    /// Waits for this request's turn: a place among those in flight, then its slot in the pace.
    pub async fn admit(&self) -> Result<Admitted, Refused> {
        let deadline = Instant::now() + self.queue_timeout;
        let permit = match &self.max_concurrent {
            None => None,
            Some((limit, semaphore)) => {
                let acquire = semaphore.clone().acquire_owned();
                match tokio::time::timeout_at(deadline, acquire).await {
                    Ok(Ok(permit)) => Some(permit),
                    Ok(Err(_)) => unreachable!("the semaphore is never closed"),
                    Err(_) => {
                        return Err(Refused::Concurrency {
                            limit: *limit,
                            waited: self.queue_timeout,
                        });
                    }
                }
            }
        };
        if let Some((interval, next)) = &self.pace {
            let slot = {
                let mut next = lock(next);
                let slot = (*next).max(Instant::now());
                if slot > deadline {
                    return Err(Refused::Rate {
                        waited: self.queue_timeout,
                        interval: *interval,
                    });
                }
                *next = slot + *interval;
                slot
            };
            tokio::time::sleep_until(slot).await;
        }
        Ok(Admitted { permit })
    }
}

impl Admitted {
    /// `response`, holding this request's place until its body is read or dropped.
    pub fn hold(self, response: Response) -> Response {
        if self.permit.is_none() {
            return response;
        }
        let response = http::Response::<reqwest::Body>::from(response);
        let (parts, body) = response.into_parts();
        let held = Held { body, _held: self };
        Response::from(http::Response::from_parts(parts, reqwest::Body::wrap(held)))
    }
}

/// A response body and the place it holds.
struct Held {
    body: reqwest::Body,
    _held: Admitted,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = reqwest::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn max_rate_paces_requests_in_arrival_order() {
        let limiter = RequestLimiter::new(None, Some(4.0), Duration::from_secs(1)).unwrap();
        let started = Instant::now();
        let mut sent = Vec::new();
        for _ in 0..5 {
            limiter.admit().await.unwrap();
            sent.push(started.elapsed());
        }
        let ms: Vec<u128> = sent.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [0, 250, 500, 750, 1000]);
        // Six more at once: the next slots are at 1.25, 1.5, 1.75 and 2 s; later ones would
        // wait past the 1 s queue timeout and are refused.
        let outcomes: Vec<bool> =
            futures_util::future::join_all((0..6).map(|_| async { limiter.admit().await.is_ok() }))
                .await;
        assert_eq!(outcomes, [true, true, true, true, false, false]);
    }

    #[tokio::test(start_paused = true)]
    async fn max_concurrent_holds_a_place_until_the_body_is_done() {
        let limiter = Arc::new(RequestLimiter::new(Some(2), None, Duration::from_secs(5)).unwrap());
        let first = limiter.admit().await.unwrap();
        let second = limiter.admit().await.unwrap();
        let waiting = tokio::spawn({
            let limiter = limiter.clone();
            async move {
                let started = Instant::now();
                limiter.admit().await.map(|_| started.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(first);
        assert_eq!(waiting.await.unwrap(), Ok(Duration::from_secs(2)));
        // The queue timeout: with both places taken for good, a request is refused after 5 s.
        let _third = limiter.admit().await.unwrap();
        let refused = limiter.admit().await.unwrap_err();
        assert!(refused.to_string().contains("max_concurrent"), "{refused}");
        drop(second);
        // A held response keeps its place until its body is dropped.
        let response = Response::from(http::Response::new(reqwest::Body::from("body")));
        let admitted = limiter.admit().await.unwrap();
        let held = admitted.hold(response);
        assert!(
            tokio::time::timeout(Duration::from_millis(10), limiter.admit())
                .await
                .is_err()
        );
        assert_eq!(held.bytes().await.unwrap(), "body");
        assert!(limiter.admit().await.is_ok());
    }
}

//! Single flights: at most one piece of work in flight per key, whose answer every concurrent
//! request for that key shares. The tag revalidations ([`super::manifests`]) and the proxied
//! referrers lists ([`super::referrers`]) ask their upstream through one each, so N clients
//! asking at once cost the upstream one request.
//!
//! The work runs as a task of its own: it goes on to the end however many of its requests go
//! away, and whatever ends it (a panic included) takes it out of the map. Not for blobs: a fill
//! streams its bytes to every reader as they arrive ([`super::fill`]).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};

use crate::registry::{RegistryError, internal};
use crate::sync::lock;

/// A piece of work in flight, shared by every request that joined it.
pub(crate) type Flight<T> = Shared<BoxFuture<'static, Result<T, RegistryError>>>;

/// The flights in progress, by key.
pub(crate) struct Flights<T> {
    /// What the work is, for the error a client gets when its task dies.
    what: &'static str,
    in_flight: Arc<Mutex<HashMap<String, Flight<T>>>>,
}

impl<T> fmt::Debug for Flights<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flights")
            .field("what", &self.what)
            .field("in_flight", &lock(&self.in_flight).len())
            .finish()
    }
}

/// Whether a request started the work it waits for or joined it in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Joined {
    Started,
    Joined,
}

impl<T: Clone + Send + Sync + 'static> Flights<T> {
    /// No flights yet; `what` names the work ("the tag revalidation").
    pub(crate) fn new(what: &'static str) -> Self {
        Flights {
            what,
            in_flight: Arc::default(),
        }
    }

    /// The flight for `key`: joined when one is in progress, else started with `work()`.
    pub(crate) fn join<F>(&self, key: String, work: impl FnOnce() -> F) -> (Flight<T>, Joined)
    where
        F: Future<Output = Result<T, RegistryError>> + Send + 'static,
    {
        let mut flights = lock(&self.in_flight);
        if let Some(flight) = flights.get(&key) {
            return (flight.clone(), Joined::Joined);
        }
        let leave = Leave {
            in_flight: self.in_flight.clone(),
            key: key.clone(),
        };
        let work = work();
        let task = tokio::spawn(async move {
            let _leave = leave;
            work.await
        });
        let what = self.what;
        let flight = async move {
            task.await
                .unwrap_or_else(|e| Err(internal(format!("{what} failed: {e}"))))
        }
        .boxed()
        .shared();
        flights.insert(key, flight.clone());
        (flight, Joined::Started)
    }
}

/// Takes a finished (or failed) flight out of the map, whatever ended its task.
struct Leave<T> {
    in_flight: Arc<Mutex<HashMap<String, Flight<T>>>>,
    key: String,
}

impl<T> Drop for Leave<T> {
    fn drop(&mut self) {
        lock(&self.in_flight).remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_requests_share_one_flight_and_a_finished_one_leaves() {
        let flights = Flights::<u32>::new("the test work");
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let (first, started) = flights.join("k".to_owned(), || async move {
            let _ = wait.await;
            Ok(7)
        });
        let (second, joined) = flights.join("k".to_owned(), || async { Ok(8) });
        assert_eq!((started, joined), (Joined::Started, Joined::Joined));
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), 7);
        assert_eq!(
            second.await.unwrap(),
            7,
            "the joiner shares the first answer"
        );
        let (third, again) = flights.join("k".to_owned(), || async { Ok(9) });
        assert_eq!(again, Joined::Started, "a finished flight left the map");
        assert_eq!(third.await.unwrap(), 9);
    }

    #[tokio::test]
    async fn a_panicking_flight_is_an_internal_error_and_leaves() {
        let flights = Flights::<u32>::new("the test work");
        let (flight, _) = flights.join("k".to_owned(), || async {
            let dies = true;
            assert!(!dies, "the work panics");
            Ok(0)
        });
        let error = flight.await.unwrap_err();
        assert!(error.message.contains("the test work failed"), "{error:?}");
        let (next, started) = flights.join("k".to_owned(), || async { Ok(1) });
        assert_eq!(started, Joined::Started);
        assert_eq!(next.await.unwrap(), 1);
    }
}

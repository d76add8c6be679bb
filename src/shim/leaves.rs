//! The leaf certificates the shim has minted, by host name: at most `capacity` of them, the least
//! recently used out first, each minted once however many CONNECTs ask for it at the same time.
//!
//! Minting (a key pair and a signature: about a millisecond of CPU) runs on the blocking pool,
//! never on an async worker, and never under the lock: the lock guards only map lookups and
//! inserts, so CONNECTs for hosts already minted are answered while another host's leaf is being
//! minted. A name that was evicted is minted again on its next CONNECT.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use rustls::ServerConfig;

use crate::sync::lock;

/// The default number of host names whose leaves are kept (`regmirror shim --leaf-cache`).
pub const DEFAULT_CAPACITY: usize = 1024;

/// One mint in progress, awaited by every CONNECT for its host.
type Flight = Shared<BoxFuture<'static, Result<Arc<ServerConfig>, MintError>>>;

/// Why no leaf certificate could be made for a host.
#[derive(Debug, thiserror::Error)]
#[error("leaf certificate for {host}: {source}")]
pub struct LeafError {
    pub host: String,
    #[source]
    pub source: LeafCause,
}

/// What failed while making a leaf.
#[derive(Debug, thiserror::Error)]
pub enum LeafCause {
    /// Its name, key or signature.
    #[error(transparent)]
    Certificate(#[from] rcgen::Error),
    /// The CA's own certificate, to present in the chain.
    #[error(transparent)]
    CaCertificate(#[from] rustls::pki_types::pem::Error),
    /// The TLS configuration presenting it.
    #[error(transparent)]
    Tls(#[from] rustls::Error),
}

/// Why a CONNECT got no leaf, shared by every CONNECT that awaited the same mint.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MintError {
    #[error(transparent)]
    Failed(Arc<LeafError>),
    #[error("minting a leaf certificate failed: {0}")]
    Panicked(#[source] Arc<tokio::task::JoinError>),
}

/// Minted leaves by host, bounded, with single-flight minting.
pub struct Leaves {
    state: Mutex<State>,
    capacity: usize,
}

struct State {
    /// Each with the clock value of its last use.
    by_host: HashMap<String, (Arc<ServerConfig>, u64)>,
    clock: u64,
    minting: HashMap<String, Flight>,
}

impl std::fmt::Debug for Leaves {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaves")
            .field("capacity", &self.capacity)
            .field("kept", &self.kept())
            .finish()
    }
}

impl Leaves {
    /// At most `capacity` leaves (at least one).
    pub fn new(capacity: usize) -> Self {
        Leaves {
            state: Mutex::new(State {
                by_host: HashMap::new(),
                clock: 0,
                minting: HashMap::new(),
            }),
            capacity: capacity.max(1),
        }
    }

    /// How many leaves are kept now.
    pub fn kept(&self) -> usize {
        lock(&self.state).by_host.len()
    }

    /// The leaf of `host`: the one kept, the one being minted, or a new one from `mint`, which
    /// runs on the blocking pool.
    pub async fn get_or_mint(
        self: &Arc<Self>,
        host: &str,
        mint: impl FnOnce() -> Result<ServerConfig, LeafError> + Send + 'static,
    ) -> Result<Arc<ServerConfig>, MintError> {
        let flight = {
            let mut state = lock(&self.state);
            state.clock += 1;
            let clock = state.clock;
            if let Some((config, used)) = state.by_host.get_mut(host) {
                *used = clock;
                return Ok(config.clone());
            }
            match state.minting.get(host) {
                Some(flight) => flight.clone(),
                None => {
                    let flight = self.clone().start(host.to_owned(), mint);
                    state.minting.insert(host.to_owned(), flight.clone());
                    flight
                }
            }
        };
        flight.await
    }

    /// Mints on the blocking pool; the task keeps the result and ends the flight itself, so a
    /// CONNECT that goes away does not cancel a mint others wait for.
    fn start(
        self: Arc<Self>,
        host: String,
        mint: impl FnOnce() -> Result<ServerConfig, LeafError> + Send + 'static,
    ) -> Flight {
        let task = tokio::task::spawn_blocking(move || {
            let landing = Landing {
                leaves: &self,
                host: &host,
            };
            let minted = mint()
                .map(Arc::new)
                .map_err(|e| MintError::Failed(Arc::new(e)));
            if let Ok(config) = &minted {
                landing.keep(config.clone());
            }
            minted
        });
        async move { task.await.map_err(|e| MintError::Panicked(Arc::new(e)))? }
            .boxed()
            .shared()
    }
}

/// A flight's end: removed from `minting` when the mint returns or panics.
struct Landing<'a> {
    leaves: &'a Leaves,
    host: &'a str,
}

impl Landing<'_> {
    /// Keeps `config`, evicting the least recently used leaf when full.
    fn keep(&self, config: Arc<ServerConfig>) {
        let mut state = lock(&self.leaves.state);
        state.clock += 1;
        let clock = state.clock;
        if state.by_host.len() >= self.leaves.capacity && !state.by_host.contains_key(self.host) {
            let oldest = state
                .by_host
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(host, _)| host.clone());
            if let Some(oldest) = oldest {
                state.by_host.remove(&oldest);
            }
        }
        state.by_host.insert(self.host.to_owned(), (config, clock));
    }
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        lock(&self.leaves.state).minting.remove(self.host);
    }
}

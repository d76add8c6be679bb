//! Talking to registries: one shared HTTP client, token and basic auth, the guard that keeps
//! dynamic upstreams out of the internal network, and the walker that tries an ordered list of
//! endpoints (mirrors, then origin) until one answers, resting endpoints that failed or answered
//! 429 (`breaker`) and noting the pull budget each one states (`ratelimit`); per-upstream request
//! limits with a fair queue (`limit`); credentials from Docker credential helpers (`helper`).
//!
//! Credentials go only to the endpoint they were configured for and are never logged.

mod auth;
mod breaker;
mod certs;
mod client;
mod error;
mod guard;
mod helper;
mod limit;
mod ratelimit;
mod special;
mod target;
mod trusted_leaf;

pub use auth::Challenge;
pub use breaker::{Health, Trip};
pub use certs::{HostRoots, SHIM_CA_FILE, TrustError};
pub use client::{
    BodyError, ClientError, Timeouts, UpstreamClient, install_crypto_provider, read_limited,
};
pub use error::UpstreamError;
pub use guard::{AddHostError, AddressPolicy, HostOverrides};
pub use helper::{ConfigCredentials, Failure, HelperCredentials, HelperError, check_program};
pub use limit::{Admitted, Refused, RequestLimiter};
pub use ratelimit::{Budget, MAX_RETRY_AFTER, cap_retry_after, retry_after};
pub use target::{Target, UpstreamRequest};

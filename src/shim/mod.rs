//! The dockerd pull shim: an HTTP(S) proxy that makes a stock dockerd's registry traffic walk the
//! configured mirrors before the origin.
//!
//! - [`access`]: who may use the shim, and which ports its tunnels reach;
//! - [`ca`]: the shim's name-constrained CA and per-host leaf certificates;
//! - [`leaves`]: the minted leaves, bounded, each minted once off the async workers;
//! - [`proxy`]: the proxy listener, TLS interception, tunnels, and the registry walk;
//! - `relay`: the headers and bodies passed between a client and an upstream, with mid-blob
//!   resume;
//! - [`status`]: its status page (rules, breakers, pulls per endpoint, failovers).

pub mod access;
pub mod ca;
pub mod leaves;
pub mod proxy;
mod relay;
pub mod status;

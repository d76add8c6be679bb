//! The storage's failures as the error a client gets: UNAVAILABLE, saying what failed (a full
//! disk says so: its `io::Error` is kept up to here). With [`super::fill::FillError`] and
//! [`crate::upstream::UpstreamError`], each of which maps itself, these are the places the
//! cache's typed errors below the OCI boundary become [`RegistryError`]s, so services pass
//! storage failures on with `?`.

use super::meta::MetaError;
use super::store::StoreError;
use crate::registry::{RegistryError, internal};

impl From<MetaError> for RegistryError {
    fn from(error: MetaError) -> Self {
        internal(error)
    }
}

impl From<StoreError> for RegistryError {
    fn from(error: StoreError) -> Self {
        internal(error)
    }
}

//! Configuration models and their validation. Pure: callers read files and hand over text.
//!
//! - [`mirrors`]: the daemon.json-format mirror configuration (`mirror-registries`,
//!   `registry-mirrors`, `insecure-registries`) shared by every subcommand.
//! - [`cache`]: the cache server's distribution-compatible `config.yml`;
//! - [`docker_auth`]: mirror credentials in Docker's `config.json` format;
//! - [`kind`]: which of the first two a text is, so that each command refuses the other.
//!
//! Every error and warning names file, line, column and field: a [`Diagnostic`] (located by
//! [`json_span`]) for the mirror file, a [`cache::CacheDiagnostic`] (located by [`yaml_span`], or
//! naming the `REGISTRY_*` variable) for config.yml.

pub mod cache;
mod credentials;
pub mod docker_auth;
pub mod json_span;
pub mod kind;
pub mod mirrors;
mod suggest;
pub mod yaml_span;

pub use credentials::{CredentialHelper, Credentials, DEFAULT_HELPER_TIMEOUT};

use std::fmt;
use std::sync::Arc;

pub use mirrors::{
    ConfigSource, DomainPattern, InsecureRegistries, Mirror, MirrorConfig, MirrorRule, MirrorUrl,
    Scheme,
};

/// Where a value came from: file, 1-based line and column, and the field's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: Arc<str>,
    pub line: usize,
    pub column: usize,
    /// `mirror-registries[0].mirrors[1]` style path of the field.
    pub field: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A located error or warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub location: Location,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    /// `file:line:column: field: message`; without the field when there is none (a syntax
    /// error).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.field.is_empty() {
            write!(f, "{}: {}", self.location, self.message)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.location, self.location.field, self.message
            )
        }
    }
}

/// Every error found in a configuration, in file and line order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<Diagnostic>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_lines(f, &self.0)
    }
}

/// Each item on its own line, without a newline after the last: how a list of diagnostics
/// prints.
pub(crate) fn write_lines(f: &mut fmt::Formatter<'_>, items: &[impl fmt::Display]) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            writeln!(f)?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}

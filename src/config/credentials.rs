//! Registry credentials whose `Debug` never shows the password, and the Docker credential
//! helper that produces them (what to run and how long its answer is kept; running it is
//! `upstream::helper`'s).

use std::fmt;
use std::time::Duration;

/// A username and password for one registry. `Debug` prints `<redacted>` for the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: String,
    password: String,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    pub fn password(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How long a credential helper may run before it is killed and its run is an error, unless
/// `exec.timeout` says otherwise.
pub const DEFAULT_HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// A Docker credential helper (`docker-credential-ecr-login`): the program run as
/// `PROGRAM get` with the registry's `host[:port]` on its standard input, answering
/// `{"Username": "…", "Secret": "…"}`. distribution's `proxy.exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialHelper {
    /// `exec.command`: the program, a path or a name looked up in `PATH`, run without a shell
    /// and without arguments of its own (as distribution runs it).
    pub program: String,
    /// `exec.lifetime`: how long an answer is reused. `None`: for as long as the process runs
    /// (distribution's default); zero: every time credentials are needed.
    pub lifetime: Option<Duration>,
    /// `exec.timeout` (regmirror's): a run that takes longer is killed and fails.
    pub timeout: Duration,
}

impl CredentialHelper {
    /// The program `docker-credential-<suffix>` of a Docker `config.json` (`credsStore`,
    /// `credHelpers`).
    pub fn docker(suffix: &str, lifetime: Option<Duration>) -> Self {
        CredentialHelper {
            program: format!("docker-credential-{suffix}"),
            lifetime,
            timeout: DEFAULT_HELPER_TIMEOUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_password() {
        let text = format!("{:?}", Credentials::new("alice", "hunter2"));
        assert!(text.contains("alice") && text.contains("<redacted>"));
        assert!(!text.contains("hunter2"));
    }
}

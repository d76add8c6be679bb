//! Upstream credentials from a Docker credential helper: `PROGRAM get`, the registry's
//! `host[:port]` on its standard input, `{"Username": "…", "Secret": "…"}` on its standard
//! output (the protocol of docker-credential-helpers, as distribution's `proxy.exec` runs it).
//!
//! - The program is started on the blocking pool (fork and exec stay off the async workers);
//!   its output is awaited without blocking, read up to [`MAX_ANSWER`] bytes, and a run that
//!   passes the helper's timeout is killed and fails.
//! - One run at a time per upstream: requests that arrive while a run is in progress share its
//!   answer (or its failure); an answer is reused for the helper's `lifetime` (`None`: for as
//!   long as the process runs, zero: only by the requests that waited for it), or until the
//!   upstream refuses it with a 401.
//! - Nothing the helper prints is ever shown: its standard error goes nowhere, and a failure
//!   names the program, the upstream and what went wrong (exit status, timeout, an answer that
//!   is not the protocol's JSON), never the output, which may hold a secret.

use std::collections::HashMap;
use std::fmt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, Command};

use super::target::Target;
use crate::config::docker_auth::{RegistryAuth, RegistryAuths};
use crate::config::{CredentialHelper, Credentials};
use crate::sync::lock;

/// The largest answer read from a helper.
pub const MAX_ANSWER: u64 = 64 << 10;

/// Hosts whose config.json helper is kept at most (then they start afresh).
const MAX_CONFIG_HELPERS: usize = 1024;

/// What docker-credential-helpers print (and exit 1 with) when they hold nothing for a server.
const NOT_FOUND: &str = "credentials not found in native keychain";

/// A helper's credentials for one upstream, run once for many requests.
pub struct HelperCredentials {
    helper: CredentialHelper,
    /// `host[:port]`: what the helper is asked about.
    server: String,
    /// The upstream's name, for errors.
    upstream: String,
    /// The helper's "no credentials" answer means anonymous requests (as Docker reads a
    /// config.json helper's), not a failure (as an upstream's configured `exec` must answer).
    missing_is_anonymous: bool,
    last: tokio::sync::Mutex<Option<Run>>,
}

impl fmt::Debug for HelperCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HelperCredentials")
            .field("helper", &self.helper)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// One finished run.
struct Run {
    started: Instant,
    finished: Instant,
    answer: Result<Option<Credentials>, Failure>,
}

/// Why a helper gave no credentials: names the program and the upstream, never its output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("credential helper {program} for upstream {upstream}: {failure}")]
pub struct HelperError {
    pub program: String,
    pub upstream: String,
    pub failure: Failure,
}

/// What went wrong in one run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("cannot start it: {0}")]
    Start(String),
    #[error("no answer within {0:?} (exec.timeout)")]
    Timeout(std::time::Duration),
    #[error("it has no credentials for {0}")]
    NotFound(String),
    #[error("it failed ({0}); its output is not shown, it may hold a secret")]
    Exit(String),
    #[error("its answer is larger than {MAX_ANSWER} bytes")]
    TooLarge,
    #[error(
        "its answer is not {{\"Username\": …, \"Secret\": …}} JSON; not shown, it may hold a secret"
    )]
    Invalid,
    #[error("reading its answer: {0}")]
    Io(String),
}

impl HelperCredentials {
    /// `helper` for the upstream `upstream`, reached at `server` (`host[:port]`).
    pub fn new(helper: CredentialHelper, server: &str, upstream: &str) -> Self {
        HelperCredentials {
            helper,
            server: server.to_owned(),
            upstream: upstream.to_owned(),
            missing_is_anonymous: false,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// A helper of a Docker config.json: when it holds nothing for the server, requests go
    /// without credentials.
    pub fn missing_is_anonymous(mut self) -> Self {
        self.missing_is_anonymous = true;
        self
    }

    /// The credentials: the last answer while it is current, else a new run (joined by every
    /// request that arrives while it is in progress). `None`: anonymous
    /// ([`missing_is_anonymous`](Self::missing_is_anonymous)).
    pub async fn get(&self) -> Result<Option<Credentials>, HelperError> {
        let asked = Instant::now();
        let mut last = self.last.lock().await;
        if let Some(run) = last.as_ref().filter(|run| self.current(run, asked)) {
            return run.answer.clone().map_err(|failure| self.error(failure));
        }
        let started = Instant::now();
        let answer = match self.run().await {
            Err(Failure::NotFound(_)) if self.missing_is_anonymous => Ok(None),
            answer => answer.map(Some),
        };
        match &answer {
            Ok(credentials) => tracing::debug!(
                program = %self.helper.program,
                upstream = %self.upstream,
                anonymous = credentials.is_none(),
                took = ?started.elapsed(),
                "credential helper answered"
            ),
            Err(failure) => tracing::warn!(
                program = %self.helper.program,
                upstream = %self.upstream,
                %failure,
                "credential helper failed"
            ),
        }
        *last = Some(Run {
            started,
            finished: Instant::now(),
            answer: answer.clone(),
        });
        answer.map_err(|failure| self.error(failure))
    }

    /// The upstream (or its token service) refused `used` with a 401: unless a newer answer
    /// replaced it, it is dropped, so that the next request runs the helper again (an expired
    /// token, a rotated password) instead of waiting out the lifetime.
    pub async fn refused(&self, used: &Credentials) {
        let mut last = self.last.lock().await;
        let current = last
            .as_ref()
            .is_some_and(|run| matches!(&run.answer, Ok(Some(answer)) if answer == used));
        if current {
            tracing::info!(
                program = %self.helper.program,
                upstream = %self.upstream,
                "the upstream refused the credential helper's answer; it runs again next time"
            );
            *last = None;
        }
    }

    /// Whether `run` answers a request made at `asked`: it was in progress then, or it succeeded
    /// within the lifetime.
    fn current(&self, run: &Run, asked: Instant) -> bool {
        run.finished >= asked
            || run.answer.is_ok()
                && self
                    .helper
                    .lifetime
                    .is_none_or(|lifetime| run.started.elapsed() < lifetime)
    }

    fn error(&self, failure: Failure) -> HelperError {
        HelperError {
            program: self.helper.program.clone(),
            upstream: self.upstream.clone(),
            failure,
        }
    }

    /// One run of the helper, killed at its timeout.
    async fn run(&self) -> Result<Credentials, Failure> {
        let program = self.helper.program.clone();
        let mut child = tokio::task::spawn_blocking(move || {
            Command::new(program)
                .arg("get")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
        })
        .await
        .map_err(|e| Failure::Start(e.to_string()))?
        .map_err(|e| Failure::Start(e.to_string()))?;
        let exchange = tokio::time::timeout(self.helper.timeout, self.exchange(&mut child)).await;
        let Ok(exchange) = exchange else {
            let _ = child.start_kill();
            return Err(Failure::Timeout(self.helper.timeout));
        };
        let (status, answer) = exchange?;
        if !status.success() {
            if answer.trim_ascii() == NOT_FOUND.as_bytes() {
                return Err(Failure::NotFound(self.server.clone()));
            }
            return Err(Failure::Exit(status.to_string()));
        }
        parse(&answer)?.ok_or_else(|| Failure::NotFound(self.server.clone()))
    }

    /// Writes the server, reads the answer, waits for the exit.
    async fn exchange(
        &self,
        child: &mut Child,
    ) -> Result<(std::process::ExitStatus, Vec<u8>), Failure> {
        let io = |e: std::io::Error| Failure::Io(e.to_string());
        if let Some(mut stdin) = child.stdin.take() {
            // A helper that exits without reading its input is judged by its answer.
            let _ = stdin.write_all(self.server.as_bytes()).await;
        }
        let mut answer = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            stdout
                .take(MAX_ANSWER + 1)
                .read_to_end(&mut answer)
                .await
                .map_err(io)?;
        }
        if answer.len() as u64 > MAX_ANSWER {
            let _ = child.start_kill();
            return Err(Failure::TooLarge);
        }
        let status = child.wait().await.map_err(io)?;
        Ok((status, answer))
    }
}

/// Checks that `helper`'s program can be run (an executable file at its path, or by its name in
/// `PATH`), as start-up does before anything is served.
pub fn check_program(helper: &CredentialHelper, upstream: &str) -> Result<(), HelperError> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |path: &std::path::Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let program = std::path::Path::new(&helper.program);
    let found = if helper.program.contains('/') {
        executable(program)
    } else {
        std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| executable(&dir.join(program)))
        })
    };
    if found {
        return Ok(());
    }
    let reason = if helper.program.contains('/') {
        "no executable file there"
    } else {
        "not found in PATH"
    };
    Err(HelperError {
        program: helper.program.clone(),
        upstream: upstream.to_owned(),
        failure: Failure::Start(reason.to_owned()),
    })
}

/// A Docker config.json's credentials for the endpoints of its hosts (the shim's mirrors): stored
/// ones as they are; a host's helper (`credHelpers`, `credsStore`) run when a request needs it,
/// one [`HelperCredentials`] per host shared by every request to it.
#[derive(Debug, Default)]
pub struct ConfigCredentials {
    auths: RegistryAuths,
    helpers: Mutex<HashMap<String, Arc<HelperCredentials>>>,
}

impl ConfigCredentials {
    pub fn new(auths: RegistryAuths) -> Self {
        ConfigCredentials {
            auths,
            helpers: Mutex::default(),
        }
    }

    /// `target` with the credentials the file gives its host.
    pub fn apply(&self, mut target: Target) -> Target {
        match self.auths.get(&target.authority) {
            None => target,
            Some(RegistryAuth::Stored(credentials)) => {
                target.credentials = Some(credentials);
                target
            }
            Some(RegistryAuth::Helper(helper)) => {
                let authority = target.authority.to_string();
                let mut helpers = lock(&self.helpers);
                if helpers.len() >= MAX_CONFIG_HELPERS && !helpers.contains_key(&authority) {
                    helpers.clear();
                }
                let shared = helpers.entry(authority).or_insert_with_key(|authority| {
                    Arc::new(
                        HelperCredentials::new(helper, authority, authority).missing_is_anonymous(),
                    )
                });
                target.with_helper(Some(shared.clone()))
            }
        }
    }
}

/// The protocol's answer: `Username` and `Secret` (`ServerURL` is not needed); both empty is
/// no credentials (what docker-credential-pass 0.6 answers, with success, for a server it does
/// not hold).
fn parse(answer: &[u8]) -> Result<Option<Credentials>, Failure> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        username: String,
        secret: String,
    }
    let answer: Answer = serde_json::from_slice(answer).map_err(|_| Failure::Invalid)?;
    if answer.username.is_empty() && answer.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials::new(answer.username, answer.secret)))
}

#[cfg(test)]
mod tests;

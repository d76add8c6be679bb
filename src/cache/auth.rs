//! Inbound authentication: `auth.htpasswd` (bcrypt entries, as distribution and `htpasswd -B`
//! write them) with the Basic challenge.
//!
//! bcrypt is deliberately slow (tens to hundreds of milliseconds), so:
//! - a verified (user, password) pair is remembered by a SHA-256 of the password for a while: the
//!   per-request cost of a known client stays a hash-map lookup;
//! - verifications run on the blocking pool, at most half the cores at once, never on the async
//!   workers, so wrong-password floods cannot stall other requests (`/healthz` included); past
//!   [`MAX_WAITING`] queued verifications, requests are answered TOOMANYREQUESTS at once;
//! - an unknown user costs a verification against a dummy hash of the same cost as the file's,
//!   so the time of an answer does not tell whether a user exists.
//!
//! The file is read once at start-up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

/// How long a verified password is trusted without running bcrypt again.
const REMEMBER: Duration = Duration::from_secs(300);
/// Verifications waiting for a turn at most.
const MAX_WAITING: usize = 64;

#[derive(Debug)]
pub(crate) struct Htpasswd {
    realm: String,
    users: HashMap<String, String>,
    /// What an unknown user's password is checked against.
    dummy: String,
    verified: Mutex<HashMap<(String, [u8; 32]), Instant>>,
    turns: Arc<Semaphore>,
    waiting: std::sync::atomic::AtomicUsize,
}

/// Why an htpasswd file is refused.
#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    #[error("{file}:{line}: expected user:hash")]
    NotAnEntry { file: String, line: usize },
    #[error("{file}:{line}: {user}: only bcrypt hashes are supported (htpasswd -B)")]
    NotBcrypt {
        file: String,
        line: usize,
        user: String,
    },
    /// The hash unknown users are checked against could not be made.
    #[error("{file}: {source}")]
    Dummy {
        file: String,
        source: bcrypt::BcryptError,
    },
}

/// Why a request did not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No or wrong credentials: the Basic challenge.
    Unauthorized,
    /// Too many verifications queued: try again later.
    Busy,
}

impl Htpasswd {
    /// Parses htpasswd text; only bcrypt (`$2y$`, `$2a$`, `$2b$`) entries are accepted. Computes
    /// the dummy hash at the highest cost the file uses (one bcrypt run).
    pub(crate) fn parse(realm: &str, file: &str, text: &str) -> Result<Self, HtpasswdError> {
        let mut users = HashMap::new();
        let mut cost = 4;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| HtpasswdError::NotAnEntry {
                    file: file.to_owned(),
                    line: number + 1,
                })?;
            if !(hash.starts_with("$2y$") || hash.starts_with("$2a$") || hash.starts_with("$2b$")) {
                return Err(HtpasswdError::NotBcrypt {
                    file: file.to_owned(),
                    line: number + 1,
                    user: user.to_owned(),
                });
            }
            if let Some(entry_cost) = hash.get(4..6).and_then(|c| c.parse::<u32>().ok()) {
                cost = cost.max(entry_cost.min(31));
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        let dummy = bcrypt::hash("regmirror: no such user", cost).map_err(|source| {
            HtpasswdError::Dummy {
                file: file.to_owned(),
                source,
            }
        })?;
        let parallel = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
        Ok(Htpasswd {
            realm: realm.to_owned(),
            users,
            dummy,
            verified: Mutex::new(HashMap::new()),
            turns: Arc::new(Semaphore::new(parallel)),
            waiting: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The `WWW-Authenticate` value for a 401.
    pub(crate) fn challenge(&self) -> String {
        format!("Basic realm=\"{}\"", self.realm.replace('"', "'"))
    }

    /// The user an `Authorization` header authenticates.
    pub(crate) async fn authenticate(
        &self,
        authorization: Option<&str>,
    ) -> Result<String, Refusal> {
        let encoded = authorization
            .and_then(|a| a.strip_prefix("Basic "))
            .ok_or(Refusal::Unauthorized)?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or(Refusal::Unauthorized)?;
        let (user, password) = decoded.split_once(':').ok_or(Refusal::Unauthorized)?;
        let key = (user.to_owned(), Sha256::digest(password.as_bytes()).into());
        if crate::sync::lock(&self.verified)
            .get(&key)
            .is_some_and(|at| at.elapsed() < REMEMBER)
        {
            return Ok(user.to_owned());
        }
        let known = self.users.get(user);
        let hash = known.unwrap_or(&self.dummy).clone();
        let ok = self.verify(password.to_owned(), hash).await? && known.is_some();
        if !ok {
            return Err(Refusal::Unauthorized);
        }
        let mut verified = crate::sync::lock(&self.verified);
        verified.retain(|_, at| at.elapsed() < REMEMBER);
        verified.insert(key, Instant::now());
        Ok(user.to_owned())
    }

    /// One bcrypt verification, on the blocking pool, when a turn is free.
    async fn verify(&self, password: String, hash: String) -> Result<bool, Refusal> {
        use std::sync::atomic::Ordering;
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::Busy);
        }
        let turn = self.turns.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let turn = turn.map_err(|_| Refusal::Busy)?;
        let verified = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            bcrypt::verify(password, &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        Ok(verified)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    #[tokio::test]
    async fn verifies_bcrypt_entries() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let htpasswd =
            Htpasswd::parse("cache", "htpasswd", &format!("# users\nalice:{hash}\n")).unwrap();
        let auth = |header: String| {
            let htpasswd = &htpasswd;
            async move { htpasswd.authenticate(Some(&header)).await }
        };
        assert_eq!(
            auth(header("alice", "s3cret")).await.as_deref(),
            Ok("alice")
        );
        assert_eq!(
            auth(header("alice", "s3cret")).await.as_deref(),
            Ok("alice"),
            "remembered"
        );
        assert_eq!(
            auth(header("alice", "wrong")).await,
            Err(Refusal::Unauthorized)
        );
        assert_eq!(
            auth(header("bob", "s3cret")).await,
            Err(Refusal::Unauthorized)
        );
        assert_eq!(auth("Bearer x".into()).await, Err(Refusal::Unauthorized));
        assert_eq!(
            htpasswd.authenticate(None).await,
            Err(Refusal::Unauthorized)
        );
        assert_eq!(htpasswd.challenge(), "Basic realm=\"cache\"");
    }

    #[test]
    fn the_dummy_hash_costs_what_the_file_costs() {
        let hash = bcrypt::hash("x", 6).unwrap();
        let htpasswd = Htpasswd::parse("r", "pw", &format!("a:{hash}\n")).unwrap();
        assert!(htpasswd.dummy.starts_with("$2b$06$"), "{}", htpasswd.dummy);
    }

    #[test]
    fn refuses_other_hash_kinds() {
        let e = Htpasswd::parse("r", "pw", "bob:$apr1$abc$def\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pw:1: bob: only bcrypt"), "{e}");
        assert!(Htpasswd::parse("r", "pw", "nocolon\n").is_err());
    }
}

//! Inbound authentication: `auth.htpasswd` (bcrypt entries, as distribution and `htpasswd -B`
//! write them) with the Basic challenge.
//!
//! bcrypt is deliberately slow (tens of milliseconds), so a verified (user, password) pair is
//! remembered by a SHA-256 of the password for a while: the per-request cost stays a hash-map
//! lookup. The file is read once at start-up.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// How long a verified password is trusted without running bcrypt again.
const REMEMBER: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct Htpasswd {
    realm: String,
    users: HashMap<String, String>,
    verified: Mutex<HashMap<(String, [u8; 32]), Instant>>,
}

impl Htpasswd {
    /// Parses htpasswd text; only bcrypt (`$2y$`, `$2a$`, `$2b$`) entries are accepted.
    pub fn parse(realm: &str, file: &str, text: &str) -> Result<Self, String> {
        let mut users = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("{file}:{}: expected user:hash", number + 1))?;
            if !(hash.starts_with("$2y$") || hash.starts_with("$2a$") || hash.starts_with("$2b$")) {
                return Err(format!(
                    "{file}:{}: {user}: only bcrypt hashes are supported (htpasswd -B)",
                    number + 1
                ));
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        Ok(Htpasswd {
            realm: realm.to_owned(),
            users,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// The `WWW-Authenticate` value for a 401.
    pub fn challenge(&self) -> String {
        format!("Basic realm=\"{}\"", self.realm.replace('"', "'"))
    }

    /// The user an `Authorization` header authenticates, if it does.
    pub fn authenticate(&self, authorization: Option<&str>) -> Option<String> {
        let encoded = authorization?.strip_prefix("Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        let hash = self.users.get(user)?;
        let key = (user.to_owned(), Sha256::digest(password.as_bytes()).into());
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.get(&key).is_some_and(|at| at.elapsed() < REMEMBER) {
            return Some(user.to_owned());
        }
        drop(verified);
        if !bcrypt::verify(password, hash).unwrap_or(false) {
            return None;
        }
        verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        verified.retain(|_, at| at.elapsed() < REMEMBER);
        verified.insert(key, Instant::now());
        Some(user.to_owned())
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

    #[test]
    fn verifies_bcrypt_entries() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let htpasswd =
            Htpasswd::parse("cache", "htpasswd", &format!("# users\nalice:{hash}\n")).unwrap();
        assert_eq!(
            htpasswd
                .authenticate(Some(&header("alice", "s3cret")))
                .as_deref(),
            Some("alice")
        );
        assert_eq!(
            htpasswd
                .authenticate(Some(&header("alice", "s3cret")))
                .as_deref(),
            Some("alice"),
            "remembered"
        );
        assert_eq!(htpasswd.authenticate(Some(&header("alice", "wrong"))), None);
        assert_eq!(htpasswd.authenticate(Some(&header("bob", "s3cret"))), None);
        assert_eq!(htpasswd.authenticate(Some("Bearer x")), None);
        assert_eq!(htpasswd.authenticate(None), None);
        assert_eq!(htpasswd.challenge(), "Basic realm=\"cache\"");
    }

    #[test]
    fn refuses_other_hash_kinds() {
        let e = Htpasswd::parse("r", "pw", "bob:$apr1$abc$def\n").unwrap_err();
        assert!(e.contains("pw:1: bob: only bcrypt"), "{e}");
        assert!(Htpasswd::parse("r", "pw", "nocolon\n").is_err());
    }
}

//! Registry credentials in Docker's `config.json` format (`{"auths": {"host": {"auth": "…"}}}`,
//! and the credential helpers of `credHelpers` and `credsStore`), used for mirrors: a mirror gets
//! the credentials configured for its own host, never the client's. Pure: the caller reads the
//! file, and runs a helper.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;

use super::{CredentialHelper, Credentials};

/// How long the answer of a config.json helper is reused (config.json has no say; Docker runs
/// one per command, a long-running shim asks again after this).
pub const HELPER_LIFETIME: Duration = Duration::from_secs(300);

/// Credentials by registry `host[:port]`, and the helpers that hold others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryAuths {
    auths: HashMap<String, Credentials>,
    /// `credHelpers`: a helper suffix by `host[:port]`.
    helpers: HashMap<String, String>,
    /// `credsStore`: the helper suffix for every other host.
    store: Option<String>,
}

/// Where a host's credentials come from, as Docker decides it: its `credHelpers` entry, else
/// `credsStore`, else its `auths` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryAuth {
    Stored(Credentials),
    /// `docker-credential-<suffix>`; its "no credentials" answer means none.
    Helper(CredentialHelper),
}

impl RegistryAuths {
    /// Parses config.json text. Entries without usable `auth` (or `username`/`password`) are
    /// skipped; a file that is not JSON is an error naming `file`.
    pub fn parse(file: &str, text: &str) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(default)]
            auths: HashMap<String, Entry>,
            #[serde(default, rename = "credHelpers")]
            cred_helpers: HashMap<String, String>,
            #[serde(default, rename = "credsStore")]
            creds_store: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            auth: Option<String>,
            username: Option<String>,
            password: Option<String>,
        }
        let parsed: File = serde_json::from_str(text).map_err(|e| format!("{file}: {e}"))?;
        let mut auths = HashMap::new();
        for (key, entry) in parsed.auths {
            let decoded = entry.auth.as_deref().and_then(|auth| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .ok()?;
                let text = String::from_utf8(bytes).ok()?;
                let (user, password) = text.split_once(':')?;
                Some(Credentials::new(user, password))
            });
            let credentials =
                decoded.or_else(|| Some(Credentials::new(entry.username?, entry.password?)));
            if let Some(credentials) = credentials {
                auths.insert(host_key(&key), credentials);
            }
        }
        let helpers = parsed
            .cred_helpers
            .into_iter()
            .filter(|(_, suffix)| !suffix.is_empty())
            .map(|(key, suffix)| (host_key(&key), suffix))
            .collect();
        Ok(RegistryAuths {
            auths,
            helpers,
            store: parsed.creds_store.filter(|s| !s.is_empty()),
        })
    }

    /// Where the credentials for `authority` (`host[:port]`) come from, if anywhere.
    pub fn get(&self, authority: &str) -> Option<RegistryAuth> {
        let key = authority.to_ascii_lowercase();
        let helper = self.helpers.get(&key).or(self.store.as_ref());
        if let Some(suffix) = helper {
            return Some(RegistryAuth::Helper(CredentialHelper::docker(
                suffix,
                Some(HELPER_LIFETIME),
            )));
        }
        self.auths.get(&key).cloned().map(RegistryAuth::Stored)
    }
}

/// `https://host:5000/v1/` -> `host:5000`.
fn host_key(key: &str) -> String {
    let without_scheme = key.split_once("://").map_or(key, |(_, rest)| rest);
    without_scheme
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_config() {
        let auths = RegistryAuths::parse(
            "config.json",
            r#"{"auths": {
                "https://Mirror.example:5000/v1/": {"auth": "YWxpY2U6czNjcmV0"},
                "plain.example": {"username": "bob", "password": "pw"},
                "broken.example": {"auth": "!!!"}
            }}"#,
        )
        .unwrap();
        let stored = |host: &str| match auths.get(host) {
            Some(RegistryAuth::Stored(credentials)) => Some(credentials),
            _ => None,
        };
        let alice = stored("mirror.example:5000").unwrap();
        assert_eq!((alice.username(), alice.password()), ("alice", "s3cret"));
        assert_eq!(stored("plain.example").unwrap().username(), "bob");
        assert!(auths.get("broken.example").is_none());
        assert!(
            RegistryAuths::parse("c.json", "nope")
                .unwrap_err()
                .starts_with("c.json: ")
        );
    }

    #[test]
    fn helpers_come_first_as_docker_decides() {
        let auths = RegistryAuths::parse(
            "config.json",
            r#"{"auths": {"ecr.example": {"auth": "YWxpY2U6czNjcmV0"}, "other.example": {}},
                "credHelpers": {"ecr.example": "ecr-login", "https://Gar.example/": "gcr"},
                "credsStore": "pass"}"#,
        )
        .unwrap();
        let program = |host: &str| match auths.get(host) {
            Some(RegistryAuth::Helper(helper)) => helper.program,
            other => panic!("{host}: {other:?}"),
        };
        assert_eq!(program("ecr.example"), "docker-credential-ecr-login");
        assert_eq!(program("gar.example"), "docker-credential-gcr");
        assert_eq!(program("other.example"), "docker-credential-pass");
        let Some(RegistryAuth::Helper(helper)) = auths.get("x") else {
            panic!()
        };
        assert_eq!(helper.lifetime, Some(HELPER_LIFETIME));
        let without_store =
            RegistryAuths::parse("c.json", r#"{"credHelpers": {"a.example": "x"}}"#).unwrap();
        assert!(without_store.get("b.example").is_none());
    }
}

//! Registry credentials in Docker's `config.json` format (`{"auths": {"host": {"auth": "…"}}}`),
//! used for mirrors: a mirror gets the credentials configured for its own host, never the
//! client's. Pure: the caller reads the file.

use std::collections::HashMap;

use base64::Engine as _;

use super::Credentials;

/// Credentials by registry `host[:port]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryAuths(HashMap<String, Credentials>);

impl RegistryAuths {
    /// Parses config.json text. Entries without usable `auth` (or `username`/`password`) are
    /// skipped; a file that is not JSON is an error naming `file`.
    pub fn parse(file: &str, text: &str) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(default)]
            auths: HashMap<String, Entry>,
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
        Ok(RegistryAuths(auths))
    }

    /// The credentials for `authority` (`host[:port]`).
    pub fn get(&self, authority: &str) -> Option<&Credentials> {
        self.0.get(&authority.to_ascii_lowercase())
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
            }, "credsStore": "desktop"}"#,
        )
        .unwrap();
        let alice = auths.get("mirror.example:5000").unwrap();
        assert_eq!((alice.username(), alice.password()), ("alice", "s3cret"));
        assert_eq!(auths.get("plain.example").unwrap().username(), "bob");
        assert!(auths.get("broken.example").is_none());
        assert!(
            RegistryAuths::parse("c.json", "nope")
                .unwrap_err()
                .starts_with("c.json: ")
        );
    }
}

//! `WWW-Authenticate` challenges and the token cache.
//!
//! Bearer tokens are cached per (registry authority, scope) until shortly before they expire, and
//! reused by every request with that scope, so a busy cache asks the token service once, not once
//! per request.

use crate::sync::lock;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

impl Challenge {
    /// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
    pub fn parse(header: &str) -> Option<Self> {
        let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(params);
        let get = |key: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.clone())
        };
        Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        })
    }
}

/// `key="value", key2=value2`, with quoted values that may hold commas.
fn parse_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().trim_start_matches(',').trim().to_owned();
        let after = after.trim_start();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.push((key, value));
        rest = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    params
}

/// Tokens per (authority, scope).
#[derive(Debug, Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<(String, String), (String, Instant)>>,
}

/// Tokens are dropped this long before the registry says they expire.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// The longest a token is kept, whatever its `expires_in` says (registries issue 5 to 60 minute
/// tokens; a huge value must neither overflow nor pin a token forever).
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Tokens kept at most: scopes are chosen by clients (repository names), so the cache is bounded.
const MAX_TOKENS: usize = 4096;

impl TokenCache {
    pub fn get(&self, authority: &str, scope: &str) -> Option<String> {
        let tokens = lock(&self.tokens);
        tokens
            .get(&(authority.to_owned(), scope.to_owned()))
            .filter(|(_, expires)| Instant::now() < *expires)
            .map(|(token, _)| token.clone())
    }

    pub fn put(&self, authority: &str, scope: &str, token: String, lifetime: Duration) {
        let now = Instant::now();
        let lifetime = lifetime.min(MAX_LIFETIME).saturating_sub(EXPIRY_MARGIN);
        let expires = now.checked_add(lifetime).unwrap_or(now);
        let mut tokens = lock(&self.tokens);
        tokens.retain(|_, (_, e)| now < *e);
        if tokens.len() >= MAX_TOKENS {
            // Still full of live tokens: the one expiring first goes.
            if let Some(first) = tokens
                .iter()
                .min_by_key(|(_, (_, e))| *e)
                .map(|(k, _)| k.clone())
            {
                tokens.remove(&first);
            }
        }
        tokens.insert((authority.to_owned(), scope.to_owned()), (token, expires));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull".into()),
            })
        );
        let c = Challenge::parse(r#"bearer realm="https://a/t", scope="repository:a:pull,push""#)
            .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://a/t".into(),
                service: None,
                scope: Some("repository:a:pull,push".into())
            }
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(Challenge::parse("Bearer service=x"), None);
    }

    #[test]
    fn token_cache_expires() {
        let cache = TokenCache::default();
        cache.put(
            "r.io",
            "repository:a:pull",
            "t1".into(),
            Duration::from_secs(300),
        );
        assert_eq!(
            cache.get("r.io", "repository:a:pull").as_deref(),
            Some("t1")
        );
        assert_eq!(cache.get("r.io", "repository:b:pull"), None);
        assert_eq!(cache.get("s.io", "repository:a:pull"), None);
        cache.put(
            "r.io",
            "repository:c:pull",
            "t2".into(),
            Duration::from_secs(5),
        );
        assert_eq!(
            cache.get("r.io", "repository:c:pull"),
            None,
            "shorter than the margin"
        );
    }

    #[test]
    fn huge_lifetimes_neither_overflow_nor_last_forever() {
        let cache = TokenCache::default();
        cache.put("r.io", "s", "t".into(), Duration::MAX);
        assert_eq!(cache.get("r.io", "s").as_deref(), Some("t"));
        let (_, expires) = cache.tokens.lock().unwrap()[&("r.io".into(), "s".into())].clone();
        assert!(expires <= Instant::now() + MAX_LIFETIME);
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = TokenCache::default();
        for i in 0..MAX_TOKENS + 10 {
            cache.put(
                "r.io",
                &format!("repository:r{i}:pull"),
                "t".into(),
                Duration::from_secs(300 + i as u64),
            );
        }
        assert_eq!(cache.tokens.lock().unwrap().len(), MAX_TOKENS);
        assert!(
            cache
                .get("r.io", &format!("repository:r{}:pull", MAX_TOKENS + 9))
                .is_some()
        );
        assert!(
            cache.get("r.io", "repository:r0:pull").is_none(),
            "the first to expire went"
        );
    }
}

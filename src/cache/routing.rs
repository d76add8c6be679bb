//! Which upstream a request is for, and the endpoints to fetch it from.
//!
//! In order: containerd's `?ns=<host>`; the seed engine's `domain: <scheme>://<host>` header; a
//! path prefix whose first component is a registry host (`/v2/ghcr.io/org/img/…`); else the
//! default (first configured) upstream. Registries that are not configured are served only with
//! `proxy.on` (dynamic upstreams, no stored credentials), and the HTTP client's address guard
//! keeps those off loopback, link-local and private addresses.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::cache::{CacheConfig, LocalRepositories, UpstreamConfig};
use crate::config::mirrors::canonical_registry;
use crate::config::{MirrorUrl, Scheme};
use crate::reference::{self, DOCKER_HUB};
use crate::registry::route::split_registry_prefix;
use crate::registry::{ErrorCode, RegistryError};
use crate::resolve::{InsecureMatcher, Resolver, Role, TlsMode};
use crate::upstream::Target;

/// A configured or dynamic upstream.
#[derive(Debug)]
pub struct Upstream {
    /// The namespace of its cached content: `docker.io`, `ghcr.io`, `127.0.0.1:5001`.
    pub name: String,
    pub origin: Target,
    /// How long a tag is served from cache without asking this upstream.
    pub tag_revalidate: std::time::Duration,
    /// The local namespace: pushes accepted, never proxied.
    pub local: bool,
}

/// The namespace of local (pushed) repositories.
pub const LOCAL: &str = "local";

/// An upstream plus the repository path on it.
#[derive(Debug, Clone)]
pub struct Route {
    pub upstream: Arc<Upstream>,
    pub repository: String,
}

/// The routing table.
#[derive(Debug)]
pub struct Router {
    configured: HashMap<String, Arc<Upstream>>,
    default: Option<Arc<Upstream>>,
    dynamic: bool,
    dynamic_tag_revalidate: std::time::Duration,
    pub local: LocalRepositories,
    local_upstream: Arc<Upstream>,
    /// `--mirrors`: the cache's own fetches walk these endpoints before the origin.
    mirrors: Option<Arc<Resolver>>,
}

impl Router {
    pub fn new(config: &CacheConfig, mirrors: Option<Arc<Resolver>>) -> Self {
        let insecure = InsecureMatcher::default();
        let make = |u: &UpstreamConfig| {
            let tls = origin_tls(&u.url, &insecure);
            Arc::new(Upstream {
                name: u.name.clone(),
                origin: Target::origin(&u.url, u.credentials.clone(), tls),
                tag_revalidate: u.tag_revalidate,
                local: false,
            })
        };
        let upstreams: Vec<Arc<Upstream>> = config.upstreams.iter().map(make).collect();
        Router {
            default: upstreams.first().cloned(),
            configured: upstreams
                .iter()
                .map(|u| (u.name.clone(), u.clone()))
                .collect(),
            dynamic: config.dynamic_upstreams,
            local: config.local.clone(),
            local_upstream: Arc::new(Upstream {
                name: LOCAL.to_owned(),
                origin: Target::pass_through("http://local.invalid", "local.invalid"),
                tag_revalidate: std::time::Duration::ZERO,
                local: true,
            }),
            dynamic_tag_revalidate: config
                .upstreams
                .first()
                .map_or(std::time::Duration::ZERO, |u| u.tag_revalidate),
            mirrors,
        }
    }

    /// Routes a request for `name` (the `/v2/<name>/…` path part).
    pub fn route(
        &self,
        name: &str,
        ns: Option<&str>,
        domain_header: Option<&str>,
    ) -> Result<Route, RegistryError> {
        let hint = ns.or_else(|| {
            domain_header.map(|d| {
                d.trim()
                    .trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
            })
        });
        if let Some(host) = hint {
            let upstream = self.upstream(host)?;
            return Ok(Route {
                upstream,
                repository: name.to_owned(),
            });
        }
        if let (Some(host), repository) = split_registry_prefix(name) {
            let known = self.configured.contains_key(&canonical_registry(host));
            if known || self.dynamic {
                let upstream = self.upstream(host)?;
                let repository = if upstream.name == DOCKER_HUB && !repository.contains('/') {
                    format!("library/{repository}")
                } else {
                    repository.to_owned()
                };
                return Ok(Route {
                    upstream,
                    repository,
                });
            }
        }
        if self.local.contains(name) {
            return Ok(Route {
                upstream: self.local_upstream.clone(),
                repository: name.to_owned(),
            });
        }
        let upstream = self.default.clone().ok_or_else(|| {
            RegistryError::new(
                ErrorCode::NameUnknown,
                format!(
                    "{name}: no default upstream; name the registry with ?ns=, a domain header \
                     or a path prefix"
                ),
            )
        })?;
        Ok(Route {
            upstream,
            repository: name.to_owned(),
        })
    }

    fn upstream(&self, host: &str) -> Result<Arc<Upstream>, RegistryError> {
        let name = canonical_registry(host);
        if let Some(upstream) = self.configured.get(&name) {
            return Ok(upstream.clone());
        }
        if !self.dynamic || !reference::is_valid_host(&name) {
            return Err(RegistryError::new(
                ErrorCode::NameUnknown,
                format!(
                    "upstream {name} is not configured (proxy.remoteregistries) and proxy.on is off"
                ),
            ));
        }
        let url_host = if name == DOCKER_HUB {
            reference::DOCKER_HUB_API_HOST
        } else {
            &name
        };
        let url = MirrorUrl::parse(&format!("https://{url_host}")).map_err(|e| {
            RegistryError::new(ErrorCode::NameInvalid, format!("upstream {name}: {e}"))
        })?;
        Ok(Arc::new(Upstream {
            name,
            origin: Target::origin(&url, None, TlsMode::Verify).untrusted(),
            tag_revalidate: self.dynamic_tag_revalidate,
            local: false,
        }))
    }

    /// The endpoints to fetch `route` from: `--mirrors` endpoints (without credentials), then the
    /// upstream itself with its credentials.
    pub fn targets(&self, route: &Route) -> Vec<Target> {
        let mut targets = Vec::new();
        if let Some(resolver) = &self.mirrors {
            let endpoints = resolver.resolve_repository(&route.upstream.name, &route.repository);
            targets.extend(
                endpoints
                    .endpoints
                    .iter()
                    .filter(|e| e.role == Role::Mirror)
                    .map(|e| Target::from_endpoint(e, None)),
            );
        }
        targets.push(route.upstream.origin.clone());
        targets
    }

    /// How clients see a cached repository in `/v2/_catalog`: bare for the default upstream,
    /// prefixed by the registry host otherwise.
    pub fn catalog_name(&self, upstream: &str, repository: &str) -> String {
        match &self.default {
            _ if upstream == LOCAL => repository.to_owned(),
            Some(default) if default.name == upstream => repository.to_owned(),
            _ => format!("{upstream}/{repository}"),
        }
    }
}

fn origin_tls(url: &MirrorUrl, insecure: &InsecureMatcher) -> TlsMode {
    match url.scheme() {
        Scheme::Http => TlsMode::None,
        Scheme::Https if insecure.is_insecure(url.authority()) => TlsMode::SkipVerify,
        Scheme::Https => TlsMode::Verify,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(yaml: &str) -> Router {
        Router::new(&CacheConfig::parse("c.yml", Some(yaml), &[]).unwrap(), None)
    }

    fn routed(
        router: &Router,
        name: &str,
        ns: Option<&str>,
        domain: Option<&str>,
    ) -> Result<(String, String), ErrorCode> {
        router
            .route(name, ns, domain)
            .map(|r| (r.upstream.name.clone(), r.repository))
            .map_err(|e| e.code)
    }

    #[test]
    fn routing_order() {
        let r = router(
            "proxy:\n  remoteregistries:\n  - url: https://registry-1.docker.io\n  - url: https://ghcr.io\n  - url: http://127.0.0.1:5001\n",
        );
        let ok = |a: &str, b: &str| Ok((a.to_owned(), b.to_owned()));
        assert_eq!(
            routed(&r, "library/nginx", None, None),
            ok("docker.io", "library/nginx")
        );
        assert_eq!(
            routed(&r, "org/img", Some("ghcr.io"), None),
            ok("ghcr.io", "org/img")
        );
        assert_eq!(
            routed(&r, "x/y", Some("127.0.0.1:5001"), None),
            ok("127.0.0.1:5001", "x/y")
        );
        assert_eq!(
            routed(&r, "x/y", None, Some("https://ghcr.io")),
            ok("ghcr.io", "x/y")
        );
        assert_eq!(
            routed(&r, "x/y", Some("docker.io"), Some("https://ghcr.io")),
            ok("docker.io", "x/y")
        );
        assert_eq!(
            routed(&r, "ghcr.io/org/img", None, None),
            ok("ghcr.io", "org/img")
        );
        assert_eq!(
            routed(&r, "docker.io/nginx", None, None),
            ok("docker.io", "library/nginx")
        );
        assert_eq!(
            routed(&r, "index.docker.io/a/b", None, None),
            ok("docker.io", "a/b")
        );
        // an unknown host-looking first component is a repository on the default upstream
        assert_eq!(
            routed(&r, "my.org/x", None, None),
            ok("docker.io", "my.org/x")
        );
        assert_eq!(
            routed(&r, "x", Some("quay.io"), None),
            Err(ErrorCode::NameUnknown)
        );
        assert_eq!(
            r.catalog_name("docker.io", "library/nginx"),
            "library/nginx"
        );
        assert_eq!(r.catalog_name("ghcr.io", "org/img"), "ghcr.io/org/img");
    }

    #[test]
    fn dynamic_upstreams() {
        let r = router("proxy:\n  on: true\n");
        assert_eq!(
            routed(&r, "library/nginx", None, None),
            Err(ErrorCode::NameUnknown)
        );
        let route = r.route("org/img", Some("quay.io"), None).unwrap();
        assert_eq!(route.upstream.name, "quay.io");
        assert_eq!(&*route.upstream.origin.base, "https://quay.io");
        assert!(route.upstream.origin.credentials.is_none());
        let route = r.route("my.org/x/y", None, None).unwrap();
        assert_eq!(
            (route.upstream.name.as_str(), route.repository.as_str()),
            ("my.org", "x/y")
        );
        let hub = r.route("nginx", Some("docker.io"), None).unwrap();
        assert_eq!(&*hub.upstream.origin.base, "https://registry-1.docker.io");
    }

    #[test]
    fn credentials_stay_with_their_upstream() {
        let r = router(
            "proxy:\n  remoteregistries:\n  - url: https://a.io\n    username: u\n    password: secret\n  - url: https://b.io\n",
        );
        let a = r.route("x", Some("a.io"), None).unwrap();
        let b = r.route("x", Some("b.io"), None).unwrap();
        assert!(a.upstream.origin.credentials.is_some());
        assert!(b.upstream.origin.credentials.is_none());
        assert!(!format!("{:?}", a.upstream).contains("secret"));
    }
}

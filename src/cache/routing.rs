//! Which upstream a request is for, and the endpoints to fetch it from.
//!
//! In order: containerd's `?ns=<host>`; the `domain: <scheme>://<host>` header sealer's patched dockerd sends; a
//! path prefix whose first component is a registry host (`/v2/ghcr.io/org/img/…`); else the
//! default (first configured) upstream. Registries that are not configured are served only with
//! `proxy.on` (dynamic upstreams, no stored credentials), and the HTTP client's address guard
//! keeps those off loopback, link-local and private addresses, redirects included. A dynamic
//! upstream listed in the `--mirrors` config's `insecure-registries` (or on loopback) is tried as
//! dockerd would: https without certificate checks, then plain http. A `--mirrors` rule with
//! `mirrors-only` keeps the upstream itself out: its fetches try the mirrors alone. The local (pushed)
//! namespace is never an upstream: `?ns=local` names nothing. Each upstream carries its fetch
//! policy (`allow`/`deny`, [`Upstream::may_fetch`]); dynamic upstreams share `proxy`'s, and the
//! local namespace has none.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::cache::{
    CacheConfig, LocalRepositories, RateLimitReserve, Refusal, RepositoryFilter, RequestLimits,
    UpstreamConfig,
};
use crate::config::mirrors::canonical_registry;
use crate::config::{MirrorUrl, Scheme};
use crate::reference::DOCKER_HUB;
use crate::registry::route::split_registry_prefix;
use crate::registry::{ErrorCode, RegistryError, RegistryHost};
use crate::resolve::{InsecureMatcher, Resolver, Role, TlsMode};
use crate::upstream::{HelperCredentials, RequestLimiter, Target};

/// A configured or dynamic upstream.
#[derive(Debug)]
pub(crate) struct Upstream {
    /// The namespace of its cached content: `docker.io`, `ghcr.io`, `127.0.0.1:5001`.
    pub(crate) name: String,
    /// The upstream itself: one endpoint, or for an insecure dynamic upstream https without
    /// certificate checks, then http.
    pub(crate) origins: Vec<Target>,
    /// How long a tag is served from cache without asking this upstream.
    pub(crate) tag_revalidate: std::time::Duration,
    /// The local namespace: pushes accepted, never proxied.
    pub(crate) local: bool,
    /// Named by a client (`proxy.on`), not configured.
    pub(crate) dynamic: bool,
    /// The part of its stated pull budget kept for content not cached.
    pub(crate) ratelimit_reserve: RateLimitReserve,
    /// `max_concurrent`/`max_rate`, when set (dynamic upstreams share one).
    pub(crate) limiter: Option<Arc<RequestLimiter>>,
    /// `allow`/`deny`: which of its repositories the cache may fetch and serve (dynamic upstreams
    /// share `proxy`'s).
    pub(crate) filter: Arc<RepositoryFilter>,
}

impl Upstream {
    /// The upstream's own endpoint (for an insecure dynamic upstream, the last way tried): the
    /// one whose breaker and pull budget are the upstream's.
    pub(crate) fn origin(&self) -> Option<&Target> {
        self.origins.last()
    }

    /// Its name as a metrics label: every dynamic upstream shares one, so clients cannot grow
    /// the number of series.
    pub(crate) fn label(&self) -> &str {
        if self.dynamic { "dynamic" } else { &self.name }
    }

    /// Whether its fetch policy lets the cache fetch or serve `repository`; Docker Hub's
    /// official images are matched by their full name (`nginx` as `library/nginx`). The local
    /// namespace has no policy: pushed content is never fetched.
    pub(crate) fn may_fetch(&self, repository: &str) -> Result<(), Refusal> {
        check_policy(&self.filter, &self.name, repository)
    }
}

/// `filter` for `repository` of upstream `name` (Docker Hub's `nginx` as `library/nginx`).
fn check_policy(filter: &RepositoryFilter, name: &str, repository: &str) -> Result<(), Refusal> {
    if filter.is_empty() {
        return Ok(());
    }
    if name == DOCKER_HUB && !repository.contains('/') {
        return filter.check(&format!("library/{repository}"));
    }
    filter.check(repository)
}

/// The namespace of local (pushed) repositories.
pub(crate) use crate::config::cache::LOCAL_NAMESPACE as LOCAL;

/// An upstream plus the repository path on it.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) repository: String,
}

/// The routing table.
#[derive(Debug)]
pub(crate) struct Router {
    configured: HashMap<String, Arc<Upstream>>,
    default: Option<Arc<Upstream>>,
    dynamic: bool,
    dynamic_tag_revalidate: std::time::Duration,
    dynamic_reserve: RateLimitReserve,
    dynamic_limiter: Option<Arc<RequestLimiter>>,
    dynamic_filter: Arc<RepositoryFilter>,
    pub(crate) local: LocalRepositories,
    local_upstream: Arc<Upstream>,
    /// `--mirrors` (empty without it): the cache's own fetches walk its mirrors before the
    /// upstream, and its `insecure-registries` decide how dynamic upstreams are reached.
    mirrors: Arc<Resolver>,
}

impl Router {
    pub(crate) fn new(config: &CacheConfig, mirrors: Option<Arc<Resolver>>) -> Self {
        let insecure = InsecureMatcher::default();
        let queue_timeout = config.limits.upstream_queue_timeout;
        let limiter = |requests: RequestLimits| {
            RequestLimiter::new(requests.max_concurrent, requests.max_rate, queue_timeout)
                .map(Arc::new)
        };
        let make = |u: &UpstreamConfig| {
            let tls = origin_tls(&u.url, &insecure);
            Arc::new(Upstream {
                name: u.name.clone(),
                origins: vec![
                    Target::origin(&u.url, u.credentials.clone(), tls).with_helper(
                        u.credential_helper.clone().map(|helper| {
                            Arc::new(HelperCredentials::new(helper, u.url.authority(), &u.name))
                        }),
                    ),
                ],
                tag_revalidate: u.tag_revalidate,
                local: false,
                dynamic: false,
                ratelimit_reserve: u.ratelimit_reserve,
                limiter: limiter(u.requests),
                filter: Arc::new(u.filter.clone()),
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
                origins: Vec::new(),
                tag_revalidate: std::time::Duration::ZERO,
                local: true,
                dynamic: false,
                ratelimit_reserve: RateLimitReserve::default(),
                limiter: None,
                filter: Arc::default(),
            }),
            dynamic_filter: Arc::new(config.filter.clone()),
            dynamic_reserve: config.proxy_reserve,
            dynamic_limiter: limiter(config.proxy_requests),
            dynamic_tag_revalidate: config
                .upstreams
                .first()
                .map_or(std::time::Duration::ZERO, |u| u.tag_revalidate),
            mirrors: mirrors.unwrap_or_else(|| {
                Arc::new(
                    Resolver::new(crate::config::MirrorConfig::default())
                        .expect("an empty mirror config compiles"),
                )
            }),
        }
    }

    /// Routes a request for `name` (the `/v2/<name>/…` path part).
    pub(crate) fn route(
        &self,
        name: &str,
        ns: Option<&str>,
        domain_header: Option<&str>,
    ) -> Result<Route, RegistryError> {
        // A plain registry (no upstream at all) ignores hints, as distribution does: a client
        // using it as a mirror (`?ns=docker.io`) reads the repository by its path.
        let scoped = self.scopes_by_ns();
        let hint = ns.filter(|_| scoped).or_else(|| {
            domain_header.filter(|_| scoped).map(|d| {
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

    /// Whether `?ns=` chooses a request's upstream: in every cache but a plain registry (no
    /// upstream at all), which reads repositories by their path, as distribution does.
    pub(crate) fn scopes_by_ns(&self) -> bool {
        self.dynamic || !self.configured.is_empty()
    }

    fn upstream(&self, host: &str) -> Result<Arc<Upstream>, RegistryError> {
        let name = canonical_registry(host);
        if let Some(upstream) = self.configured.get(&name) {
            return Ok(upstream.clone());
        }
        if name == LOCAL {
            return Err(RegistryError::new(
                ErrorCode::NameUnknown,
                format!("{LOCAL:?} is the namespace of pushed repositories, not an upstream"),
            ));
        }
        if !self.dynamic {
            return Err(RegistryError::new(
                ErrorCode::NameUnknown,
                format!(
                    "upstream {name} is not configured (proxy.remoteregistries) and proxy.on is off"
                ),
            ));
        }
        // The shim's `?ns=` rule: a bare host[:port] in canonical form, or NAME_INVALID.
        let name = RegistryHost::parse(&name)
            .map_err(|why| {
                RegistryError::new(ErrorCode::NameInvalid, format!("invalid upstream: {why}"))
            })?
            .to_string();
        // The resolver knows how the registry itself is reached: Hub's API host, and for an
        // insecure registry https without certificate checks, then http.
        let origins = self
            .mirrors
            .resolve_repository(&name, "")
            .endpoints
            .iter()
            .filter(|e| e.role == Role::Origin)
            .map(|e| Target::from_endpoint(e, None).untrusted())
            .collect();
        Ok(Arc::new(Upstream {
            name,
            origins,
            tag_revalidate: self.dynamic_tag_revalidate,
            local: false,
            dynamic: true,
            ratelimit_reserve: self.dynamic_reserve,
            limiter: self.dynamic_limiter.clone(),
            filter: self.dynamic_filter.clone(),
        }))
    }

    /// The endpoints to fetch `route` from: `--mirrors` endpoints (without credentials), then the
    /// upstream itself with its credentials, unless a `mirrors-only` rule keeps it out.
    pub(crate) fn targets(&self, route: &Route) -> Vec<Target> {
        let endpoints = self
            .mirrors
            .resolve_repository(&route.upstream.name, &route.repository);
        let mut targets: Vec<Target> = endpoints
            .endpoints
            .iter()
            .filter(|e| e.role == Role::Mirror)
            .map(|e| Target::from_endpoint(e, None))
            .collect();
        if endpoints.omitted_origin.is_none() {
            targets.extend(route.upstream.origins.iter().cloned());
        }
        targets
    }

    /// The configured upstreams, the default one first.
    pub(crate) fn configured(&self) -> Vec<Arc<Upstream>> {
        let mut upstreams: Vec<Arc<Upstream>> = self.configured.values().cloned().collect();
        let default = self.default.as_ref().map(|d| d.name.as_str());
        upstreams.sort_by_key(|u| (Some(u.name.as_str()) != default, u.name.clone()));
        upstreams
    }

    /// The longest `tag_revalidate` window of any upstream.
    pub(crate) fn longest_tag_revalidate(&self) -> std::time::Duration {
        self.configured
            .values()
            .map(|u| u.tag_revalidate)
            .chain([self.dynamic_tag_revalidate])
            .max()
            .unwrap_or_default()
    }

    /// Whether `/v2/_catalog` lists cached `repository` of namespace `upstream`: not when the
    /// fetch policy refuses it (its reads would be refused).
    pub(crate) fn may_list(&self, upstream: &str, repository: &str) -> bool {
        if upstream == LOCAL {
            return true;
        }
        let filter = self
            .configured
            .get(upstream)
            .map_or(&self.dynamic_filter, |u| &u.filter);
        check_policy(filter, upstream, repository).is_ok()
    }

    /// How clients see a cached repository in `/v2/_catalog`: bare for the default upstream,
    /// prefixed by the registry host otherwise.
    pub(crate) fn catalog_name(&self, upstream: &str, repository: &str) -> String {
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
        assert_eq!(&*route.upstream.origins[0].base, "https://quay.io");
        assert!(route.upstream.origins[0].credentials.is_none());
        let route = r.route("my.org/x/y", None, None).unwrap();
        assert_eq!(
            (route.upstream.name.as_str(), route.repository.as_str()),
            ("my.org", "x/y")
        );
        // A client-named upstream is a bare host[:port] in canonical form, as the shim's `?ns=`.
        for bad in [
            "2130706433:5000",
            "quay.io/x?y",
            "user@quay.io",
            "quay.io:70000",
            "",
        ] {
            assert_eq!(
                routed(&r, "org/img", Some(bad), None),
                Err(ErrorCode::NameInvalid),
                "{bad}"
            );
        }
        assert_eq!(
            r.route("org/img", Some("[::FFFF:10.0.0.1]:05000"), None)
                .unwrap()
                .upstream
                .name,
            "[::ffff:a00:1]:5000"
        );
        let hub = r.route("nginx", Some("docker.io"), None).unwrap();
        assert_eq!(
            &*hub.upstream.origins[0].base,
            "https://registry-1.docker.io"
        );
    }

    #[test]
    fn mirrors_only_keeps_the_upstream_out_of_the_targets() {
        let mirrors = crate::config::MirrorConfig::from_sources(&[crate::config::ConfigSource {
            path: "m.json",
            text: r#"{"mirror-registries": [
                {"domain": "ghcr.io", "mirrors": ["https://m1"], "mirrors-only": true},
                {"domain": "quay.io", "mirrors": ["https://m2"]},
                {"domain": "*", "mirrors": ["https://m3"], "mirrors-only": true}]}"#,
        }])
        .unwrap();
        let mirrors = Some(Arc::new(Resolver::new(mirrors).unwrap()));
        let yaml = "proxy:\n  on: true\n  remoteregistries:\n  - url: https://ghcr.io\n  - url: https://quay.io\n";
        let r = Router::new(
            &CacheConfig::parse("c.yml", Some(yaml), &[]).unwrap(),
            mirrors,
        );
        let bases = |ns: &str| -> Vec<String> {
            r.targets(&r.route("org/img", Some(ns), None).unwrap())
                .iter()
                .map(|t| t.base.to_string())
                .collect()
        };
        assert_eq!(bases("ghcr.io"), ["https://m1"]);
        assert_eq!(bases("quay.io"), ["https://m2", "https://quay.io"]);
        assert_eq!(bases("other.example"), ["https://m3"], "a dynamic upstream");
    }

    #[test]
    fn credentials_stay_with_their_upstream() {
        let r = router(
            "proxy:\n  remoteregistries:\n  - url: https://a.io\n    username: u\n    password: secret\n  - url: https://b.io\n",
        );
        let a = r.route("x", Some("a.io"), None).unwrap();
        let b = r.route("x", Some("b.io"), None).unwrap();
        assert!(a.upstream.origins[0].credentials.is_some());
        assert!(b.upstream.origins[0].credentials.is_none());
        assert!(!format!("{:?}", a.upstream).contains("secret"));
    }

    #[test]
    fn the_fetch_policy_of_each_upstream() {
        let r = router(
            "proxy:
  on: true
  deny: [\"library/secret\"]
  remoteregistries:
  - url: https://registry-1.docker.io
    allow: [\"library/*\"]
  - url: https://ghcr.io
local: [{prefix: mine/}]
",
        );
        let check = |ns: Option<&str>, name: &str| {
            let route = r.route(name, ns, None).unwrap();
            route
                .upstream
                .may_fetch(&route.repository)
                .map_err(|e| e.rule)
        };
        // Docker Hub's `nginx` is matched as `library/nginx`.
        assert_eq!(check(Some("docker.io"), "nginx"), Ok(()));
        assert_eq!(
            check(Some("docker.io"), "secret"),
            Err("proxy.deny[0]".into())
        );
        assert_eq!(
            check(None, "org/app"),
            Err("proxy.remoteregistries[0].allow".into())
        );
        assert_eq!(check(Some("ghcr.io"), "org/app"), Ok(()));
        assert_eq!(
            check(Some("quay.io"), "library/secret"),
            Err("proxy.deny[0]".into()),
            "dynamic upstreams take the proxy lists"
        );
        assert_eq!(check(None, "mine/secret"), Ok(()), "local: no policy");
        assert!(r.may_list("local", "library/secret"));
        assert!(!r.may_list("docker.io", "org/app"));
        assert!(!r.may_list("quay.io", "library/secret"));
        assert!(r.may_list("ghcr.io", "org/app"));
    }
}

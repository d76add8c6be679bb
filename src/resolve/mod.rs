//! From mirror rules to the ordered endpoints a pull tries: mirrors first, the origin last.
//!
//! [`ResolverBuilder`] compiles a [`MirrorConfig`] once into an immutable [`Resolver`];
//! [`Resolver::resolve`] then answers per image reference without I/O, DNS or locks.
//!
//! Precedence, most specific first:
//! 1. an exact `host[:port]` rule (port-sensitive; Docker Hub's three names are one registry);
//! 2. `*.suffix` patterns, matched against the whole `host[:port]`; the longest pattern wins;
//! 3. `*`.
//!
//! sealer's patched dockerd let `*` beat an exact rule; regmirror deliberately does not: a rule
//! written for one registry is never overridden by the catch-all.
//!
//! After the rule's mirrors come, for Docker Hub only, `registry-mirrors`, then the origin
//! (`https://registry-1.docker.io` for the Hub). An insecure origin is tried as https without
//! certificate checks, then as plain http, as dockerd does.
//!
//! A `mirrors-only` rule leaves the origin out: the endpoints are its mirrors (and, for the Hub,
//! `registry-mirrors`, which are mirrors too), and [`Endpoints::omitted_origin`] says which origin
//! was left out and why. A registry that is itself one of the rule's mirrors (a `*` or pattern
//! rule pulled by its mirror's own name) keeps its origin: there the origin is that mirror.

mod insecure;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Serialize;

use crate::config::mirrors::canonical_registry;
use crate::config::{DomainPattern, Mirror, MirrorConfig, Scheme};
use crate::reference::{DOCKER_HUB, DOCKER_HUB_API_HOST, ImageRef};
pub use insecure::InsecureMatcher;

/// How to speak TLS to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain http.
    None,
    /// https with certificate verification.
    Verify,
    /// https without certificate verification (an insecure registry).
    SkipVerify,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::None => "none",
            TlsMode::Verify => "verify",
            TlsMode::SkipVerify => "skip-verify",
        }
    }
}

/// Whether an endpoint is a mirror or the registry itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Mirror,
    Origin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Mirror => "mirror",
            Role::Origin => "origin",
        }
    }
}

/// Which kind of rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatchKind {
    Exact,
    Pattern,
    CatchAll,
}

/// The rule that decided an image's mirrors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMatch {
    /// The rule's domain as configured: `reg.test1.com`, `*.example.com` or `*`.
    pub domain: Arc<str>,
    pub kind: MatchKind,
    /// `file:line:column` of the rule.
    pub location: Arc<str>,
}

/// A configured rule, as [`Resolver::rules`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSummary {
    pub rule: RuleMatch,
    pub mirrors: Vec<Arc<str>>,
    pub mirrors_only: bool,
}

/// One place to try, with everything a client needs to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `scheme://host[:port][/api-root]`, no trailing slash; `/v2/…` follows it.
    pub url: Arc<str>,
    /// `host[:port]` of the endpoint: what TLS names and credentials are looked up by.
    pub authority: Arc<str>,
    pub role: Role,
    pub tls: TlsMode,
    /// For mirrors, the origin registry (`?ns=` / `domain` header): `docker.io` for the Hub.
    pub ns: Option<Arc<str>>,
    /// The repository path to request: `library/nginx`.
    pub repository: Arc<str>,
    /// Why this endpoint is in the list.
    pub source: Arc<str>,
}

/// The ordered endpoints for one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The registry as matched: lowercase, `docker.io` for the Hub.
    pub registry: Arc<str>,
    pub rule: Option<RuleMatch>,
    /// Never empty: the origin last, or only mirrors when [`omitted_origin`](Self::omitted_origin)
    /// is set.
    pub endpoints: Vec<Endpoint>,
    /// The origin a `mirrors-only` rule keeps out of `endpoints`; `None` when the origin is there.
    pub omitted_origin: Option<OmittedOrigin>,
}

/// An origin that is never tried, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OmittedOrigin {
    /// The origin as it would have been tried: `https://reg.test1.com`, and for Docker Hub
    /// `https://registry-1.docker.io`.
    pub url: Arc<str>,
    /// Where `"mirrors-only": true` is written: `file:line:column mirror-registries[0].mirrors-only`.
    pub source: Arc<str>,
}

/// Why the resolver could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("pattern {pattern:?} ({location}): {message}")]
    Pattern {
        pattern: String,
        location: String,
        message: String,
    },
}

/// A mirror with its TLS mode decided at build time.
#[derive(Debug)]
struct CompiledMirror {
    url: Arc<str>,
    authority: Arc<str>,
    /// True when the URL has no API root, so it may be the origin itself for some registry.
    bare: bool,
    tls: TlsMode,
    source: Arc<str>,
}

#[derive(Debug)]
struct CompiledRule {
    matched: RuleMatch,
    mirrors: Vec<CompiledMirror>,
    /// `file:line:column field` of `"mirrors-only": true`, when the rule has it.
    mirrors_only: Option<Arc<str>>,
}

/// Collects configuration, then compiles it into a [`Resolver`].
#[derive(Debug, Default)]
pub struct ResolverBuilder {
    config: MirrorConfig,
}

impl ResolverBuilder {
    pub fn new(config: MirrorConfig) -> Self {
        ResolverBuilder { config }
    }

    pub fn build(self) -> Result<Resolver, BuildError> {
        let insecure = InsecureMatcher::new(&self.config.insecure_registries);
        let compile_mirror = |mirror: &Mirror, source: String| CompiledMirror {
            url: Arc::from(mirror.url.to_string()),
            authority: Arc::from(mirror.url.authority()),
            bare: mirror.url.api_root().is_empty(),
            tls: match mirror.url.scheme() {
                Scheme::Http => TlsMode::None,
                Scheme::Https if insecure.is_insecure(mirror.url.authority()) => {
                    TlsMode::SkipVerify
                }
                Scheme::Https => TlsMode::Verify,
            },
            source: Arc::from(source),
        };
        let mut exact = HashMap::new();
        let mut patterns = Vec::new();
        let mut glob_set = GlobSetBuilder::new();
        let mut catch_all = None;
        for rule in &self.config.rules {
            let kind = match rule.domain {
                DomainPattern::Exact(_) => MatchKind::Exact,
                DomainPattern::Suffix(_) => MatchKind::Pattern,
                DomainPattern::Any => MatchKind::CatchAll,
            };
            let mirrors = rule
                .mirrors
                .iter()
                .map(|m| compile_mirror(m, format!("{} {}", m.location, m.location.field)))
                .collect();
            let compiled = CompiledRule {
                matched: RuleMatch {
                    domain: Arc::from(rule.domain.as_str()),
                    kind,
                    location: Arc::from(rule.location.to_string()),
                },
                mirrors,
                mirrors_only: rule
                    .mirrors_only
                    .as_ref()
                    .map(|at| Arc::from(format!("{at} {}", at.field))),
            };
            match &rule.domain {
                DomainPattern::Exact(host) => {
                    exact.insert(host.clone(), compiled);
                }
                DomainPattern::Suffix(pattern) => {
                    let glob = Glob::new(pattern).map_err(|e| BuildError::Pattern {
                        pattern: pattern.clone(),
                        location: rule.location.to_string(),
                        message: e.to_string(),
                    })?;
                    glob_set.add(glob);
                    patterns.push(compiled);
                }
                DomainPattern::Any => catch_all = Some(compiled),
            }
        }
        let glob_set = glob_set.build().map_err(|e| BuildError::Pattern {
            pattern: String::new(),
            location: String::new(),
            message: e.to_string(),
        })?;
        let hub_mirrors = self
            .config
            .registry_mirrors
            .iter()
            .map(|m| compile_mirror(m, format!("{} {}", m.location, m.location.field)))
            .collect();
        Ok(Resolver {
            exact,
            patterns,
            glob_set,
            catch_all,
            hub_mirrors,
            insecure,
            hub: HubOrigin {
                url: Arc::from(format!("https://{DOCKER_HUB_API_HOST}")),
                authority: Arc::from(DOCKER_HUB_API_HOST),
                ns: Arc::from(DOCKER_HUB),
            },
        })
    }
}

#[derive(Debug)]
struct HubOrigin {
    url: Arc<str>,
    authority: Arc<str>,
    ns: Arc<str>,
}

/// Compiled rules. Cheap to share (`Arc<Resolver>`), immutable, no I/O.
#[derive(Debug)]
pub struct Resolver {
    exact: HashMap<String, CompiledRule>,
    patterns: Vec<CompiledRule>,
    glob_set: GlobSet,
    catch_all: Option<CompiledRule>,
    hub_mirrors: Vec<CompiledMirror>,
    insecure: InsecureMatcher,
    hub: HubOrigin,
}

impl Resolver {
    /// Compiles a configuration; shorthand for [`ResolverBuilder::build`].
    pub fn new(config: MirrorConfig) -> Result<Self, BuildError> {
        ResolverBuilder::new(config).build()
    }

    /// The ordered endpoints for `image`.
    pub fn resolve(&self, image: &ImageRef) -> Endpoints {
        self.resolve_repository(image.registry(), image.repository())
    }

    /// The ordered endpoints for `repository` on `registry` (`host[:port]`, any Hub spelling).
    pub fn resolve_repository(&self, registry: &str, repository: &str) -> Endpoints {
        let registry = canonical_registry(registry);
        let rule = self.rule_for(&registry);
        let is_hub = registry == DOCKER_HUB;
        let repository: Arc<str> = Arc::from(repository);
        let (origin_url, origin_authority, ns): (Arc<str>, Arc<str>, Arc<str>) = if is_hub {
            (
                self.hub.url.clone(),
                self.hub.authority.clone(),
                self.hub.ns.clone(),
            )
        } else {
            let ns: Arc<str> = Arc::from(registry.as_str());
            (Arc::from(format!("https://{registry}")), ns.clone(), ns)
        };

        let rule_mirrors = rule.map(|r| r.mirrors.as_slice()).unwrap_or_default();
        let hub_mirrors = if is_hub {
            self.hub_mirrors.as_slice()
        } else {
            &[]
        };
        let mut endpoints = Vec::with_capacity(rule_mirrors.len() + hub_mirrors.len() + 2);
        let is_origin = |mirror: &CompiledMirror| {
            mirror.bare
                && (*mirror.authority == *origin_authority || *mirror.authority == *registry)
        };
        push_mirrors(
            &mut endpoints,
            rule_mirrors.iter().chain(hub_mirrors),
            is_origin,
            Some(&ns),
            &repository,
        );
        let omitted_origin = rule
            .and_then(|r| r.mirrors_only.as_ref())
            .filter(|_| !rule_mirrors.iter().any(is_origin))
            .map(|source| OmittedOrigin {
                url: origin_url.clone(),
                source: source.clone(),
            });
        if omitted_origin.is_some() {
            return Endpoints {
                registry: ns,
                rule: rule.map(|r| r.matched.clone()),
                endpoints,
                omitted_origin,
            };
        }
        let origin = |url: Arc<str>, tls: TlsMode, source: &str| Endpoint {
            url,
            authority: origin_authority.clone(),
            role: Role::Origin,
            tls,
            ns: None,
            repository: repository.clone(),
            source: Arc::from(source),
        };
        match self.insecure.why_insecure(&registry).filter(|_| !is_hub) {
            Some(why) => {
                endpoints.push(origin(origin_url, TlsMode::SkipVerify, why));
                let http = Arc::from(format!("http://{registry}"));
                endpoints.push(origin(http, TlsMode::None, why));
            }
            None => endpoints.push(origin(origin_url, TlsMode::Verify, "origin")),
        }
        Endpoints {
            registry: ns,
            rule: rule.map(|r| r.matched.clone()),
            endpoints,
            omitted_origin: None,
        }
    }

    /// The mirrors of the `*.suffix` or `*` rule configured as `domain`, for an engine with a
    /// wildcard of its own (containerd's `_default`, registries.conf's `*.suffix` prefixes):
    /// in order, with TLS modes, duplicates dropped, no `ns` (the engine adds it) and no
    /// repository. Unlike [`Resolver::resolve_repository`], no mirror is dropped as the origin
    /// and `registry-mirrors` are not appended: both depend on the registry. `None` when no
    /// such rule is configured.
    pub fn wildcard_mirrors(&self, domain: &DomainPattern) -> Option<Vec<Endpoint>> {
        let rule = match domain {
            DomainPattern::Exact(_) => None,
            DomainPattern::Suffix(pattern) => self
                .patterns
                .iter()
                .find(|r| *r.matched.domain == **pattern),
            DomainPattern::Any => self.catch_all.as_ref(),
        }?;
        let mut endpoints = Vec::with_capacity(rule.mirrors.len());
        push_mirrors(
            &mut endpoints,
            rule.mirrors.iter(),
            |_| false,
            None,
            &Arc::from(""),
        );
        Some(endpoints)
    }

    /// Every rule as configured, for a status page: exact rules (by domain), then patterns, then
    /// `*`; each with its mirrors' URLs in order and whether it is mirrors-only.
    pub fn rules(&self) -> Vec<RuleSummary> {
        let mut exact: Vec<&CompiledRule> = self.exact.values().collect();
        exact.sort_by(|a, b| a.matched.domain.cmp(&b.matched.domain));
        exact
            .into_iter()
            .chain(self.patterns.iter())
            .chain(self.catch_all.as_ref())
            .map(|rule| RuleSummary {
                rule: rule.matched.clone(),
                mirrors: rule.mirrors.iter().map(|m| m.url.clone()).collect(),
                mirrors_only: rule.mirrors_only.is_some(),
            })
            .collect()
    }

    /// True when some rule (exact, pattern or `*`) covers `registry` (`host[:port]`).
    pub fn has_rule(&self, registry: &str) -> bool {
        self.rule_for(&canonical_registry(registry)).is_some()
    }

    /// The most specific rule for a canonical registry host.
    fn rule_for(&self, registry: &str) -> Option<&CompiledRule> {
        if let Some(rule) = self.exact.get(registry) {
            return Some(rule);
        }
        if !self.patterns.is_empty() {
            let best = self
                .glob_set
                .matches(registry)
                .into_iter()
                .max_by_key(|&i| (self.patterns[i].matched.domain.len(), std::cmp::Reverse(i)));
            if let Some(i) = best {
                return Some(&self.patterns[i]);
            }
        }
        self.catch_all.as_ref()
    }
}

/// Appends `mirrors` as mirror endpoints, except those `is_origin` says are the registry itself
/// and URLs already listed.
fn push_mirrors<'a>(
    endpoints: &mut Vec<Endpoint>,
    mirrors: impl Iterator<Item = &'a CompiledMirror>,
    is_origin: impl Fn(&CompiledMirror) -> bool,
    ns: Option<&Arc<str>>,
    repository: &Arc<str>,
) {
    for mirror in mirrors {
        if is_origin(mirror) || endpoints.iter().any(|e| e.url == mirror.url) {
            continue;
        }
        endpoints.push(Endpoint {
            url: mirror.url.clone(),
            authority: mirror.authority.clone(),
            role: Role::Mirror,
            tls: mirror.tls,
            ns: ns.cloned(),
            repository: repository.clone(),
            source: mirror.source.clone(),
        });
    }
}

impl fmt::Display for MatchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MatchKind::Exact => "exact",
            MatchKind::Pattern => "pattern",
            MatchKind::CatchAll => "catch-all",
        })
    }
}

#[cfg(test)]
mod tests;

//! The registries a configuration names, each with the resolver's answer: what the generators
//! write out one registry at a time.
//!
//! No engine has the resolver's rules (most specific rule wins, port-sensitive patterns, a
//! mirror dropped for its own registry, insecure origins tried over https without verification,
//! then http), so a wildcard an engine does have (containerd's `_default`, registries.conf's
//! `*.suffix` prefixes) is right only for registries that need none of that. Every registry the
//! configuration names is therefore written on its own, with [`Resolver::resolve_repository`]'s
//! endpoints, in this order:
//! 1. each exact rule's registry;
//! 2. Docker Hub, when the resolver gives it a mirror (a rule covers it, or `registry-mirrors`);
//! 3. each `insecure-registries` host (an engine's default would verify its certificate);
//! 4. the registry of a bare mirror URL that the `*.suffix` or `*` rule listing it covers (the
//!    resolver drops such a mirror for its own registry; the engine's wildcard would not);
//! 5. the registries the user names (registries.conf's `--registry`).
//!
//! A registry named twice is written once, at its first place.

use crate::config::mirrors::canonical_registry;
use crate::config::{DomainPattern, MirrorConfig};
use crate::reference::DOCKER_HUB;
use crate::resolve::{Endpoints, Resolver, Role};

/// The resolver's answer for every registry `config` names, then for `extra` (`host[:port]`).
pub fn registries(config: &MirrorConfig, resolver: &Resolver, extra: &[String]) -> Vec<Endpoints> {
    let mut names: Vec<String> = Vec::new();
    let exact = config.rules.iter().filter_map(|rule| match &rule.domain {
        DomainPattern::Exact(registry) => Some(registry.clone()),
        _ => None,
    });
    names.extend(exact);
    let hub = resolver.resolve_repository(DOCKER_HUB, "");
    if hub.endpoints.iter().any(|e| e.role == Role::Mirror) {
        names.push(DOCKER_HUB.to_owned());
    }
    names.extend(
        config
            .insecure_registries
            .hosts
            .iter()
            .map(|(host, _)| host.clone()),
    );
    for rule in &config.rules {
        if matches!(rule.domain, DomainPattern::Exact(_)) {
            continue;
        }
        for mirror in rule.mirrors.iter().filter(|m| m.url.api_root().is_empty()) {
            let registry = canonical_registry(mirror.url.authority());
            let covering = resolver.resolve_repository(&registry, "").rule;
            if covering.is_some_and(|r| *r.domain == *rule.domain.as_str()) {
                names.push(registry);
            }
        }
    }
    names.extend(extra.iter().map(|host| canonical_registry(host)));

    let mut seen = std::collections::HashSet::new();
    names
        .into_iter()
        .filter(|name| seen.insert(name.clone()))
        .map(|name| resolver.resolve_repository(&name, ""))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigSource;

    fn names(json: &str, extra: &[&str]) -> Vec<String> {
        let config = MirrorConfig::from_sources(&[ConfigSource {
            path: "m.json",
            text: json,
        }])
        .unwrap();
        let resolver = Resolver::new(config.clone()).unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        registries(&config, &resolver, &extra)
            .iter()
            .map(|e| e.registry.to_string())
            .collect()
    }

    #[test]
    fn what_a_configuration_names() {
        let json = r#"{"mirror-registries": [
            {"domain": "*", "mirrors": ["http://sea.hub:5000", "https://cache/root"]},
            {"domain": "*.corp", "mirrors": ["https://m.corp", "https://other"]},
            {"domain": "ghcr.io", "mirrors": ["https://m.corp"]}],
            "insecure-registries": ["sea.hub:5000", "legacy.corp:5000", "10.0.0.0/8"]}"#;
        assert_eq!(
            names(json, &["Quay.io", "index.docker.io", "ghcr.io"]),
            [
                "ghcr.io",
                "docker.io",
                "sea.hub:5000",
                "legacy.corp:5000",
                // https://m.corp under *.corp; not https://other (the `*` rule covers `other`
                // and does not list it) nor https://cache/root (a path: never the origin).
                "m.corp",
                "quay.io",
            ]
        );
        // Docker Hub only when it gets a mirror.
        let json = r#"{"mirror-registries": [{"domain": "*.corp", "mirrors": ["https://m"]}]}"#;
        assert_eq!(names(json, &[]), Vec::<String>::new());
        let json = r#"{"registry-mirrors": ["https://m"]}"#;
        assert_eq!(names(json, &[]), ["docker.io"]);
    }
}

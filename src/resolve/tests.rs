//! Resolver rules, table-driven: (config, image) -> endpoints as `role tls url ns`.

use super::*;
use crate::config::ConfigSource;

fn resolver(json: &str) -> Resolver {
    let config = MirrorConfig::from_sources(&[ConfigSource {
        path: "m.json",
        text: json,
    }])
    .unwrap();
    Resolver::new(config).unwrap()
}

/// `role tls url ns` lines, compact enough to read as a table.
fn lines(resolver: &Resolver, image: &str) -> Vec<String> {
    let endpoints = resolver.resolve(&ImageRef::parse(image).unwrap());
    endpoints
        .endpoints
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {}",
                e.role.as_str(),
                e.tls.as_str(),
                e.url,
                e.ns.as_deref().unwrap_or("-")
            )
        })
        .collect()
}

fn rule_of(resolver: &Resolver, image: &str) -> Option<String> {
    resolver
        .resolve(&ImageRef::parse(image).unwrap())
        .rule
        .map(|r| format!("{} {}", r.kind, r.domain))
}

const SEED_1: &str = r#"{"mirror-registries":[{"domain": "reg.test1.com",
    "mirrors": ["http://mirror.test1.com", "https://mirror.test2.com"]}]}"#;

const SEED_2: &str = r#"{"mirror-registries":[{"domain": "*",
    "mirrors": ["http://sea.hub:5000", "https://mirror.test2.com"]}],
    "insecure-registries": ["sea.hub:5000", "mirror.test1.com"]}"#;

#[test]
fn seed_one_exact_domain() {
    let r = resolver(SEED_1);
    assert_eq!(
        lines(&r, "reg.test1.com/library/nginx:latest"),
        [
            "mirror none http://mirror.test1.com reg.test1.com",
            "mirror verify https://mirror.test2.com reg.test1.com",
            "origin verify https://reg.test1.com -",
        ]
    );
    assert_eq!(
        rule_of(&r, "reg.test1.com/library/nginx"),
        Some("exact reg.test1.com".into())
    );
    // Port-sensitive: reg.test1.com:5000 is another registry.
    assert_eq!(
        lines(&r, "reg.test1.com:5000/x"),
        ["origin verify https://reg.test1.com:5000 -"]
    );
    assert_eq!(
        lines(&r, "nginx"),
        ["origin verify https://registry-1.docker.io -"]
    );
}

#[test]
fn seed_two_catch_all() {
    let r = resolver(SEED_2);
    assert_eq!(
        lines(&r, "nginx"),
        [
            "mirror none http://sea.hub:5000 docker.io",
            "mirror verify https://mirror.test2.com docker.io",
            "origin verify https://registry-1.docker.io -",
        ]
    );
    assert_eq!(
        lines(&r, "a.test.com/test/test:v1"),
        [
            "mirror none http://sea.hub:5000 a.test.com",
            "mirror verify https://mirror.test2.com a.test.com",
            "origin verify https://a.test.com -",
        ]
    );
    // mirror.test1.com is insecure: its origin is tried https without checks, then http.
    assert_eq!(
        lines(&r, "mirror.test1.com/x"),
        [
            "mirror none http://sea.hub:5000 mirror.test1.com",
            "mirror verify https://mirror.test2.com mirror.test1.com",
            "origin skip-verify https://mirror.test1.com -",
            "origin none http://mirror.test1.com -",
        ]
    );
    // A mirror that is the registry itself is dropped: sea.hub:5000 is its own origin.
    assert_eq!(
        lines(&r, "sea.hub:5000/x"),
        [
            "mirror verify https://mirror.test2.com sea.hub:5000",
            "origin skip-verify https://sea.hub:5000 -",
            "origin none http://sea.hub:5000 -",
        ]
    );
    assert_eq!(rule_of(&r, "quay.io/x/y"), Some("catch-all *".into()));
}

#[test]
fn most_specific_rule_wins() {
    let r = resolver(
        r#"{"mirror-registries": [
            {"domain": "*", "mirrors": ["https://any"]},
            {"domain": "*.example.com", "mirrors": ["https://short"]},
            {"domain": "*.eu.example.com", "mirrors": ["https://long"]},
            {"domain": "reg.eu.example.com", "mirrors": ["https://exact"]},
            {"domain": "reg.example.com:5000", "mirrors": ["https://exact-port"]}
        ]}"#,
    );
    for (image, expected) in [
        ("reg.eu.example.com/a", "exact reg.eu.example.com"),
        ("other.eu.example.com/a", "pattern *.eu.example.com"),
        ("a.b.eu.example.com/a", "pattern *.eu.example.com"),
        ("x.example.com/a", "pattern *.example.com"),
        ("eu.example.com/a", "pattern *.example.com"),
        // *.suffix matches subdomains only, never the suffix itself
        ("example.com/a", "catch-all *"),
        ("notexample.com/a", "catch-all *"),
        // patterns are port-sensitive like exact rules
        ("x.example.com:5000/a", "catch-all *"),
        ("reg.example.com:5000/a", "exact reg.example.com:5000"),
        ("reg.example.com/a", "pattern *.example.com"),
        ("nginx", "catch-all *"),
    ] {
        assert_eq!(rule_of(&r, image).as_deref(), Some(expected), "{image}");
    }
    assert_eq!(
        lines(&r, "reg.eu.example.com/a")[0],
        "mirror verify https://exact reg.eu.example.com"
    );
}

#[test]
fn no_rule_means_origin_only() {
    let r = resolver(r#"{"mirror-registries": [{"domain": "*.corp", "mirrors": ["https://m"]}]}"#);
    assert_eq!(rule_of(&r, "ghcr.io/a/b"), None);
    assert_eq!(
        lines(&r, "ghcr.io/a/b"),
        ["origin verify https://ghcr.io -"]
    );
    assert_eq!(
        lines(&r, "corp/a"),
        ["origin verify https://registry-1.docker.io -"]
    );
}

#[test]
fn docker_hub_names_and_registry_mirrors() {
    let r = resolver(
        r#"{"mirror-registries": [{"domain": "index.docker.io", "mirrors": ["https://rule", "https://shared"]}],
            "registry-mirrors": ["https://shared", "https://hub-mirror/root"]}"#,
    );
    let expected = [
        "mirror verify https://rule docker.io",
        "mirror verify https://shared docker.io",
        "mirror verify https://hub-mirror/root docker.io",
        "origin verify https://registry-1.docker.io -",
    ];
    assert_eq!(lines(&r, "nginx"), expected);
    assert_eq!(lines(&r, "docker.io/library/nginx"), expected);
    assert_eq!(lines(&r, "index.docker.io/library/nginx"), expected);
    assert_eq!(lines(&r, "registry-1.docker.io/library/nginx"), expected);
    // registry-mirrors never apply to other registries.
    assert_eq!(
        lines(&r, "quay.io/a/b"),
        ["origin verify https://quay.io -"]
    );
}

#[test]
fn registry_mirrors_alone() {
    let r = resolver(r#"{"registry-mirrors": ["http://127.0.0.1:5000"]}"#);
    assert_eq!(
        lines(&r, "busybox"),
        [
            "mirror none http://127.0.0.1:5000 docker.io",
            "origin verify https://registry-1.docker.io -",
        ]
    );
}

#[test]
fn tls_modes() {
    let r = resolver(
        r#"{"mirror-registries": [{"domain": "*", "mirrors": [
              "https://secure.example", "https://listed.example:8443", "https://10.1.2.3:5000",
              "https://127.0.0.1:5000", "https://localhost:5001", "https://[::1]:5002",
              "http://plain.example", "https://[fd00::5]"]}],
            "insecure-registries": ["listed.example:8443", "10.0.0.0/8", "fd00::/8", "origin.example"]}"#,
    );
    let tls: Vec<String> = lines(&r, "quay.io/a")
        .iter()
        .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        tls,
        [
            "mirror verify https://secure.example",
            "mirror skip-verify https://listed.example:8443",
            "mirror skip-verify https://10.1.2.3:5000",
            "mirror skip-verify https://127.0.0.1:5000",
            "mirror skip-verify https://localhost:5001",
            "mirror skip-verify https://[::1]:5002",
            "mirror none http://plain.example",
            "mirror skip-verify https://[fd00::5]",
            "origin verify https://quay.io",
        ]
    );
    // Exact entries are port-sensitive.
    assert_eq!(
        lines(&r, "listed.example/a").last().unwrap(),
        "origin verify https://listed.example -"
    );
    // CIDRs match IP literals on any port; loopback origins are always insecure.
    for image in [
        "10.9.9.9:5000/a",
        "127.0.0.1:5000/a",
        "localhost:5000/a",
        "[::1]:5000/a",
        "origin.example/a",
    ] {
        let all = lines(&r, image);
        let origins: Vec<_> = all.iter().filter(|l| l.starts_with("origin")).collect();
        assert_eq!(origins.len(), 2, "{image}: {all:?}");
        assert!(
            origins[0].starts_with("origin skip-verify https://"),
            "{image}"
        );
        assert!(origins[1].starts_with("origin none http://"), "{image}");
    }
}

#[test]
fn endpoint_details() {
    let r = resolver(
        r#"{"mirror-registries": [{"domain": "reg.io", "mirrors": ["https://cache.local/api/root"]}]}"#,
    );
    let endpoints = r.resolve(&ImageRef::parse("reg.io/team/app:v1").unwrap());
    assert_eq!(&*endpoints.registry, "reg.io");
    let mirror = &endpoints.endpoints[0];
    assert_eq!(&*mirror.url, "https://cache.local/api/root");
    assert_eq!(&*mirror.authority, "cache.local");
    assert_eq!(&*mirror.repository, "team/app");
    assert_eq!(mirror.ns.as_deref(), Some("reg.io"));
    assert_eq!(
        &*mirror.source,
        "m.json:1:57 mirror-registries[0].mirrors[0]"
    );
    let origin = &endpoints.endpoints[1];
    assert_eq!(&*origin.authority, "reg.io");
    assert_eq!(&*origin.source, "origin");
    let rule = endpoints.rule.unwrap();
    assert_eq!(&*rule.location, "m.json:1:35");
    assert_eq!(rule.kind, MatchKind::Exact);
}

#[test]
fn duplicates_are_removed() {
    let r = resolver(
        r#"{"mirror-registries": [{"domain": "docker.io", "mirrors": ["https://m", "https://m/"]}],
            "registry-mirrors": ["https://m:443"]}"#,
    );
    assert_eq!(
        lines(&r, "nginx"),
        [
            "mirror verify https://m docker.io",
            "origin verify https://registry-1.docker.io -"
        ]
    );
}

#[test]
fn uppercase_registry_hosts_match_rules() {
    let r = resolver(SEED_1);
    assert_eq!(
        rule_of(&r, "REG.test1.com/a"),
        Some("exact reg.test1.com".into())
    );
}

#[test]
fn many_rules_resolve_correctly() {
    let mut rules = Vec::new();
    for i in 0..300 {
        rules.push(format!(
            r#"{{"domain": "reg{i}.example.com", "mirrors": ["https://m{i}"]}}"#
        ));
        rules.push(format!(
            r#"{{"domain": "*.team{i}.example.org", "mirrors": ["https://p{i}"]}}"#
        ));
    }
    let r = resolver(&format!(
        r#"{{"mirror-registries": [{}]}}"#,
        rules.join(",")
    ));
    assert_eq!(
        lines(&r, "reg123.example.com/a")[0],
        "mirror verify https://m123 reg123.example.com"
    );
    assert_eq!(
        lines(&r, "x.team77.example.org/a")[0],
        "mirror verify https://p77 x.team77.example.org"
    );
    assert_eq!(lines(&r, "x.team77.example.net/a").len(), 1);
}

#[test]
fn wildcard_mirrors_for_engines_with_their_own_wildcard() {
    let r = resolver(
        r#"{"mirror-registries": [
            {"domain": "*", "mirrors": ["http://sea.hub:5000", "https://sea.hub:5000", "http://sea.hub:5000"]},
            {"domain": "*.corp", "mirrors": ["https://m.corp", "https://mirror.test1.com/root"]},
            {"domain": "reg.corp", "mirrors": ["https://exact"]}],
            "registry-mirrors": ["https://hub-mirror"],
            "insecure-registries": ["sea.hub:5000", "mirror.test1.com"]}"#,
    );
    let table = |domain: &str| -> Option<Vec<String>> {
        let endpoints = r.wildcard_mirrors(&DomainPattern::parse(domain).unwrap())?;
        Some(
            endpoints
                .iter()
                .map(|e| {
                    format!(
                        "{} {} {} {:?}",
                        e.role.as_str(),
                        e.tls.as_str(),
                        e.url,
                        e.ns
                    )
                })
                .collect(),
        )
    };
    // Nothing is dropped as the origin (m.corp is kept) and registry-mirrors are not added.
    assert_eq!(
        table("*").unwrap(),
        [
            "mirror none http://sea.hub:5000 None",
            "mirror skip-verify https://sea.hub:5000 None",
        ]
    );
    assert_eq!(
        table("*.corp").unwrap(),
        [
            "mirror verify https://m.corp None",
            "mirror skip-verify https://mirror.test1.com/root None",
        ]
    );
    assert_eq!(table("reg.corp"), None, "exact rules resolve per registry");
    assert_eq!(table("*.other"), None);
}

#[test]
fn mirrors_only_leaves_the_origin_out() {
    let r = resolver(
        r#"{"mirror-registries": [
            {"domain": "reg.io", "mirrors": ["http://m1", "https://m2"], "mirrors-only": true},
            {"domain": "*", "mirrors": ["http://sea.hub:5000", "https://m2"], "mirrors-only": true},
            {"domain": "*.open.example", "mirrors": ["https://m3"], "mirrors-only": false}],
            "registry-mirrors": ["https://hub-mirror"],
            "insecure-registries": ["reg.io", "sea.hub:5000"]}"#,
    );
    // An insecure origin is left out too: neither its https nor its http attempt.
    assert_eq!(
        lines(&r, "reg.io/team/app"),
        [
            "mirror none http://m1 reg.io",
            "mirror verify https://m2 reg.io"
        ]
    );
    let endpoints = r.resolve(&ImageRef::parse("reg.io/team/app").unwrap());
    assert_eq!(
        endpoints.omitted_origin,
        Some(OmittedOrigin {
            url: Arc::from("https://reg.io"),
            source: Arc::from("m.json:2:90 mirror-registries[0].mirrors-only"),
        })
    );
    // `*` covers every registry, Docker Hub included; registry-mirrors are mirrors and stay.
    assert_eq!(
        lines(&r, "nginx"),
        [
            "mirror none http://sea.hub:5000 docker.io",
            "mirror verify https://m2 docker.io",
            "mirror verify https://hub-mirror docker.io",
        ]
    );
    let hub = r.resolve(&ImageRef::parse("nginx").unwrap());
    assert_eq!(
        hub.omitted_origin.map(|o| o.url),
        Some(Arc::from("https://registry-1.docker.io"))
    );
    assert_eq!(
        lines(&r, "quay.io/a/b"),
        [
            "mirror none http://sea.hub:5000 quay.io",
            "mirror verify https://m2 quay.io"
        ]
    );
    // A registry that is itself one of the rule's mirrors keeps its origin: it is that mirror.
    assert_eq!(
        lines(&r, "sea.hub:5000/x"),
        [
            "mirror verify https://m2 sea.hub:5000",
            "origin skip-verify https://sea.hub:5000 -",
            "origin none http://sea.hub:5000 -",
        ]
    );
    assert_eq!(
        r.resolve(&ImageRef::parse("sea.hub:5000/x").unwrap())
            .omitted_origin,
        None
    );
    // A more specific rule without the key keeps the origin.
    assert_eq!(
        lines(&r, "a.open.example/x"),
        [
            "mirror verify https://m3 a.open.example",
            "origin verify https://a.open.example -"
        ]
    );
    // Without mirrors-only nothing changes.
    let seed = resolver(SEED_1);
    let endpoints = seed.resolve(&ImageRef::parse("reg.test1.com/a").unwrap());
    assert_eq!(endpoints.omitted_origin, None);
    assert_eq!(endpoints.endpoints.last().unwrap().role, Role::Origin);
}

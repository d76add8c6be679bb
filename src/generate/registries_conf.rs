//! A containers-registries.conf v2 drop-in (podman, CRI-O, skopeo, buildah).
//!
//! Every registry the configuration names ([`super::named`]) and every `--registry HOST` gets a
//! `[[registry]]` written from the resolver's answer: `prefix` and `location` = the registry
//! (mirrors-only: see below), `insecure` when the resolver does not verify the origin's
//! certificate, and one
//! `[[registry.mirror]]` per mirror in the resolver's order (`location` without scheme;
//! `insecure = true` for plain http or an insecure https mirror). Each pattern rule then becomes
//! a `*.suffix` prefix (which takes no `location`) with its mirrors. The format has no
//! catch-all: the `*` rule reaches only the registries written out.
//!
//! containers/image takes the longest prefix, the first one on a tie (`x.a.io` against
//! `*.a.io`), so the registries come before the patterns and always win. It also lets `*.suffix`
//! (and, by a bug it documents, an exact prefix) match a host with any port, which the
//! resolver's rules never do: a registry with a port that the configuration names gets its own
//! block, and each pattern rule is warned about. A mirror path rewrites the repository namespace
//! there (unlike docker and containerd), and podman and CRI-O send no `?ns=`, so a mirror that
//! serves several registries cannot tell them apart: both are warned about.
//!
//! A `mirrors-only` rule's answer has no origin. containers-registries.conf(5) documents
//! `location` as "the physical location of the `prefix`-rooted namespace", tried after the
//! mirrors, so the registry's block gets its last mirror as `location` (with that mirror's
//! `insecure`) and the mirrors before it: a pull never reaches the origin. The same page says
//! "redirection and mirrors are currently processed only when reading images, not when
//! pushing", so pushes still go to the origin, and documents a `*.suffix` prefix only without a
//! `location`, so a mirrors-only pattern cannot keep the origin out for the registries it covers
//! that are not written out: both are warned about.

use super::{Warning, marker_line, named, toml_string};
use crate::config::{DomainPattern, MirrorConfig, MirrorRule};
use crate::resolve::{BuildError, Endpoint, Endpoints, Resolver, Role, TlsMode};

/// The drop-in text and what could not be expressed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RegistriesConf {
    pub text: String,
    pub warnings: Vec<Warning>,
}

/// A mirror location as written, the mirror's URL and the prefixes it serves.
struct Served {
    location: String,
    url: String,
    prefixes: Vec<String>,
}

/// `registries`: hosts (`host[:port]`) to write out besides those the configuration names, for
/// the `*` rule in particular.
pub fn generate(
    config: &MirrorConfig,
    sources: &[String],
    registries: &[String],
) -> Result<RegistriesConf, BuildError> {
    let resolver = Resolver::new(config.clone())?;
    let mut out = RegistriesConf {
        text: marker_line(sources),
        warnings: Vec::new(),
    };
    let mut served: Vec<Served> = Vec::new();
    for registry in named::registries(config, &resolver, registries) {
        push_registry(&mut out.text, &mut served, registry);
    }
    for rule in &config.rules {
        push_rule(&mut out, &mut served, &resolver, rule, registries);
    }
    warn_registries_without_rule(&mut out.warnings, &resolver, registries);
    warn_mirrors(&mut out.warnings, config, &served);
    Ok(out)
}

/// The `[[registry]]` of a registry the configuration names, from the resolver's answer.
fn push_registry(text: &mut String, served: &mut Vec<Served>, registry: Endpoints) {
    let (mut mirrors, origin): (Vec<Endpoint>, Vec<Endpoint>) = registry
        .endpoints
        .into_iter()
        .partition(|e| e.role == Role::Mirror);
    let (location, insecure) = if registry.omitted_origin.is_some() {
        // mirrors-only: the last mirror is where the namespace lives.
        let last = mirrors
            .pop()
            .expect("an answer without its origin has a mirror");
        let location = mirror_location(&last).to_owned();
        mirrors.retain(|m| mirror_location(m) != location);
        record(served, &location, &last.url, &registry.registry);
        (location, last.tls != TlsMode::Verify)
    } else {
        let insecure = origin.iter().any(|e| e.tls != TlsMode::Verify);
        (registry.registry.to_string(), insecure)
    };
    text.push_str(&format!(
        "\n[[registry]]\nprefix = {}\nlocation = {}\ninsecure = {insecure}\n",
        toml_string(&registry.registry),
        toml_string(&location)
    ));
    push_mirrors(text, served, &registry.registry, &mirrors);
}

/// What `rule` adds beyond the registries written out: a pattern's `*.suffix` prefix with its
/// mirrors, and the warnings for what registries.conf cannot say (ports under a pattern, the `*`
/// rule's registries not written out, mirrors-only for pushes and patterns).
fn push_rule(
    out: &mut RegistriesConf,
    served: &mut Vec<Served>,
    resolver: &Resolver,
    rule: &MirrorRule,
    registries: &[String],
) {
    let location = rule.location.to_string();
    match &rule.domain {
        DomainPattern::Exact(_) => {}
        DomainPattern::Suffix(pattern) => {
            let mirrors = resolver
                .wildcard_mirrors(&rule.domain)
                .expect("the resolver compiled the pattern rule");
            out.text
                .push_str(&format!("\n[[registry]]\nprefix = {}\n", toml_string(pattern)));
            push_mirrors(&mut out.text, served, pattern, &mirrors);
            if rule.mirrors_only.is_some() {
                out.warnings.push(Warning {
                    location: location.clone(),
                    message: format!(
                        "registries.conf cannot keep the origin out under the prefix {pattern:?}: \
                         containers-registries.conf(5) documents a `*.suffix` prefix without `location`, so \
                         podman tries the origin of a registry it covers after the mirrors; name such a \
                         registry (an exact rule, insecure-registries or --registry HOST) to have it written \
                         mirrors-only"
                    ),
                });
            }
            out.warnings.push(Warning {
                location,
                message: format!(
                    "registries.conf's prefix {pattern:?} also matches hosts with a port (x{}:5000), which this rule \
                     does not cover: podman and CRI-O send their pulls to its mirrors too; name such a registry (an exact \
                     rule, insecure-registries or --registry HOST) to have it written as regmirror resolves it",
                    &pattern[1..]
                ),
            });
        }
        DomainPattern::Any if registries.is_empty() || rule.mirrors_only.is_some() => {
            out.warnings.push(Warning {
                location,
                message: format!(
                    "registries.conf has no catch-all: the `*` rule is written only for the registries the \
                     configuration names{}{}; name the others it should cover with --registry HOST",
                    if registries.is_empty() {
                        ""
                    } else {
                        " and --registry"
                    },
                    if rule.mirrors_only.is_some() {
                        "; it is mirrors-only, so podman reaches every other registry's origin directly"
                    } else {
                        ""
                    }
                ),
            })
        }
        DomainPattern::Any => {}
    }
    if let Some(only) = &rule.mirrors_only {
        out.warnings.push(Warning {
            location: only.to_string(),
            message: format!(
                "registries.conf redirects pulls only (containers-registries.conf(5): \"redirection and \
                 mirrors are currently processed only when reading images, not when pushing\"): pushes \
                 to the registries of the mirrors-only rule {:?} still go to their origin",
                rule.domain.as_str()
            ),
        });
    }
}

/// A warning for each `--registry` that no rule covers: written with its origin only.
fn warn_registries_without_rule(
    warnings: &mut Vec<Warning>,
    resolver: &Resolver,
    registries: &[String],
) {
    let mut reported: Vec<&str> = Vec::new();
    for host in registries {
        if !resolver.has_rule(host) && !reported.contains(&host.as_str()) {
            reported.push(host);
            warnings.push(Warning {
                location: String::new(),
                message: format!(
                    "--registry {host}: no rule covers it; written with its origin only, as regmirror resolves it"
                ),
            });
        }
    }
}

/// A warning for each mirror registries.conf reads differently: one with a path (a namespace
/// there, an API root to docker and containerd) and one serving several prefixes (podman and
/// CRI-O send no `?ns=`).
fn warn_mirrors(warnings: &mut Vec<Warning>, config: &MirrorConfig, served: &[Served]) {
    for mirror in served {
        let location = configured_at(config, &mirror.url);
        if mirror.location.contains('/') {
            warnings.push(Warning {
                location: location.clone(),
                message: format!(
                    "mirror {} has a path: in registries.conf a mirror path rewrites the repository namespace \
                     ({}/<repository>), unlike docker and containerd where it is the API root",
                    mirror.url, mirror.location
                ),
            });
        }
        if mirror.prefixes.len() > 1 {
            warnings.push(Warning {
                location,
                message: format!(
                    "mirror {} serves {} in registries.conf, but podman and CRI-O send no ?ns=: the mirror cannot \
                     tell which registry a repository is from; give each registry its own mirror",
                    mirror.location,
                    mirror.prefixes.join(", ")
                ),
            });
        }
    }
}

/// One `[[registry.mirror]]` per mirror location (an http and an https URL for the same
/// authority share one: the first wins), recorded in `served` for `prefix`.
fn push_mirrors(text: &mut String, served: &mut Vec<Served>, prefix: &str, mirrors: &[Endpoint]) {
    let mut written: Vec<&str> = Vec::new();
    for mirror in mirrors {
        let location = mirror_location(mirror);
        if written.contains(&location) {
            continue;
        }
        written.push(location);
        text.push_str(&format!(
            "\n[[registry.mirror]]\nlocation = {}\ninsecure = {}\n",
            toml_string(location),
            mirror.tls != TlsMode::Verify
        ));
        record(served, location, &mirror.url, prefix);
    }
}

/// A mirror's URL as registries.conf writes a location: without the scheme.
fn mirror_location(mirror: &Endpoint) -> &str {
    mirror
        .url
        .split_once("://")
        .map_or(&*mirror.url, |(_, rest)| rest)
}

/// Records that the mirror at `location` (`url`) serves `prefix`.
fn record(served: &mut Vec<Served>, location: &str, url: &str, prefix: &str) {
    match served.iter_mut().find(|s| s.location == location) {
        Some(entry) => entry.prefixes.push(prefix.to_owned()),
        None => served.push(Served {
            location: location.to_owned(),
            url: url.to_owned(),
            prefixes: vec![prefix.to_owned()],
        }),
    }
}

/// `file:line:column` of the first configured mirror with `url`.
fn configured_at(config: &MirrorConfig, url: &str) -> String {
    config
        .rules
        .iter()
        .flat_map(|rule| &rule.mirrors)
        .chain(&config.registry_mirrors)
        .find(|m| m.url.to_string() == url)
        .map(|m| m.location.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigSource;

    fn config(text: &str) -> MirrorConfig {
        MirrorConfig::from_sources(&[ConfigSource {
            path: "m.json",
            text,
        }])
        .unwrap()
    }

    fn conf(json: &str, registries: &[&str]) -> RegistriesConf {
        let registries: Vec<String> = registries.iter().map(|s| s.to_string()).collect();
        generate(&config(json), &[], &registries).unwrap()
    }

    fn prefixes(text: &str) -> Vec<String> {
        let parsed: toml::Table = toml::from_str(text).unwrap();
        parsed["registry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["prefix"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Does containers/image's prefix `prefix` match `reference`, and how long is the match?
    /// (`refMatchingPrefix`: a `*.suffix` or an exact prefix may be followed by `:`, `/`, `@`.)
    fn matches(reference: &str, prefix: &str) -> bool {
        let end = match prefix.strip_prefix('*') {
            Some(suffix) => match reference.find(suffix) {
                Some(i) if !reference[..i].contains('/') => i + suffix.len(),
                _ => return false,
            },
            None if reference.starts_with(prefix) => prefix.len(),
            None => return false,
        };
        end == reference.len() || matches!(reference.as_bytes()[end], b':' | b'/' | b'@')
    }

    /// What containers/image tries for `<registry>/x`, as `insecure|verify location` lines: the
    /// `[[registry]]` with the longest matching prefix (the first on a tie), its mirrors in
    /// order, then its location (the registry itself under a `*.suffix` prefix); without a
    /// match, the registry, verified.
    fn podman_tries(text: &str, registry: &str) -> Vec<String> {
        let tls = |insecure: Option<&toml::Value>| {
            if insecure.and_then(toml::Value::as_bool).unwrap_or(false) {
                "insecure"
            } else {
                "verify"
            }
        };
        let reference = format!("{registry}/x");
        let parsed: toml::Table = toml::from_str(text).unwrap();
        let mut best: Option<&toml::Table> = None;
        for block in parsed["registry"].as_array().unwrap() {
            let block = block.as_table().unwrap();
            let prefix = block["prefix"].as_str().unwrap();
            let longer = best.is_none_or(|b| prefix.len() > b["prefix"].as_str().unwrap().len());
            if matches(&reference, prefix) && longer {
                best = Some(block);
            }
        }
        let Some(block) = best else {
            return vec![format!("verify {registry}")];
        };
        let mut tries: Vec<String> = block
            .get("mirror")
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
            .map(|m| {
                format!(
                    "{} {}",
                    tls(m.get("insecure")),
                    m["location"].as_str().unwrap()
                )
            })
            .collect();
        let location = block
            .get("location")
            .and_then(toml::Value::as_str)
            .unwrap_or(registry);
        tries.push(format!("{} {location}", tls(block.get("insecure"))));
        tries
    }

    /// The resolver's answer in registries.conf's terms: mirror locations (one per authority and
    /// path), then the registry, insecure unless every origin attempt verifies.
    fn resolver_says(json: &str, registry: &str) -> Vec<String> {
        let endpoints = Resolver::new(config(json))
            .unwrap()
            .resolve_repository(registry, "x");
        let mut tries: Vec<String> = Vec::new();
        let mut origin = "verify";
        for e in &endpoints.endpoints {
            let tls = if e.tls == TlsMode::Verify {
                "verify"
            } else {
                "insecure"
            };
            match e.role {
                Role::Mirror => {
                    let location = e.url.split_once("://").unwrap().1;
                    if !tries.iter().any(|t| t.ends_with(&format!(" {location}"))) {
                        tries.push(format!("{tls} {location}"));
                    }
                }
                Role::Origin if tls == "insecure" => origin = tls,
                Role::Origin => {}
            }
        }
        if endpoints.omitted_origin.is_none() {
            tries.push(format!("{origin} {}", endpoints.registry));
        }
        tries
    }

    fn assert_agree(json: &str, registries: &[&str], pulled: &[&str]) {
        let out = conf(json, registries);
        for registry in pulled {
            assert_eq!(
                podman_tries(&out.text, registry),
                resolver_says(json, registry),
                "{registry}\n{}",
                out.text
            );
        }
    }

    const FLEET: &str = r#"{"mirror-registries": [
            {"domain": "docker.io", "mirrors": ["https://cache.internal:5000"]},
            {"domain": "*.corp.example", "mirrors": ["https://cache.internal:5000", "https://cache-b.internal:5000"]},
            {"domain": "x.eu.corp.example", "mirrors": ["https://eu-cache"]},
            {"domain": "*", "mirrors": ["https://cache.internal:5000", "http://sea.hub:5000"]}],
        "registry-mirrors": ["https://mirror.gcr.io"],
        "insecure-registries": ["legacy.corp.example:5000", "old.corp.example", "sea.hub:5000"]}"#;

    #[test]
    fn podman_pulls_as_the_resolver_says() {
        assert_agree(
            FLEET,
            &["quay.io", "index.docker.io", "x.corp.example"],
            &[
                "docker.io",
                "quay.io",
                "x.eu.corp.example",
                "y.eu.corp.example",
                "x.corp.example",
                // An insecure registry under a pattern, and one whose port the pattern does
                // not cover (containers/image would send it to the pattern's mirrors).
                "old.corp.example",
                "legacy.corp.example:5000",
                // A `*` mirror pulled by its own name.
                "sea.hub:5000",
                "cache.internal:5000",
            ],
        );
    }

    #[test]
    fn registries_named_twice_are_written_once() {
        let json = r#"{"mirror-registries": [{"domain": "*", "mirrors": ["https://m"]},
                {"domain": "*.corp", "mirrors": ["https://c"]},
                {"domain": "quay.io", "mirrors": ["https://q"]}],
            "registry-mirrors": ["https://hub"]}"#;
        let registries = [
            "docker.io",
            "index.docker.io",
            "Quay.io",
            "a.corp",
            "a.corp",
            "ghcr.io",
        ];
        let out = conf(json, &registries);
        assert_eq!(
            prefixes(&out.text),
            ["quay.io", "docker.io", "m", "a.corp", "ghcr.io", "*.corp"]
        );
        assert_agree(
            json,
            &registries,
            &["docker.io", "quay.io", "a.corp", "b.corp", "ghcr.io"],
        );
    }

    #[test]
    fn catch_all_needs_registries() {
        let json = r#"{"mirror-registries": [{"domain": "*", "mirrors": ["https://m"]}, {"domain": "quay.io", "mirrors": ["https://q"]}]}"#;
        let out = conf(json, &[]);
        assert!(
            out.warnings[0].message.contains("no catch-all"),
            "{:?}",
            out.warnings
        );
        assert_eq!(prefixes(&out.text), ["quay.io", "docker.io", "m"]);
        let out = conf(json, &["ghcr.io", "quay.io"]);
        assert!(
            !out.warnings
                .iter()
                .any(|w| w.message.contains("no catch-all"))
        );
        assert_eq!(
            prefixes(&out.text),
            ["quay.io", "docker.io", "m", "ghcr.io"],
            "the exact quay.io rule wins over the expansion"
        );
    }

    #[test]
    fn shared_mirrors_and_uncovered_registries_are_reported() {
        let json = r#"{"mirror-registries": [
            {"domain": "a.io", "mirrors": ["https://shared", "https://own"]},
            {"domain": "b.io", "mirrors": ["http://shared"]},
            {"domain": "*.corp", "mirrors": ["https://shared"]}]}"#;
        let out = conf(json, &["lone.io", "lone.io"]);
        let messages: Vec<String> = out.warnings.iter().map(ToString::to_string).collect();
        assert!(
            messages.iter().any(|m| m.starts_with(
                "m.json:2:44: mirror shared serves a.io, b.io, *.corp in registries.conf, \
                but podman and CRI-O send no ?ns="
            )),
            "{messages:#?}"
        );
        assert!(
            !messages.iter().any(|m| m.contains("mirror own")),
            "{messages:#?}"
        );
        let uncovered = "--registry lone.io: no rule covers it; written with its origin only, as regmirror resolves it";
        assert_eq!(
            messages.iter().filter(|m| *m == uncovered).count(),
            1,
            "{messages:#?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m
                    .contains("prefix \"*.corp\" also matches hosts with a port (x.corp:5000)")),
            "{messages:#?}"
        );
    }

    #[test]
    fn mirrors_only_makes_the_last_mirror_the_location() {
        let json = r#"{"mirror-registries": [
                {"domain": "reg.io", "mirrors": ["https://m1", "http://m2:5000"], "mirrors-only": true},
                {"domain": "docker.io", "mirrors": ["https://m1"], "mirrors-only": true},
                {"domain": "*.corp", "mirrors": ["https://m3"], "mirrors-only": true},
                {"domain": "*", "mirrors": ["https://m4"], "mirrors-only": true}],
            "registry-mirrors": ["https://hub-mirror"],
            "insecure-registries": ["old.corp"]}"#;
        let out = conf(json, &["quay.io"]);
        assert!(
            out.text.contains(
                "\n[[registry]]\nprefix = \"reg.io\"\nlocation = \"m2:5000\"\ninsecure = true\n\n\
                 [[registry.mirror]]\nlocation = \"m1\"\ninsecure = false\n\n[[registry]]"
            ),
            "{}",
            out.text
        );
        assert_agree(
            json,
            &["quay.io"],
            &["reg.io", "docker.io", "old.corp", "quay.io", "m4"],
        );
        let messages: Vec<String> = out.warnings.iter().map(ToString::to_string).collect();
        for (at, expected) in [
            (
                "m.json:2:99: ",
                "registries.conf redirects pulls only (containers-registries.conf(5): \"redirection and \
                 mirrors are currently processed only when reading images, not when pushing\"): pushes to \
                 the registries of the mirrors-only rule \"reg.io\" still go to their origin",
            ),
            (
                "m.json:4:28: ",
                "registries.conf cannot keep the origin out under the prefix \"*.corp\"",
            ),
            (
                "m.json:5:28: ",
                "the `*` rule is written only for the registries the configuration names and --registry; \
                 it is mirrors-only, so podman reaches every other registry's origin directly; name the \
                 others",
            ),
        ] {
            assert!(
                messages
                    .iter()
                    .any(|m| m.starts_with(at) && m.contains(expected)),
                "{at}{expected}\n{messages:#?}"
            );
        }
    }

    #[test]
    fn mirror_paths_are_warned_about() {
        let out = conf(
            r#"{"mirror-registries": [{"domain": "r.io", "mirrors": ["https://m/cache"]}]}"#,
            &[],
        );
        assert!(
            out.warnings[0]
                .message
                .contains("rewrites the repository namespace")
        );
        assert!(out.text.contains("location = \"m/cache\""));
    }
}

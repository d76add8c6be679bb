//! containerd `hosts.toml` files (one directory per registry under `config_path`), as
//! containerd 1.6+ and Docker Engine 28+ with the containerd image store read them.
//!
//! Every registry the configuration names ([`super::named`]) gets `<host[:port]>/hosts.toml`
//! written from the resolver's endpoints, in its order: the last endpoint (the origin; Docker Hub:
//! `https://registry-1.docker.io`) is `server`, and each endpoint before it a `[host."<url>"]`
//! table: the mirrors, pull and resolve only (a push must never go to a mirror), `skip_verify`
//! for an insecure https mirror, then for an insecure origin its https attempt without
//! verification, so that `server` is its plain http attempt. containerd 1.6 ignores a hosts.toml
//! without a host table ("invalid `host` tree") and falls back to the plain origin, not to
//! `_default`; when the resolver's answer is the origin alone, the origin is written as the one
//! host table (it is then tried twice when it fails). `*` becomes `_default/hosts.toml`
//! (containerd >= 1.6.17) with the rule's mirrors and no `server`. A mirror URL's path is the
//! API root, exactly as containerd reads it (`/v2` is appended).
//!
//! A `mirrors-only` rule's answer has no origin: its last mirror is `server` (containerd has no
//! endpoint after `server`, so it never falls back to the origin), pull and resolve only (a push
//! then finds no host and fails, reaching neither a mirror nor the origin), `skip_verify` when it
//! is an insecure https mirror; a mirrors-only `*` writes `_default` the same way. containerd
//! sends `?ns=` to a `server` that is not the registry itself, as to any mirror.

use std::collections::BTreeMap;

use super::{Warning, marker_line, named, toml_string};
use crate::config::{DomainPattern, MirrorConfig};
use crate::resolve::{BuildError, Endpoint, Resolver, Role, TlsMode};

/// A containerd version, major.minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    /// Parses `X.Y` or `X.Y.Z`.
    pub fn parse(s: &str) -> Result<Self, VersionError> {
        let refused = || VersionError { text: s.to_owned() };
        let parts: Vec<&str> = s.trim().trim_start_matches('v').split('.').collect();
        let number = |i: usize| -> Result<u32, VersionError> {
            parts
                .get(i)
                .map_or(Ok(0), |p| p.parse().map_err(|_| refused()))
        };
        if parts.len() < 2 || parts.len() > 3 {
            return Err(refused());
        }
        Ok(Version {
            major: number(0)?,
            minor: number(1)?,
            patch: number(2)?,
        })
    }

    const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Version {
            major,
            minor,
            patch,
        }
    }
}

/// A `--containerd-version` that is not `X.Y` or `X.Y.Z`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a version like 1.7 or 2.1")]
pub struct VersionError {
    pub text: String,
}

/// `_default` directories are read from 1.6.17 on (and by 1.7.0+).
const DEFAULT_DIR_SINCE: Version = Version::new(1, 6, 17);
/// `dial_timeout` per host is read from 2.1 on.
const DIAL_TIMEOUT_SINCE: Version = Version::new(2, 1, 0);
/// The connect timeout written for mirrors where containerd supports it.
const DIAL_TIMEOUT: &str = "2s";

/// Generated hosts.toml text per directory name, and what could not be expressed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HostsFiles {
    pub files: BTreeMap<String, String>,
    pub warnings: Vec<Warning>,
}

/// The files for `config`; `sources` are named in each file's marker line.
pub fn generate(
    config: &MirrorConfig,
    sources: &[String],
    version: Version,
) -> Result<HostsFiles, BuildError> {
    let resolver = Resolver::new(config.clone())?;
    let marker = marker_line(sources);
    let mut out = HostsFiles::default();
    let named = named::registries(config, &resolver, &[]);
    for registry in &named {
        let mut text = marker.clone();
        push_server_and_hosts(&mut text, &registry.endpoints, version);
        out.files.insert(registry.registry.to_string(), text);
    }
    for rule in &config.rules {
        let location = rule.location.to_string();
        match &rule.domain {
            DomainPattern::Exact(_) => {}
            DomainPattern::Suffix(pattern) => {
                let origins = if rule.mirrors_only.is_some() {
                    "; it is mirrors-only, so containerd reaches the origin of every other \
                     registry it covers directly"
                } else {
                    ""
                };
                let covered: Vec<&str> = named
                    .iter()
                    .filter(|e| e.rule.as_ref().is_some_and(|r| *r.domain == **pattern))
                    .map(|e| &*e.registry)
                    .collect();
                let written = if covered.is_empty() {
                    "not written".to_owned()
                } else {
                    format!(
                        "written only for the registries the configuration names ({})",
                        covered.join(", ")
                    )
                };
                out.warnings.push(Warning {
                    location,
                    message: format!(
                        "containerd hosts.toml cannot express the pattern rule {pattern:?}: {written}{origins}; \
                         add an exact rule per registry"
                    ),
                });
            }
            DomainPattern::Any if version < DEFAULT_DIR_SINCE => out.warnings.push(Warning {
                location,
                message: format!(
                    "containerd {}.{}.{} does not read _default (needs 1.6.17 or 1.7): the `*` rule is written only \
                     for the registries the configuration names{}",
                    version.major,
                    version.minor,
                    version.patch,
                    if rule.mirrors_only.is_some() {
                        "; it is mirrors-only, so containerd reaches every other registry's origin \
                         directly"
                    } else {
                        ""
                    }
                ),
            }),
            DomainPattern::Any => {
                let mirrors = resolver
                    .wildcard_mirrors(&rule.domain)
                    .expect("the resolver compiled the `*` rule");
                let mut text = marker.clone();
                if rule.mirrors_only.is_some() {
                    push_server_and_hosts(&mut text, &mirrors, version);
                } else {
                    push_hosts(&mut text, &mirrors, version);
                }
                out.files.insert("_default".to_owned(), text);
            }
        }
    }
    for (cidr, location) in &config.insecure_registries.cidrs {
        out.warnings.push(Warning {
            location: location.to_string(),
            message: format!(
                "containerd hosts.toml cannot express the CIDR insecure entry {cidr}: list the registries' host[:port] instead"
            ),
        });
    }
    if version < DIAL_TIMEOUT_SINCE && !out.files.is_empty() {
        out.warnings.push(Warning {
            location: String::new(),
            message: format!(
                "containerd {}.{} has no dial_timeout: a mirror that accepts connections and never answers hangs its pulls \
                 (put `regmirror shim` in front, or use containerd >= 2.1)",
                version.major, version.minor
            ),
        });
    }
    Ok(out)
}

/// The last endpoint as `server` and those before it as host tables (the last one too when it is
/// alone: containerd 1.6 ignores a file without a host table).
fn push_server_and_hosts(text: &mut String, endpoints: &[Endpoint], version: Version) {
    let (server, before) = endpoints
        .split_last()
        .expect("the resolver never answers without an endpoint");
    text.push_str(&format!("server = {}\n", toml_string(&server.url)));
    // The origin's last attempt is verified https or plain http: never `skip_verify`. A mirror
    // as `server` (mirrors-only) must never get a push.
    if server.role == Role::Mirror {
        text.push_str("capabilities = [\"pull\", \"resolve\"]\n");
        if server.tls == TlsMode::SkipVerify {
            text.push_str("skip_verify = true\n");
        }
    }
    let hosts = if before.is_empty() {
        std::slice::from_ref(server)
    } else {
        before
    };
    push_hosts(text, hosts, version);
}

/// One `[host."<url>"]` table per endpoint, in order.
fn push_hosts(text: &mut String, endpoints: &[Endpoint], version: Version) {
    for endpoint in endpoints {
        text.push_str(&format!(
            "\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
            toml_string(&endpoint.url)
        ));
        if endpoint.tls == TlsMode::SkipVerify {
            text.push_str("  skip_verify = true\n");
        }
        if endpoint.role == Role::Mirror && version >= DIAL_TIMEOUT_SINCE {
            text.push_str(&format!("  dial_timeout = {}\n", toml_string(DIAL_TIMEOUT)));
        }
    }
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

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn files(json: &str, version: &str) -> HostsFiles {
        generate(&config(json), &["m.json".into()], v(version)).unwrap()
    }

    /// What containerd 1.6.20 tries for `registry` with `files`, as `tls url` lines:
    /// `<registry>/hosts.toml`, else `_default/hosts.toml`; its `[host."…"]` tables in order,
    /// then `server` (default: the registry over https, Docker Hub's API host for docker.io).
    /// A file without a host table is ignored ("invalid `host` tree", measured on 1.6.20) and
    /// containerd falls back to the default origin, not to `_default`. The same endpoint twice
    /// in a row counts once: a retry of the same URL changes no answer.
    fn containerd_tries(files: &BTreeMap<String, String>, registry: &str) -> Vec<String> {
        let default_origin = if registry == "docker.io" {
            "https://registry-1.docker.io".to_owned()
        } else {
            format!("https://{registry}")
        };
        let file = files
            .get(registry)
            .or_else(|| files.get("_default"))
            .filter(|text| text.contains("\n[host."));
        let Some(text) = file else {
            return vec![format!("verify {default_origin}")];
        };
        let (mut hosts, mut server) = (Vec::new(), None);
        for line in text.lines() {
            let tls = |url: &str| {
                if url.starts_with("http://") {
                    "none"
                } else {
                    "verify"
                }
            };
            if let Some(url) = line
                .strip_prefix("[host.\"")
                .and_then(|l| l.strip_suffix("\"]"))
            {
                hosts.push(format!("{} {url}", tls(url)));
            } else if let Some(url) = line
                .strip_prefix("server = \"")
                .and_then(|l| l.strip_suffix('"'))
            {
                server = Some(format!("{} {url}", tls(url)));
            } else if line.trim() == "skip_verify = true" {
                let last = if line.starts_with(' ') {
                    hosts.last_mut()
                } else {
                    server.as_mut()
                };
                let last = last.unwrap();
                *last = last.replacen("verify ", "skip-verify ", 1);
            }
        }
        hosts.push(server.unwrap_or(format!("verify {default_origin}")));
        hosts.dedup();
        hosts
    }

    /// The resolver's endpoints for `registry`, as `tls url` lines.
    fn resolver_says(json: &str, registry: &str) -> Vec<String> {
        Resolver::new(config(json))
            .unwrap()
            .resolve_repository(registry, "x")
            .endpoints
            .iter()
            .map(|e| format!("{} {}", e.tls.as_str(), e.url))
            .collect()
    }

    /// containerd and the resolver agree on every registry of `registries`.
    fn assert_agree(json: &str, registries: &[&str]) {
        let out = files(json, "1.7");
        for registry in registries {
            assert_eq!(
                containerd_tries(&out.files, registry),
                resolver_says(json, registry),
                "{registry}\n{:#?}",
                out.files
            );
        }
    }

    #[test]
    fn versions() {
        assert!(v("1.6.16") < DEFAULT_DIR_SINCE);
        assert!(v("1.7") >= DEFAULT_DIR_SINCE);
        assert!(v("2.1") >= DIAL_TIMEOUT_SINCE);
        assert!(Version::parse("2").is_err());
        assert!(Version::parse("x.y").is_err());
    }

    #[test]
    fn every_file_is_toml_containerd_can_parse_with_a_host_table() {
        for json in [
            r#"{"mirror-registries": [{"domain": "reg.io:5000", "mirrors": ["https://m\"q", "http://p"]}, {"domain": "*", "mirrors": ["https://any/root"]}]}"#,
            // cache.internal:5000 pulled by its own name: the resolver drops it as a mirror, so
            // its answer is the origin alone.
            r#"{"mirror-registries": [{"domain": "*", "mirrors": ["https://cache.internal:5000"]}]}"#,
            // An insecure registry no rule covers.
            r#"{"insecure-registries": ["legacy:5000"]}"#,
            // mirrors-only, with one mirror: it is both `server` and the host table.
            r#"{"mirror-registries": [{"domain": "reg.io", "mirrors": ["https://m"], "mirrors-only": true},
                {"domain": "*", "mirrors": ["https://any"], "mirrors-only": true}]}"#,
        ] {
            for version in ["1.6.4", "1.7", "2.1"] {
                for (dir, text) in &files(json, version).files {
                    let parsed: toml::Table =
                        toml::from_str(text).unwrap_or_else(|e| panic!("{dir}: {e}\n{text}"));
                    assert!(
                        parsed
                            .get("host")
                            .and_then(toml::Value::as_table)
                            .is_some_and(|t| !t.is_empty()),
                        "containerd 1.6 ignores {dir}/hosts.toml without a host table:\n{text}"
                    );
                }
            }
        }
        let out = files(
            r#"{"mirror-registries": [{"domain": "*", "mirrors": ["https://cache.internal:5000"]}]}"#,
            "1.7",
        );
        assert_eq!(
            out.files["cache.internal:5000"],
            "# Generated by regmirror from m.json; edit those, not this file.\n\
             server = \"https://cache.internal:5000\"\n\n\
             [host.\"https://cache.internal:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        );
    }

    #[test]
    fn docker_hub_gets_the_catch_all_mirrors_then_registry_mirrors() {
        let json = r#"{"mirror-registries": [{"domain": "*", "mirrors": ["https://any", "https://shared"]}],
                       "registry-mirrors": ["https://shared", "https://hub-mirror"]}"#;
        assert_eq!(
            resolver_says(json, "docker.io"),
            [
                "verify https://any",
                "verify https://shared",
                "verify https://hub-mirror",
                "verify https://registry-1.docker.io"
            ]
        );
        assert_agree(json, &["docker.io", "quay.io"]);
        // Without registry-mirrors, and for a containerd without _default.
        let json = r#"{"mirror-registries": [{"domain": "*", "mirrors": ["https://any"]}]}"#;
        assert_agree(json, &["docker.io", "quay.io"]);
        assert!(files(json, "1.6.4").files.contains_key("docker.io"));
    }

    #[test]
    fn insecure_registries_under_wildcards_get_the_resolvers_tls() {
        let json = r#"{"mirror-registries": [
                {"domain": "*", "mirrors": ["https://any", "http://sea.hub:5000"]},
                {"domain": "*.corp.example", "mirrors": ["https://corp-cache"]}],
            "insecure-registries": ["legacy.corp.example:5000", "a.corp.example", "sea.hub:5000", "lone:5000"]}"#;
        assert_eq!(
            resolver_says(json, "legacy.corp.example:5000"),
            [
                "verify https://any",
                "none http://sea.hub:5000",
                "skip-verify https://legacy.corp.example:5000",
                "none http://legacy.corp.example:5000"
            ],
            "the pattern does not cover a host with a port"
        );
        assert_agree(
            json,
            &[
                "legacy.corp.example:5000",
                "a.corp.example",
                "sea.hub:5000",
                "lone:5000",
                "docker.io",
                "quay.io",
            ],
        );
        let out = files(json, "2.1");
        assert_eq!(
            out.files["a.corp.example"],
            "# Generated by regmirror from m.json; edit those, not this file.\n\
             server = \"http://a.corp.example\"\n\n\
             [host.\"https://corp-cache\"]\n  capabilities = [\"pull\", \"resolve\"]\n  dial_timeout = \"2s\"\n\n\
             [host.\"https://a.corp.example\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"
        );
        assert!(
            out.warnings[0].message.contains(
                "pattern rule \"*.corp.example\": written only for the registries the configuration names (a.corp.example)"
            ),
            "{:?}",
            out.warnings
        );
    }

    #[test]
    fn exact_rules_and_the_origin_they_leave() {
        let json = r#"{"mirror-registries": [
                {"domain": "reg.io", "mirrors": ["https://m1", "http://m2"]},
                {"domain": "127.0.0.1:5001", "mirrors": ["http://127.0.0.1:5002"]},
                {"domain": "*", "mirrors": ["https://reg.io:5000", "https://m1"]}],
            "insecure-registries": ["m1"]}"#;
        assert_agree(
            json,
            &["reg.io", "127.0.0.1:5001", "reg.io:5000", "other.io"],
        );
    }

    #[test]
    fn mirrors_only_makes_the_last_mirror_the_server() {
        let json = r#"{"mirror-registries": [
                {"domain": "reg.io", "mirrors": ["http://m1", "https://m2:5000"], "mirrors-only": true},
                {"domain": "*", "mirrors": ["https://any", "https://m2:5000"], "mirrors-only": true},
                {"domain": "*.corp", "mirrors": ["https://m.corp"], "mirrors-only": true}],
            "registry-mirrors": ["https://hub-mirror"],
            "insecure-registries": ["m2:5000", "reg.io"]}"#;
        assert_eq!(
            resolver_says(json, "reg.io"),
            ["none http://m1", "skip-verify https://m2:5000"],
            "no origin"
        );
        assert_agree(json, &["reg.io", "docker.io", "quay.io", "m2:5000", "any"]);
        let out = files(json, "2.1");
        assert_eq!(
            out.files["reg.io"],
            "# Generated by regmirror from m.json; edit those, not this file.\n\
             server = \"https://m2:5000\"\n\
             capabilities = [\"pull\", \"resolve\"]\n\
             skip_verify = true\n\n\
             [host.\"http://m1\"]\n  capabilities = [\"pull\", \"resolve\"]\n  dial_timeout = \"2s\"\n"
        );
        assert_eq!(
            out.files["_default"],
            "# Generated by regmirror from m.json; edit those, not this file.\n\
             server = \"https://m2:5000\"\n\
             capabilities = [\"pull\", \"resolve\"]\n\
             skip_verify = true\n\n\
             [host.\"https://any\"]\n  capabilities = [\"pull\", \"resolve\"]\n  dial_timeout = \"2s\"\n"
        );
        // The Hub's server is its last registry mirror, not registry-1.docker.io.
        assert!(
            out.files["docker.io"].contains("server = \"https://hub-mirror\"\ncapabilities"),
            "{}",
            out.files["docker.io"]
        );
        // A mirror pulled by its own name keeps its origin (it is that mirror): no capabilities
        // line, the plain origin as server.
        assert!(
            out.files["m2:5000"].starts_with(
                "# Generated by regmirror from m.json; edit those, not this file.\n\
                 server = \"http://m2:5000\"\n\n"
            ),
            "{}",
            out.files["m2:5000"]
        );
        let messages: Vec<String> = files(json, "1.6.4")
            .warnings
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            messages.iter().any(|m| m.contains(
                "pattern rule \"*.corp\": written only for the registries the configuration names \
                 (m.corp); it is mirrors-only, so containerd reaches the origin of every other registry it \
                 covers directly; add an exact rule per registry"
            )),
            "{messages:#?}"
        );
        assert!(
            messages.iter().any(|m| m.contains(
                "does not read _default (needs 1.6.17 or 1.7): the `*` rule is written only for the \
                 registries the configuration names; it is mirrors-only, so containerd reaches every other \
                 registry's origin directly"
            )),
            "{messages:#?}"
        );
    }

    #[test]
    fn warnings_for_what_containerd_cannot_express() {
        let files = files(
            r#"{"mirror-registries": [{"domain": "*.corp", "mirrors": ["https://m"]}, {"domain": "*", "mirrors": ["https://m"]}],
                "insecure-registries": ["10.0.0.0/8"]}"#,
            "1.6.4",
        );
        assert_eq!(
            files.files.keys().collect::<Vec<_>>(),
            ["docker.io", "m"],
            "no _default; the registries the configuration names (Docker Hub through `*`, the mirror `m` \
             by its URL) are written"
        );
        let messages: Vec<String> = files.warnings.iter().map(ToString::to_string).collect();
        assert!(
            messages[0].starts_with("m.json:1:")
                && messages[0].contains("pattern rule \"*.corp\": not written"),
            "{messages:?}"
        );
        assert!(
            messages[1].contains("does not read _default"),
            "{messages:?}"
        );
        assert!(
            messages[2].contains("CIDR insecure entry 10.0.0.0/8"),
            "{messages:?}"
        );
    }
}

//! containerd `hosts.toml` files (one directory per registry under `config_path`), as
//! containerd 1.6+ and Docker Engine 28+ with the containerd image store read them.
//!
//! Per exact rule: `<host[:port]>/hosts.toml` with `server` = the origin (Docker Hub:
//! `https://registry-1.docker.io`; an insecure origin: `http://…` and `skip_verify`), then one
//! `[host."<mirror>"]` per mirror in order, pull and resolve only (a push must never go to a
//! mirror), `skip_verify` for an insecure https mirror. `registry-mirrors` follow the docker.io
//! rule's mirrors. `*` becomes `_default/hosts.toml` (containerd >= 1.6.17). A mirror URL's path is
//! the API root, exactly as containerd reads it (`/v2` is appended).

use std::collections::BTreeMap;

use super::{Warning, marker_line, toml_string};
use crate::config::{DomainPattern, Mirror, MirrorConfig, Scheme};
use crate::reference::{DOCKER_HUB, DOCKER_HUB_API_HOST};
use crate::resolve::InsecureMatcher;

/// A containerd version, major.minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    /// Parses `X.Y` or `X.Y.Z`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.trim().trim_start_matches('v').split('.').collect();
        let number = |i: usize| -> Result<u32, String> {
            parts.get(i).map_or(Ok(0), |p| {
                p.parse()
                    .map_err(|_| format!("{s:?} is not a version like 1.7 or 2.1"))
            })
        };
        if parts.len() < 2 || parts.len() > 3 {
            return Err(format!("{s:?} is not a version like 1.7 or 2.1"));
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

pub fn generate(config: &MirrorConfig, sources: &[String], version: Version) -> HostsFiles {
    let insecure = InsecureMatcher::new(&config.insecure_registries);
    let mut out = HostsFiles::default();
    let marker = marker_line(sources);
    let mut hub_rule_seen = false;
    for rule in &config.rules {
        let location = rule.location.to_string();
        match &rule.domain {
            DomainPattern::Exact(registry) => {
                let is_hub = registry == DOCKER_HUB;
                hub_rule_seen |= is_hub;
                let extra: &[Mirror] = if is_hub { &config.registry_mirrors } else { &[] };
                let text = host_file(&marker, Some(registry), rule.mirrors.iter().chain(extra), &insecure, version);
                out.files.insert(registry.clone(), text);
            }
            DomainPattern::Suffix(pattern) => out.warnings.push(Warning {
                location,
                message: format!(
                    "containerd hosts.toml cannot express the pattern rule {pattern:?}: not written; \
                     add an exact rule per registry"
                ),
            }),
            DomainPattern::Any if version < DEFAULT_DIR_SINCE => out.warnings.push(Warning {
                location,
                message: format!(
                    "containerd {}.{}.{} does not read _default (needs 1.6.17 or 1.7): the `*` rule is not written",
                    version.major, version.minor, version.patch
                ),
            }),
            DomainPattern::Any => {
                let text = host_file(&marker, None, rule.mirrors.iter(), &insecure, version);
                out.files.insert("_default".to_owned(), text);
            }
        }
    }
    if !hub_rule_seen && !config.registry_mirrors.is_empty() {
        let text = host_file(
            &marker,
            Some(DOCKER_HUB),
            config.registry_mirrors.iter(),
            &insecure,
            version,
        );
        out.files.insert(DOCKER_HUB.to_owned(), text);
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
    out
}

/// One hosts.toml: the origin as `server` (none for `_default`), then the mirrors in order.
fn host_file<'a>(
    marker: &str,
    registry: Option<&str>,
    mirrors: impl Iterator<Item = &'a Mirror>,
    insecure: &InsecureMatcher,
    version: Version,
) -> String {
    let mut text = String::from(marker);
    if let Some(registry) = registry {
        if registry == DOCKER_HUB {
            text.push_str(&format!(
                "server = {}\n",
                toml_string(&format!("https://{DOCKER_HUB_API_HOST}"))
            ));
        } else if insecure.is_insecure(registry) {
            text.push_str(&format!(
                "server = {}\nskip_verify = true\n",
                toml_string(&format!("http://{registry}"))
            ));
        } else {
            text.push_str(&format!(
                "server = {}\n",
                toml_string(&format!("https://{registry}"))
            ));
        }
    }
    let mut written = Vec::new();
    for mirror in mirrors {
        let url = mirror.url.to_string();
        if written.contains(&url) || registry.is_some_and(|r| mirror.url.is_registry_itself(r)) {
            continue;
        }
        text.push_str(&format!(
            "\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
            toml_string(&url)
        ));
        if mirror.url.scheme() == Scheme::Https && insecure.is_insecure(mirror.url.authority()) {
            text.push_str("  skip_verify = true\n");
        }
        if version >= DIAL_TIMEOUT_SINCE {
            text.push_str(&format!("  dial_timeout = {}\n", toml_string(DIAL_TIMEOUT)));
        }
        written.push(url);
    }
    text
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

    #[test]
    fn versions() {
        assert!(v("1.6.16") < DEFAULT_DIR_SINCE);
        assert!(v("1.7") >= DEFAULT_DIR_SINCE);
        assert!(v("2.1") >= DIAL_TIMEOUT_SINCE);
        assert!(Version::parse("2").is_err());
        assert!(Version::parse("x.y").is_err());
    }

    #[test]
    fn every_file_is_toml_containerd_can_parse() {
        let files = generate(
            &config(
                r#"{"mirror-registries": [{"domain": "reg.io:5000", "mirrors": ["https://m\"q", "http://p"]}, {"domain": "*", "mirrors": ["https://any/root"]}]}"#,
            ),
            &["m.json".into()],
            v("2.1"),
        );
        for (dir, text) in &files.files {
            let parsed: toml::Table =
                toml::from_str(text).unwrap_or_else(|e| panic!("{dir}: {e}\n{text}"));
            assert!(parsed.contains_key("host"), "{dir}");
        }
    }

    #[test]
    fn warnings_for_what_containerd_cannot_express() {
        let files = generate(
            &config(
                r#"{"mirror-registries": [{"domain": "*.corp", "mirrors": ["https://m"]}, {"domain": "*", "mirrors": ["https://m"]}],
                    "insecure-registries": ["10.0.0.0/8"]}"#,
            ),
            &[],
            v("1.6.4"),
        );
        assert!(
            files.files.is_empty(),
            "nothing half-written: {:?}",
            files.files.keys()
        );
        let messages: Vec<String> = files.warnings.iter().map(ToString::to_string).collect();
        assert!(
            messages[0].starts_with("m.json:1:") && messages[0].contains("pattern rule \"*.corp\""),
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

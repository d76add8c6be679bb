//! A containers-registries.conf v2 drop-in (podman, CRI-O, skopeo, buildah).
//!
//! A `[[registry]]` per exact rule (`prefix` and `location` = the registry, `insecure` for an
//! insecure origin) with one `[[registry.mirror]]` per mirror (`location` without scheme; plain
//! http or an insecure https mirror gets `insecure = true`). Pattern rules map to `*.suffix`
//! prefixes (which take no `location`). The format has no catch-all: `*` is expanded over the
//! registries given with `--registry`, or reported. A mirror path rewrites the repository
//! namespace there (unlike docker and containerd), so it is warned about.

use super::{Warning, marker_line, toml_string};
use crate::config::{DomainPattern, Mirror, MirrorConfig, MirrorRule, Scheme};
use crate::reference::DOCKER_HUB;
use crate::resolve::InsecureMatcher;

/// The drop-in text and what could not be expressed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RegistriesConf {
    pub text: String,
    pub warnings: Vec<Warning>,
}

/// `expand_any`: registries (`host[:port]`) the `*` rule is written out for.
pub fn generate(
    config: &MirrorConfig,
    sources: &[String],
    expand_any: &[String],
) -> RegistriesConf {
    let insecure = InsecureMatcher::new(&config.insecure_registries);
    let mut out = RegistriesConf {
        text: marker_line(sources),
        warnings: Vec::new(),
    };
    let exact: Vec<&str> = config
        .rules
        .iter()
        .filter_map(|r| match &r.domain {
            DomainPattern::Exact(host) => Some(host.as_str()),
            _ => None,
        })
        .collect();
    let mut hub_written = false;
    for rule in &config.rules {
        match &rule.domain {
            DomainPattern::Exact(registry) => {
                let hub = registry == DOCKER_HUB;
                hub_written |= hub;
                let extra: &[Mirror] = if hub { &config.registry_mirrors } else { &[] };
                registry_block(&mut out, registry, Some(registry), rule, extra, &insecure);
            }
            DomainPattern::Suffix(pattern) => registry_block(&mut out, pattern, None, rule, &[], &insecure),
            DomainPattern::Any if expand_any.is_empty() => out.warnings.push(Warning {
                location: rule.location.to_string(),
                message: "registries.conf has no catch-all: the `*` rule is not written; name the registries it \
                          should cover with --registry HOST"
                    .to_owned(),
            }),
            DomainPattern::Any => {
                for registry in expand_any.iter().filter(|r| !exact.contains(&r.as_str())) {
                    registry_block(&mut out, registry, Some(registry), rule, &[], &insecure);
                }
            }
        }
    }
    if !hub_written && !config.registry_mirrors.is_empty() {
        let hub_rule = MirrorRule {
            domain: DomainPattern::Exact(DOCKER_HUB.to_owned()),
            mirrors: Vec::new(),
            location: config.registry_mirrors[0].location.clone(),
        };
        registry_block(
            &mut out,
            DOCKER_HUB,
            Some(DOCKER_HUB),
            &hub_rule,
            &config.registry_mirrors,
            &insecure,
        );
    }
    out
}

fn registry_block(
    out: &mut RegistriesConf,
    prefix: &str,
    location: Option<&str>,
    rule: &MirrorRule,
    extra: &[Mirror],
    insecure: &InsecureMatcher,
) {
    out.text.push_str(&format!(
        "\n[[registry]]\nprefix = {}\n",
        toml_string(prefix)
    ));
    if let Some(location) = location {
        out.text
            .push_str(&format!("location = {}\n", toml_string(location)));
        let origin_insecure = location != DOCKER_HUB && insecure.is_insecure(location);
        out.text
            .push_str(&format!("insecure = {origin_insecure}\n"));
    }
    let mut written: Vec<String> = Vec::new();
    for mirror in rule.mirrors.iter().chain(extra) {
        let url = &mirror.url;
        let location_text = format!("{}{}", url.authority(), url.api_root());
        let is_origin = location.is_some_and(|registry| url.is_registry_itself(registry));
        if is_origin || written.contains(&location_text) {
            continue;
        }
        if !url.api_root().is_empty() {
            out.warnings.push(Warning {
                location: mirror.location.to_string(),
                message: format!(
                    "mirror {url} has a path: in registries.conf a mirror path rewrites the repository namespace \
                     ({location_text}/<repository>), unlike docker and containerd where it is the API root"
                ),
            });
        }
        let mirror_insecure = url.scheme() == Scheme::Http || insecure.is_insecure(url.authority());
        out.text.push_str(&format!(
            "\n[[registry.mirror]]\nlocation = {}\ninsecure = {mirror_insecure}\n",
            toml_string(&location_text)
        ));
        written.push(location_text);
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

    #[test]
    fn catch_all_needs_registries() {
        let c = config(
            r#"{"mirror-registries": [{"domain": "*", "mirrors": ["https://m"]}, {"domain": "quay.io", "mirrors": ["https://q"]}]}"#,
        );
        let out = generate(&c, &[], &[]);
        assert!(
            out.warnings[0].message.contains("no catch-all"),
            "{:?}",
            out.warnings
        );
        let out = generate(&c, &[], &["ghcr.io".into(), "quay.io".into()]);
        assert!(out.warnings.is_empty());
        let parsed: toml::Table = toml::from_str(&out.text).unwrap();
        let prefixes: Vec<&str> = parsed["registry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["prefix"].as_str().unwrap())
            .collect();
        assert_eq!(
            prefixes,
            ["ghcr.io", "quay.io"],
            "the exact quay.io rule wins over the expansion"
        );
    }

    #[test]
    fn mirror_paths_are_warned_about() {
        let out = generate(
            &config(
                r#"{"mirror-registries": [{"domain": "r.io", "mirrors": ["https://m/cache"]}]}"#,
            ),
            &[],
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

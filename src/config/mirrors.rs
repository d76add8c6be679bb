//! The mirror configuration in daemon.json format, read from one or more files and combined.
//!
//! Keys read: `mirror-registries` (`[{"domain": …, "mirrors": […], "mirrors-only": false}]`, from
//! the seed's patched engine, plus regmirror's optional `mirrors-only`), `registry-mirrors` and
//! `insecure-registries` (stock dockerd). Every other key is dockerd's own business and is
//! ignored, unless it is a slip of one of these (`mirror-registry`): an error that names the key
//! it resembles. Validation collects every problem of every file, each naming file, line, column
//! and field, in file and line order. Pure: no file system access.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;
use serde_json::Value;

use super::json_span::{self, Step};
use super::suggest::closest;
use super::{ConfigErrors, Diagnostic, Location};
use crate::reference::{self, DOCKER_HUB, DOCKER_HUB_API_HOST, LEGACY_DOCKER_HUB};

/// The `mirror-registries` entry key that keeps a rule's registries from being reached directly.
const MIRRORS_ONLY: &str = "mirrors-only";

/// The top-level keys regmirror reads; dockerd's other keys are left alone.
pub const KEYS: [&str; 3] = [
    "mirror-registries",
    "registry-mirrors",
    "insecure-registries",
];

/// The keys of a `mirror-registries` entry.
const ENTRY_KEYS: [&str; 3] = ["domain", "mirrors", MIRRORS_ONLY];

/// One configuration file's path and text.
#[derive(Debug, Clone, Copy)]
pub struct ConfigSource<'a> {
    pub path: &'a str,
    pub text: &'a str,
}

/// The combined mirror configuration of all sources.
#[derive(Debug, Clone, Default)]
pub struct MirrorConfig {
    /// `mirror-registries` entries of every file, in file order.
    pub rules: Vec<MirrorRule>,
    /// `registry-mirrors` (Docker Hub only), concatenated without duplicates.
    pub registry_mirrors: Vec<Mirror>,
    pub insecure_registries: InsecureRegistries,
    /// Problems that do not stop regmirror but that an operator should hear about.
    pub warnings: Vec<Diagnostic>,
}

/// One `mirror-registries` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorRule {
    pub domain: DomainPattern,
    pub mirrors: Vec<Mirror>,
    /// `"mirrors-only": true`: the registries the rule covers are never reached directly, only
    /// through its mirrors. Where the key is written; `None` when it is absent or `false`.
    pub mirrors_only: Option<Location>,
    /// Where the entry's `domain` is written.
    pub location: Location,
}

/// A mirror URL and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub url: MirrorUrl,
    pub location: Location,
}

/// `insecure-registries`: exact `host[:port]` entries and CIDRs, each with its location.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InsecureRegistries {
    pub hosts: Vec<(String, Location)>,
    pub cidrs: Vec<(IpNet, Location)>,
}

/// What a `mirror-registries` entry's `domain` matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DomainPattern {
    /// One registry, `host[:port]`, port-sensitive. Docker Hub's names are stored as `docker.io`.
    Exact(String),
    /// `*.example.com`: every subdomain of the suffix, at any depth, but not the suffix itself.
    Suffix(String),
    /// `*`: every registry.
    Any,
}

impl DomainPattern {
    /// Parses a `domain` value.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(DomainPattern::Any);
        }
        if s.contains("://") {
            return Err(format!(
                "{s:?} is a URL; a domain is host[:port], `*.suffix` or `*`"
            ));
        }
        if s.contains('/') {
            return Err(format!(
                "{s:?} has a path; a domain is host[:port], `*.suffix` or `*`"
            ));
        }
        if let Some(suffix) = s.strip_prefix("*.") {
            if suffix.starts_with('[') || !reference::is_valid_host(suffix) {
                return Err(format!("{suffix:?} after `*.` is not a valid host[:port]"));
            }
            return Ok(DomainPattern::Suffix(format!(
                "*.{}",
                suffix.to_ascii_lowercase()
            )));
        }
        if s.contains('*') {
            return Err(format!(
                "{s:?}: `*` is allowed only alone or as a leading `*.`"
            ));
        }
        if !reference::is_valid_host(s) {
            return Err(format!("{s:?} is not a valid host[:port]"));
        }
        Ok(DomainPattern::Exact(canonical_registry(s)))
    }

    pub fn as_str(&self) -> &str {
        match self {
            DomainPattern::Exact(host) | DomainPattern::Suffix(host) => host,
            DomainPattern::Any => "*",
        }
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The key a registry host is matched by: lowercase, with Docker Hub's three names as `docker.io`.
pub fn canonical_registry(host: &str) -> String {
    let lower = host.to_ascii_lowercase();
    if is_docker_hub(&lower) {
        DOCKER_HUB.to_owned()
    } else {
        lower
    }
}

/// `docker.io`, `index.docker.io` and `registry-1.docker.io` all name Docker Hub.
pub fn is_docker_hub(host: &str) -> bool {
    matches!(host, DOCKER_HUB | LEGACY_DOCKER_HUB | DOCKER_HUB_API_HOST)
}

/// How a mirror is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A validated mirror URL: scheme, `host[:port]` (default port dropped) and the API root path
/// that comes before `/v2` (empty, or `/something` without a trailing slash).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MirrorUrl {
    scheme: Scheme,
    authority: String,
    api_root: String,
}

impl MirrorUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let url = url::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        let scheme = match url.scheme() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => return Err(format!("{s:?}: scheme {other:?} is not http or https")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "{s:?} carries user info; put credentials in the credentials config, never in a URL"
            ));
        }
        if url.query().is_some() {
            return Err(format!("{s:?} has a query string; a mirror URL cannot"));
        }
        if url.fragment().is_some() {
            return Err(format!("{s:?} has a fragment; a mirror URL cannot"));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{s:?} has no host"))?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let api_root = url.path().trim_end_matches('/').to_owned();
        if api_root == "/v2" || api_root.ends_with("/v2") {
            return Err(format!(
                "{s:?}: the path is the API root before /v2; drop the trailing /v2"
            ));
        }
        Ok(MirrorUrl {
            scheme,
            authority,
            api_root,
        })
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// `host[:port]`, lowercase, without the scheme's default port.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The path before `/v2`: empty or `/prefix`.
    pub fn api_root(&self) -> &str {
        &self.api_root
    }

    /// True when this URL points at the registry API of `registry` itself (same host and port,
    /// no API root), counting Docker Hub's names as one.
    pub fn is_registry_itself(&self, registry: &str) -> bool {
        if !self.api_root.is_empty() {
            return false;
        }
        let with_port = format!("{}:{}", self.authority, self.scheme.default_port());
        let registry = registry.to_ascii_lowercase();
        self.authority == registry
            || with_port == registry
            || (is_docker_hub(&registry) && is_docker_hub(&self.authority))
    }
}

impl fmt::Display for MirrorUrl {
    /// `scheme://host[:port][/api-root]`, no trailing slash.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.authority,
            self.api_root
        )
    }
}

impl MirrorConfig {
    /// Parses and combines the sources in order. Errors of all files are reported together.
    pub fn from_sources(sources: &[ConfigSource<'_>]) -> Result<Self, ConfigErrors> {
        let mut config = MirrorConfig::default();
        let mut errors = Vec::new();
        for source in sources {
            FileReader::new(*source, &mut config, &mut errors).read();
        }
        reject_duplicate_domains(&config.rules, &mut errors);
        // In file order, then line order within a file.
        let order = |d: &Diagnostic| {
            let file = sources.iter().position(|s| *s.path == *d.location.file);
            (file, d.location.line, d.location.column)
        };
        errors.sort_by_key(order);
        config.warnings.sort_by_key(order);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

fn reject_duplicate_domains(rules: &[MirrorRule], errors: &mut Vec<Diagnostic>) {
    let mut first_seen: HashMap<&DomainPattern, &Location> = HashMap::new();
    for rule in rules {
        match first_seen.get(&rule.domain) {
            Some(first) => errors.push(Diagnostic {
                location: rule.location.clone(),
                message: format!(
                    "domain {:?} is configured twice: here and at {first}",
                    rule.domain.as_str()
                ),
            }),
            None => {
                first_seen.insert(&rule.domain, &rule.location);
            }
        }
    }
}

/// Reads one file into the combined config.
struct FileReader<'a> {
    source: ConfigSource<'a>,
    file: Arc<str>,
    config: &'a mut MirrorConfig,
    errors: &'a mut Vec<Diagnostic>,
}

impl<'a> FileReader<'a> {
    fn new(
        source: ConfigSource<'a>,
        config: &'a mut MirrorConfig,
        errors: &'a mut Vec<Diagnostic>,
    ) -> Self {
        FileReader {
            file: Arc::from(source.path),
            source,
            config,
            errors,
        }
    }

    fn location(&self, path: &[Step<'_>]) -> Location {
        let position = json_span::locate(self.source.text, path)
            .unwrap_or(json_span::LineColumn { line: 1, column: 1 });
        Location {
            file: self.file.clone(),
            line: position.line,
            column: position.column,
            field: field_name(path),
        }
    }

    fn error(&mut self, path: &[Step<'_>], message: impl Into<String>) {
        let location = self.location(path);
        self.errors.push(Diagnostic {
            location,
            message: message.into(),
        });
    }

    /// An error about the key that ends `path` itself, located at the key.
    fn key_error(&mut self, path: &[Step<'_>], message: String) {
        let mut location = self.location(path);
        if let Some(position) = json_span::locate_key(self.source.text, path) {
            (location.line, location.column) = (position.line, position.column);
        }
        self.errors.push(Diagnostic { location, message });
    }

    fn warn(&mut self, path: &[Step<'_>], message: impl Into<String>) {
        let location = self.location(path);
        self.config.warnings.push(Diagnostic {
            location,
            message: message.into(),
        });
    }

    fn read(mut self) {
        let document: Value = match serde_json::from_str(self.source.text) {
            Ok(value) => value,
            Err(e) => {
                let message = e.to_string();
                let message = message
                    .rfind(" at line ")
                    .map_or(message.as_str(), |i| &message[..i]);
                let position =
                    json_span::serde_error_position(self.source.text, e.line(), e.column());
                self.errors.push(Diagnostic {
                    location: Location {
                        file: self.file.clone(),
                        line: position.line,
                        column: position.column,
                        field: String::new(),
                    },
                    message: format!("invalid JSON: {message}"),
                });
                return;
            }
        };
        let Value::Object(top) = &document else {
            self.error(&[], "the file must hold a JSON object, as daemon.json does");
            return;
        };
        if let Some(value) = top.get("mirror-registries") {
            self.read_mirror_registries(value);
        }
        if let Some(value) = top.get("registry-mirrors") {
            self.read_registry_mirrors(value);
        }
        if let Some(value) = top.get("insecure-registries") {
            self.read_insecure_registries(value);
        }
        for key in top.keys().filter(|k| !KEYS.contains(&k.as_str())) {
            if let Some(near) = closest(key, KEYS) {
                self.key_error(
                    &[Step::Key(key)],
                    format!("unknown key; did you mean `{near}`?"),
                );
            }
        }
    }

    fn read_mirror_registries(&mut self, value: &Value) {
        const KEY: &str = "mirror-registries";
        let Some(entries) = self.array(&[Step::Key(KEY)], value) else {
            return;
        };
        let file_name = self.source.path.rsplit('/').next().unwrap_or_default();
        if file_name == "daemon.json" && !entries.is_empty() {
            self.warn(
                &[Step::Key(KEY)],
                "a stock dockerd refuses to start with `mirror-registries` in its daemon.json; \
                 keep it in /etc/regmirror/mirrors.json instead",
            );
        }
        for (index, entry) in entries.iter().enumerate() {
            let path = [Step::Key(KEY), Step::Index(index)];
            let Value::Object(fields) = entry else {
                self.error(
                    &path,
                    "each entry must be an object {\"domain\": …, \"mirrors\": […]}",
                );
                continue;
            };
            self.reject_unknown_entry_keys(index, fields);
            let domain_path = [Step::Key(KEY), Step::Index(index), Step::Key("domain")];
            let domain = match fields.get("domain") {
                None => {
                    self.error(&path, "missing \"domain\"");
                    None
                }
                Some(Value::String(s)) => match DomainPattern::parse(s) {
                    Ok(domain) => Some(domain),
                    Err(message) => {
                        self.error(&domain_path, message);
                        None
                    }
                },
                Some(_) => {
                    self.error(&domain_path, "must be a string");
                    None
                }
            };
            let only_path = [Step::Key(KEY), Step::Index(index), Step::Key(MIRRORS_ONLY)];
            let mirrors_only = match fields.get(MIRRORS_ONLY) {
                None | Some(Value::Bool(false)) => Some(None),
                Some(Value::Bool(true)) => Some(Some(self.location(&only_path))),
                Some(_) => {
                    self.error(&only_path, "must be true or false");
                    None
                }
            };
            let mirrors_path = [Step::Key(KEY), Step::Index(index), Step::Key("mirrors")];
            let mirrors = match fields.get("mirrors") {
                None => {
                    self.error(&path, "missing \"mirrors\"");
                    continue;
                }
                Some(value) => self.mirror_list(&mirrors_path, value),
            };
            let Some(domain) = domain else { continue };
            let Some(mirrors) = mirrors else { continue };
            let Some(mirrors_only) = mirrors_only else {
                continue;
            };
            if mirrors.is_empty() {
                let message = if mirrors_only.is_some() {
                    "must list at least one mirror URL: with \"mirrors-only\" the rule would leave \
                     no endpoint at all"
                } else {
                    "must list at least one mirror URL"
                };
                self.error(&mirrors_path, message);
                continue;
            }
            if let DomainPattern::Exact(registry) = &domain {
                for (i, mirror) in mirrors.iter().enumerate() {
                    if mirror.url.is_registry_itself(registry) {
                        let mut at = mirrors_path.to_vec();
                        at.push(Step::Index(i));
                        self.error(
                            &at,
                            format!(
                                "{} is the registry {registry} itself; the origin is always tried \
                                 after the mirrors",
                                mirror.url
                            ),
                        );
                    }
                }
            }
            let location = self.location(&domain_path);
            self.config.rules.push(MirrorRule {
                domain,
                mirrors,
                mirrors_only,
                location,
            });
        }
    }

    /// An entry's keys other than `domain`, `mirrors` and `mirrors-only`, each an error.
    fn reject_unknown_entry_keys(&mut self, index: usize, fields: &serde_json::Map<String, Value>) {
        const KEY: &str = "mirror-registries";
        for key in fields.keys().filter(|k| !ENTRY_KEYS.contains(&k.as_str())) {
            let hint = closest(key, ENTRY_KEYS)
                .map(|near| format!("; did you mean `{near}`?"))
                .unwrap_or_default();
            self.key_error(
                &[Step::Key(KEY), Step::Index(index), Step::Key(key)],
                format!(
                    "unknown field {key:?}; an entry has only \"domain\", \"mirrors\" and \
                     \"{MIRRORS_ONLY}\"{hint}"
                ),
            );
        }
    }

    fn read_registry_mirrors(&mut self, value: &Value) {
        let path = [Step::Key("registry-mirrors")];
        let Some(mirrors) = self.mirror_list(&path, value) else {
            return;
        };
        for (index, mirror) in mirrors.into_iter().enumerate() {
            if mirror.url.is_registry_itself(DOCKER_HUB) {
                self.error(
                    &[path[0], Step::Index(index)],
                    format!("{} is Docker Hub itself, not a mirror of it", mirror.url),
                );
                continue;
            }
            let known = &self.config.registry_mirrors;
            if !known.iter().any(|m| m.url == mirror.url) {
                self.config.registry_mirrors.push(mirror);
            }
        }
    }

    fn read_insecure_registries(&mut self, value: &Value) {
        const KEY: &str = "insecure-registries";
        let Some(entries) = self.array(&[Step::Key(KEY)], value) else {
            return;
        };
        for (index, entry) in entries.iter().enumerate() {
            let path = [Step::Key(KEY), Step::Index(index)];
            let Value::String(s) = entry else {
                self.error(&path, "must be a string: host[:port] or a CIDR");
                continue;
            };
            if s.contains("://") {
                self.error(
                    &path,
                    format!("{s:?}: write host[:port] or a CIDR, without a scheme"),
                );
            } else if let Ok(cidr) = IpNet::from_str(s) {
                self.warn(
                    &path,
                    format!(
                        "CIDR {s}: matches registries named by IP address only; a registry named \
                         by hostname would need DNS, which regmirror never uses, so list its \
                         host[:port] too"
                    ),
                );
                let location = self.location(&path);
                let cidrs = &mut self.config.insecure_registries.cidrs;
                if !cidrs.iter().any(|(c, _)| *c == cidr) {
                    cidrs.push((cidr, location));
                }
            } else if reference::is_valid_host(s) {
                let host = s.to_ascii_lowercase();
                let location = self.location(&path);
                let hosts = &mut self.config.insecure_registries.hosts;
                if !hosts.iter().any(|(h, _)| *h == host) {
                    hosts.push((host, location));
                }
            } else {
                self.error(&path, format!("{s:?} is neither host[:port] nor a CIDR"));
            }
        }
    }

    fn array<'v>(&mut self, path: &[Step<'_>], value: &'v Value) -> Option<&'v Vec<Value>> {
        match value {
            Value::Array(items) => Some(items),
            _ => {
                self.error(path, "must be an array");
                None
            }
        }
    }

    /// A JSON array of mirror URLs; warns about plain-http ones.
    fn mirror_list(&mut self, path: &[Step<'_>], value: &Value) -> Option<Vec<Mirror>> {
        let items = self.array(path, value)?;
        let mut mirrors = Vec::with_capacity(items.len());
        let mut ok = true;
        for (index, item) in items.iter().enumerate() {
            let mut at = path.to_vec();
            at.push(Step::Index(index));
            let Value::String(s) = item else {
                self.error(&at, "must be a string URL");
                ok = false;
                continue;
            };
            match MirrorUrl::parse(s) {
                Ok(url) => {
                    if url.scheme() == Scheme::Http {
                        self.warn(
                            &at,
                            format!(
                                "{url} is plain http: image content and credentials for it \
                                 travel unencrypted"
                            ),
                        );
                    }
                    let location = self.location(&at);
                    if mirrors.iter().any(|m: &Mirror| m.url == url) {
                        self.warn(&at, format!("{url} is listed twice; the second is ignored"));
                    } else {
                        mirrors.push(Mirror { url, location });
                    }
                }
                Err(message) => {
                    self.error(&at, message);
                    ok = false;
                }
            }
        }
        ok.then_some(mirrors)
    }
}

/// `mirror-registries[0].mirrors[1]`
fn field_name(path: &[Step<'_>]) -> String {
    let mut name = String::new();
    for step in path {
        match step {
            Step::Key(key) => {
                if !name.is_empty() {
                    name.push('.');
                }
                name.push_str(key);
            }
            Step::Index(i) => name.push_str(&format!("[{i}]")),
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<MirrorConfig, ConfigErrors> {
        MirrorConfig::from_sources(&[ConfigSource {
            path: "/etc/regmirror/mirrors.json",
            text,
        }])
    }

    fn errors(text: &str) -> Vec<String> {
        parse(text)
            .expect_err("config should be refused")
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn assert_error(text: &str, expected: &str) {
        let errors = errors(text);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{errors:#?} lacks {expected:?}"
        );
    }

    #[test]
    fn seed_examples_parse() {
        let config = parse(
            r#"{"mirror-registries":[{"domain": "reg.test1.com",
                "mirrors": ["http://mirror.test1.com", "https://mirror.test2.com"]}]}"#,
        )
        .unwrap();
        assert_eq!(config.rules.len(), 1);
        assert_eq!(
            config.rules[0].domain,
            DomainPattern::Exact("reg.test1.com".into())
        );
        let urls: Vec<_> = config.rules[0]
            .mirrors
            .iter()
            .map(|m| m.url.to_string())
            .collect();
        assert_eq!(
            urls,
            ["http://mirror.test1.com", "https://mirror.test2.com"]
        );
        assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
        assert!(config.warnings[0].message.contains("plain http"));

        let config = parse(
            r#"{"mirror-registries":[{"domain": "*",
                "mirrors": ["http://sea.hub:5000", "https://mirror.test2.com"]}],
                "insecure-registries": ["sea.hub:5000", "mirror.test1.com"]}"#,
        )
        .unwrap();
        assert_eq!(config.rules[0].domain, DomainPattern::Any);
        assert_eq!(config.insecure_registries.hosts.len(), 2);
    }

    #[test]
    fn other_daemon_keys_are_ignored() {
        let config =
            parse(r#"{"debug": true, "log-driver": "journald", "storage-driver": "vfs"}"#).unwrap();
        assert!(config.rules.is_empty() && config.warnings.is_empty());
    }

    #[test]
    fn errors_name_file_line_column_and_field() {
        let text = "{\n  \"mirror-registries\": [\n    {\"domain\": \"reg.test1.com\",\n     \"mirrors\": [\"ftp://m\"]}\n  ]\n}";
        let errors = errors(text);
        assert_eq!(
            errors,
            [
                "/etc/regmirror/mirrors.json:4:18: mirror-registries[0].mirrors[0]: \"ftp://m\": \
                 scheme \"ftp\" is not http or https"
            ]
        );
    }

    #[test]
    fn invalid_json_is_located() {
        let errors = errors("{\n  \"registry-mirrors\": [\"https://m\",]\n}");
        assert!(
            errors[0].starts_with("/etc/regmirror/mirrors.json:2:"),
            "{errors:?}"
        );
        assert!(errors[0].contains("invalid JSON"), "{errors:?}");
        // Columns count characters, not serde_json's bytes (found by fuzz/daemon_json).
        let non_ascii = self::errors("{\"é\": [\"θθ\" x]}");
        assert!(
            non_ascii[0].starts_with("/etc/regmirror/mirrors.json:1:13:"),
            "{non_ascii:?}"
        );
    }

    #[test]
    fn domain_syntax() {
        for (domain, expected) in [
            (
                "reg.test1.com",
                Ok(DomainPattern::Exact("reg.test1.com".into())),
            ),
            (
                "Reg.Test1.com:5000",
                Ok(DomainPattern::Exact("reg.test1.com:5000".into())),
            ),
            (
                "index.docker.io",
                Ok(DomainPattern::Exact("docker.io".into())),
            ),
            (
                "registry-1.docker.io",
                Ok(DomainPattern::Exact("docker.io".into())),
            ),
            ("[::1]:5000", Ok(DomainPattern::Exact("[::1]:5000".into()))),
            (
                "*.example.com",
                Ok(DomainPattern::Suffix("*.example.com".into())),
            ),
            ("*", Ok(DomainPattern::Any)),
            ("https://reg.test1.com", Err("is a URL")),
            ("reg.test1.com/path", Err("has a path")),
            ("reg.*.com", Err("allowed only alone")),
            ("*example.com", Err("allowed only alone")),
            ("*.", Err("not a valid host")),
            ("*.[::1]", Err("not a valid host")),
            ("reg_1.com", Err("not a valid host")),
            ("", Err("not a valid host")),
        ] {
            match (DomainPattern::parse(domain), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{domain:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{domain:?}: {got}"),
                (got, want) => panic!("{domain:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn mirror_url_syntax() {
        for (url, expected) in [
            ("https://m.example.com", Ok("https://m.example.com")),
            ("https://M.Example.com:443/", Ok("https://m.example.com")),
            ("http://m:80", Ok("http://m")),
            ("http://m:5000", Ok("http://m:5000")),
            (
                "https://m.example.com/mirror/hub/",
                Ok("https://m.example.com/mirror/hub"),
            ),
            ("http://[::1]:5000", Ok("http://[::1]:5000")),
            ("ftp://m", Err("not http or https")),
            ("m.example.com", Err("not a URL")),
            ("https://user:pw@m", Err("user info")),
            ("https://m?x=1", Err("query")),
            ("https://m#top", Err("fragment")),
            ("https://m/v2", Err("drop the trailing /v2")),
            ("https://m/root/v2/", Err("drop the trailing /v2")),
        ] {
            match (MirrorUrl::parse(url), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got.to_string(), want, "{url:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{url:?}: {got}"),
                (got, want) => panic!("{url:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn structural_errors() {
        assert_error(r#"[]"#, "must hold a JSON object");
        assert_error(
            r#"{"mirror-registries": {}}"#,
            "mirror-registries: must be an array",
        );
        assert_error(
            r#"{"mirror-registries": ["x"]}"#,
            "each entry must be an object",
        );
        assert_error(
            r#"{"mirror-registries": [{"mirrors": ["https://m"]}]}"#,
            "missing \"domain\"",
        );
        assert_error(
            r#"{"mirror-registries": [{"domain": "r.io"}]}"#,
            "missing \"mirrors\"",
        );
        assert_error(
            r#"{"mirror-registries": [{"domain": "r.io", "mirrors": []}]}"#,
            "mirror-registries[0].mirrors: must list at least one mirror URL",
        );
        assert_error(
            r#"{"mirror-registries": [{"domain": 5, "mirrors": ["https://m"]}]}"#,
            "mirror-registries[0].domain: must be a string",
        );
        assert_error(
            r#"{"mirror-registries": [{"domain": "r.io", "mirrors": [1]}]}"#,
            "mirror-registries[0].mirrors[0]: must be a string URL",
        );
        assert_error(
            r#"{"mirror-registries": [{"domain": "r.io", "mirror": ["https://m"]}]}"#,
            "unknown field \"mirror\"",
        );
        assert_error(
            r#"{"registry-mirrors": "https://m"}"#,
            "registry-mirrors: must be an array",
        );
        assert_error(
            r#"{"insecure-registries": [5]}"#,
            "insecure-registries[0]: must be a string",
        );
        assert_error(
            r#"{"insecure-registries": ["http://r.io"]}"#,
            "without a scheme",
        );
        assert_error(
            r#"{"insecure-registries": ["r_io"]}"#,
            "neither host[:port] nor a CIDR",
        );
    }

    #[test]
    fn mirrors_only_is_a_located_boolean() {
        let text = "{\"mirror-registries\": [\n  {\"domain\": \"reg.io\", \"mirrors\": [\"https://m\"],\n   \"mirrors-only\": true},\n  {\"domain\": \"a.io\", \"mirrors\": [\"https://m\"], \"mirrors-only\": false},\n  {\"domain\": \"b.io\", \"mirrors\": [\"https://m\"]}]}";
        let config = parse(text).unwrap();
        let only = config.rules[0].mirrors_only.as_ref().expect("set");
        assert_eq!(
            (only.to_string(), only.field.as_str()),
            (
                "/etc/regmirror/mirrors.json:3:20".to_owned(),
                "mirror-registries[0].mirrors-only"
            )
        );
        assert_eq!(config.rules[1].mirrors_only, None, "false");
        assert_eq!(config.rules[2].mirrors_only, None, "absent");

        for value in ["\"true\"", "1", "null", "[]"] {
            let errors = errors(&format!(
                "{{\"mirror-registries\": [\n {{\"domain\": \"reg.io\", \"mirrors\": [\"https://m\"], \"mirrors-only\": {value}}}]}}"
            ));
            assert_eq!(
                errors,
                [
                    "/etc/regmirror/mirrors.json:2:65: mirror-registries[0].mirrors-only: must be true or false"
                ],
                "{value}"
            );
        }
        assert_error(
            r#"{"mirror-registries": [{"domain": "r.io", "mirrors": [], "mirrors-only": true}]}"#,
            "mirror-registries[0].mirrors: must list at least one mirror URL: with \"mirrors-only\" \
             the rule would leave no endpoint at all",
        );
        // Every problem of the entry is reported, the key's among them.
        let errors = errors(
            r#"{"mirror-registries": [{"domain": "a b", "mirrors": ["x"], "mirrors-only": "yes"}]}"#,
        );
        assert_eq!(errors.len(), 3, "{errors:#?}");
    }

    #[test]
    fn a_mirror_cannot_be_its_own_registry() {
        assert_error(
            r#"{"mirror-registries": [{"domain": "reg.io", "mirrors": ["https://reg.io"]}]}"#,
            "is the registry reg.io itself",
        );
        assert_error(
            r#"{"mirror-registries": [{"domain": "reg.io:443", "mirrors": ["https://reg.io:443"]}]}"#,
            "itself",
        );
        assert_error(
            r#"{"mirror-registries": [{"domain": "docker.io", "mirrors": ["https://registry-1.docker.io"]}]}"#,
            "itself",
        );
        assert_error(
            r#"{"registry-mirrors": ["https://index.docker.io"]}"#,
            "Docker Hub itself",
        );
        // Same host with an API root is a different endpoint.
        parse(
            r#"{"mirror-registries": [{"domain": "reg.io", "mirrors": ["https://reg.io/cache"]}]}"#,
        )
        .unwrap();
    }

    #[test]
    fn duplicate_domains_name_both_places() {
        let a =
            r#"{"mirror-registries": [{"domain": "index.docker.io", "mirrors": ["https://a"]}]}"#;
        let b = "{\n\"mirror-registries\": [{\"domain\": \"docker.io\", \"mirrors\": [\"https://b\"]}]}";
        let errors = MirrorConfig::from_sources(&[
            ConfigSource {
                path: "a.json",
                text: a,
            },
            ConfigSource {
                path: "b.json",
                text: b,
            },
        ])
        .unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert_eq!(
            errors.0[0].to_string(),
            "b.json:2:34: mirror-registries[0].domain: domain \"docker.io\" is configured twice: \
             here and at a.json:1:35"
        );
    }

    #[test]
    fn sources_combine() {
        let a = r#"{"registry-mirrors": ["https://a", "https://b"], "insecure-registries": ["x.io", "10.0.0.0/8"]}"#;
        let b = r#"{"registry-mirrors": ["https://b", "https://c"], "insecure-registries": ["x.io", "y.io:5000"],
                    "mirror-registries": [{"domain": "*.corp", "mirrors": ["https://m"]}]}"#;
        let config = MirrorConfig::from_sources(&[
            ConfigSource {
                path: "a.json",
                text: a,
            },
            ConfigSource {
                path: "b.json",
                text: b,
            },
        ])
        .unwrap();
        let urls: Vec<_> = config
            .registry_mirrors
            .iter()
            .map(|m| m.url.to_string())
            .collect();
        assert_eq!(urls, ["https://a", "https://b", "https://c"]);
        let hosts: Vec<_> = config
            .insecure_registries
            .hosts
            .iter()
            .map(|(h, _)| h.as_str())
            .collect();
        assert_eq!(hosts, ["x.io", "y.io:5000"]);
        assert_eq!(config.insecure_registries.cidrs.len(), 1);
        assert_eq!(
            config.rules[0].domain,
            DomainPattern::Suffix("*.corp".into())
        );
    }

    #[test]
    fn warnings() {
        let config = MirrorConfig::from_sources(&[ConfigSource {
            path: "/etc/docker/daemon.json",
            text: r#"{"mirror-registries": [{"domain": "r.io", "mirrors": ["https://m"]}],
                      "insecure-registries": ["192.168.0.0/16"]}"#,
        }])
        .unwrap();
        let messages: Vec<_> = config.warnings.iter().map(|w| w.message.as_str()).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].contains("stock dockerd refuses to start"));
        assert!(messages[1].contains("CIDR 192.168.0.0/16"));
    }

    #[test]
    fn a_slip_of_a_key_is_an_error_at_the_key() {
        let errors = errors(
            "{\n  \"debug\": true,\n  \"mirror-registry\": [{\"domain\": \"r.io\", \"mirrors\": [\"https://m\"]}]\n}",
        );
        assert_eq!(
            errors,
            [
                "/etc/regmirror/mirrors.json:3:3: mirror-registry: unknown key; did you mean \
                 `mirror-registries`?"
            ]
        );
        assert_error(
            r#"{"Registry-Mirrors": ["https://m"]}"#,
            "did you mean `registry-mirrors`?",
        );
        assert_error(
            r#"{"mirror-registries": [{"domain": "r.io", "mirror": ["https://m"]}]}"#,
            "unknown field \"mirror\"; an entry has only \"domain\", \"mirrors\" and \
             \"mirrors-only\"; did you mean `mirrors`?",
        );
        // dockerd's own keys stay allowed.
        parse(r#"{"registry-mirrors": [], "insecure-registries": [], "max-concurrent-downloads": 3, "log-opts": {}}"#)
            .unwrap();
    }

    #[test]
    fn errors_come_in_line_order_and_a_syntax_error_has_no_empty_field() {
        let errors = errors(
            "{\"registry-mirrors\": [\"ftp://a\"],\n \"mirror-registries\": [{\"domain\": \"a b\", \"mirrors\": [\"https://m\"]}]}",
        );
        let lines: Vec<&str> = errors
            .iter()
            .map(|e| e.split(':').nth(1).unwrap())
            .collect();
        assert_eq!(lines, ["1", "2"], "{errors:#?}");
        let syntax = self::errors("{\n  \"registry-mirrors\": [\n  ,]\n}");
        assert_eq!(
            syntax,
            ["/etc/regmirror/mirrors.json:3:3: invalid JSON: expected value"]
        );
    }

    #[test]
    fn all_errors_are_reported() {
        let errors = errors(
            r#"{"mirror-registries": [{"domain": "a b", "mirrors": ["x"]}], "insecure-registries": ["!"]}"#,
        );
        assert_eq!(errors.len(), 3, "{errors:#?}");
    }
}

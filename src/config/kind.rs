//! Which kind of configuration a text is, by its top-level keys: a daemon.json-format mirror file
//! or a `config.yml` for `regmirror serve`. The two are given to different commands under similar
//! flags; each command refuses the other kind with a hint instead of misreading it.

use super::cache;
use super::mirrors;

/// What a configuration text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A daemon.json-format mirror file: a mirror key at the top, no config.yml section.
    MirrorFile,
    /// A `config.yml`: a config.yml section at the top, no mirror key.
    CacheConfig,
    /// Neither for certain.
    Unknown,
}

/// The kind of `text`, JSON or YAML (which reads JSON too).
pub fn sniff(text: &str) -> FileKind {
    let keys = top_level_keys(text);
    let mirror = keys.iter().any(|k| mirrors::KEYS.contains(&k.as_str()));
    let section = keys.iter().any(|k| cache::is_section(k));
    match (mirror, section) {
        (true, false) => FileKind::MirrorFile,
        (false, true) => FileKind::CacheConfig,
        _ => FileKind::Unknown,
    }
}

fn top_level_keys(text: &str) -> Vec<String> {
    if let Ok(serde_json::Value::Object(object)) = serde_json::from_str(text) {
        return object.keys().cloned().collect();
    }
    match serde_yaml_ng::from_str(text) {
        Ok(serde_yaml_ng::Value::Mapping(mapping)) => mapping
            .keys()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_by_its_keys() {
        for (text, kind) in [
            (
                r#"{"mirror-registries": [{"domain": "r.io", "mirrors": ["https://m"]}]}"#,
                FileKind::MirrorFile,
            ),
            (
                "{\n  \"debug\": true,\n  \"registry-mirrors\": [\"https://m\"]\n}",
                FileKind::MirrorFile,
            ),
            ("version: 0.1\nproxy:\n  on: true\n", FileKind::CacheConfig),
            (
                "{\"proxy\": {\"remoteurl\": \"https://r.io\"}}",
                FileKind::CacheConfig,
            ),
            ("http: {addr: ':5000'}\n", FileKind::CacheConfig),
            (r#"{"debug": true}"#, FileKind::Unknown),
            ("{}", FileKind::Unknown),
            ("", FileKind::Unknown),
            (
                "{\"proxy\": 1, \"registry-mirrors\": []}",
                FileKind::Unknown,
            ),
            ("not: [valid", FileKind::Unknown),
        ] {
            assert_eq!(sniff(text), kind, "{text}");
        }
    }
}

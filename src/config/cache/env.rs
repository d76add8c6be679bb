//! distribution's `REGISTRY_*` environment overrides: `REGISTRY_HTTP_ADDR=:5000` sets `http.addr`
//! over the file (or over the embedded default when there is no file), and `REGISTRY_STORAGE=s3`
//! chooses the storage driver. Each override remembers its variable, so that a problem with the
//! value it set names the variable, not the file.

use serde_yaml_ng::{Mapping, Value};

use super::keys::{KEYS, Key};
use crate::config::suggest::closest;

/// Storage drivers distribution knows: one of them is the storage.
const DRIVERS: [&str; 7] = [
    "filesystem",
    "s3",
    "inmemory",
    "azure",
    "gcs",
    "swift",
    "oss",
];

/// One `REGISTRY_*` variable and the key it sets.
#[derive(Debug, Clone)]
pub(super) struct Override {
    pub variable: String,
    /// `["http", "addr"]`; `["storage", "s3"]` for a driver choice.
    pub path: Vec<String>,
    /// The text read as YAML (`true`, `5`, `[a, b]`), or as the text itself when it is not YAML.
    pub value: Value,
    /// The text as it is: what a string field reads, whatever YAML would make of it.
    pub text: String,
    /// `REGISTRY_STORAGE=s3`: chooses the storage driver rather than setting a value.
    pub selects_driver: bool,
}

impl Override {
    pub(super) fn path_str(&self) -> Vec<&str> {
        self.path.iter().map(String::as_str).collect()
    }
}

/// The `REGISTRY_*` variables of `env`, in its order.
pub(super) fn overrides(env: &[(String, String)]) -> Vec<Override> {
    env.iter()
        .filter_map(|(key, text)| {
            let rest = key.strip_prefix("REGISTRY_")?;
            if rest.is_empty() {
                return None;
            }
            let words: Vec<String> = rest.split('_').map(str::to_ascii_lowercase).collect();
            let value = serde_yaml_ng::from_str(text).unwrap_or(Value::String(text.clone()));
            let selects_driver = words == ["storage"];
            let path = if selects_driver {
                vec!["storage".to_owned(), text.trim().to_owned()]
            } else {
                key_path(&words)
            };
            Some(Override {
                variable: key.clone(),
                path,
                value,
                text: text.clone(),
                selects_driver,
            })
        })
        .collect()
}

/// What the environment applies to when there is no file: the embedded default's upstreams
/// (`default_urls`), unless a `REGISTRY_PROXY_*` variable names its own.
pub(super) fn base_document(overrides: &[Override], default_urls: &[String]) -> Value {
    let mut root = Mapping::new();
    if !overrides
        .iter()
        .any(|o| o.path.first().is_some_and(|k| k == "proxy"))
    {
        let remotes = default_urls
            .iter()
            .map(|url| {
                let mut remote = Mapping::new();
                remote.insert("url".into(), Value::String(url.clone()));
                Value::Mapping(remote)
            })
            .collect();
        let mut proxy = Mapping::new();
        proxy.insert("remoteregistries".into(), Value::Sequence(remotes));
        root.insert("proxy".into(), Value::Mapping(proxy));
    }
    Value::Mapping(root)
}

/// Sets every override's value in `document`; a driver choice last.
pub(super) fn apply(document: &mut Value, overrides: &[Override]) {
    for o in overrides.iter().filter(|o| !o.selects_driver) {
        set_path(document, &o.path, o.value.clone());
    }
    if let Some(choice) = overrides.iter().rfind(|o| o.selects_driver) {
        select_driver(document, &choice.path[1]);
    }
}

/// Joins words back into keys that contain underscores (`gc_interval`, `tag_revalidate`) where
/// the key table knows such a key; otherwise every word is a level, as distribution reads them.
/// Words that are a slip of a known key (`TAG_REVALIDTE`) stay one key, so that the key check
/// suggests the right one.
fn key_path(words: &[String]) -> Vec<String> {
    let mut path = Vec::new();
    let mut node = Some(&KEYS);
    let mut i = 0;
    while i < words.len() {
        let fields: &[(&str, Key)] = match node {
            Some(Key::Map(fields)) => fields,
            _ => &[],
        };
        let longest = (i + 1..=words.len()).rev().find_map(|j| {
            let candidate = words[i..j].join("_");
            fields
                .iter()
                .find(|(k, _)| *k == candidate)
                .map(|(_, sub)| (j, candidate, sub))
        });
        match longest {
            Some((j, key, sub)) => {
                path.push(key);
                node = Some(sub);
                i = j;
            }
            None => {
                let rest = words[i..].join("_");
                if words.len() - i > 1 && closest(&rest, fields.iter().map(|(k, _)| *k)).is_some() {
                    path.push(rest);
                    break;
                }
                path.push(words[i].clone());
                node = None;
                i += 1;
            }
        }
    }
    path
}

/// Keeps `driver` as the storage (with its parameters, or none) and drops the other drivers'.
fn select_driver(document: &mut Value, driver: &str) {
    let storage = mapping_at(document, "storage");
    storage.retain(|key, _| {
        key.as_str()
            .is_none_or(|k| k == driver || !DRIVERS.contains(&k))
    });
    if !storage.contains_key(driver) {
        storage.insert(
            Value::String(driver.to_owned()),
            Value::Mapping(Mapping::new()),
        );
    }
}

fn set_path(document: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = document;
    for key in parents {
        node = mapping_entry(node, key);
    }
    as_mapping(node).insert(Value::String(last.clone()), value);
}

/// The mapping under `key` of `node`, made one (replacing what was there) when it is not.
fn mapping_at<'v>(node: &'v mut Value, key: &str) -> &'v mut Mapping {
    as_mapping(mapping_entry(node, key))
}

fn mapping_entry<'v>(node: &'v mut Value, key: &str) -> &'v mut Value {
    as_mapping(node)
        .entry(Value::String(key.to_owned()))
        .or_insert_with(|| Value::Mapping(Mapping::new()))
}

fn as_mapping(node: &mut Value) -> &mut Mapping {
    if !node.is_mapping() {
        *node = Value::Mapping(Mapping::new());
    }
    node.as_mapping_mut().expect("just made a mapping")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_of(variable: &str) -> Vec<String> {
        overrides(&[(variable.to_owned(), "x".to_owned())])
            .remove(0)
            .path
    }

    #[test]
    fn words_join_into_known_keys() {
        assert_eq!(path_of("REGISTRY_HTTP_ADDR"), ["http", "addr"]);
        assert_eq!(
            path_of("REGISTRY_STORAGE_GC_INTERVAL"),
            ["storage", "gc_interval"]
        );
        assert_eq!(
            path_of("REGISTRY_PROXY_TAG_REVALIDATE"),
            ["proxy", "tag_revalidate"]
        );
        assert_eq!(path_of("REGISTRY_HTTP_TLS_KEY"), ["http", "tls", "key"]);
        assert_eq!(path_of("REGISTRY_NEW_THING"), ["new", "thing"]);
        // A slip stays one key, for the key check to name its correction.
        assert_eq!(
            path_of("REGISTRY_PROXY_TAG_REVALIDTE"),
            ["proxy", "tag_revalidte"]
        );
        assert_eq!(path_of("REGISTRY_STORAGE"), ["storage", "x"]);
    }

    #[test]
    fn a_driver_choice_keeps_the_other_storage_keys() {
        let mut document: Value = serde_yaml_ng::from_str(
            "storage: {filesystem: {rootdirectory: /x}, delete: {enabled: true}}",
        )
        .unwrap();
        apply(
            &mut document,
            &overrides(&[("REGISTRY_STORAGE".into(), "s3".into())]),
        );
        let storage = &document["storage"];
        assert!(storage.get("filesystem").is_none());
        assert!(storage["s3"].is_mapping());
        assert_eq!(storage["delete"]["enabled"], Value::Bool(true));
    }
}

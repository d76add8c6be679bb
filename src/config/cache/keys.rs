//! The keys config.yml may hold, and the check of a document against them: every key regmirror
//! reads, distribution's keys it accepts or does not implement, and what an unknown key is. The
//! check leaves in the document only what regmirror reads, in the shape it reads it, so that
//! reading it into `raw`'s structs cannot fail.

use serde_yaml_ng::{Mapping, Value};

use super::report::{FieldPath, Report};
use super::units::shown;
use crate::config::suggest::closest;

/// What a key of config.yml is.
pub(super) enum Key {
    /// A section: these keys below it.
    Map(&'static [(&'static str, Key)]),
    /// A list of these.
    List(&'static Key),
    /// A value regmirror reads into the field of the same name.
    Field,
    /// A value regmirror reads whatever its shape (`local`, `http.headers`): its validation
    /// checks what is below.
    FreeField,
    /// distribution's, with nothing to do in regmirror: accepted without a word.
    Harmless,
    /// distribution's, not implemented by regmirror: a warning.
    Unsupported,
}

impl Key {
    /// Whether regmirror reads this key or something below it.
    pub(super) fn is_read(&self) -> bool {
        match self {
            Key::Field | Key::FreeField => true,
            Key::Map(fields) => fields.iter().any(|(_, key)| key.is_read()),
            Key::List(item) => item.is_read(),
            Key::Harmless | Key::Unsupported => false,
        }
    }
}

use Key::{Field, FreeField, Harmless, List, Map, Unsupported};

pub(super) const KEYS: Key = Map(&[
    ("version", Harmless),
    (
        "log",
        Map(&[
            ("level", Field),
            ("formatter", Unsupported),
            ("fields", Harmless),
            ("accesslog", Harmless),
            ("hooks", Unsupported),
            ("reportcaller", Unsupported),
        ]),
    ),
    ("loglevel", Unsupported),
    (
        "storage",
        Map(&[
            (
                "filesystem",
                Map(&[("rootdirectory", Field), ("maxthreads", Harmless)]),
            ),
            ("cache", Harmless),
            ("delete", Map(&[("enabled", Field)])),
            ("maxsize", Field),
            ("gc_interval", Field),
            ("maintenance", Unsupported),
            ("tag", Unsupported),
            ("redirect", Map(&[("disable", Field)])),
            ("spool", Field),
            ("inmemory", Unsupported),
            (
                "s3",
                Map(&[
                    ("bucket", Field),
                    ("region", Field),
                    ("regionendpoint", Field),
                    ("accesskey", Field),
                    ("secretkey", Field),
                    ("rootdirectory", Field),
                    ("secure", Field),
                    ("forcepathstyle", Field),
                    ("chunksize", Field),
                    ("encrypt", Unsupported),
                    ("keyid", Unsupported),
                    ("v4auth", Harmless),
                    ("skipverify", Unsupported),
                    ("storageclass", Unsupported),
                    ("objectacl", Unsupported),
                    ("sessiontoken", Unsupported),
                    ("usedualstack", Unsupported),
                    ("accelerate", Unsupported),
                    ("multipartcopychunksize", Harmless),
                    ("multipartcopymaxconcurrency", Harmless),
                    ("multipartcopythresholdsize", Harmless),
                    ("loglevel", Harmless),
                ]),
            ),
            (
                "azure",
                Map(&[
                    ("accountname", Field),
                    ("accountkey", Field),
                    ("container", Field),
                    ("rootdirectory", Field),
                    ("realm", Field),
                    ("serviceurl", Field),
                    ("connectionstring", Field),
                    (
                        "credentials",
                        Map(&[
                            ("type", Field),
                            ("clientid", Field),
                            ("tenantid", Field),
                            ("secret", Field),
                        ]),
                    ),
                    ("max_retries", Harmless),
                    ("retry_delay", Harmless),
                    ("skipverify", Unsupported),
                ]),
            ),
            ("gcs", Unsupported),
            ("swift", Unsupported),
            ("oss", Unsupported),
        ]),
    ),
    (
        "http",
        Map(&[
            ("addr", Field),
            ("net", Field),
            ("prefix", Unsupported),
            ("host", Field),
            ("secret", Field),
            ("relativeurls", Harmless),
            ("draintimeout", Harmless),
            (
                "tls",
                Map(&[
                    ("certificate", Field),
                    ("key", Field),
                    ("clientcas", Field),
                    ("clientauth", Unsupported),
                    ("minimumtls", Unsupported),
                    ("ciphersuites", Unsupported),
                    ("letsencrypt", Unsupported),
                ]),
            ),
            ("headers", FreeField),
            ("debug", Unsupported),
            ("http2", Harmless),
            ("h2c", Unsupported),
        ]),
    ),
    (
        "proxy",
        Map(&[
            ("remoteurl", Field),
            ("username", Field),
            ("password", Field),
            ("ttl", Field),
            (
                "remoteregistries",
                List(&Map(&[
                    ("url", Field),
                    ("username", Field),
                    ("password", Field),
                    ("allow", Field),
                    ("deny", Field),
                    ("tag_revalidate", Field),
                    ("ratelimit_reserve", Field),
                    ("max_concurrent", Field),
                    ("max_rate", Field),
                    ("exec", EXEC),
                ])),
            ),
            ("on", Field),
            ("allow", Field),
            ("deny", Field),
            ("platforms", Field),
            ("tag_revalidate", Field),
            ("ratelimit_reserve", Field),
            ("max_concurrent", Field),
            ("max_rate", Field),
            ("serve_stale_on_404", Field),
            ("allow_private_upstreams", Field),
            ("exec", EXEC),
        ]),
    ),
    ("local", FreeField),
    ("health", Harmless),
    (
        "auth",
        Map(&[
            ("htpasswd", Map(&[("realm", Field), ("path", Field)])),
            ("token", Unsupported),
            ("silly", Unsupported),
        ]),
    ),
    (
        "limits",
        Map(&[
            ("header_timeout", Field),
            ("tls_handshake_timeout", Field),
            ("idle_timeout", Field),
            ("max_connections", Field),
            ("max_manifest_size", Field),
            ("max_blob_size", Field),
            ("fill_min_rate", Field),
            ("max_fills", Field),
            ("max_fills_per_upstream", Field),
            ("upload_lifetime", Field),
            ("upstream_queue_timeout", Field),
            ("max_uploads", Field),
            ("manifest_memo", Field),
            ("blob_memo", Field),
            ("buffer_memory", Field),
            ("max_referrers", Field),
            ("max_referrers_size", Field),
        ]),
    ),
    ("notifications", Unsupported),
    ("redis", Unsupported),
    ("validation", Harmless),
    ("compatibility", Harmless),
    ("reporting", Unsupported),
    ("middleware", Unsupported),
    ("catalog", Unsupported),
]);

/// `exec`: a credential helper for an upstream (distribution's `proxy.exec`, plus `timeout`).
const EXEC: Key = Map(&[("command", Field), ("lifetime", Field), ("timeout", Field)]);

/// Whether `name` is a top-level key of config.yml.
pub fn is_section(name: &str) -> bool {
    match KEYS {
        Map(fields) => fields.iter().any(|(key, _)| *key == name),
        _ => false,
    }
}

/// Checks `document` (a mapping) against [`KEYS`] and leaves in it only what regmirror reads.
/// Unknown keys and distribution's unimplemented ones are warnings; a slip of a key regmirror
/// reads is an error naming the key it resembles; a section or list of the wrong shape is an
/// error.
pub(super) fn check(document: &mut Value, report: &mut Report<'_>) {
    keep(document, &KEYS, &FieldPath::default(), report);
}

/// Checks `value` against `key`; false when it is to be dropped: empty, or of the wrong shape
/// (reported).
fn keep(value: &mut Value, key: &Key, at: &FieldPath, report: &mut Report<'_>) -> bool {
    match (key, value) {
        (Map(fields), Value::Mapping(map)) => {
            check_map(map, fields, at, report);
            true
        }
        (List(item), Value::Sequence(items)) => {
            for (i, value) in items.iter_mut().enumerate() {
                let here = at.index(i);
                if value.is_null() {
                    report.error_at(&here, "an empty entry");
                } else if !keep(value, item, &here, report) {
                    *value = Value::Null;
                }
            }
            true
        }
        (Map(_) | List(_), Value::Null) => false,
        (Map(_), other) => {
            report.error_at(at, format!("{} is not a mapping", shown(other)));
            false
        }
        (List(_), other) => {
            report.error_at(at, format!("{} is not a list", shown(other)));
            false
        }
        _ => true,
    }
}

fn check_map(map: &mut Mapping, fields: &[(&str, Key)], at: &FieldPath, report: &mut Report<'_>) {
    map.retain(|name, value| {
        let name = match name {
            Value::String(name) => name.clone(),
            other => shown(other),
        };
        let here = at.key(&name);
        match fields.iter().find(|(key, _)| *key == name) {
            Some((_, Harmless)) => false,
            Some((_, Unsupported)) => {
                report.warn_at(
                    &here,
                    "a distribution setting regmirror does not implement; ignored",
                );
                false
            }
            Some((_, key)) => keep(value, key, &here, report),
            None => {
                unknown(&name, fields, &here, report);
                false
            }
        }
    });
}

/// An unknown key: an error when it is a slip of a key regmirror reads, else a warning.
fn unknown(name: &str, fields: &[(&str, Key)], here: &FieldPath, report: &mut Report<'_>) {
    let (read, other): (Vec<_>, Vec<_>) = fields.iter().partition(|(_, key)| key.is_read());
    if let Some(near) = closest(name, read.iter().map(|(key, _)| *key)) {
        report.error_at(here, format!("unknown key; did you mean `{near}`?"));
    } else if let Some(near) = closest(name, other.iter().map(|(key, _)| *key)) {
        report.warn_at(
            here,
            format!("unknown key, ignored; did you mean `{near}`?"),
        );
    } else {
        report.warn_at(here, "unknown key, ignored");
    }
}

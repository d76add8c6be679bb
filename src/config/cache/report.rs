//! config.yml's diagnostics. Each names where the value came from (the file's line and column, or
//! the `REGISTRY_*` variable that set it), the key and what is wrong. [`Report`] collects them
//! while the configuration is read, so that every problem is reported at once, and reads each
//! value into its type, reporting a wrong one at its key.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_yaml_ng::Value;

use super::env::Override;
use super::units::{parse_duration, shown, size_value};
use crate::config::yaml_span::{self, LineColumn, Step};

/// Where a config.yml value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The file, at a line and column; without one when there is no text (the embedded default).
    File {
        file: Arc<str>,
        position: Option<LineColumn>,
    },
    /// The `REGISTRY_*` environment variable that set it.
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File {
                file,
                position: Some(p),
            } => write!(f, "{file}:{}:{}", p.line, p.column),
            Origin::File {
                file,
                position: None,
            } => f.write_str(file),
            Origin::Env(variable) => write!(f, "${variable}"),
        }
    }
}

/// A located error or warning of a config.yml: `config.yml:3:5: proxy.ttl: …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheDiagnostic {
    pub origin: Origin,
    /// The key's path, `proxy.remoteregistries[0].url`; empty for the document as a whole.
    pub field: String,
    pub message: String,
}

impl fmt::Display for CacheDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}: {}: {}", self.origin, self.field, self.message)
        }
    }
}

/// Every error of a config.yml: the file's in line order, then the environment's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CacheErrors(pub Vec<CacheDiagnostic>);

impl fmt::Display for CacheErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::config::write_lines(f, &self.0)
    }
}

/// One step of a key's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Segment {
    Key(String),
    Index(usize),
}

/// A key's path, `proxy.remoteregistries[0].url`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct FieldPath(Vec<Segment>);

impl FieldPath {
    /// Reads `a.b[0].c`. A key holding a dot reads as two keys: located less precisely, no worse.
    pub(super) fn parse(text: &str) -> Self {
        let mut segments = Vec::new();
        for part in text.split('.').filter(|p| !p.is_empty()) {
            let (key, indexes) = part.split_once('[').unwrap_or((part, ""));
            segments.push(Segment::Key(key.to_owned()));
            for index in indexes.split('[') {
                if let Ok(i) = index.trim_end_matches(']').parse() {
                    segments.push(Segment::Index(i));
                }
            }
        }
        FieldPath(segments)
    }

    pub(super) fn key(&self, key: &str) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Key(key.to_owned()));
        FieldPath(segments)
    }

    pub(super) fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(index));
        FieldPath(segments)
    }

    fn steps(&self) -> Vec<Step<'_>> {
        self.0
            .iter()
            .map(|segment| match segment {
                Segment::Key(key) => Step::Key(key),
                Segment::Index(i) => Step::Index(*i),
            })
            .collect()
    }

    /// The keys before the first index: all an environment variable can name.
    fn leading_keys(&self) -> Vec<&str> {
        self.0
            .iter()
            .map_while(|segment| match segment {
                Segment::Key(key) => Some(key.as_str()),
                Segment::Index(_) => None,
            })
            .collect()
    }

    fn is_keys_only(&self) -> bool {
        self.0.iter().all(|s| matches!(s, Segment::Key(_)))
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => f.write_str(key)?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// What a value of 0 means for a duration or size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Zero {
    Allowed,
    Refused,
}

/// The diagnostics of one configuration as it is read.
pub(super) struct Report<'a> {
    file: Arc<str>,
    text: Option<&'a str>,
    overrides: &'a [Override],
    errors: Vec<CacheDiagnostic>,
    warnings: Vec<CacheDiagnostic>,
}

impl<'a> Report<'a> {
    pub(super) fn new(file: &str, text: Option<&'a str>, overrides: &'a [Override]) -> Self {
        Report {
            file: Arc::from(file),
            text,
            overrides,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub(super) fn error(&mut self, field: &str, message: impl Into<String>) {
        self.error_at(&FieldPath::parse(field), message);
    }

    pub(super) fn error_at(&mut self, field: &FieldPath, message: impl Into<String>) {
        let diagnostic = self.diagnostic(field, message.into());
        self.errors.push(diagnostic);
    }

    pub(super) fn warn_at(&mut self, field: &FieldPath, message: impl Into<String>) {
        let diagnostic = self.diagnostic(field, message.into());
        self.warnings.push(diagnostic);
    }

    pub(super) fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// The errors and the warnings, each in order: the file's by line and column, then the
    /// environment's by variable, then any without a position.
    pub(super) fn finish(self) -> (Vec<CacheDiagnostic>, Vec<CacheDiagnostic>) {
        let order = |d: &CacheDiagnostic| match &d.origin {
            Origin::File {
                position: Some(p), ..
            } => (0, p.line, p.column, String::new()),
            Origin::Env(variable) => (1, 0, 0, variable.clone()),
            Origin::File { position: None, .. } => (2, 0, 0, String::new()),
        };
        let (mut errors, mut warnings) = (self.errors, self.warnings);
        errors.sort_by_cached_key(order);
        warnings.sort_by_cached_key(order);
        (errors, warnings)
    }

    fn diagnostic(&self, field: &FieldPath, message: String) -> CacheDiagnostic {
        CacheDiagnostic {
            origin: self.origin(field),
            field: field.to_string(),
            message,
        }
    }

    /// A variable that set the key or one above it; else the key in the file; else a variable
    /// that set a key below it (or chose the storage driver above it); else the nearest key
    /// above it in the file.
    fn origin(&self, field: &FieldPath) -> Origin {
        let keys = field.leading_keys();
        let above = |o: &&Override| keys.starts_with(&o.path_str());
        let below = |o: &&Override| o.path_str().starts_with(&keys) && field.is_keys_only();
        let set = self
            .overrides
            .iter()
            .filter(|o| !o.selects_driver)
            .filter(above)
            .max_by_key(|o| o.path.len());
        if let Some(o) = set {
            return Origin::Env(o.variable.clone());
        }
        let steps = field.steps();
        let here = self.text.and_then(|text| yaml_span::locate(text, &steps));
        if here.is_some() {
            return self.in_file(here);
        }
        let related = self.overrides.iter().find(|o| below(o) || above(o));
        if let Some(o) = related {
            return Origin::Env(o.variable.clone());
        }
        let nearest = self.text.map(|text| {
            (0..steps.len())
                .rev()
                .find_map(|len| yaml_span::locate(text, &steps[..len]))
                .unwrap_or(LineColumn { line: 1, column: 1 })
        });
        self.in_file(nearest)
    }

    fn in_file(&self, position: Option<LineColumn>) -> Origin {
        Origin::File {
            file: self.file.clone(),
            position,
        }
    }

    /// The scalar at `field` as it is written: the variable's text when one set it, else the
    /// file's.
    fn written(&self, field: &FieldPath) -> Option<String> {
        let keys = field.leading_keys();
        if let Some(o) = self
            .overrides
            .iter()
            .rev()
            .find(|o| !o.selects_driver && field.is_keys_only() && o.path_str() == keys)
        {
            return Some(o.text.clone());
        }
        yaml_span::scalar_text(self.text?, &field.steps())
    }
}

/// Reading each value into its type; a value of the wrong kind is reported at its key and read
/// as absent, so that reading goes on and finds every other problem.
impl Report<'_> {
    /// A string. A number or a boolean is read as it is written (`password: 1e3` is `1e3`), as
    /// distribution reads it.
    pub(super) fn string(&mut self, slot: &Option<Value>, field: &str) -> Option<String> {
        match slot.as_ref()? {
            Value::String(text) => Some(text.clone()),
            value @ (Value::Number(_) | Value::Bool(_)) => Some(
                self.written(&FieldPath::parse(field))
                    .unwrap_or_else(|| shown(value)),
            ),
            other => {
                self.error(field, format!("{} is not a string", shown(other)));
                None
            }
        }
    }

    /// A string that must be given and not empty.
    pub(super) fn required(&mut self, slot: &Option<Value>, field: &str) -> Option<String> {
        if slot.is_none() {
            self.error(field, "is required");
            return None;
        }
        let text = self.string(slot, field)?;
        if text.is_empty() {
            self.error(field, "is required");
            return None;
        }
        Some(text)
    }

    pub(super) fn path(&mut self, slot: &Option<Value>, field: &str) -> Option<PathBuf> {
        self.string(slot, field).map(PathBuf::from)
    }

    /// A list of paths.
    pub(super) fn paths(&mut self, slot: &Option<Value>, field: &str) -> Vec<PathBuf> {
        match slot {
            None => Vec::new(),
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| self.path(&Some(item.clone()), &format!("{field}[{i}]")))
                .collect(),
            Some(other) => {
                self.error(field, format!("{} is not a list of paths", shown(other)));
                Vec::new()
            }
        }
    }

    pub(super) fn flag(&mut self, slot: &Option<Value>, field: &str) -> Option<bool> {
        match slot.as_ref()? {
            Value::Bool(b) => Some(*b),
            other => {
                self.error(field, format!("{} is not true or false", shown(other)));
                None
            }
        }
    }

    /// A whole number of at least 1.
    pub(super) fn count(&mut self, slot: &Option<Value>, field: &str) -> Option<usize> {
        let value = slot.as_ref()?;
        match value.as_u64().map(usize::try_from) {
            Some(Ok(0)) => {
                self.error(field, "must be at least 1");
                None
            }
            Some(Ok(n)) => Some(n),
            _ => {
                self.error(field, format!("{} is not a whole number", shown(value)));
                None
            }
        }
    }

    pub(super) fn number(&mut self, slot: &Option<Value>, field: &str) -> Option<f64> {
        let value = slot.as_ref()?;
        let number = value.as_f64();
        if number.is_none() {
            self.error(field, format!("{} is not a number", shown(value)));
        }
        number
    }

    pub(super) fn duration(
        &mut self,
        slot: &Option<Value>,
        field: &str,
        zero: Zero,
    ) -> Option<Duration> {
        let text = self.string(slot, field)?;
        match parse_duration(&text) {
            Ok(d) if d.is_zero() && zero == Zero::Refused => {
                self.error(
                    field,
                    format!("{text:?} is not a positive duration like 30s"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(message) => {
                self.error(field, message);
                None
            }
        }
    }

    /// A size (`4MiB`, or a number of bytes) that `accept` takes; otherwise "… is not
    /// {expected}".
    pub(super) fn size(
        &mut self,
        slot: &Option<Value>,
        field: &str,
        expected: &str,
        accept: impl Fn(u64) -> bool,
    ) -> Option<u64> {
        let value = slot.as_ref()?;
        let size = size_value(value).filter(|n| accept(*n));
        if size.is_none() {
            self.error(field, format!("{} is not {expected}", shown(value)));
        }
        size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_back() {
        for text in [
            "proxy",
            "proxy.remoteregistries[0].url",
            "local[3]",
            "a.b.c",
        ] {
            assert_eq!(FieldPath::parse(text).to_string(), text);
        }
        assert_eq!(
            FieldPath::default().key("proxy").key("on").to_string(),
            "proxy.on"
        );
        assert_eq!(FieldPath::parse("").to_string(), "");
    }

    #[test]
    fn a_diagnostic_without_a_field_has_no_empty_part() {
        let origin = Origin::File {
            file: Arc::from("config.yml"),
            position: Some(LineColumn { line: 4, column: 3 }),
        };
        let diagnostic = CacheDiagnostic {
            origin,
            field: String::new(),
            message: "invalid YAML: x".into(),
        };
        assert_eq!(diagnostic.to_string(), "config.yml:4:3: invalid YAML: x");
        let from_env = CacheDiagnostic {
            origin: Origin::Env("REGISTRY_PROXY_ON".into()),
            field: "proxy.on".into(),
            message: "\"maybe\" is not true or false".into(),
        };
        assert_eq!(
            from_env.to_string(),
            "$REGISTRY_PROXY_ON: proxy.on: \"maybe\" is not true or false"
        );
    }
}

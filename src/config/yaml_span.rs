//! Finds where a key or value sits in YAML text, so config.yml diagnostics can name line and
//! column, and reads a scalar exactly as it is written.
//!
//! serde_yaml_ng's `Value` keeps no positions, but its deserializer stamps an error raised by a
//! `Deserialize` implementation with the position of the node being read. [`locate`] reads the
//! text again with a seed that follows the path and raises such an error at the node it looks
//! for: the error's position is the answer. So positions come from the parser that read the
//! configuration (flow and block styles, quoting, comments and anchors alike), not from a second
//! reading of the text; the cost, one parse per lookup, is paid only for a diagnostic. Pure, and
//! never fails loudly: a path it cannot follow yields `None`.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

pub use super::json_span::{LineColumn, Step};

/// The message of the error raised at the node looked for; any other error means "not found".
const HERE: &str = "regmirror: the node looked for";

/// Where the node at `path` starts: the key itself when the last step is a key, the item when it
/// is an index, the document's first node for an empty path.
pub fn locate(text: &str, path: &[Step<'_>]) -> Option<LineColumn> {
    let found = RefCell::new(None);
    let error = Walk {
        path,
        goal: Goal::Position,
        found: &found,
    }
    .deserialize(serde_yaml_ng::Deserializer::from_str(text))
    .err()?;
    if !error.to_string().contains(HERE) {
        return None;
    }
    let location = error.location()?;
    Some(LineColumn {
        line: location.line(),
        column: location.column(),
    })
}

/// The scalar at `path` as it is written (`1e3`, `0x1F`, `true`), which `Value` holds as a number
/// or a boolean: what a string field means by it. `None` when the path holds no scalar.
pub fn scalar_text(text: &str, path: &[Step<'_>]) -> Option<String> {
    let found = RefCell::new(None);
    let _ = Walk {
        path,
        goal: Goal::Text,
        found: &found,
    }
    .deserialize(serde_yaml_ng::Deserializer::from_str(text));
    found.into_inner()
}

/// `position` moved inside `text` where it points past the end of its line or of the text
/// (libyaml reports an error at the end of the input on a line after the last).
pub fn clamp(text: &str, position: LineColumn) -> LineColumn {
    let lines = lines(text);
    let line = position.line.clamp(1, lines.len());
    let last_column = lines[line - 1].chars().count() + 1;
    let column = if line < position.line {
        last_column
    } else {
        position.column.clamp(1, last_column)
    };
    LineColumn { line, column }
}

/// The lines of `text` as YAML (and so a position here) counts them: broken at `\n`, `\r\n`,
/// `\r`, NEL, LS and PS. At least one, empty for an empty text.
pub fn lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if !matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}') {
            continue;
        }
        lines.push(&text[start..i]);
        start = i + c.len_utf8();
        if c == '\r' && chars.peek().is_some_and(|(_, next)| *next == '\n') {
            chars.next();
            start += 1;
        }
    }
    lines.push(&text[start..]);
    lines
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Goal {
    Position,
    Text,
}

/// Follows `path` from the node it is given.
struct Walk<'p, 's> {
    path: &'p [Step<'p>],
    goal: Goal,
    found: &'s RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        match (self.path.first(), self.goal) {
            (Some(_), _) => deserializer.deserialize_any(self),
            (None, Goal::Position) => deserializer.deserialize_any(Here),
            (None, Goal::Text) => deserializer.deserialize_str(Text(self.found)),
        }
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping or a sequence")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Step::Key(wanted), rest)) = self.path.split_first() else {
            return Err(de::Error::custom("not found"));
        };
        let stop_at_key = rest.is_empty() && self.goal == Goal::Position;
        while let Some(matched) = map.next_key_seed(KeySeed {
            wanted,
            stop_at_key,
        })? {
            if matched {
                map.next_value_seed(Walk { path: rest, ..self })?;
                break;
            }
            map.next_value::<IgnoredAny>()?;
        }
        Err(de::Error::custom("not found"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Step::Index(wanted), rest)) = self.path.split_first() else {
            return Err(de::Error::custom("not found"));
        };
        for _ in 0..*wanted {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Err(de::Error::custom("not found"));
            }
        }
        seq.next_element_seed(Walk { path: rest, ..self })?;
        Err(de::Error::custom("not found"))
    }
}

/// Reads one key: whether it is the one wanted, raising the error there when it is the goal.
struct KeySeed<'w> {
    wanted: &'w str,
    stop_at_key: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        match (key == self.wanted, self.stop_at_key) {
            (true, true) => Err(E::custom(HERE)),
            (matched, _) => Ok(matched),
        }
    }
}

/// Raises the error at whatever node it is given.
struct Here;

impl<'de> Visitor<'de> for Here {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every `visit_*` left to its default fails with "invalid type: …, expected {this}".
        f.write_str(HERE)
    }
}

/// Keeps the scalar's text, then stops the walk.
struct Text<'s>(&'s RefCell<Option<String>>);

impl<'de> Visitor<'de> for Text<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a scalar")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        *self.0.borrow_mut() = Some(text.to_owned());
        Err(E::custom(HERE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "version: 0.1
# a comment: with a colon
proxy:
  remoteurl: https://r.io
  remoteregistries:
  - url: https://a.io
  - {url: \"https://b.io\", max_rate: 0}
http: {addr: ':5000', tls: {certificate: /c}}
é: {ü: 1e3}
anchor: &base {ttl: 1h}
alias: *base
";

    fn at(path: &[Step<'_>]) -> Option<(usize, usize)> {
        locate(DOC, path).map(|p| (p.line, p.column))
    }

    #[test]
    fn keys_in_block_and_flow_style() {
        use Step::*;
        assert_eq!(at(&[Key("proxy")]), Some((3, 1)));
        assert_eq!(at(&[Key("proxy"), Key("remoteurl")]), Some((4, 3)));
        assert_eq!(
            at(&[Key("proxy"), Key("remoteregistries"), Index(0), Key("url")]),
            Some((6, 5))
        );
        assert_eq!(
            at(&[
                Key("proxy"),
                Key("remoteregistries"),
                Index(1),
                Key("max_rate")
            ]),
            Some((7, 27))
        );
        assert_eq!(
            at(&[Key("http"), Key("tls"), Key("certificate")]),
            Some((8, 29))
        );
        // Columns count characters, as json_span's do.
        assert_eq!(at(&[Key("é"), Key("ü")]), Some((9, 5)));
    }

    #[test]
    fn items_and_the_root() {
        use Step::*;
        assert_eq!(
            at(&[Key("proxy"), Key("remoteregistries"), Index(1)]),
            Some((7, 5))
        );
        assert_eq!(at(&[]), Some((1, 1)));
    }

    #[test]
    fn missing_paths() {
        use Step::*;
        assert_eq!(at(&[Key("absent")]), None);
        assert_eq!(at(&[Key("proxy"), Key("remoteregistries"), Index(2)]), None);
        assert_eq!(at(&[Key("version"), Key("x")]), None);
        assert_eq!(at(&[Key("proxy"), Index(0)]), None);
        assert_eq!(locate("x: [\na: 1\n", &[Key("a")]), None, "not YAML");
    }

    #[test]
    fn an_alias_is_found_where_its_anchor_is() {
        use Step::*;
        assert_eq!(at(&[Key("alias"), Key("ttl")]), Some((10, 16)));
    }

    #[test]
    fn positions_past_the_end_are_brought_inside() {
        let at = |text: &str, line, column| {
            let p = clamp(text, LineColumn { line, column });
            (p.line, p.column)
        };
        // Found by fuzz/config_yml: an unclosed flow mapping, reported on line 2 of one.
        let text = "proxy: {onK";
        let e = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text).unwrap_err();
        let l = e.location().unwrap();
        assert_eq!((l.line(), l.column()), (2, 1));
        assert_eq!(at(text, 2, 1), (1, 12));
        assert_eq!(at("a: 1\nb: 2\n", 2, 3), (2, 3), "inside: unchanged");
        assert_eq!(at("a: 1\n", 1, 40), (1, 5));
        assert_eq!(at("", 3, 3), (1, 1));
        assert_eq!(lines("a\r\nb\rc\u{2028}d\n"), ["a", "b", "c", "d", ""]);
    }

    #[test]
    fn scalars_as_written() {
        use Step::*;
        assert_eq!(
            scalar_text(DOC, &[Key("é"), Key("ü")]).as_deref(),
            Some("1e3")
        );
        assert_eq!(scalar_text(DOC, &[Key("version")]).as_deref(), Some("0.1"));
        assert_eq!(scalar_text(DOC, &[Key("proxy")]), None, "a mapping");
        assert_eq!(scalar_text(DOC, &[Key("absent")]), None);
    }
}

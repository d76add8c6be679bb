//! Finds where a value sits in JSON text, so validation errors can name line and column.
//!
//! serde_json reports positions for syntax errors only; once a document parsed, this walks the
//! same text along a path (`mirror-registries` → 0 → `mirrors` → 1) and returns the 1-based line
//! and column of that value. It trusts the text to be valid JSON (callers parse it first) and never
//! fails loudly: a path it cannot follow yields `None`.

/// One step of a path into a JSON document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// A 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineColumn {
    pub line: usize,
    pub column: usize,
}

/// Where the value at `path` starts in `text`.
pub fn locate(text: &str, path: &[Step<'_>]) -> Option<LineColumn> {
    let mut walker = Walker {
        bytes: text.as_bytes(),
        pos: 0,
        at_key: false,
    };
    let offset = walker.find(path)?;
    Some(line_column(text, offset))
}

/// Where the key that ends `path` starts in `text` (its opening quote): for a diagnostic about
/// the key itself, such as a misspelt one.
pub fn locate_key(text: &str, path: &[Step<'_>]) -> Option<LineColumn> {
    if !matches!(path.last(), Some(Step::Key(_))) {
        return None;
    }
    let mut walker = Walker {
        bytes: text.as_bytes(),
        pos: 0,
        at_key: true,
    };
    let offset = walker.find(path)?;
    Some(line_column(text, offset))
}

/// Line and column of a byte offset.
pub fn line_column(text: &str, offset: usize) -> LineColumn {
    let before = &text[..offset.min(text.len())];
    let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    LineColumn {
        line,
        column: before[line_start..].chars().count() + 1,
    }
}

/// Line and column (in characters) of a serde_json error, which counts its 1-based column in
/// bytes: on a line with non-ASCII text the two differ.
pub fn serde_error_position(text: &str, line: usize, byte_column: usize) -> LineColumn {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    let mut offset = (line_start + byte_column.saturating_sub(1)).min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    line_column(text, offset)
}

struct Walker<'t> {
    bytes: &'t [u8],
    pos: usize,
    /// Find the last key of the path rather than its value.
    at_key: bool,
}

impl Walker<'_> {
    fn skip_whitespace(&mut self) {
        while self.pos < self.bytes.len() && self.bytes[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Positioned before a value: returns the offset of the value at `path` below it.
    fn find(&mut self, path: &[Step<'_>]) -> Option<usize> {
        self.skip_whitespace();
        let Some((step, rest)) = path.split_first() else {
            return Some(self.pos);
        };
        match (self.peek()?, step) {
            (b'{', Step::Key(wanted)) => {
                // Duplicate keys: serde_json keeps the last one, so do we.
                let mut found = None;
                self.pos += 1;
                loop {
                    self.skip_whitespace();
                    if self.peek()? == b'}' {
                        return found;
                    }
                    let key_start = self.pos;
                    let key = self.string()?;
                    self.skip_whitespace();
                    self.pos += 1; // ':'
                    self.skip_whitespace();
                    if key == *wanted && rest.is_empty() && self.at_key {
                        found = Some(key_start);
                    } else if key == *wanted {
                        found = Walker {
                            bytes: self.bytes,
                            pos: self.pos,
                            at_key: self.at_key,
                        }
                        .find(rest);
                    }
                    self.skip_value()?;
                    self.skip_whitespace();
                    if self.peek()? == b',' {
                        self.pos += 1;
                    }
                }
            }
            (b'[', Step::Index(wanted)) => {
                self.pos += 1;
                for index in 0.. {
                    self.skip_whitespace();
                    if self.peek()? == b']' {
                        return None;
                    }
                    if index == *wanted {
                        return self.find(rest);
                    }
                    self.skip_value()?;
                    self.skip_whitespace();
                    if self.peek()? == b',' {
                        self.pos += 1;
                    }
                }
                None
            }
            _ => None,
        }
    }

    /// Reads a string token and returns its decoded value.
    fn string(&mut self) -> Option<String> {
        let start = self.pos;
        self.skip_string()?;
        serde_json::from_slice(&self.bytes[start..self.pos]).ok()
    }

    fn skip_string(&mut self) -> Option<()> {
        self.pos += 1; // opening quote
        while let Some(b) = self.peek() {
            self.pos += 1;
            match b {
                b'\\' => self.pos += 1,
                b'"' => return Some(()),
                _ => {}
            }
        }
        None
    }

    fn skip_value(&mut self) -> Option<()> {
        self.skip_whitespace();
        match self.peek()? {
            b'"' => self.skip_string(),
            b'{' | b'[' => {
                let mut depth = 0usize;
                while let Some(b) = self.peek() {
                    match b {
                        b'"' => {
                            self.skip_string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.pos += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.pos += 1;
                }
                None
            }
            _ => {
                while let Some(b) = self.peek() {
                    if matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace() {
                        break;
                    }
                    self.pos += 1;
                }
                Some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{
  "debug": true,
  "nested": {"a": [1, {"b": "x"}], "s": "q\"}]"},
  "mirror-registries": [
    {"domain": "reg.test1.com",
     "mirrors": ["http://m1", "https://m2"]}
  ],
  "é": "ü", "last": null
}"#;

    fn at(path: &[Step<'_>]) -> Option<(usize, usize)> {
        locate(DOC, path).map(|p| (p.line, p.column))
    }

    #[test]
    fn finds_values() {
        use Step::*;
        assert_eq!(at(&[]), Some((1, 1)));
        assert_eq!(at(&[Key("debug")]), Some((2, 12)));
        assert_eq!(
            at(&[Key("mirror-registries"), Index(0), Key("domain")]),
            Some((5, 16))
        );
        assert_eq!(
            at(&[Key("mirror-registries"), Index(0), Key("mirrors"), Index(1)]),
            Some((6, 31))
        );
        assert_eq!(
            at(&[Key("nested"), Key("a"), Index(1), Key("b")]),
            Some((3, 29))
        );
        assert_eq!(at(&[Key("last")]), Some((8, 21)));
    }

    #[test]
    fn missing_paths() {
        use Step::*;
        assert_eq!(at(&[Key("absent")]), None);
        assert_eq!(at(&[Key("mirror-registries"), Index(3)]), None);
        assert_eq!(at(&[Key("debug"), Index(0)]), None);
    }

    #[test]
    fn serde_errors_in_characters() {
        let error_at = |text: &str| {
            let e = serde_json::from_str::<serde_json::Value>(text).unwrap_err();
            let p = serde_error_position(text, e.line(), e.column());
            (p.line, p.column)
        };
        // Found by fuzz/daemon_json: serde_json said column 5 of a 3-character line.
        assert_eq!(error_at("\"θθ"), (1, 3));
        assert_eq!(error_at("[\"θθθθ\" x]"), (1, 9));
        assert_eq!(error_at("{\n  \"é\": [1,]\n}"), (2, 11));
        assert_eq!(error_at("[1,]"), (1, 4));
        assert_eq!(error_at("{\"a\": 1\n"), (2, 1));
        assert_eq!(error_at(""), (1, 1));
    }

    #[test]
    fn finds_keys() {
        use Step::*;
        let key_at = |path: &[Step<'_>]| locate_key(DOC, path).map(|p| (p.line, p.column));
        assert_eq!(key_at(&[Key("debug")]), Some((2, 3)));
        assert_eq!(
            key_at(&[Key("mirror-registries"), Index(0), Key("mirrors")]),
            Some((6, 6))
        );
        assert_eq!(key_at(&[Key("last")]), Some((8, 13)));
        assert_eq!(key_at(&[Key("absent")]), None);
        assert_eq!(key_at(&[Key("mirror-registries"), Index(0)]), None);
    }

    #[test]
    fn duplicate_keys_take_the_last() {
        let text = "{\"a\": 1,\n \"a\": 2}";
        assert_eq!(locate(text, &[Step::Key("a")]).map(|p| p.line), Some(2));
    }
}

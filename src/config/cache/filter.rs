//! The fetch policy: `allow` and `deny` lists of repository patterns on `proxy` and on each
//! `proxy.remoteregistries[]` entry, compiled once into a [`RepositoryFilter`] per upstream, and
//! `proxy.platforms`.
//!
//! Patterns are globs on the repository name within an upstream (`library/*`, `org/**`): `*`,
//! `?` and `[...]` never cross a `/`, `**` does (a whole component: `org/**` is everything below
//! `org/`). Deny wins; with an `allow` list, a repository none of its patterns match is refused.
//! An entry's `allow` replaces `proxy.allow` for that upstream; its `deny` adds to `proxy.deny`
//! (a global deny cannot be lost by writing an entry's own). Pure: matching is what the cache
//! asks for every request it would fetch or serve for an upstream.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde_yaml_ng::Value;

use super::report::{FieldPath, Report};
use super::units::shown;
use crate::platform::Platform;
use crate::reference::is_valid_path_component;

/// One pattern of an `allow` or `deny` list, and where it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// As written: `library/*`.
    pub glob: String,
    /// Its key: `proxy.deny[0]`, `proxy.remoteregistries[1].allow[2]`.
    pub rule: String,
}

/// A list of patterns, compiled into one matcher.
#[derive(Debug, Clone)]
pub struct Patterns {
    /// The list's key: `proxy.allow`.
    pub field: String,
    pub patterns: Vec<Pattern>,
    set: GlobSet,
}

impl PartialEq for Patterns {
    fn eq(&self, other: &Self) -> bool {
        self.field == other.field && self.patterns == other.patterns
    }
}

impl Eq for Patterns {}

impl Patterns {
    fn new(field: String, patterns: Vec<Pattern>) -> Self {
        let mut builder = GlobSetBuilder::new();
        for p in &patterns {
            // Every pattern kept compiled when it was read.
            if let Ok(glob) = glob(&p.glob) {
                builder.add(glob);
            }
        }
        let set = builder.build().unwrap_or_else(|_| GlobSet::empty());
        Patterns {
            field,
            patterns,
            set,
        }
    }

    /// The first pattern matching `repository`.
    fn first_match(&self, repository: &str) -> Option<&Pattern> {
        let first = self.set.matches(repository).into_iter().min()?;
        self.patterns.get(first)
    }
}

/// What the cache may fetch from one upstream: the lists that apply to it, combined.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RepositoryFilter {
    /// `allow` (the entry's, else `proxy.allow`): when set, only repositories it matches.
    pub allow: Option<Patterns>,
    /// `proxy.deny`, then the entry's `deny`.
    pub deny: Vec<Patterns>,
}

/// Why a repository is refused: the rule (a `deny` pattern's key, or an `allow` list's) and the
/// pattern that matched, for a deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub rule: String,
    pub pattern: Option<String>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.pattern {
            Some(pattern) => write!(f, "refused by {} ({pattern:?})", self.rule),
            None => write!(f, "not matched by {}", self.rule),
        }
    }
}

impl RepositoryFilter {
    /// Whether any list is set.
    pub fn is_empty(&self) -> bool {
        self.allow.is_none() && self.deny.is_empty()
    }

    /// Whether the cache may fetch or serve `repository` (as the upstream names it): deny wins,
    /// then an allow list must match.
    pub fn check(&self, repository: &str) -> Result<(), Refusal> {
        for list in &self.deny {
            if let Some(p) = list.first_match(repository) {
                return Err(Refusal {
                    rule: p.rule.clone(),
                    pattern: Some(p.glob.clone()),
                });
            }
        }
        match &self.allow {
            Some(allow) if allow.first_match(repository).is_none() => Err(Refusal {
                rule: allow.field.clone(),
                pattern: None,
            }),
            _ => Ok(()),
        }
    }

    /// An entry's lists over the `proxy` level's (`global`): its allow replaces, its deny adds.
    pub(super) fn over(
        global: &RepositoryFilter,
        allow: Option<Patterns>,
        deny: Option<Patterns>,
    ) -> Self {
        RepositoryFilter {
            allow: allow.or_else(|| global.allow.clone()),
            deny: global.deny.iter().cloned().chain(deny).collect(),
        }
    }
}

/// `*` stays within a component, `**` crosses them; case-sensitive, as repository names are.
fn glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

/// The `allow` or `deny` list at `field`: `None` when absent. A pattern that is not a glob is an
/// error; one that can never match a repository name is a warning (kept: it matches nothing).
pub(super) fn patterns(slot: &Option<Value>, field: &str, r: &mut Report<'_>) -> Option<Patterns> {
    let items = match slot.as_ref()? {
        Value::Sequence(items) => items,
        other => {
            r.error(
                field,
                format!("{} is not a list of repository patterns", shown(other)),
            );
            return None;
        }
    };
    let mut patterns = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let rule = format!("{field}[{i}]");
        let Some(text) = r.string(&Some(item.clone()), &rule) else {
            continue;
        };
        if let Err(e) = glob(&text) {
            r.error(&rule, format!("{text:?} is not a pattern: {}", e.kind()));
            continue;
        }
        if let Some(why) = never_matches(&text) {
            r.warn_at(
                &FieldPath::parse(&rule),
                format!("{text:?} can never match a repository name: {why}"),
            );
        }
        patterns.push(Pattern { glob: text, rule });
    }
    if patterns.is_empty() && field.ends_with("allow") {
        r.warn_at(
            &FieldPath::parse(field),
            "an empty allow list refuses every repository",
        );
    }
    Some(Patterns::new(field.to_owned(), patterns))
}

/// Glob syntax: what a component may hold besides a repository name's characters.
const GLOB_SYNTAX: &[char] = &['*', '?', '[', ']', '{', '}', ',', '!', '^'];

/// Why `pattern` can match no repository name (`[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
/// components joined by `/`), if it cannot.
fn never_matches(pattern: &str) -> Option<String> {
    if pattern.is_empty() {
        return Some("it is empty".into());
    }
    if pattern.starts_with('/') {
        return Some("repository names do not start with `/` (write `org/*`, not `/org/*`)".into());
    }
    if pattern.chars().any(|c| c.is_ascii_uppercase()) {
        return Some("repository names are lowercase".into());
    }
    if let Some(c) = pattern.chars().find(|c| {
        !(c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || "._-/".contains(*c)
            || GLOB_SYNTAX.contains(c))
    }) {
        return Some(format!("{c:?} is not in a repository name"));
    }
    for component in pattern.split('/') {
        if component.is_empty() {
            return Some("it has an empty component (`//` or a trailing `/`)".into());
        }
        let literal = !component.contains(GLOB_SYNTAX);
        if literal && !is_valid_path_component(component) {
            return Some(format!(
                "{component:?} is not a name component (lowercase letters and digits, joined by \
                 one `.`, one or two `_`, or `-`s)"
            ));
        }
    }
    None
}

/// `proxy.platforms`: `os/arch[/variant]` each.
pub(super) fn platforms(slot: &Option<Value>, r: &mut Report<'_>) -> Vec<Platform> {
    const FIELD: &str = "proxy.platforms";
    let items = match slot {
        None => return Vec::new(),
        Some(Value::Sequence(items)) => items,
        Some(other) => {
            r.error(
                FIELD,
                format!("{} is not a list of platforms (linux/amd64)", shown(other)),
            );
            return Vec::new();
        }
    };
    let mut platforms = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = format!("{FIELD}[{i}]");
        let Some(text) = r.string(&Some(item.clone()), &field) else {
            continue;
        };
        match Platform::parse(&text) {
            Ok(platform) => platforms.push(platform),
            Err(e) => r.error(&field, e.to_string()),
        }
    }
    platforms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(allow: Option<&[&str]>, deny: &[&str]) -> RepositoryFilter {
        let list = |field: &str, globs: &[&str]| {
            let patterns = globs
                .iter()
                .enumerate()
                .map(|(i, g)| Pattern {
                    glob: (*g).to_owned(),
                    rule: format!("{field}[{i}]"),
                })
                .collect();
            Patterns::new(field.to_owned(), patterns)
        };
        RepositoryFilter {
            allow: allow.map(|a| list("proxy.allow", a)),
            deny: vec![list("proxy.deny", deny)],
        }
    }

    #[test]
    fn star_stays_in_a_component_and_double_star_crosses() {
        let f = filter(Some(&["library/*", "org/**"]), &[]);
        // (repository, allowed)
        let cases = [
            ("library/nginx", true),
            ("library/nginx/extra", false),
            ("org/a", true),
            ("org/a/b/c", true),
            ("org", false),
            ("orgx/a", false),
            ("other/nginx", false),
            ("Library/nginx", false),
        ];
        for (repository, allowed) in cases {
            assert_eq!(f.check(repository).is_ok(), allowed, "{repository}");
        }
        assert_eq!(
            f.check("other/nginx").unwrap_err().to_string(),
            "not matched by proxy.allow"
        );
    }

    #[test]
    fn deny_wins_and_names_its_pattern() {
        let f = filter(Some(&["library/*"]), &["*/nginx", "library/redis"]);
        assert_eq!(
            f.check("library/nginx").unwrap_err(),
            Refusal {
                rule: "proxy.deny[0]".into(),
                pattern: Some("*/nginx".into())
            }
        );
        assert_eq!(
            f.check("library/redis").unwrap_err().to_string(),
            "refused by proxy.deny[1] (\"library/redis\")"
        );
        assert!(f.check("library/alpine").is_ok());
        let open = filter(None, &["secret/**"]);
        assert!(open.check("anything/at/all").is_ok());
        assert!(open.check("secret/x/y").is_err());
    }

    #[test]
    fn an_entry_replaces_allow_and_adds_deny() {
        let global = filter(Some(&["library/*"]), &["**/internal"]);
        let own = Patterns::new(
            "proxy.remoteregistries[0].allow".into(),
            vec![Pattern {
                glob: "team/*".into(),
                rule: "proxy.remoteregistries[0].allow[0]".into(),
            }],
        );
        let entry = RepositoryFilter::over(&global, Some(own), None);
        assert!(entry.check("team/app").is_ok());
        assert!(entry.check("library/nginx").is_err(), "allow replaced");
        assert_eq!(
            entry.check("team/internal").unwrap_err().rule,
            "proxy.deny[0]",
            "the global deny still applies"
        );
        assert_eq!(
            entry.check("other/x").unwrap_err().rule,
            "proxy.remoteregistries[0].allow"
        );
        let inherited = RepositoryFilter::over(&global, None, None);
        assert_eq!(inherited, global);
    }

    #[test]
    fn patterns_that_can_never_match() {
        for (pattern, why) in [
            ("", "empty"),
            ("/library/*", "do not start with `/`"),
            ("Library/*", "lowercase"),
            ("library/nginx:latest", "':' is not in a repository name"),
            ("library//x", "empty component"),
            ("library/", "empty component"),
            ("library/-x", "\"-x\" is not a name component"),
        ] {
            let got = never_matches(pattern).unwrap_or_else(|| panic!("{pattern:?} warns"));
            assert!(got.contains(why), "{pattern:?}: {got}");
        }
        for fine in [
            "library/*",
            "org/**",
            "**",
            "a-b/c__d/e.f",
            "team/{a,b}",
            "x/[a-c]*",
            "*",
        ] {
            assert_eq!(never_matches(fine), None, "{fine:?}");
        }
    }
}

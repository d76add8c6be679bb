//! `MirrorConfig::from_sources` on arbitrary daemon.json text: never panics, and every error and
//! warning names a line and a column (in characters) inside the text; when the text is a valid
//! configuration, building the resolver and resolving the registries it names and a few fixed
//! references never panics either, and every resolution ends with the origin, or, when a
//! `mirrors-only` rule leaves it out, says so and holds mirrors alone.
//!
//! The fuzz target `daemon_json` (fuzz/fuzz_targets/daemon_json.rs) runs it under libFuzzer;
//! tests/fuzz_corpus.rs replays the committed corpus (fuzz/corpus/daemon_json/) through it.

use regmirror::config::{ConfigSource, Diagnostic, DomainPattern, MirrorConfig};
use regmirror::reference::ImageRef;
use regmirror::resolve::{Endpoints, Resolver, Role};

const REFERENCES: [&str; 6] = [
    "nginx",
    "reg.test1.com/library/nginx:latest",
    "localhost:5000/team/app:v2",
    "[::1]:5000/x/y",
    "10.1.2.3:5000/a@sha256:7173b809ca12ec5dee4506cd86be934c4596dd234ee82c0662eac04a8c2c71dc",
    "a.b.example.com/org/img",
];

/// The property, for one input.
pub fn check(text: &str) {
    let config = match MirrorConfig::from_sources(&[ConfigSource {
        path: "daemon.json",
        text,
    }]) {
        Ok(config) => config,
        Err(errors) => {
            errors
                .0
                .iter()
                .for_each(|error| located_inside(text, error));
            return;
        }
    };
    config
        .warnings
        .iter()
        .for_each(|warning| located_inside(text, warning));
    let mut registries: Vec<String> = config
        .rules
        .iter()
        .filter_map(|rule| match &rule.domain {
            DomainPattern::Exact(host) => Some(host.clone()),
            DomainPattern::Suffix(suffix) => Some(format!("x{}", &suffix[1..])),
            DomainPattern::Any => None,
        })
        .chain(
            config
                .insecure_registries
                .hosts
                .iter()
                .map(|(h, _)| h.clone()),
        )
        .collect();
    registries.truncate(16);
    let Ok(resolver) = Resolver::new(config) else {
        return;
    };
    for registry in &registries {
        ends_with_origin_or_omits_it(&resolver.resolve_repository(registry, "team/app"));
    }
    for reference in REFERENCES {
        let image = ImageRef::parse(reference).expect("fixed references are valid");
        ends_with_origin_or_omits_it(&resolver.resolve(&image));
    }
}

fn ends_with_origin_or_omits_it(endpoints: &Endpoints) {
    let last = endpoints
        .endpoints
        .last()
        .expect("an answer always has an endpoint");
    match endpoints.omitted_origin {
        None => assert_eq!(last.role, Role::Origin, "{endpoints:?}"),
        Some(_) => assert!(
            endpoints.endpoints.iter().all(|e| e.role == Role::Mirror),
            "{endpoints:?}"
        ),
    }
}

fn located_inside(text: &str, diagnostic: &Diagnostic) {
    let (line, column) = (diagnostic.location.line, diagnostic.location.column);
    let line_text = line.checked_sub(1).and_then(|i| text.split('\n').nth(i));
    assert!(
        line_text.is_some_and(|l| column >= 1 && column <= l.chars().count() + 1),
        "{text:?}: {diagnostic} is outside the text"
    );
}

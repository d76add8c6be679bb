//! schema/mirrors.schema.json against every example: README's ```json blocks and contrib/examples
//! must be valid for both the schema and regmirror's own parser; tests/fixtures/invalid must be
//! refused by both.

use std::path::{Path, PathBuf};

use regmirror::config::{ConfigSource, MirrorConfig};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(root().join("schema/mirrors.schema.json")).unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    jsonschema::draft202012::new(&schema).expect("the schema itself is valid draft 2020-12")
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// The ```json fenced blocks of a Markdown file.
fn json_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```json") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

fn parses(name: &str, text: &str) -> Result<MirrorConfig, String> {
    MirrorConfig::from_sources(&[ConfigSource { path: name, text }]).map_err(|e| e.to_string())
}

#[test]
fn examples_are_valid() {
    let validator = validator();
    let mut examples: Vec<(String, String)> = json_files(&root().join("contrib/examples"))
        .into_iter()
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for (i, block) in json_blocks(&readme).into_iter().enumerate() {
        examples.push((format!("README.md json block {i}"), block));
    }
    assert!(
        examples.len() >= 5,
        "too few examples found: {}",
        examples.len()
    );
    for (name, text) in &examples {
        let value: serde_json::Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{name} fails the schema: {errors:?}");
        parses(name, text).unwrap_or_else(|e| panic!("{name} fails regmirror's parser: {e}"));
    }
}

#[test]
fn invalid_examples_are_refused_by_both() {
    let validator = validator();
    let files = json_files(&root().join("tests/fixtures/invalid"));
    assert!(files.len() >= 10);
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            !validator.is_valid(&value),
            "schema accepts {}",
            path.display()
        );
        assert!(
            parses(&path.display().to_string(), &text).is_err(),
            "parser accepts {}",
            path.display()
        );
    }
}

#[test]
fn other_daemon_json_keys_are_allowed() {
    let value =
        serde_json::json!({"debug": true, "storage-driver": "overlay2", "registry-mirrors": []});
    assert!(validator().is_valid(&value));
}

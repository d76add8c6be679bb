//! The documents stay true to the tree: ARCHITECTURE.md's module map names every source file
//! (a module directory's `mod.rs` by the directory) and its crate table every direct dependency.

use std::path::Path;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text.find(heading).unwrap_or_else(|| panic!("no {heading}"));
    let rest = &text[start + heading.len()..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

fn source_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_module_map_names_every_source_file() {
    let architecture = read("ARCHITECTURE.md");
    let map = section(&architecture, "## Module map");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    source_files(&root.join("src"), &mut files);
    let missing: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(root).unwrap())
        .filter(|relative| {
            let name = relative.file_name().unwrap().to_str().unwrap();
            let candidates = if name == "mod.rs" {
                let dir = relative.parent().unwrap();
                vec![
                    format!("`{}/`", dir.display()),
                    format!("`{}/", dir.file_name().unwrap().to_str().unwrap()),
                ]
            } else {
                vec![format!("`{name}`"), format!("`{}`", relative.display())]
            };
            !candidates.iter().any(|c| map.contains(c.as_str()))
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's module map lacks {missing:?}"
    );
}

#[test]
fn the_crate_table_names_every_direct_dependency() {
    let manifest = read("Cargo.toml");
    let architecture = read("ARCHITECTURE.md");
    let table = section(&architecture, "## Crates and why");
    let mut in_dependencies = false;
    let mut missing = Vec::new();
    for line in manifest.lines() {
        if line.starts_with('[') {
            in_dependencies = matches!(line, "[dependencies]" | "[dev-dependencies]");
            continue;
        }
        let Some((name, _)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim();
        if in_dependencies && !name.is_empty() && !table.contains(&format!("`{name}`")) {
            missing.push(name.to_owned());
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's crate table lacks {missing:?}"
    );
}

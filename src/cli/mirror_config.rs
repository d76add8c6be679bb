//! `--mirrors FILE` (repeatable; `--config` is its older name) for the daemon.json-format mirror
//! configuration, and the default files read when none is given.

use std::path::PathBuf;

use crate::cli::BadInput;
use crate::config::kind::{FileKind, sniff};
use crate::config::{ConfigSource, MirrorConfig};

/// Read, in this order, when no `--mirrors` is given; each only if it exists.
pub const DEFAULT_FILES: [&str; 2] = ["/etc/docker/daemon.json", "/etc/regmirror/mirrors.json"];

#[derive(Debug, Clone, clap::Args)]
pub struct MirrorConfigArgs {
    /// A daemon.json-format file with mirror-registries, registry-mirrors and insecure-registries.
    /// Repeatable. Default: /etc/docker/daemon.json then /etc/regmirror/mirrors.json, if present.
    #[arg(long = "mirrors", visible_alias = "config", value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

impl MirrorConfigArgs {
    /// The files read: the `--mirrors` values, or the default files that exist.
    pub fn paths(&self) -> Vec<PathBuf> {
        if self.files.is_empty() {
            DEFAULT_FILES
                .iter()
                .map(PathBuf::from)
                .filter(|p| p.exists())
                .collect()
        } else {
            self.files.clone()
        }
    }

    /// The files read, as generated files name them.
    pub fn source_names(&self) -> Vec<String> {
        self.paths()
            .iter()
            .map(|p| p.display().to_string())
            .collect()
    }

    /// Reads and validates the configuration for `reader` (the command, as the refusal of a
    /// config.yml names it). Warnings are printed to stderr.
    pub fn load(&self, reader: &str) -> anyhow::Result<MirrorConfig> {
        let paths = self.paths();
        let mut texts = Vec::with_capacity(paths.len());
        for path in &paths {
            let (name, text) = read_one(path)?;
            if sniff(&text) == FileKind::CacheConfig {
                return Err(BadInput(format!(
                    "{name}: this is a config.yml for `regmirror serve`; {reader} reads the \
                     daemon.json mirror format"
                ))
                .into());
            }
            texts.push((name, text));
        }
        validate(&texts)
    }
}

/// Each file's name (as messages give it) and text.
pub fn read(paths: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    paths.iter().map(|path| read_one(path)).collect()
}

fn read_one(path: &std::path::Path) -> anyhow::Result<(String, String)> {
    let name = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| BadInput(format!("{name}: cannot read: {e}")))?;
    Ok((name, text))
}

/// The configuration in `texts` (each a file's name and its text, as read), validated; its
/// warnings printed to stderr.
pub fn validate(texts: &[(String, String)]) -> anyhow::Result<MirrorConfig> {
    let sources: Vec<ConfigSource<'_>> = texts
        .iter()
        .map(|(path, text)| ConfigSource { path, text })
        .collect();
    let config = MirrorConfig::from_sources(&sources).map_err(|e| BadInput(e.to_string()))?;
    for warning in &config.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(config)
}

//! `regmirror check`: validate configuration files and print their warnings; exit 0 when they
//! are valid. Each file is checked as what it is: a daemon.json-format mirror file, or a
//! config.yml for `regmirror serve` (with the `REGISTRY_*` environment applied, as `serve`
//! applies it), so a config.yml can be checked before a restart.

use std::path::PathBuf;
use std::process::ExitCode;

use super::BadInput;
use super::mirror_config::{DEFAULT_FILES, MirrorConfigArgs};
use crate::config::kind::{FileKind, sniff};
use crate::resolve::Resolver;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: MirrorConfigArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (serve_configs, mirror_files) = by_kind(&args.config.files)?;
    for path in &serve_configs {
        check_serve_config(path)?;
    }
    if mirror_files.is_empty() && !serve_configs.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    check_mirrors(&MirrorConfigArgs {
        files: mirror_files,
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The files given, split into config.ymls and mirror files (by their content).
fn by_kind(files: &[PathBuf]) -> anyhow::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut serve_configs = Vec::new();
    let mut mirror_files = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BadInput(format!("{}: cannot read: {e}", path.display())))?;
        match sniff(&text) {
            FileKind::CacheConfig => serve_configs.push(path.clone()),
            _ => mirror_files.push(path.clone()),
        }
    }
    Ok((serve_configs, mirror_files))
}

/// A config.yml as `regmirror serve` would read it.
fn check_serve_config(path: &std::path::Path) -> anyhow::Result<()> {
    let config = super::serve::load_cache_config(Some(path), "")?;
    for warning in &config.warnings {
        eprintln!("warning: {warning}");
    }
    let what = if super::serve::is_plain_registry(&config) {
        "a plain registry (no proxy section)"
    } else {
        "a pull-through cache"
    };
    println!(
        "ok: {}: a config.yml for `regmirror serve`, {what}, {} warning(s)",
        path.display(),
        config.warnings.len()
    );
    Ok(())
}

/// The mirror files (or, with none given, the default files that exist).
fn check_mirrors(files: &MirrorConfigArgs) -> anyhow::Result<()> {
    let config = files.load("check")?;
    let rules = config.rules.len();
    let hub_mirrors = config.registry_mirrors.len();
    let warnings = config.warnings.len();
    Resolver::new(config).map_err(|e| BadInput(e.to_string()))?;
    if rules == 0 && hub_mirrors == 0 {
        eprintln!("warning: {}", nothing_configured(&files.source_names()));
    }
    println!(
        "ok: {rules} mirror rule(s), {hub_mirrors} registry-mirrors entr{}, {warnings} warning(s)",
        if hub_mirrors == 1 { "y" } else { "ies" }
    );
    Ok(())
}

/// What `check` says when no file gives a mirror: which files it read, if any.
fn nothing_configured(files: &[String]) -> String {
    if files.is_empty() {
        return format!(
            "no mirror file read: neither {} exists (give one with --mirrors)",
            DEFAULT_FILES.join(" nor ")
        );
    }
    format!(
        "no mirror-registries rule and no registry-mirrors entry in {}: every pull goes to its \
         registry directly",
        files.join(", ")
    )
}

//! `regmirror check`: validate configuration files and print their warnings; exit 0 when they
//! are valid. Each file is checked as what it is: a daemon.json-format mirror file, or a
//! config.yml for `regmirror serve` (with the `REGISTRY_*` environment applied, as `serve`
//! applies it), so a config.yml can be checked before a restart.

use std::process::ExitCode;

use super::BadInput;
use super::mirror_config::{DEFAULT_FILES, MirrorConfigArgs, read, validate};
use crate::config::MirrorConfig;
use crate::config::kind::{FileKind, sniff};
use crate::resolve::Resolver;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: MirrorConfigArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.config.files.is_empty() {
        let config = args.config.load("check")?;
        check_mirrors(config, &args.config.source_names())?;
        return Ok(ExitCode::SUCCESS);
    }
    let (serve_configs, mirror_files): (Vec<_>, Vec<_>) = read(&args.config.files)?
        .into_iter()
        .partition(|(_, text)| sniff(text) == FileKind::CacheConfig);
    for (name, text) in &serve_configs {
        check_serve_config(name, text)?;
    }
    if !mirror_files.is_empty() {
        let names: Vec<String> = mirror_files.iter().map(|(name, _)| name.clone()).collect();
        check_mirrors(validate(&mirror_files)?, &names)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A config.yml, `name`'s `text`, as `regmirror serve` would read it.
fn check_serve_config(name: &str, text: &str) -> anyhow::Result<()> {
    let config = super::serve::parse_cache_config(name, Some(text))?;
    for warning in &config.warnings {
        eprintln!("warning: {warning}");
    }
    let what = if super::serve::is_plain_registry(&config) {
        "a plain registry (no proxy section)"
    } else {
        "a pull-through cache"
    };
    println!(
        "ok: {name}: a config.yml for `regmirror serve`, {what}, {} warning(s)",
        config.warnings.len()
    );
    Ok(())
}

/// The mirror configuration read from the files `names`.
fn check_mirrors(config: MirrorConfig, names: &[String]) -> anyhow::Result<()> {
    let rules = config.rules.len();
    let hub_mirrors = config.registry_mirrors.len();
    let warnings = config.warnings.len();
    Resolver::new(config).map_err(|e| BadInput(e.to_string()))?;
    if rules == 0 && hub_mirrors == 0 {
        eprintln!("warning: {}", nothing_configured(names));
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

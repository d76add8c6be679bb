//! `regmirror check`: validate the mirror configuration; exit 0 when it is valid.

use std::process::ExitCode;

use super::mirror_config::{DEFAULT_FILES, MirrorConfigArgs};
use crate::resolve::Resolver;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: MirrorConfigArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.config.load("check")?;
    let rules = config.rules.len();
    let hub_mirrors = config.registry_mirrors.len();
    let warnings = config.warnings.len();
    Resolver::new(config).map_err(|e| super::BadInput(e.to_string()))?;
    if rules == 0 && hub_mirrors == 0 {
        eprintln!(
            "warning: {}",
            nothing_configured(&args.config.source_names())
        );
    }
    println!(
        "ok: {rules} mirror rule(s), {hub_mirrors} registry-mirrors entr{}, {warnings} warning(s)",
        if hub_mirrors == 1 { "y" } else { "ies" }
    );
    Ok(ExitCode::SUCCESS)
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

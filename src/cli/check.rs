//! `regmirror check`: validate the mirror configuration; exit 0 when it is valid.

use std::process::ExitCode;

use super::mirror_config::MirrorConfigArgs;
use crate::resolve::Resolver;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: MirrorConfigArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let rules = config.rules.len();
    let hub_mirrors = config.registry_mirrors.len();
    let warnings = config.warnings.len();
    Resolver::new(config).map_err(|e| super::BadInput(e.to_string()))?;
    println!(
        "ok: {rules} mirror rule(s), {hub_mirrors} registry-mirrors entr{}, {warnings} warning(s)",
        if hub_mirrors == 1 { "y" } else { "ies" }
    );
    Ok(ExitCode::SUCCESS)
}

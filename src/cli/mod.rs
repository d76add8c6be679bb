//! The command line: one file per subcommand. The only layer that prints or exits.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad input (an invalid reference, configuration or
//! argument), with the reason on stderr.

mod check;
mod gc;
mod generate;
mod install;
mod mirror_config;
mod resolve;
mod serve;
mod shim;
mod warm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// An error caused by what the user gave us: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

#[derive(Debug, Parser)]
#[command(
    name = "regmirror",
    version,
    about = "Ordered registry mirrors for Docker, containerd and podman"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the ordered endpoints (mirrors, then origin) a pull of IMAGE tries, and why.
    Resolve(resolve::Args),
    /// Validate mirror files and `serve`'s config.yml files, and print their warnings.
    Check(check::Args),
    /// Run the multi-upstream pull-through cache (the mirror target).
    Serve(serve::Args),
    /// Evict from a stopped cache now (the server does it every storage.gc_interval).
    Gc(gc::Args),
    /// Run the proxy that gives a stock dockerd ordered mirrors with failover.
    Shim(shim::Args),
    /// Pull images through a running cache so that it holds them (before a rollout or an outage).
    Warm(warm::Args),
    /// Write containerd hosts.toml directories (also Docker 28+'s /etc/docker/certs.d).
    ContainerdHosts(generate::ContainerdArgs),
    /// Write a containers-registries.conf drop-in (podman, CRI-O, skopeo, buildah).
    RegistriesConf(generate::RegistriesConfArgs),
    /// Print the shell completion script for SHELL.
    Completions(install::CompletionsArgs),
    /// Write the man pages (regmirror.1 and one per subcommand) into DIR.
    Man(install::ManArgs),
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Resolve(args) => {
            // Its output is the report: a library's log line (the certificate verifier's on a
            // certificate it refuses) would only repeat a probe's row, mixed into it.
            init_tracing("regmirror=warn");
            resolve::run(args)
        }
        Command::Check(args) => {
            init_tracing("warn");
            check::run(args)
        }
        Command::Serve(args) => serve::run(args),
        Command::Shim(args) => shim::run(args),
        Command::Gc(args) => {
            init_tracing("warn");
            gc::run(args)
        }
        Command::ContainerdHosts(args) => {
            // The watching agent logs each change; a one-off run, only what goes wrong.
            init_tracing(if args.watches() { "info" } else { "warn" });
            generate::containerd_hosts(args)
        }
        Command::RegistriesConf(args) => {
            init_tracing("warn");
            generate::registries_conf(args)
        }
        Command::Warm(args) => {
            init_tracing("warn");
            warm::run(args)
        }
        Command::Completions(args) => install::completions(args),
        Command::Man(args) => install::man(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One prefix for every error, as clap's own usage errors have; one per line when a
            // configuration has several.
            for line in format!("{e:#}").lines() {
                eprintln!("error: {line}");
            }
            if e.downcast_ref::<BadInput>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Logs to stderr; `REGMIRROR_LOG` (an EnvFilter directive) overrides `default_level`.
fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REGMIRROR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    /// Every option of every subcommand is described, and its value is named from one small
    /// vocabulary (a path is `<FILE>` or `<DIR>`, a duration `<SECONDS>`), never clap's default
    /// of the field's name (`<PROBE_TIMEOUT>`, `<STATE_DIR>`).
    #[test]
    fn every_option_is_described_and_its_value_named_alike() {
        const NAMES: &[&str] = &[
            "FILE",
            "DIR",
            "SECONDS",
            "NAME:IP",
            "IP:PORT",
            "CIDR[,CIDR...]",
            "URL",
            "HOST",
            "IMAGE",
            "LIST",
            "N",
            "NAMES",
            "OS/ARCH[/VARIANT]",
            "VERSION",
            "SHELL",
            "CONFIG",
        ];
        fn walk(command: &clap::Command, path: &str, problems: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    problems.push(format!("{path} {id}: no description"));
                }
                let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
                if !takes_value {
                    continue;
                }
                let names: Vec<String> = arg
                    .get_value_names()
                    .map(|n| n.iter().map(|s| s.to_string()).collect())
                    .unwrap_or_default();
                if names.is_empty() || names.iter().any(|n| !NAMES.contains(&n.as_str())) {
                    problems.push(format!("{path} {id}: value named {names:?}"));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), problems);
            }
        }
        let mut command = Cli::command();
        command.build();
        let mut problems = Vec::new();
        walk(&command, "regmirror", &mut problems);
        assert!(problems.is_empty(), "{problems:#?}");
    }
}

//! `regmirror containerd-hosts` and `regmirror registries-conf`: engine configuration written from
//! the mirror config, with `--check` (exit 1 and a diff when the files differ), `--prune` and
//! `--force`; `containerd-hosts --watch` keeps a node's files on the config (see [`watch`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use super::BadInput;
use super::mirror_config::MirrorConfigArgs;
use crate::generate::files::Plan;
use crate::generate::{Warning, containerd, registries_conf};

#[derive(Debug, clap::Args)]
pub struct ContainerdArgs {
    #[command(flatten)]
    config: MirrorConfigArgs,
    /// containerd's config_path (`/etc/docker/certs.d` for Docker Engine 28+).
    #[arg(long, value_name = "DIR", default_value = "/etc/containerd/certs.d")]
    out: PathBuf,
    #[command(flatten)]
    mode: Mode,
    /// Remove hosts.toml files regmirror generated that the config no longer names.
    #[arg(long)]
    prune: bool,
    /// The containerd version the files are for: decides `_default` (1.6.17+) and
    /// `dial_timeout` (2.1+).
    #[arg(long, value_name = "VERSION", default_value = "1.7")]
    containerd_version: String,
    /// Keep running: write the files, then again whenever the mirror config changes (a
    /// ConfigMap's symlink swap included), pruning what the config dropped. Only a config error
    /// at start exits; later ones are logged and the last good files stay.
    #[arg(long, conflicts_with = "check")]
    watch: bool,
    /// With --watch: how often the mirror config (and the files written) are looked at.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 2.0,
        requires = "watch"
    )]
    watch_interval: f64,
}

#[derive(Debug, clap::Args)]
pub struct RegistriesConfArgs {
    #[command(flatten)]
    config: MirrorConfigArgs,
    /// The drop-in to write.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/containers/registries.conf.d/50-regmirror.conf"
    )]
    out: PathBuf,
    #[command(flatten)]
    mode: Mode,
    /// A registry (`host[:port]`) to write out as `regmirror resolve` answers for it, besides the
    /// registries the config names: the format has no catch-all for the `*` rule. Repeatable.
    #[arg(long = "registry", value_name = "HOST")]
    registries: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct Mode {
    /// Change nothing: exit 1 with a diff when the files differ from what the same command
    /// would write (with --prune, files it would remove count too).
    #[arg(long)]
    check: bool,
    /// Overwrite files that regmirror did not generate.
    #[arg(long)]
    force: bool,
}

impl ContainerdArgs {
    /// `--watch`: the command keeps running.
    pub fn watches(&self) -> bool {
        self.watch
    }
}

pub fn containerd_hosts(args: ContainerdArgs) -> anyhow::Result<ExitCode> {
    let files = containerd_files(&args)?;
    if args.watch {
        return watch::run(args, files);
    }
    let plan = Plan::hosts_dir(&args.out, &files, args.mode.force)?;
    finish(&plan, &args.mode, args.prune, &args.out)
}

/// The hosts.toml files the mirror config asks for, by registry directory (warnings printed).
fn containerd_files(args: &ContainerdArgs) -> anyhow::Result<BTreeMap<String, String>> {
    let config = args.config.load("containerd-hosts")?;
    let version = containerd::Version::parse(&args.containerd_version)
        .map_err(|e| BadInput(e.to_string()))?;
    let generated = containerd::generate(&config, &args.config.source_names(), version)
        .map_err(|e| BadInput(e.to_string()))?;
    warn(&generated.warnings);
    Ok(generated.files)
}

pub fn registries_conf(args: RegistriesConfArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load("registries-conf")?;
    for registry in &args.registries {
        if !crate::reference::is_valid_host(registry) {
            return Err(BadInput(format!(
                "--registry {registry:?} is not a valid host[:port]"
            ))
            .into());
        }
    }
    let generated =
        registries_conf::generate(&config, &args.config.source_names(), &args.registries)
            .map_err(|e| BadInput(e.to_string()))?;
    warn(&generated.warnings);
    let plan = Plan::single(&args.out, &generated.text, args.mode.force)?;
    finish(&plan, &args.mode, false, &args.out)
}

fn warn(warnings: &[Warning]) {
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
}

fn finish(
    plan: &Plan,
    mode: &Mode,
    prune: bool,
    out: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    if mode.check {
        // What the same command without --check would write: stale files count with --prune.
        if plan.differs(prune) {
            print!("{}", plan.diff(prune));
            return Ok(ExitCode::FAILURE);
        }
        print!("{}", plan.diff(prune));
        println!("{}: up to date", out.display());
        return Ok(ExitCode::SUCCESS);
    }
    let (written, removed) = plan.apply(prune)?;
    let refused = plan.user_written();
    for path in &refused {
        eprintln!(
            "error: {} was not generated by regmirror; not overwritten (use --force)",
            path.display()
        );
    }
    println!(
        "{}: {written} written, {removed} removed, {} unchanged",
        out.display(),
        plan.unchanged
    );
    Ok(if refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `containerd-hosts --watch`: the node agent's loop.
///
/// The mirror files are read again every `--watch-interval` and compared with what was read
/// last, by content: a ConfigMap update (a new directory, then the `..data` symlink swapped to
/// it), an editor's rename-on-save and an in-place write all show up the same way, on any file
/// system, where an inotify watch on the file would have followed the old inode. A change is
/// taken once it reads the same twice in a row (a debounce of one interval), then generated;
/// the files are also compared with what was last generated each time, so one removed by hand
/// comes back. Files someone else wrote stay untouched (`--force` semantics unchanged).
mod watch {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::PathBuf;
    use std::process::ExitCode;
    use std::time::Duration;

    use super::{ContainerdArgs, containerd_files};
    use crate::generate::files::{Change, Plan};

    pub fn run(args: ContainerdArgs, first: BTreeMap<String, String>) -> anyhow::Result<ExitCode> {
        let interval = Duration::try_from_secs_f64(args.watch_interval)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                crate::cli::BadInput(format!(
                    "--watch-interval {} is not a positive number of seconds",
                    args.watch_interval
                ))
            })?;
        let mut state = State {
            read: read_texts(&args),
            files: first,
            refused: BTreeSet::new(),
        };
        tracing::info!(
            out = %args.out.display(),
            config = ?args.config.source_names(),
            "containerd-hosts: watching the mirror config"
        );
        state.write(&args);
        loop {
            std::thread::sleep(interval);
            let read = read_texts(&args);
            if read != state.read {
                std::thread::sleep(interval);
                if read_texts(&args) != read {
                    continue;
                }
                state.read = read;
                match containerd_files(&args) {
                    Ok(files) => {
                        tracing::info!("containerd-hosts: the mirror config changed");
                        state.files = files;
                    }
                    Err(e) => {
                        tracing::error!(
                            "containerd-hosts: {e}; the files of the last good config stay"
                        );
                        continue;
                    }
                }
            }
            state.write(&args);
        }
    }

    /// The mirror files' contents as last read (`None`: missing or unreadable).
    fn read_texts(args: &ContainerdArgs) -> Vec<(PathBuf, Option<String>)> {
        args.config
            .paths()
            .into_iter()
            .map(|path| {
                let text = std::fs::read_to_string(&path).ok();
                (path, text)
            })
            .collect()
    }

    struct State {
        read: Vec<(PathBuf, Option<String>)>,
        /// What the last good config generates.
        files: BTreeMap<String, String>,
        /// Files someone else wrote, already reported.
        refused: BTreeSet<PathBuf>,
    }

    impl State {
        /// Makes the out directory what `files` says, pruning what the config dropped, with
        /// one log line per file written or removed. Errors are logged; the loop goes on.
        fn write(&mut self, args: &ContainerdArgs) {
            let plan = match Plan::hosts_dir(&args.out, &self.files, args.mode.force) {
                Ok(plan) => plan,
                Err(e) => {
                    tracing::error!("containerd-hosts: {e}");
                    return;
                }
            };
            let refused: BTreeSet<PathBuf> =
                plan.user_written().into_iter().map(PathBuf::from).collect();
            for path in refused.difference(&self.refused) {
                tracing::warn!(
                    path = %path.display(),
                    "containerd-hosts: not generated by regmirror; left as it is (--force overwrites)"
                );
            }
            self.refused = refused;
            if !plan.differs(true) {
                return;
            }
            if let Err(e) = plan.apply(true) {
                tracing::error!("containerd-hosts: {e}");
                return;
            }
            for change in &plan.changes {
                match change {
                    Change::Write {
                        path, old: None, ..
                    } => {
                        tracing::info!(path = %path.display(), "containerd-hosts: written");
                    }
                    Change::Write { path, .. } => {
                        tracing::info!(path = %path.display(), "containerd-hosts: rewritten");
                    }
                    Change::Stale { path, .. } => {
                        tracing::info!(path = %path.display(), "containerd-hosts: removed");
                    }
                    Change::UserWritten { .. } => {}
                }
            }
        }
    }
}

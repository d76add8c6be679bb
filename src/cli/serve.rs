//! `regmirror serve`: the pull-through cache server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::BadInput;
use super::mirror_config::MirrorConfigArgs;
use crate::cache::server::{ServeOptions, Server};
use crate::config::cache::CacheConfig;
use crate::config::kind::{FileKind, sniff};
use crate::upstream::{HostOverrides, HostRoots, SHIM_CA_FILE, Timeouts};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A distribution-format config.yml. Without it: the embedded default (127.0.0.1:5000,
    /// ./regmirror-data, Docker Hub plus well-known public registries). REGISTRY_* environment
    /// variables override either, as with distribution.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The config.yml as a positional argument, as `registry serve CONFIG` takes it (a
    /// registry:2 command line works unchanged); the same as --config.
    #[arg(value_name = "CONFIG", conflicts_with = "config")]
    config_path: Option<PathBuf>,
    /// daemon.json-format mirror config: the cache's own upstream fetches try these mirrors
    /// before the upstream. Repeatable.
    #[arg(long = "mirrors", value_name = "FILE")]
    mirrors: Vec<PathBuf>,
    /// Answer NAME with IP instead of DNS (like curl --resolve). Repeatable.
    #[arg(long = "add-host", value_name = "NAME:IP")]
    add_host: Vec<String>,
    /// Per-host CA files (<host[:port]>/*.crt, dockerd's certs.d layout) trusted for the cache's
    /// upstream fetches to that host, besides the system's roots. Default: none.
    #[arg(long, value_name = "DIR")]
    certs_dir: Option<PathBuf>,
    /// Seconds in-flight responses may run after SIGTERM or SIGINT.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    grace: u64,
    /// Seconds to connect to an upstream endpoint before trying the next.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    connect_timeout: f64,
    /// Seconds from request to response headers before trying the next endpoint.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    first_byte_timeout: f64,
}

/// Reads `--config` (or takes the embedded default) with the `REGISTRY_*` environment overrides.
/// A mirror file given instead is refused with `mirror_file_hint`.
pub fn load_cache_config(
    path: Option<&std::path::Path>,
    mirror_file_hint: &str,
) -> anyhow::Result<CacheConfig> {
    let (name, text) = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| BadInput(format!("{}: cannot read: {e}", path.display())))?;
            if sniff(&text) == FileKind::MirrorFile {
                return Err(BadInput(format!(
                    "{}: this is a mirror file (daemon.json format); {mirror_file_hint}",
                    path.display()
                ))
                .into());
            }
            (path.display().to_string(), Some(text))
        }
        None => ("(embedded default)".to_owned(), None),
    };
    parse_cache_config(&name, text.as_deref())
}

/// `text` as the config.yml `name` (`None`: the embedded default) with the `REGISTRY_*`
/// environment overrides.
pub(super) fn parse_cache_config(name: &str, text: Option<&str>) -> anyhow::Result<CacheConfig> {
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("REGISTRY_"))
        .collect();
    CacheConfig::parse(name, text, &env).map_err(|e| BadInput(e.to_string()).into())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = load_cache_config(
        args.config.or(args.config_path).as_deref(),
        "pass it with --mirrors",
    )?;
    super::init_tracing(config.log_level.as_deref().unwrap_or("info"));
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let mirrors = if args.mirrors.is_empty() {
        None
    } else {
        Some(
            MirrorConfigArgs {
                files: args.mirrors.clone(),
            }
            .load("serve --mirrors")?,
        )
    };
    if is_plain_registry(&config) {
        tracing::info!(
            "no proxy section: a plain registry (every repository local; pushes accepted)"
        );
    }
    let overrides = HostOverrides::parse(&args.add_host).map_err(|e| BadInput(e.to_string()))?;
    let host_roots = match &args.certs_dir {
        Some(dir) if !dir.is_dir() => {
            return Err(BadInput(format!("--certs-dir {}: not a directory", dir.display())).into());
        }
        Some(dir) => HostRoots::read_dir(dir, SHIM_CA_FILE),
        None => HostRoots::default(),
    };
    let options = ServeOptions {
        config,
        mirrors,
        overrides,
        host_roots,
        grace: Duration::from_secs(args.grace),
        timeouts: Timeouts {
            connect: seconds("--connect-timeout", args.connect_timeout)?,
            first_byte: seconds("--first-byte-timeout", args.first_byte_timeout)?,
            ..Timeouts::default()
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // A root another process holds is a condition of the moment (exit 1, as `gc` on it);
        // anything else is the configuration's (exit 2).
        let server = Server::bind(options).await.map_err(|e| {
            if e.in_use() {
                anyhow::Error::new(e)
            } else {
                BadInput(e.to_string()).into()
            }
        })?;
        let addr = server.local_addr()?;
        tracing::info!(%addr, "regmirror serve listening");
        server.run(shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// No upstream at all: the configuration of a plain registry.
pub(super) fn is_plain_registry(config: &CacheConfig) -> bool {
    config.upstreams.is_empty() && !config.dynamic_upstreams
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// A positive number of seconds from a command-line flag.
pub fn seconds(flag: &str, value: f64) -> Result<Duration, BadInput> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            BadInput(format!(
                "{flag} {value}: must be a positive number of seconds"
            ))
        })
}

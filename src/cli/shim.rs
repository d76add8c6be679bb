//! `regmirror shim`: the proxy that gives a stock dockerd ordered mirrors with failover, and
//! `regmirror shim install-ca`, which makes dockerd trust the shim's CA for the configured hosts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::BadInput;
use super::mirror_config::MirrorConfigArgs;
use crate::config::docker_auth::RegistryAuths;
use crate::config::{DomainPattern, MirrorConfig};
use crate::reference::{DOCKER_HUB, DOCKER_HUB_API_HOST};
use crate::resolve::Resolver;
use crate::shim::access::{Access, SHARED_PORTS};
use crate::shim::ca::{CertificateAuthority, Constraints};
use crate::shim::leaves::DEFAULT_CAPACITY;
use crate::shim::proxy::Shim;
use crate::upstream::{
    AddressPolicy, ConfigCredentials, HostOverrides, HostRoots, SHIM_CA_FILE, Timeouts,
    UpstreamClient,
};

/// The largest `--leaf-cache`: about 250 MB of leaves.
const MAX_LEAF_CACHE: u32 = 100_000;

/// How often the config files are checked for changes.
const RELOAD_POLL: Duration = Duration::from_secs(2);

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Write the shim's CA into dockerd's per-host certs.d directories.
    InstallCa(InstallCaArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    config: MirrorConfigArgs,
    /// Address of the proxy (dockerd's HTTPS_PROXY / HTTP_PROXY), IP:PORT. Beyond loopback it
    /// needs --allow-clients.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:3128")]
    listen: SocketAddr,
    /// Clients that may use the shim: CIDRs or addresses, comma-separated or repeated; others
    /// get 403. Required when --listen is not a loopback address. Default: anyone (on loopback).
    #[arg(
        long = "allow-clients",
        value_name = "CIDR[,CIDR...]",
        value_delimiter = ','
    )]
    allow_clients: Vec<String>,
    /// Where the shim keeps its CA (ca.key is written with mode 0600).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/regmirror-shim")]
    state_dir: PathBuf,
    /// Per-host CA files (<host[:port]>/*.crt) trusted for the shim's own upstream connections.
    #[arg(long, value_name = "DIR", default_value = "/etc/docker/certs.d")]
    certs_dir: PathBuf,
    /// Answer NAME with IP instead of DNS (like curl --resolve). Repeatable.
    #[arg(long = "add-host", value_name = "NAME:IP")]
    add_host: Vec<String>,
    /// Credentials for mirrors, in Docker's config.json format (`auths`, and the helpers of
    /// `credHelpers` and `credsStore`, whose answers are reused for 5 minutes). Mirrors never get
    /// the client's credentials.
    #[arg(long, value_name = "FILE")]
    mirror_credentials: Option<PathBuf>,
    /// How many host names' leaf certificates are kept (about 2.5 KB each); the least recently
    /// used is dropped first and minted again when next asked for.
    #[arg(long, value_name = "NAMES", default_value_t = DEFAULT_CAPACITY as u32,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_LEAF_CACHE)))]
    leaf_cache: u32,
    /// Seconds to connect to an endpoint before trying the next.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    connect_timeout: f64,
    /// Seconds from request to response headers before trying the next endpoint.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    first_byte_timeout: f64,
}

#[derive(Debug, clap::Args)]
struct InstallCaArgs {
    #[command(flatten)]
    config: MirrorConfigArgs,
    /// Where the shim keeps its CA (the shim's --state-dir).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/regmirror-shim")]
    state_dir: PathBuf,
    /// dockerd's certs.d directory.
    #[arg(long, value_name = "DIR", default_value = "/etc/docker/certs.d")]
    docker_certs_dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    super::init_tracing("info");
    match args.action {
        Some(Action::InstallCa(install)) => install_ca(install),
        None => serve(args.run),
    }
}

fn serve(args: RunArgs) -> anyhow::Result<ExitCode> {
    let access =
        Access::new(args.listen, &args.allow_clients).map_err(|e| BadInput(e.to_string()))?;
    let config = args.config.load("shim")?;
    let ca =
        CertificateAuthority::load_or_create(&args.state_dir, Constraints::for_config(&config))
            .map_err(|e| BadInput(e.to_string()))?
            .with_leaf_capacity(args.leaf_cache as usize);
    let resolver = Resolver::new(config).map_err(|e| BadInput(e.to_string()))?;
    let overrides = HostOverrides::parse(&args.add_host).map_err(|e| BadInput(e.to_string()))?;
    let timeouts = Timeouts {
        connect: super::serve::seconds("--connect-timeout", args.connect_timeout)?,
        first_byte: super::serve::seconds("--first-byte-timeout", args.first_byte_timeout)?,
        ..Timeouts::default()
    };
    let roots = HostRoots::read_dir(&args.certs_dir, SHIM_CA_FILE);
    let mirror_credentials = match &args.mirror_credentials {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| BadInput(format!("{}: cannot read: {e}", path.display())))?;
            RegistryAuths::parse(&path.display().to_string(), &text).map_err(BadInput)?
        }
        None => RegistryAuths::default(),
    };
    let mirror_credentials = ConfigCredentials::new(mirror_credentials);
    // The shim's endpoints come from the operator's rules and dockerd's own pulls: private
    // registries are legitimate targets, so the private-address guard stays open here.
    let client = UpstreamClient::new(
        overrides.clone(),
        AddressPolicy::new(true),
        timeouts,
        &roots,
    )
    .map_err(|e| BadInput(e.to_string()))?;
    let shim = Arc::new(Shim::new(
        resolver,
        client,
        ca,
        overrides,
        mirror_credentials,
        access.clone(),
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| BadInput(format!("listen on {}: {e}", args.listen)))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "regmirror shim listening");
        if access.beyond_loopback() {
            tracing::warn!(
                %addr,
                clients = %access.clients(),
                ports = ?SHARED_PORTS,
                "LISTENING BEYOND LOOPBACK: these clients can pull through this shim, reach every \
                 registry its rules name (every host, with a `*` rule) and tunnel to other hosts \
                 on these ports; keep the port behind a firewall"
            );
        }
        tokio::spawn(reload_on_change(shim.clone(), args.config.clone()));
        shim.run(listener, super::serve::shutdown_signal()).await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Reloads the rules on SIGHUP and when a config file changes; a bad config keeps the old rules.
async fn reload_on_change(shim: Arc<Shim>, config: MirrorConfigArgs) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        return;
    };
    let mut seen = modification_times(&config.files);
    loop {
        tokio::select! {
            _ = hangup.recv() => {}
            () = tokio::time::sleep(RELOAD_POLL) => {
                let now = modification_times(&config.files);
                if now == seen {
                    continue;
                }
                seen = now;
            }
        }
        match config
            .load("shim")
            .and_then(|c| Resolver::new(c).map_err(anyhow::Error::from))
        {
            Ok(resolver) => {
                shim.reload(resolver);
                tracing::info!("mirror configuration reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "mirror configuration not reloaded; keeping the previous rules")
            }
        }
    }
}

fn modification_times(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

fn install_ca(args: InstallCaArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load("shim")?;
    let ca =
        CertificateAuthority::load_or_create(&args.state_dir, Constraints::for_config(&config))
            .map_err(|e| BadInput(e.to_string()))?;
    for dir in cert_dirs(&config) {
        let target = args.docker_certs_dir.join(&dir);
        std::fs::create_dir_all(&target)?;
        let file = target.join(SHIM_CA_FILE);
        std::fs::write(&file, ca.cert_pem())?;
        println!("wrote {}", file.display());
    }
    if Constraints::for_config(&config).is_none() {
        println!(
            "\nA `*` rule makes the shim intercept every registry, and dockerd reads certs.d per host \
             only. Trust the CA system-wide instead:\n  cp {} /usr/local/share/ca-certificates/regmirror-shim.crt && \
             update-ca-certificates\nThen restart dockerd. This CA can then vouch for any host name: \
             keep {} readable by root only.",
            CertificateAuthority::cert_path(&args.state_dir).display(),
            args.state_dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The certs.d directory names dockerd reads for the exact rules' registries.
fn cert_dirs(config: &MirrorConfig) -> Vec<String> {
    let mut dirs = Vec::new();
    for rule in &config.rules {
        if let DomainPattern::Exact(registry) = &rule.domain {
            if registry == DOCKER_HUB {
                dirs.extend([DOCKER_HUB.to_owned(), DOCKER_HUB_API_HOST.to_owned()]);
            } else {
                dirs.push(registry.clone());
            }
        }
    }
    dirs
}

//! `regmirror gc`: run an eviction of a stopped cache now and report what it removes, image by
//! image with its names and why (the server collects by itself every `storage.gc_interval`). A
//! storage root that does not exist is refused (exit 2): nothing is created; a root in use by a
//! running server fails at once (exit 1, as `serve` on it).

use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;

use super::BadInput;
use crate::cache::fleet::{Fleet, Follower};
use crate::cache::gc::{Evicted, Evictee, Policy, Reason};
use crate::cache::lease::Leases;
use crate::cache::meta::now;
use crate::cache::metrics::Metrics;
use crate::cache::server::{collect, open_storage};
use crate::config::cache::StorageBackend;
use crate::page::{bytes, duration};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The cache's config.yml (storage.filesystem.rootdirectory, proxy.ttl, storage.maxsize).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Report what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config =
        super::serve::load_cache_config(args.config.as_deref(), "gc reads the cache's config.yml")?;
    for warning in &config.warnings {
        eprintln!("warning: {warning}");
    }
    // A root that does not exist holds nothing to collect: most likely the wrong config (or
    // none), and opening it would create it.
    if matches!(config.storage, StorageBackend::Filesystem) && !config.root.is_dir() {
        let name = args.config.as_deref().map_or_else(
            || "(embedded default)".to_owned(),
            |p| p.display().to_string(),
        );
        return Err(BadInput(format!(
            "{name}: storage root {} does not exist: nothing to collect (give --config the \
             server's config.yml)",
            config.root.display()
        ))
        .into());
    }
    let timeout = std::time::Duration::from_secs(5);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The local root's lock first: on a live cache this fails at once and touches nothing.
    let storage = runtime
        .block_on(open_storage(&config, timeout))
        .map_err(|e| {
            anyhow::anyhow!("{e} (`regmirror serve` collects by itself every storage.gc_interval)")
        })?;
    let policy = Policy {
        ttl: config.ttl,
        max_size: config.max_size,
        now: now(),
    };
    // On a shared bucket, as one replica of the fleet: the collection takes the gc lease.
    let fleet = storage.bucket.clone().map(|bucket| {
        let leases = Leases::new(bucket.clone(), storage.replica.clone(), None);
        let follower = Follower::new(None, timeout).expect("a client without TLS settings builds");
        Fleet::new(bucket, leases, follower, Arc::new(Metrics::default()))
    });
    let plan = runtime
        .block_on(collect(
            &storage.meta,
            &storage.store,
            fleet.as_ref(),
            &policy,
            config.limits.upload_lifetime,
            args.dry_run,
            true,
        ))
        .map_err(|e| anyhow::anyhow!(e))?;
    let Some(plan) = plan else {
        println!("another replica is collecting now: nothing done");
        return Ok(ExitCode::SUCCESS);
    };
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for unit in &plan.units {
        println!("{verb} {}", describe(unit, &policy));
    }
    println!(
        "{verb} {} manifest(s), {} blob(s) and {} referrer list(s), {}; {} kept",
        plan.manifests,
        plan.blobs,
        plan.referrer_lists.len(),
        bytes(plan.freed_bytes),
        bytes(plan.kept_bytes)
    );
    Ok(ExitCode::SUCCESS)
}

/// One line: what goes, its size, and why.
fn describe(unit: &Evicted, policy: &Policy) -> String {
    let what = match &unit.what {
        Evictee::Image { digest, names } if names.is_empty() => format!("image {digest}"),
        Evictee::Image { digest, names } => format!("{} ({digest})", names.join(", ")),
        Evictee::Blob { digest } => format!("blob {digest}, which no kept image references"),
        Evictee::List(list) => format!(
            "the referrers of {} in {}/{}",
            list.subject, list.upstream, list.repository
        ),
    };
    let unused = duration(policy.now.saturating_sub(unit.last_used));
    let why = match unit.reason {
        Reason::Unused => format!(
            "unused for {unused} (proxy.ttl {})",
            duration(policy.ttl.as_secs())
        ),
        Reason::OverSize => format!(
            "over storage.maxsize {}, the least recently used (unused for {unused})",
            policy.max_size.map_or_else(|| "-".to_owned(), bytes)
        ),
    };
    format!("{what}, {}: {why}", bytes(unit.bytes))
}

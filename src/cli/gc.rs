//! `regmirror gc`: run an eviction of a stopped cache now and report what it removes (the server
//! collects by itself every `storage.gc_interval`).

use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;

use crate::cache::fleet::{Fleet, Follower};
use crate::cache::gc::Policy;
use crate::cache::lease::Leases;
use crate::cache::meta::now;
use crate::cache::metrics::Metrics;
use crate::cache::server::{collect, open_storage};

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
    for digest in &plan.evict {
        println!("{verb} {digest}");
    }
    for list in &plan.referrer_lists {
        println!(
            "{verb} the referrers of {} in {}/{}",
            list.subject, list.upstream, list.repository
        );
    }
    println!(
        "{verb} {} manifest(s), {} blob(s) and {} referrer list(s), {} bytes; {} bytes kept",
        plan.manifests,
        plan.blobs,
        plan.referrer_lists.len(),
        plan.freed_bytes,
        plan.kept_bytes
    );
    Ok(ExitCode::SUCCESS)
}

//! The pull-through cache: a multi-upstream OCI registry that serves what it has and fills what
//! it lacks from the right upstream, one download per blob however many clients ask.
//!
//! [`http`] parses each request and renders the answer; three services decide it: [`blobs`]
//! (memo, file, object, redirect, or a fill), [`manifests`] (manifests and tags: the memo, tag
//! flights, revalidation windows) and [`referrers`]. They reach upstreams through [`upstreams`]
//! and check who may read what with [`access`]. Below them:
//!
//! - [`routing`]: which upstream a request is for (`?ns=`, `domain` header, path prefix, default);
//! - [`store`]: content-addressed blob files, atomic verified commits;
//! - [`meta`]: tags, manifests, repository links, blob sizes (redb);
//! - [`fill`]: single-flight fills streamed to every reader as bytes arrive;
//! - [`flights`]: single flights of tag revalidations and referrers lists, shared answers;
//! - [`buffers`]: the memory budget for blob data in flight;
//! - [`memo`]: hot manifests and small blobs in memory, bounded in bytes;
//! - [`manifest`], [`range`]: manifest bookkeeping and `Range` parsing;
//! - [`server`]: start-up and graceful shutdown; [`metrics`], [`status`]: what operators see.

pub(crate) mod access;
pub mod auth;
pub(crate) mod blobs;
pub mod bucket;
pub(crate) mod buffers;
mod error;
pub(crate) mod fill;
pub mod fleet;
pub(crate) mod flights;
pub(crate) mod gc;
pub(crate) mod http;
pub(crate) mod lease;
pub mod manifest;
pub(crate) mod manifests;
pub(crate) mod memo;
pub mod meta;
pub(crate) mod metrics;
pub(crate) mod push;
pub mod range;
pub mod referrers;
pub(crate) mod routing;
pub mod server;
pub(crate) mod status;
pub(crate) mod store;
pub(crate) mod uploads;
pub(crate) mod upstreams;
pub(crate) mod uses;

use std::sync::{Arc, Mutex};

use axum::http::{HeaderName, HeaderValue};

use crate::config::cache::{Limits, Secret};
use crate::upstream::UpstreamClient;
use blobs::Blobs;
use buffers::Buffers;
use fill::Fills;
use fleet::Fleet;
use flights::Flights;
use manifests::Manifests;
use memo::Memo;
use meta::{ListBounds, Metadata};
use metrics::Metrics;
use referrers::Referrers;
use routing::Router;
use status::Status;
use store::BlobStore;
use upstreams::Upstreams;
use uses::LastUses;

/// What every request handler shares: the services that decide, and the few handles beyond them.
#[derive(Debug)]
pub(crate) struct App {
    pub(crate) upstreams: Upstreams,
    pub(crate) meta: Arc<Metadata>,
    pub(crate) store: Arc<BlobStore>,
    pub(crate) metrics: Arc<Metrics>,
    /// What the status page shows beyond the other parts' own state.
    pub(crate) status: Status,
    pub(crate) uses: Arc<LastUses>,
    pub(crate) blobs: Blobs,
    pub(crate) manifests: Arc<Manifests>,
    pub(crate) referrers: Arc<Referrers>,
    /// Uploads to local repositories in progress.
    pub(crate) uploads: uploads::local::Uploads,
    /// On a shared bucket: this replica among the others (leases, following their downloads).
    pub(crate) fleet: Option<Fleet>,
    pub(crate) options: Options,
}

/// The parts a server opens before the services are wired ([`App::new`]).
#[derive(Debug)]
pub(crate) struct Handles {
    pub(crate) router: Router,
    pub(crate) client: UpstreamClient,
    pub(crate) store: Arc<BlobStore>,
    pub(crate) meta: Arc<Metadata>,
    pub(crate) fills: Fills,
    pub(crate) buffers: Arc<Buffers>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) fleet: Option<Fleet>,
    pub(crate) status: Status,
}

/// What the configuration says beyond what the services and handles hold.
#[derive(Debug)]
pub(crate) struct Options {
    /// `http.headers` of the config, added to every response.
    pub(crate) extra_headers: Vec<(HeaderName, HeaderValue)>,
    /// `auth.htpasswd`: when set, every `/v2/` request must authenticate.
    pub(crate) htpasswd: Option<auth::Htpasswd>,
    /// `storage.delete.enabled`.
    pub(crate) delete_enabled: bool,
    /// `http.secret`: authenticates the fleet's internal route.
    pub(crate) secret: Option<Secret>,
    /// `proxy.serve_stale_on_404`.
    pub(crate) serve_stale_on_404: bool,
    /// `limits`.
    pub(crate) limits: Limits,
    /// `storage.maxsize`, for the status page.
    pub(crate) max_size: Option<u64>,
    /// `proxy.platforms`, stated on manifest answers for `regmirror warm`.
    pub(crate) platforms: Option<HeaderValue>,
}

impl App {
    /// Wires the services to the handles they share.
    pub(crate) fn new(handles: Handles, options: Options) -> Self {
        let Handles {
            router,
            client,
            store,
            meta,
            fills,
            buffers,
            metrics,
            fleet,
            status,
        } = handles;
        let limits = &options.limits;
        let memo_budget = |bytes: u64| usize::try_from(bytes).unwrap_or(usize::MAX);
        let upstreams = Upstreams::new(Arc::new(router), Arc::new(client), metrics.clone());
        let access = access::ContentAccess::new(meta.clone(), upstreams.clone());
        let uses = Arc::new(LastUses::default());
        let blobs = Blobs {
            access: access.clone(),
            upstreams: upstreams.clone(),
            store: store.clone(),
            fills: Arc::new(fills),
            memo: Memo::new(memo_budget(limits.blob_memo)),
            buffers,
            metrics: metrics.clone(),
            fleet: fleet.clone(),
            uses: uses.clone(),
        };
        let manifests = Arc::new(Manifests {
            access,
            upstreams: upstreams.clone(),
            meta: meta.clone(),
            store: store.clone(),
            memo: Memo::new(memo_budget(limits.manifest_memo)),
            metrics: metrics.clone(),
            stored: status.stored().clone(),
            uses: uses.clone(),
            flights: Flights::new("the tag revalidation"),
            confirmed: Mutex::default(),
            max_manifest_size: limits.max_manifest_size,
            serve_stale_on_404: options.serve_stale_on_404,
        });
        let referrers = Arc::new(Referrers {
            manifests: manifests.clone(),
            upstreams: upstreams.clone(),
            meta: meta.clone(),
            metrics: metrics.clone(),
            uses: uses.clone(),
            flights: Flights::new("the referrers request"),
            bounds: ListBounds {
                count: limits.max_referrers,
                bytes: usize::try_from(limits.max_referrers_size).unwrap_or(usize::MAX),
            },
            max_manifest_size: limits.max_manifest_size,
        });
        App {
            upstreams,
            meta,
            store,
            metrics,
            status,
            uses,
            blobs,
            manifests,
            referrers,
            uploads: Default::default(),
            fleet,
            options,
        }
    }

    /// Writes the recorded last uses to the metadata.
    pub(crate) async fn flush_uses(&self) -> Result<(), meta::MetaError> {
        self.uses.flush(&self.meta).await
    }
}

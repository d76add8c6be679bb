//! Start-up and shutdown of the cache server.
//!
//! Start-up validates everything (config, storage, metadata, client) before binding the port and
//! never contacts an upstream, so the cache starts and serves what it has while every upstream is
//! down. The storage lock is taken before anything in the storage root is touched.
//!
//! Connections are accepted under `limits` ([`crate::listen`]): at most `max_connections` at
//! once, a TLS handshake within `tls_handshake_timeout`, a request head within `header_timeout`
//! (which also closes idle keep-alive connections), and a response that can write nothing for
//! `idle_timeout` is cut. Shutdown stops accepting, lets in-flight responses finish for a grace
//! period, then exits.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};

use super::auth::Htpasswd;
use super::bucket::Bucket;
use super::buffers::Buffers;
use super::fill::{FillLimits, Fills};
use super::fleet::{Fleet, Follower};
use super::lease::Leases;
use super::memo::Memo;
use super::meta::BucketMetadata;
use super::meta::Metadata;
use super::metrics::Metrics;
use super::routing::Router;
use super::store::BlobStore;
use super::{App, http};
use crate::config::MirrorConfig;
use crate::config::cache::{CacheConfig, StorageBackend};
use crate::listen::{self, Listener, StallTimeout};
use crate::resolve::Resolver;
use crate::upstream::{AddressPolicy, HostOverrides, HostRoots, Timeouts, UpstreamClient};

/// What `regmirror serve` runs.
#[derive(Debug)]
pub struct ServeOptions {
    pub config: CacheConfig,
    /// `--mirrors`: the cache's own upstream fetches walk these mirrors first.
    pub mirrors: Option<MirrorConfig>,
    pub overrides: HostOverrides,
    /// How long in-flight responses may run after a shutdown signal.
    pub grace: Duration,
    /// Per-endpoint timeouts of the cache's upstream fetches.
    pub timeouts: Timeouts,
    /// `--certs-dir`: per-host CAs trusted for upstream fetches besides the system's roots.
    pub host_roots: HostRoots,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(String, StartErrorKind);

/// Whose the fault is: the configuration's, or another process's holding the storage root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartErrorKind {
    Invalid,
    InUse,
}

impl StartError {
    fn invalid(message: String) -> Self {
        StartError(message, StartErrorKind::Invalid)
    }

    /// The storage root is locked by another regmirror process (`serve` or `gc`): a condition
    /// of the moment, not bad input.
    pub fn in_use(&self) -> bool {
        self.1 == StartErrorKind::InUse
    }
}

/// A bound, ready server.
pub struct Server {
    listener: Listener,
    app: Arc<App>,
    grace: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
    eviction: Eviction,
}

/// When and what the server evicts.
#[derive(Debug, Clone, Copy)]
struct Eviction {
    interval: Duration,
    ttl: Duration,
    max_size: Option<u64>,
}

impl Server {
    /// Validates the options, opens storage and binds the listen address.
    pub async fn bind(options: ServeOptions) -> Result<Self, StartError> {
        let config = &options.config;
        let fail =
            |what: &str, e: &dyn std::fmt::Display| StartError::invalid(format!("{what}: {e}"));
        let tls = match &config.tls {
            Some((certificate, key)) => Some(
                tls_acceptor(certificate, key, &config.client_cas)
                    .map_err(|e| fail("http.tls", &e))?,
            ),
            None => None,
        };
        let Storage {
            store,
            meta,
            bucket,
            replica,
        } = open_storage(config, options.timeouts.connect).await?;
        let resolver = match options.mirrors {
            Some(mirrors) => Some(Arc::new(
                Resolver::new(mirrors).map_err(|e| fail("--mirrors", &e))?,
            )),
            None => None,
        };
        let policy = AddressPolicy::new(config.allow_private_upstreams);
        let client = UpstreamClient::new(
            options.overrides,
            policy,
            options.timeouts,
            &options.host_roots,
        )
        .map_err(|e| fail("client", &e))?;
        let htpasswd = match &config.htpasswd {
            Some((realm, path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| fail(&format!("auth.htpasswd.path {}", path.display()), &e))?;
                Some(
                    Htpasswd::parse(realm, &path.display().to_string(), &text)
                        .map_err(|e| fail("auth.htpasswd", &e))?,
                )
            }
            None => None,
        };
        let mut extra_headers = Vec::new();
        for (name, value) in &config.headers {
            let name = HeaderName::try_from(name.as_str()).map_err(|e| fail("http.headers", &e))?;
            let value =
                HeaderValue::try_from(value.as_str()).map_err(|e| fail("http.headers", &e))?;
            extra_headers.push((name, value));
        }
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|e| fail(&format!("listen on {}", config.listen), &e))?;
        let local = listener.local_addr().map_err(|e| fail("listen", &e))?;
        let metrics = Arc::new(Metrics::default());
        let fleet = match &bucket {
            None => None,
            Some(bucket) => Some(fleet_for(
                config,
                bucket,
                &replica,
                local,
                options.timeouts.connect,
                &metrics,
            )?),
        };
        let limits = config.limits.clone();
        let store = Arc::new(store);
        let meta = Arc::new(meta);
        let buffers = Buffers::new(usize::try_from(limits.buffer_memory).unwrap_or(usize::MAX));
        let status = super::status::Status::default();
        let fills = Fills::new(
            store.clone(),
            meta.clone(),
            buffers.clone(),
            status.stored().clone(),
            FillLimits {
                max_blob_size: limits.max_blob_size,
                min_rate: limits.fill_min_rate,
                grace: options.timeouts.read,
                max_fills: limits.max_fills,
                max_fills_per_upstream: limits.max_fills_per_upstream,
            },
        );
        let app = Arc::new(App {
            router: Router::new(config, resolver),
            client: Arc::new(client),
            store,
            meta,
            fills: Arc::new(fills),
            metrics,
            memo: Memo::new(usize::try_from(limits.manifest_memo).unwrap_or(usize::MAX)),
            blob_memo: Memo::new(usize::try_from(limits.blob_memo).unwrap_or(usize::MAX)),
            extra_headers,
            serve_stale_on_404: config.serve_stale_on_404,
            htpasswd,
            uploads: Default::default(),
            delete_enabled: config.delete_enabled,
            used: Default::default(),
            tag_flights: Default::default(),
            tag_validated: Default::default(),
            buffers,
            limits,
            fleet,
            secret: config.secret.clone(),
            status,
            max_size: config.max_size,
        });
        app.status.set_listen(local.to_string());
        let listener = Listener::capped(listener, config.limits.max_connections);
        if !local.ip().is_loopback() && app.htpasswd.is_none() {
            tracing::warn!(
                addr = %local,
                "listening beyond loopback WITHOUT authentication: anyone who can reach this port can \
                 pull through this cache (set auth.htpasswd, or listen on 127.0.0.1)"
            );
        }
        Ok(Server {
            listener,
            app,
            grace: options.grace,
            tls,
            eviction: Eviction {
                interval: config.gc_interval,
                ttl: config.ttl,
                max_size: config.max_size,
            },
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains for the grace period. Returns once every
    /// response and fill has finished and the storage is released (or the grace period is over).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = self.app.clone();
        let grace = self.grace;
        let collector = tokio::spawn(collect_periodically(app.clone(), self.eviction));
        let expirer = tokio::spawn(expire_uploads(app.clone()));
        let result = self.serve(shutdown).await;
        collector.abort();
        expirer.abort();
        let _ = collector.await;
        let _ = expirer.await;
        if let Err(e) = app.flush_uses().await {
            tracing::warn!(error = %e, "last-use times not saved");
        }
        let deadline = tokio::time::Instant::now() + grace;
        // Handlers hold the app; fills (which run on after their clients) hold their map.
        while (Arc::strong_count(&app) > 1 || Arc::strong_count(&app.fills) > 1)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        result
    }

    /// The accept loop, for plain http and TLS alike: each connection gets its slot, its
    /// handshake and head timeouts, and a stall timeout on its writes; on shutdown, stop
    /// accepting and let open connections finish for the grace period.
    async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        use hyper::body::Incoming;
        use hyper_util::rt::TokioIo;
        let Server {
            mut listener,
            app,
            grace,
            tls,
            ..
        } = self;
        let limits = app.limits.clone();
        // Every request goes to `http::handle`, which parses the path itself: no router.
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let app = app.clone();
            async move {
                let request = request.map(axum::body::Body::new);
                Ok::<_, std::convert::Infallible>(http::handle(app, request).await)
            }
        });
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut shutdown => break,
            };
            let peer = accepted.peer;
            let stream = StallTimeout::new(accepted.stream, limits.idle_timeout);
            let slot = accepted.slot;
            let tls = tls.clone();
            let service = service.clone();
            let watcher = graceful.watcher();
            let limits = limits.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let io: Box<dyn Io> = match tls {
                    None => Box::new(stream),
                    Some(acceptor) => {
                        let handshake = acceptor.accept(stream);
                        match tokio::time::timeout(limits.tls_handshake_timeout, handshake).await {
                            Ok(Ok(tls)) => Box::new(tls),
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out (limits.tls_handshake_timeout)");
                                return;
                            }
                        }
                    }
                };
                let connection = listen::http1(limits.header_timeout)
                    .serve_connection(TokioIo::new(io), service);
                if let Err(e) = watcher.watch(connection).await {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
            });
        }
        // The port closes now: new connections are refused while the others finish.
        drop(listener);
        tracing::info!("shutting down: no new connections, finishing in-flight responses");
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_seconds = grace.as_secs(),
                "grace period over: closing remaining connections"
            );
        }
        Ok(())
    }
}

/// A connection's byte stream, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// The storage a server runs on.
pub struct Storage {
    pub store: BlobStore,
    pub meta: Metadata,
    /// The bucket, when the storage is one.
    pub bucket: Option<Bucket>,
    /// This process's name among the replicas of a bucket.
    pub replica: String,
}

/// Opens the configured storage: the local root (locked first, so a second process touches
/// nothing), and on S3 the bucket, checked once: when it cannot be reached the server still
/// starts (one error line naming the endpoint and bucket) and answers 503 for what needs it.
pub async fn open_storage(
    config: &CacheConfig,
    connect_timeout: Duration,
) -> Result<Storage, StartError> {
    let root = &config.root;
    let local = |e: &std::io::Error| {
        let kind = if e.kind() == std::io::ErrorKind::WouldBlock {
            StartErrorKind::InUse
        } else {
            StartErrorKind::Invalid
        };
        StartError(format!("storage {}: {e}", root.display()), kind)
    };
    let replica = replica_name();
    match &config.storage {
        StorageBackend::Filesystem => {
            let store = BlobStore::open_files(root).map_err(|e| local(&e))?;
            let meta = Metadata::open_local(&root.join("metadata.redb"))
                .map_err(|e| StartError::invalid(format!("metadata: {e}")))?;
            Ok(Storage {
                store,
                meta,
                bucket: None,
                replica,
            })
        }
        StorageBackend::S3(s3) => {
            let bucket = Bucket::new(s3, connect_timeout).map_err(StartError::invalid)?;
            let store =
                BlobStore::open_bucket(root, bucket.clone(), s3.redirect).map_err(|e| local(&e))?;
            match bucket.check().await {
                Ok(()) => tracing::info!(storage = %bucket.describe, "object storage reachable"),
                Err(e) => tracing::error!(
                    "{e}: starting anyway; requests that need the storage answer 503 until it \
                     is back"
                ),
            }
            let meta = Metadata::Bucket(BucketMetadata::new(bucket.clone(), replica.clone()));
            Ok(Storage {
                store,
                meta,
                bucket: Some(bucket),
                replica,
            })
        }
    }
}

/// This replica in the fleet on `bucket`: where others reach it (`http.host`, else the listen
/// address when it is a concrete IP) and the secret of their internal route (`http.secret`).
fn fleet_for(
    config: &CacheConfig,
    bucket: &Bucket,
    replica: &str,
    local: SocketAddr,
    connect_timeout: Duration,
    metrics: &Arc<Metrics>,
) -> Result<Fleet, StartError> {
    let address = config.host.clone().or_else(|| {
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        (!local.ip().is_unspecified()).then(|| format!("{scheme}://{local}"))
    });
    if config.secret.is_none() {
        tracing::warn!(
            "no http.secret: replicas on this bucket cannot stream each other's downloads; they \
             wait for them to be stored instead (set the same http.secret on every replica)"
        );
    } else if address.is_none() {
        tracing::warn!(
            "no http.host and no concrete listen address: other replicas cannot reach this one \
             to follow its downloads (set http.host)"
        );
    }
    let follower =
        Follower::new(config.secret.clone(), connect_timeout).map_err(StartError::invalid)?;
    let leases = Leases::new(bucket.clone(), replica.to_owned(), address);
    Ok(Fleet::new(
        bucket.clone(),
        leases,
        follower,
        metrics.clone(),
    ))
}

/// A name for this process among the replicas of a bucket: 64 random bits.
fn replica_name() -> String {
    let mut bytes = [0u8; 8];
    // Without the OS's randomness, the process id still tells this replica's batches apart.
    if getrandom::fill(&mut bytes).is_err() {
        bytes = u64::from(std::process::id()).to_be_bytes();
    }
    hex::encode(bytes)
}

/// The server's TLS configuration from PEM files (`http.tls.certificate`, `http.tls.key`).
fn tls_acceptor(
    certificate: &Path,
    key: &Path,
    client_cas: &[std::path::PathBuf],
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    crate::upstream::install_crypto_provider();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .map_err(|e| format!("{}: {e}", certificate.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", certificate.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate", certificate.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    // With http.tls.clientcas, clients must present a certificate signed by one of them.
    let builder = rustls::ServerConfig::builder();
    let builder = if client_cas.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for path in client_cas {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .map_err(|e| e.to_string())?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Abandons uploads nobody touched for `limits.upload_lifetime`, checking twice per lifetime
/// (at most once a minute).
async fn expire_uploads(app: Arc<App>) {
    let lifetime = app.limits.upload_lifetime;
    let every = (lifetime / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let expired = app.uploads.expire(lifetime);
        if expired > 0 {
            tracing::info!(
                expired,
                "abandoned uploads removed (limits.upload_lifetime)"
            );
        }
    }
}

/// Flushes last-use times and evicts every `interval`.
async fn collect_periodically(app: Arc<App>, eviction: Eviction) {
    let mut ticks = tokio::time::interval(eviction.interval);
    ticks.tick().await;
    // A dry run at start-up measures what the store keeps, for the status page.
    let policy = super::gc::Policy {
        ttl: eviction.ttl,
        max_size: eviction.max_size,
        now: super::meta::now(),
    };
    let stored = app.status.stored();
    let mark = stored.mark();
    if let Ok(plan) = super::gc::collect(&app.meta, &app.store, &policy, true, false).await {
        stored.measured(plan.kept_bytes + plan.freed_bytes, mark);
    }
    super::gc::give_back_freed_memory();
    loop {
        ticks.tick().await;
        if let Err(e) = app.flush_uses().await {
            tracing::warn!(error = %e, "last-use times not saved");
        }
        let policy = super::gc::Policy {
            ttl: eviction.ttl,
            max_size: eviction.max_size,
            now: super::meta::now(),
        };
        let mark = stored.mark();
        let result = collect(
            &app.meta,
            &app.store,
            app.fleet.as_ref(),
            &policy,
            app.limits.upload_lifetime,
            false,
            false,
        )
        .await;
        if let Ok(Some(plan)) = &result {
            stored.measured(plan.kept_bytes, mark);
        }
        match result {
            Ok(Some(plan)) if !(plan.evict.is_empty() && plan.referrer_lists.is_empty()) => {
                tracing::info!(
                    manifests = plan.manifests,
                    blobs = plan.blobs,
                    referrer_lists = plan.referrer_lists.len(),
                    freed_bytes = plan.freed_bytes,
                    kept_bytes = plan.kept_bytes,
                    "evicted"
                )
            }
            Ok(Some(_)) => {}
            Ok(None) => tracing::debug!("another replica is collecting"),
            Err(e) => tracing::warn!(error = %e, "eviction failed"),
        }
        super::gc::give_back_freed_memory();
    }
}

/// One collection; on a shared bucket only when no other replica collects (then `None`), and
/// followed by the clean-up of abandoned multipart uploads. `name`: the plan names the images
/// it evicts (see [`super::gc::collect`]).
pub async fn collect(
    meta: &Metadata,
    store: &BlobStore,
    fleet: Option<&Fleet>,
    policy: &super::gc::Policy,
    upload_lifetime: Duration,
    dry_run: bool,
    name: bool,
) -> Result<Option<super::gc::Plan>, String> {
    let run = async {
        super::gc::collect(meta, store, policy, dry_run, name)
            .await
            .map_err(|e| e.to_string())
    };
    match fleet {
        Some(fleet) if !dry_run => fleet.collect_alone(run, upload_lifetime).await,
        _ => run.await.map(Some),
    }
}

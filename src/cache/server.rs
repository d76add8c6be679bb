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
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};

use super::auth::{Htpasswd, HtpasswdError};
use super::bucket::{Bucket, BucketError};
use super::buffers::Buffers;
use super::fill::{FillLimits, Fills};
use super::fleet::{Fleet, Follower};
use super::lease::Leases;
use super::meta::BucketMetadata;
use super::meta::{MetaError, Metadata};
use super::metrics::Metrics;
use super::routing::Router;
use super::store::BlobStore;
use super::{App, Handles, Options, http};
use crate::config::MirrorConfig;
use crate::config::cache::{CacheConfig, StorageBackend};
use crate::listen::{self, Listener, StallTimeout};
use crate::resolve::{BuildError, Resolver};
use crate::sendfile::{SendfileQueue, SendfileStream};
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

/// Why the server could not start: what is wrong, by the part of the configuration (or the
/// file it names) it is in.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("http.tls: {0}")]
    Tls(#[source] TlsError),
    /// The storage root: unusable, or locked by another process ([`StartError::in_use`]).
    #[error("storage {}: {source}", root.display())]
    Storage { root: PathBuf, source: io::Error },
    #[error("metadata: {0}")]
    Metadata(#[source] MetaError),
    /// `storage.s3` or `storage.azure` does not make a client.
    #[error("{0}")]
    Bucket(#[source] BucketError),
    #[error("--mirrors: {0}")]
    Mirrors(#[source] BuildError),
    /// The upstream client could not be built.
    #[error("client: {0}")]
    Client(#[source] crate::upstream::ClientError),
    #[error("auth.htpasswd.path {}: {source}", path.display())]
    HtpasswdFile { path: PathBuf, source: io::Error },
    #[error("auth.htpasswd: {0}")]
    Htpasswd(#[source] HtpasswdError),
    #[error("http.headers: {0}")]
    Header(#[source] axum::http::Error),
    #[error("listen on {addr}: {source}")]
    Listen { addr: String, source: io::Error },
    /// An upstream's `exec.command` cannot be run.
    #[error("exec.command: {0}")]
    CredentialHelper(#[source] crate::upstream::HelperError),
    /// The client replicas follow each other's downloads with could not be built.
    #[error("{0}")]
    Follower(#[source] reqwest::Error),
}

impl StartError {
    /// The storage root is locked by another regmirror process (`serve` or `gc`): a condition
    /// of the moment, not bad input.
    pub fn in_use(&self) -> bool {
        matches!(self, StartError::Storage { source, .. } if source.kind() == io::ErrorKind::WouldBlock)
    }
}

/// Why `http.tls` does not make a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file that cannot be read or parsed.
    #[error("{}: {source}", path.display())]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: no certificate", path.display())]
    NoCertificate { path: PathBuf },
    /// A `clientcas` certificate that is no trust anchor.
    #[error("{}: {source}", path.display())]
    ClientCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{0}")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
    /// The certificate and key do not go together.
    #[error("{0}")]
    Config(#[source] rustls::Error),
}

/// A bound, ready server.
pub struct Server {
    listener: Listener,
    app: Arc<App>,
    /// Fires once the server's state is dropped everywhere: every response, revalidation and
    /// fill has finished.
    drained: crate::sync::Drained,
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
        let tls = match &config.tls {
            Some((certificate, key)) => {
                Some(tls_acceptor(certificate, key, &config.client_cas).map_err(StartError::Tls)?)
            }
            None => None,
        };
        let storage = open_storage(config, options.timeouts.connect).await?;
        let resolver = match options.mirrors {
            Some(mirrors) => Some(Arc::new(
                Resolver::new(mirrors).map_err(StartError::Mirrors)?,
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
        .map_err(StartError::Client)?;
        let settings = settings(config)?;
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.listen.to_string(),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen.to_string(),
            source,
        })?;
        let (handles, drained) = handles(
            config,
            options.timeouts,
            storage,
            Router::new(config, resolver),
            client,
            local,
        )?;
        let app = Arc::new(App::new(handles, settings));
        app.status.set_listen(local.to_string());
        if !local.ip().is_loopback() && app.options.htpasswd.is_none() {
            tracing::warn!(
                addr = %local,
                "listening beyond loopback WITHOUT authentication: anyone who can reach this port can \
                 pull through this cache (set auth.htpasswd, or listen on 127.0.0.1)"
            );
        }
        Ok(Server {
            listener: Listener::capped(listener, config.limits.max_connections),
            app,
            drained,
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
        let eviction = self.eviction;
        let (server, drained) = self.into_parts();
        let collector = tokio::spawn(collect_periodically(app.clone(), eviction));
        let expirer = tokio::spawn(expire_uploads(app.clone()));
        let result = server.serve(shutdown).await;
        collector.abort();
        expirer.abort();
        let _ = collector.await;
        let _ = expirer.await;
        if let Err(e) = app.flush_uses().await {
            tracing::warn!(error = %e, "last-use times not saved");
        }
        // Handlers and revalidations hold the app, fills (which run on after their clients)
        // the fills: the signal fires when the last of them is gone.
        drop(app);
        let _ = tokio::time::timeout(grace, drained.wait()).await;
        result
    }

    /// The server without its drain signal, and the signal.
    fn into_parts(self) -> (Serving, crate::sync::Drained) {
        let Server {
            listener,
            app,
            drained,
            grace,
            tls,
            eviction: _,
        } = self;
        let serving = Serving {
            listener,
            app,
            grace,
            tls,
        };
        (serving, drained)
    }
}

/// What the accept loop needs of a [`Server`].
struct Serving {
    listener: Listener,
    app: Arc<App>,
    grace: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Serving {
    /// The accept loop, for plain http and TLS alike: each connection gets its slot, its
    /// handshake and head timeouts, and a stall timeout on its writes; on shutdown, stop
    /// accepting and let open connections finish for the grace period.
    async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        use hyper::body::Incoming;
        use hyper_util::rt::TokioIo;
        let Serving {
            mut listener,
            app,
            grace,
            tls,
        } = self;
        let limits = app.options.limits.clone();
        // Every request goes to `http::handle`, which parses the path itself: no router. On
        // plain http, requests carry their connection's sendfile queue.
        let service = move |sends: Option<SendfileQueue>| {
            let app = app.clone();
            hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let app = app.clone();
                let sends = sends.clone();
                async move {
                    let mut request = request.map(axum::body::Body::new);
                    if let Some(sends) = sends {
                        request.extensions_mut().insert(sends);
                    }
                    Ok::<_, std::convert::Infallible>(http::handle(app, request).await)
                }
            })
        };
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut shutdown => break,
            };
            let peer = accepted.peer;
            let slot = accepted.slot;
            let tls = tls.clone();
            let service = service.clone();
            let watcher = graceful.watcher();
            let limits = limits.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let (io, sends): (Box<dyn Io>, _) = match tls {
                    None => {
                        let (stream, sends) = SendfileStream::new(accepted.stream);
                        let stream = StallTimeout::new(stream, limits.idle_timeout);
                        (Box::new(stream), Some(sends))
                    }
                    Some(acceptor) => {
                        let stream = StallTimeout::new(accepted.stream, limits.idle_timeout);
                        let handshake = acceptor.accept(stream);
                        match tokio::time::timeout(limits.tls_handshake_timeout, handshake).await {
                            Ok(Ok(tls)) => (Box::new(tls), None),
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
                    .serve_connection(TokioIo::new(io), service(sends));
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

/// What the configuration says beyond the storage and the upstreams: the password file read
/// and parsed, the upstreams' credential helpers found, the extra headers checked.
fn settings(config: &CacheConfig) -> Result<Options, StartError> {
    let htpasswd = match &config.htpasswd {
        Some((realm, path)) => {
            let text =
                std::fs::read_to_string(path).map_err(|source| StartError::HtpasswdFile {
                    path: path.clone(),
                    source,
                })?;
            Some(
                Htpasswd::parse(realm, &path.display().to_string(), &text)
                    .map_err(StartError::Htpasswd)?,
            )
        }
        None => None,
    };
    for upstream in &config.upstreams {
        if let Some(helper) = &upstream.credential_helper {
            crate::upstream::check_program(helper, &upstream.name)
                .map_err(StartError::CredentialHelper)?;
        }
    }
    let mut extra_headers = Vec::new();
    for (name, value) in &config.headers {
        let name = HeaderName::try_from(name.as_str()).map_err(|e| StartError::Header(e.into()))?;
        let value =
            HeaderValue::try_from(value.as_str()).map_err(|e| StartError::Header(e.into()))?;
        extra_headers.push((name, value));
    }
    Ok(Options {
        extra_headers,
        htpasswd,
        delete_enabled: config.delete_enabled,
        secret: config.secret.clone(),
        serve_stale_on_404: config.serve_stale_on_404,
        limits: config.limits.clone(),
        max_size: config.max_size,
        platforms: platforms_header(&config.platforms),
    })
}

/// `proxy.platforms` as the manifest answers state them ([`crate::registry::PLATFORMS_HEADER`]);
/// none when unset. Platforms are `[a-z0-9_.-/]` (validated), always a header value.
fn platforms_header(platforms: &[crate::platform::Platform]) -> Option<HeaderValue> {
    let text: Vec<String> = platforms.iter().map(ToString::to_string).collect();
    HeaderValue::from_str(&text.join(", "))
        .ok()
        .filter(|_| !text.is_empty())
}

/// The handles the services share, on `storage`; on a bucket, this replica's place in the fleet
/// (reached at `local` unless `http.host` says otherwise).
fn handles(
    config: &CacheConfig,
    timeouts: Timeouts,
    storage: Storage,
    router: Router,
    client: UpstreamClient,
    local: SocketAddr,
) -> Result<(Handles, crate::sync::Drained), StartError> {
    let Storage {
        store,
        meta,
        bucket,
        replica,
    } = storage;
    let metrics = Arc::new(Metrics::default());
    let fleet = match &bucket {
        None => None,
        Some(bucket) => Some(fleet_for(
            config,
            bucket,
            &replica,
            local,
            timeouts.connect,
            &metrics,
        )?),
    };
    let limits = &config.limits;
    let (store, meta) = (Arc::new(store), Arc::new(meta));
    let buffers = Buffers::new(usize::try_from(limits.buffer_memory).unwrap_or(usize::MAX));
    let status = super::status::Status::default();
    let (held, drained) = crate::sync::drain();
    let fills = Fills::new(
        (store.clone(), meta.clone()),
        buffers.clone(),
        status.stored().clone(),
        FillLimits {
            max_blob_size: limits.max_blob_size,
            min_rate: limits.fill_min_rate,
            grace: timeouts.read,
            max_fills: limits.max_fills,
            max_fills_per_upstream: limits.max_fills_per_upstream,
        },
        held,
    );
    let handles = Handles {
        router,
        client,
        store,
        meta,
        fills,
        buffers,
        metrics,
        fleet,
        status,
    };
    Ok((handles, drained))
}

/// A connection's byte stream, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// The storage a server runs on.
pub(crate) struct Storage {
    pub(crate) store: BlobStore,
    pub(crate) meta: Metadata,
    /// The bucket, when the storage is one.
    pub(crate) bucket: Option<Bucket>,
    /// This process's name among the replicas of a bucket.
    pub(crate) replica: String,
}

/// Opens the configured storage: the local root (locked first, so a second process touches
/// nothing), and on S3 or Azure the bucket, checked once: when it cannot be reached the server still
/// starts (one error line naming the endpoint and bucket) and answers 503 for what needs it.
pub(crate) async fn open_storage(
    config: &CacheConfig,
    connect_timeout: Duration,
) -> Result<Storage, StartError> {
    let root = &config.root;
    let local = |source| StartError::Storage {
        root: root.clone(),
        source,
    };
    let replica = replica_name();
    match &config.storage {
        StorageBackend::Filesystem => {
            let store = BlobStore::open_files(root).map_err(local)?;
            let meta =
                Metadata::open_local(&root.join("metadata.redb")).map_err(StartError::Metadata)?;
            Ok(Storage {
                store,
                meta,
                bucket: None,
                replica,
            })
        }
        StorageBackend::S3(s3) => {
            let bucket = Bucket::s3(s3, connect_timeout).map_err(StartError::Bucket)?;
            open_bucket(root, bucket, s3.redirect, replica).await
        }
        StorageBackend::Azure(azure) => {
            let bucket = Bucket::azure(azure, connect_timeout).map_err(StartError::Bucket)?;
            open_bucket(root, bucket, azure.redirect, replica).await
        }
    }
}

/// The storage on `bucket` (its spool under `root`), the bucket checked once.
async fn open_bucket(
    root: &std::path::Path,
    bucket: Bucket,
    redirect: bool,
    replica: String,
) -> Result<Storage, StartError> {
    let store = BlobStore::open_bucket(root, bucket.clone(), redirect).map_err(|source| {
        StartError::Storage {
            root: root.to_owned(),
            source,
        }
    })?;
    match bucket.check().await {
        Ok(()) => tracing::info!(storage = %bucket.describe, "object storage reachable"),
        Err(e) => tracing::error!(
            "{e}: starting anyway; requests that need the storage answer 503 until it is back"
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
        Follower::new(config.secret.clone(), connect_timeout).map_err(StartError::Follower)?;
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
    client_cas: &[PathBuf],
) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    crate::upstream::install_crypto_provider();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .map_err(pem(certificate))?
        .collect::<Result<_, _>>()
        .map_err(pem(certificate))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: certificate.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(pem(key))?;
    // With http.tls.clientcas, clients must present a certificate signed by one of them.
    let builder = rustls::ServerConfig::builder();
    let builder = if client_cas.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for path in client_cas {
            for cert in CertificateDer::pem_file_iter(path).map_err(pem(path))? {
                roots
                    .add(cert.map_err(pem(path))?)
                    .map_err(|source| TlsError::ClientCa {
                        path: path.clone(),
                        source,
                    })?;
            }
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .map_err(TlsError::ClientVerifier)?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A PEM file's error, naming the file.
fn pem(path: &Path) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |source| TlsError::Pem {
        path: path.to_owned(),
        source,
    }
}

/// Abandons uploads nobody touched for `limits.upload_lifetime`, checking twice per lifetime
/// (at most once a minute).
async fn expire_uploads(app: Arc<App>) {
    let lifetime = app.options.limits.upload_lifetime;
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
            app.options.limits.upload_lifetime,
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

/// Why a collection failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CollectError {
    #[error("{0}")]
    Metadata(#[from] MetaError),
    /// The fleet's gc lease could not be claimed.
    #[error("{0}")]
    Lease(#[from] BucketError),
}

/// One collection; on a shared bucket only when no other replica collects (then `None`), and
/// followed by the clean-up of abandoned multipart uploads. `name`: the plan names the images
/// it evicts (see [`super::gc::collect`]).
pub(crate) async fn collect(
    meta: &Metadata,
    store: &BlobStore,
    fleet: Option<&Fleet>,
    policy: &super::gc::Policy,
    upload_lifetime: Duration,
    dry_run: bool,
    name: bool,
) -> Result<Option<super::gc::Plan>, CollectError> {
    let run = async {
        super::gc::collect(meta, store, policy, dry_run, name)
            .await
            .map_err(CollectError::from)
    };
    match fleet {
        Some(fleet) if !dry_run => fleet.collect_alone(run, upload_lifetime).await,
        _ => run.await.map(Some),
    }
}

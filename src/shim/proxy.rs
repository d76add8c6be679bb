//! The proxy dockerd talks to (`HTTPS_PROXY` / `HTTP_PROXY`), and the registry walk behind it.
//!
//! - `CONNECT host:port` for a registry with a mirror rule: answered 200, then TLS is terminated
//!   with a leaf certificate from the shim's CA and the registry API (`/v2/…`) is served by
//!   walking the resolver's endpoints. Any other path on that connection (a token service, blob
//!   storage: with a `*` rule every host is intercepted) passes through to `https://host:port`
//!   untouched, over a verified TLS connection. Every other `CONNECT` becomes a plain byte
//!   tunnel.
//! - Absolute-form `http://host/…` requests (insecure registries): the same walk, without TLS;
//!   other paths and other hosts are forwarded untouched.
//! - Origin-form `/v2/…` requests: the shim as a registry endpoint (a dockerd `registry-mirrors`
//!   entry for Docker Hub, or containerd with `?ns=`). `ns` must be a bare `host[:port]`
//!   ([`namespace::from_query`]: anything else is NAME_INVALID and nothing is sent), and a
//!   registry without a rule is held to the same ports as a CONNECT for a host without one.
//!
//! Who may connect, and which ports tunnels reach, is [`Access`]'s decision: a client outside
//! `--allow-clients` gets 403 for every request; beyond loopback, hosts without a rule are
//! reached on ports 443 and 5000 only (tunnels and forwards get 403, `?ns=` pulls DENIED).
//!
//! The walk: pulls (GET/HEAD of manifests, blobs, tag lists) try the mirrors in order, then the
//! origin; the client's `Authorization` goes to the origin only, and the origin's answers (401
//! challenges included) reach the client as they are, so dockerd's own login keeps working.
//! Everything else (pushes, the `/v2/` ping) goes to the origin only. A blob body that breaks
//! mid-way continues from the next endpoint with a `Range` request, so the client sees one body.
//!
//! A registry under a `mirrors-only` rule is never reached at all: pulls walk its mirrors alone
//! and, once every mirror failed, get the shim's own OCI error naming each mirror's failure (404
//! with the not-found code when every mirror answered 404, else 503 UNAVAILABLE), never a
//! mirror's error answer as it is (a mirror's 401 would send the client's origin credentials to
//! the mirror's token service). The shim answers the `/v2/` ping itself (200, no challenge: the
//! client's credentials are for the origin); pushes and every other request get DENIED, and
//! paths outside `/v2/` are not forwarded to that host.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::access::{Access, SHARED_PORTS};
use super::ca::CertificateAuthority;
use super::leaves::MintError;
use super::relay::{end_to_end, forwarded, relay, relay_resumable, streaming_body};
use super::status::{self, ShimStatus};
use crate::listen::{self, Listener, StallTimeout};
use crate::reference::{DOCKER_HUB, split_host_port};
use crate::registry::namespace;
use crate::registry::route::{self, V2Request};
use crate::registry::{ErrorCode, NAMESPACE_HEADER, RegistryError, error_response};
use crate::resolve::{Endpoints, OmittedOrigin, Resolver, Role};
use crate::sync;
use crate::upstream::{
    ConfigCredentials, HostOverrides, Target, UpstreamClient, UpstreamError, UpstreamRequest,
};

/// A request head must arrive within this (also how long an idle keep-alive connection stays).
const HEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// A connection whose writes make no progress for this long (a client that stopped reading) is
/// cut.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The shim's shared state.
pub struct Shim {
    resolver: RwLock<Arc<Resolver>>,
    client: Arc<UpstreamClient>,
    ca: Arc<CertificateAuthority>,
    overrides: HostOverrides,
    mirror_credentials: ConfigCredentials,
    access: Access,
    status: ShimStatus,
    /// The address it listens on, for its status page.
    listen: std::sync::OnceLock<String>,
}

impl std::fmt::Debug for Shim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shim").finish_non_exhaustive()
    }
}

impl Shim {
    pub fn new(
        resolver: Resolver,
        client: UpstreamClient,
        ca: CertificateAuthority,
        overrides: HostOverrides,
        mirror_credentials: ConfigCredentials,
        access: Access,
    ) -> Self {
        Shim {
            resolver: RwLock::new(Arc::new(resolver)),
            status: ShimStatus::default(),
            listen: std::sync::OnceLock::new(),
            client: Arc::new(client),
            ca: Arc::new(ca),
            overrides,
            mirror_credentials,
            access,
        }
    }

    /// Replaces the rules; connections in flight keep the ones they started with.
    pub fn reload(&self, resolver: Resolver) {
        *sync::write(&self.resolver) = Arc::new(resolver);
    }

    fn resolver(&self) -> Arc<Resolver> {
        sync::read(&self.resolver).clone()
    }

    /// Accepts connections until `shutdown` resolves.
    pub async fn run(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        // The same accept discipline as the cache: a connection cap from the open-file limit,
        // back-off when descriptors run out, head and stall timeouts.
        if let Ok(addr) = listener.local_addr() {
            let _ = self.listen.set(addr.to_string());
        }
        let mut listener = Listener::capped(listener, None);
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut shutdown => return,
            };
            let peer = accepted.peer;
            if !self.access.admits(peer.ip()) {
                tracing::warn!(%peer, "refused a client outside --allow-clients");
                tokio::spawn(refuse_client(accepted.stream, peer));
                continue;
            }
            let stream = StallTimeout::new(accepted.stream, STALL_TIMEOUT);
            let slot = accepted.slot;
            let shim = self.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let service = service_fn(move |request| {
                    let shim = shim.clone();
                    async move { Ok::<_, Infallible>(shim.proxy(request, peer).await) }
                });
                let connection = listen::http1(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, %peer, "proxy connection ended");
                }
            });
        }
    }

    /// One request on the proxy port.
    async fn proxy(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        if request.method() == Method::CONNECT {
            return self.connect(request, peer);
        }
        match host_and_port(request.uri()) {
            // Absolute form: a plain-http request for some host.
            Some(authority) => {
                let registry = registry_name(&authority, "http");
                let has_rule = self.resolver().has_rule(&registry);
                let port = request.uri().port_u16().unwrap_or(80);
                if has_rule && is_registry_api(request.uri().path()) {
                    self.registry(&registry, None, request).await
                } else if !has_rule && !self.access.reaches_port(port) {
                    tracing::warn!(%peer, %authority, reached = ?SHARED_PORTS, "refused a forward for a host without a rule");
                    port_refused(&authority)
                } else {
                    self.pass_through("http", &authority, request).await
                }
            }
            // Origin form: the shim itself is the registry endpoint, and shows its status page.
            None if request.method() == Method::GET
                && matches!(request.uri().path(), "/" | status::JSON_PATH) =>
            {
                self.status_page(request.uri().path() == status::JSON_PATH)
            }
            // `?ns=` names the registry: validated before anything is sent (a bare host[:port],
            // or NAME_INVALID), then held to the port rule in `walk`.
            None => match namespace::from_query(request.uri().query()) {
                Ok(ns) => {
                    let ns = ns.map(|ns| ns.to_string());
                    let registry = ns.clone().unwrap_or_else(|| DOCKER_HUB.to_owned());
                    self.registry(&registry, ns.as_deref(), request).await
                }
                Err(error) => {
                    tracing::warn!(%peer, method = %request.method(), path = %request.uri().path(), error = %error.message, "refused a request with an invalid ?ns=");
                    error_response(&error, request.method() == Method::HEAD)
                }
            },
        }
    }

    /// The status page (HTML) or its data (JSON): see [`super::status`].
    fn status_page(&self, json: bool) -> Response<Body> {
        let rules = self.resolver().rules();
        let listen = self.listen.get().map_or("", String::as_str);
        let data = self.status.snapshot(listen, &rules, |url| {
            let health = self.client.health(url);
            crate::page::health_json(health, Instant::now(), SystemTime::now())
        });
        let (content_type, body) = if json {
            ("application/json", data.to_string())
        } else {
            ("text/html; charset=utf-8", status::html(&data))
        };
        let mut response = Response::new(Body::from(body));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }

    fn connect(self: Arc<Self>, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let Some(authority) = host_and_port(request.uri()) else {
            return plain(StatusCode::BAD_REQUEST, "CONNECT needs host:port");
        };
        let registry = registry_name(&authority, "https");
        let intercept = self.resolver().has_rule(&registry);
        let port = request.uri().port_u16().unwrap_or(443);
        if !intercept && !self.access.reaches_port(port) {
            tracing::warn!(%peer, %authority, reached = ?SHARED_PORTS, "refused a CONNECT for a host without a rule");
            return port_refused(&authority);
        }
        tracing::info!(%peer, %authority, intercept, "CONNECT");
        tokio::spawn(async move {
            let upgraded = match hyper::upgrade::on(request).await {
                Ok(upgraded) => TokioIo::new(upgraded),
                Err(e) => {
                    tracing::warn!(error = %e, %authority, "CONNECT upgrade failed");
                    return;
                }
            };
            let result = if intercept {
                self.intercept(upgraded, registry, &authority).await
            } else {
                self.tunnel(upgraded, &authority, port).await
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, %authority, "CONNECT stream ended");
            }
        });
        Response::new(Body::empty())
    }

    /// Terminates TLS as `registry` and serves the decrypted stream: the registry walk for
    /// `/v2/…`, anything else passed through to `authority` (the CONNECT target).
    async fn intercept(
        self: Arc<Self>,
        stream: TokioIo<hyper::upgrade::Upgraded>,
        registry: String,
        authority: &str,
    ) -> Result<(), StreamError> {
        let (host, _) = split_host_port(&registry);
        let config = self.ca.server_config(host).await?;
        let tls = match tokio_rustls::TlsAcceptor::from(config).accept(stream).await {
            Ok(tls) => tls,
            Err(source) => return Err(StreamError::Handshake { registry, source }),
        };
        let registry: Arc<str> = Arc::from(registry);
        let authority: Arc<str> = Arc::from(authority);
        let service = service_fn(move |request: Request<Incoming>| {
            let shim = self.clone();
            let (registry, authority) = (registry.clone(), authority.clone());
            async move {
                Ok::<_, Infallible>(if is_registry_api(request.uri().path()) {
                    shim.registry(&registry, None, request).await
                } else {
                    shim.pass_through("https", &authority, request).await
                })
            }
        });
        Ok(listen::http1(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(tls), service)
            .await?)
    }

    /// Copies bytes both ways between the client and `authority`, at `port`.
    async fn tunnel(
        &self,
        upgraded: TokioIo<hyper::upgrade::Upgraded>,
        authority: &str,
        port: u16,
    ) -> Result<(), StreamError> {
        let (host, _) = split_host_port(authority);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let mut upstream = match self.overrides.get(bare) {
            Some(ip) => TcpStream::connect((ip, port)).await,
            None => TcpStream::connect((bare, port)).await,
        }
        .map_err(|source| StreamError::Connect {
            authority: authority.to_owned(),
            source,
        })?;
        let mut client = upgraded;
        tokio::io::copy_bidirectional(&mut client, &mut upstream)
            .await
            .map(drop)
            .map_err(StreamError::Copy)
    }

    /// Sends a request to its own host untouched, at `scheme://authority`: the client's method,
    /// path, query, headers and body, `Authorization` included (it is the client's own request
    /// to that host), and relays the answer as it is. Logs the path, never the query or headers.
    async fn pass_through(
        &self,
        scheme: &str,
        authority: &str,
        request: Request<Incoming>,
    ) -> Response<Body> {
        let registry = registry_name(authority, scheme);
        if let Some(omitted) = self
            .resolver()
            .resolve_repository(&registry, "")
            .omitted_origin
        {
            let path = request.uri().path();
            tracing::warn!(%authority, method = %request.method(), %path, "not forwarded: mirrors-only");
            return plain(
                StatusCode::FORBIDDEN,
                &format!(
                    "regmirror shim: {scheme}://{authority}{path} not forwarded: {registry} is never \
                     reached directly (mirrors-only, {})",
                    omitted.source
                ),
            );
        }
        let (parts, body) = request.into_parts();
        let target = Target::pass_through(&format!("{scheme}://{authority}"), authority)
            .with_client_authorization(parts.headers.get(header::AUTHORIZATION).cloned());
        let path = parts.uri.path().to_owned();
        let mut upstream = UpstreamRequest::new(parts.method.clone(), path.clone());
        upstream.query = parts.uri.query().map(str::to_owned);
        upstream.headers = end_to_end(&parts.headers);
        let body = (!body.is_end_stream()).then(|| streaming_body(body));
        match self.client.send_with_body(&target, &upstream, body).await {
            Ok(response) => {
                tracing::info!(
                    %authority,
                    method = %parts.method,
                    %path,
                    status = response.status().as_u16(),
                    "passed through"
                );
                relay(response)
            }
            Err(e) => {
                tracing::warn!(%authority, method = %parts.method, %path, error = %e, "pass-through failed");
                plain(
                    StatusCode::BAD_GATEWAY,
                    &format!("{scheme}://{authority}{path}: {e}"),
                )
            }
        }
    }

    /// The registry API for `registry`, served by walking its endpoints.
    /// A registry request for `registry`, walked; `ns`, the `?ns=` that named it. The shim
    /// scopes such a request by `ns` as a registry does, so an answer about a manifest, blob,
    /// tag list or referrers list says so in `OCI-Namespace` (whatever a mirror said about the
    /// `ns` the walk sent it), and an answer to a request without `?ns=` claims none.
    async fn registry(
        &self,
        registry: &str,
        ns: Option<&str>,
        request: Request<Incoming>,
    ) -> Response<Body> {
        let head = request.method() == Method::HEAD;
        let content = matches!(
            route::parse(request.uri().path()),
            Ok(V2Request::Manifest { .. }
                | V2Request::Blob { .. }
                | V2Request::Tags { .. }
                | V2Request::Referrers { .. })
        );
        let mut response = match self.walk(registry, request).await {
            Ok(response) => response,
            Err(error) => error_response(&error, head),
        };
        let headers = response.headers_mut();
        headers.remove(NAMESPACE_HEADER);
        let scoped = ns
            .filter(|_| content)
            .and_then(|ns| HeaderValue::from_str(ns).ok());
        if let Some(ns) = scoped {
            headers.insert(NAMESPACE_HEADER, ns);
        }
        response
    }

    async fn walk(
        &self,
        registry: &str,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, RegistryError> {
        let parsed = route::parse(request.uri().path())?;
        let repository = match &parsed {
            V2Request::Manifest { name, .. }
            | V2Request::Blob { name, .. }
            | V2Request::Tags { name }
            | V2Request::Upload { name, .. }
            | V2Request::Referrers { name, .. } => Some(name.clone()),
            V2Request::Base | V2Request::Catalog => None,
        };
        let endpoints = self
            .resolver()
            .resolve_repository(registry, repository.as_deref().unwrap_or(""));
        if endpoints.rule.is_none() {
            self.origin_ports_reached(registry, &endpoints)?;
        }
        let (parts, body) = request.into_parts();
        let client_authorization = parts.headers.get(header::AUTHORIZATION).cloned();
        let origins: Vec<Target> = endpoints
            .endpoints
            .iter()
            .filter(|e| e.role == Role::Origin)
            .map(|e| {
                Target::from_endpoint(e, None)
                    .with_client_authorization(client_authorization.clone())
            })
            .collect();
        let path = parts.uri.path().to_owned();
        let mut upstream = UpstreamRequest::new(parts.method.clone(), path);
        upstream.query = origin_query(parts.uri.query());
        upstream.headers = forwarded(&parts.headers);
        if let Some(repository) = &repository {
            upstream.scope = Some(format!("repository:{repository}:pull"));
        }
        let is_pull = matches!(parts.method, Method::GET | Method::HEAD)
            && matches!(
                parsed,
                V2Request::Manifest { .. }
                    | V2Request::Blob { .. }
                    | V2Request::Tags { .. }
                    | V2Request::Referrers { .. }
            );
        if !is_pull {
            if let Some(omitted) = &endpoints.omitted_origin {
                return mirrors_only_non_pull(registry, &parts.method, &parsed, omitted);
            }
            // Pushes and the ping go to the origin only, with the client's own credentials.
            upstream.headers = end_to_end(&parts.headers);
            return self.origin_only(&origins, &upstream, body, &parsed).await;
        }
        let mut targets: Vec<Target> = self.mirror_targets(&endpoints);
        targets.extend(origins);
        let walked = match &endpoints.omitted_origin {
            None => self
                .client
                .walk(&targets, &upstream)
                .await
                .map_err(|e| e.registry_error(registry)),
            Some(omitted) => self
                .client
                .walk_mirrors(&targets, &upstream)
                .await
                .map_err(|e| every_mirror_failed(registry, &parsed, omitted, &e)),
        };
        let (index, response) = match walked {
            Ok(answer) => answer,
            Err(error) => {
                self.status.failed(registry, &upstream.path, &error.message);
                return Err(error);
            }
        };
        let passed: Vec<&str> = targets[..index].iter().map(|t| &*t.base).collect();
        self.status
            .served(registry, &upstream.path, &targets[index].base, &passed);
        tracing::info!(
            registry,
            path = %upstream.path,
            endpoint = %targets[index].base,
            status = response.status().as_u16(),
            "pull"
        );
        let resumable = matches!(parsed, V2Request::Blob { .. })
            && parts.method == Method::GET
            && !upstream.headers.contains_key(header::RANGE)
            && response.status() == reqwest::StatusCode::OK;
        if resumable {
            let rest = targets[index + 1..].to_vec();
            return Ok(relay_resumable(
                response,
                self.client.clone(),
                rest,
                upstream,
            ));
        }
        Ok(relay(response))
    }

    /// For a registry without a rule (one a client named with `?ns=`): whether every origin
    /// endpoint's port is one [`Access`] lets hosts without a rule reach, as for CONNECT; DENIED
    /// (403) before anything is sent when not.
    fn origin_ports_reached(
        &self,
        registry: &str,
        endpoints: &Endpoints,
    ) -> Result<(), RegistryError> {
        for endpoint in endpoints
            .endpoints
            .iter()
            .filter(|e| e.role == Role::Origin)
        {
            let port = url::Url::parse(&endpoint.url)
                .ok()
                .and_then(|url| url.port_or_known_default());
            if port.is_some_and(|port| self.access.reaches_port(port)) {
                continue;
            }
            tracing::warn!(registry, endpoint = %endpoint.url, reached = ?SHARED_PORTS, "refused a request for a registry without a rule");
            return Err(RegistryError::new(
                ErrorCode::Denied,
                format!(
                    "{registry}: {} refused: listening beyond loopback, registries without a \
                     mirror rule are reached on ports {SHARED_PORTS:?} only",
                    endpoint.url
                ),
            ));
        }
        Ok(())
    }

    /// The mirrors of `endpoints`, each with the credentials configured for its own host.
    fn mirror_targets(&self, endpoints: &Endpoints) -> Vec<Target> {
        endpoints
            .endpoints
            .iter()
            .filter(|e| e.role == Role::Mirror)
            .map(|e| {
                self.mirror_credentials
                    .apply(Target::from_endpoint(e, None))
            })
            .collect()
    }

    /// Sends a non-pull request to the origin endpoints in order (https, then http for an
    /// insecure origin), with its body.
    async fn origin_only(
        &self,
        origins: &[Target],
        request: &UpstreamRequest,
        body: Incoming,
        parsed: &V2Request,
    ) -> Result<Response<Body>, RegistryError> {
        let mut body = Some(streaming_body(body));
        let mut last_error = String::from("no origin endpoint");
        for (i, origin) in origins.iter().enumerate() {
            // A request body can be sent once; only a body-less request may try a second origin.
            let this_body = if i + 1 == origins.len() || *parsed == V2Request::Base {
                body.take()
            } else {
                None
            };
            match self.client.send_with_body(origin, request, this_body).await {
                Ok(response) => return Ok(relay(response)),
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(RegistryError::new(
            ErrorCode::Unavailable,
            format!("origin unreachable: {last_error}"),
        ))
    }
}

/// Why an intercepted or tunnelled CONNECT stream ended early (logged, at debug level).
#[derive(Debug, thiserror::Error)]
enum StreamError {
    /// No leaf certificate for the registry.
    #[error(transparent)]
    Leaf(#[from] MintError),
    #[error("TLS handshake as {registry}: {source}")]
    Handshake {
        registry: String,
        #[source]
        source: std::io::Error,
    },
    /// The decrypted HTTP connection failed.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("tunnel to {authority}: {source}")]
    Connect {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    /// Copying a tunnel's bytes failed.
    #[error(transparent)]
    Copy(std::io::Error),
}

/// A request that is not a pull, for a registry whose origin is never reached: the `/v2/` ping is
/// answered here (200, no challenge), anything else is DENIED.
fn mirrors_only_non_pull(
    registry: &str,
    method: &Method,
    parsed: &V2Request,
    omitted: &OmittedOrigin,
) -> Result<Response<Body>, RegistryError> {
    if *parsed == V2Request::Base {
        let mut response = Response::new(Body::from("{}"));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            HeaderName::from_static("docker-distribution-api-version"),
            HeaderValue::from_static("registry/2.0"),
        );
        return Ok(response);
    }
    Err(RegistryError::new(
        ErrorCode::Denied,
        format!(
            "{registry}: {method} is not a pull, and the origin {} is never reached (mirrors-only, \
             {}): pushes and other requests have nowhere to go",
            omitted.url, omitted.source
        ),
    ))
}

/// The error of a pull none of the mirrors of a `mirrors-only` rule served: the not-found code of
/// the request when every mirror answered 404, else UNAVAILABLE; the message names each mirror's
/// failure and the rule.
fn every_mirror_failed(
    registry: &str,
    parsed: &V2Request,
    omitted: &OmittedOrigin,
    error: &UpstreamError,
) -> RegistryError {
    let code = match parsed {
        _ if error.is_throttled() => ErrorCode::TooManyRequests,
        _ if !error.is_not_found() => ErrorCode::Unavailable,
        V2Request::Blob { .. } => ErrorCode::BlobUnknown,
        V2Request::Manifest { .. } | V2Request::Referrers { .. } => ErrorCode::ManifestUnknown,
        _ => ErrorCode::NameUnknown,
    };
    let answer = RegistryError::new(
        code,
        format!(
            "{registry}: every mirror failed ({error}), and the origin {} is never tried \
             (mirrors-only, {})",
            omitted.url, omitted.source
        ),
    );
    answer.with_retry_after(error.retry_after())
}

/// The registry name a CONNECT or absolute URI names: the default port dropped.
fn registry_name(authority: &str, scheme: &str) -> String {
    let default = if scheme == "https" { ":443" } else { ":80" };
    authority
        .strip_suffix(default)
        .unwrap_or(authority)
        .to_ascii_lowercase()
}

/// `host[:port]` of an absolute-form or CONNECT target, without user info: the result names
/// targets in logs and error texts, which must never carry credentials.
fn host_and_port(uri: &hyper::Uri) -> Option<String> {
    let host = uri.host()?;
    Some(match uri.port_u16() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

/// Whether `path` is the registry API, which the shim serves by walking the endpoints; every
/// other path on a registry's host belongs to that host alone.
fn is_registry_api(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

/// The client's query without `ns` (the walker adds its own for mirrors).
fn origin_query(query: Option<&str>) -> Option<String> {
    let kept: Vec<(String, String)> = url::form_urlencoded::parse(query?.as_bytes())
        .filter(|(k, _)| k != "ns")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        return None;
    }
    Some(
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(kept)
            .finish(),
    )
}

/// Answers every request of a client outside `--allow-clients` with 403, then closes.
async fn refuse_client(stream: TcpStream, peer: SocketAddr) {
    let service = service_fn(move |_request: Request<Incoming>| async move {
        let mut response = plain(
            StatusCode::FORBIDDEN,
            &format!(
                "regmirror shim: {} may not use this proxy (not in --allow-clients)",
                peer.ip()
            ),
        );
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        Ok::<_, Infallible>(response)
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// The answer to a tunnel or forward for a host without a rule, on a port a shim listening
/// beyond loopback does not reach.
fn port_refused(authority: &str) -> Response<Body> {
    plain(
        StatusCode::FORBIDDEN,
        &format!(
            "regmirror shim: {authority} refused: listening beyond loopback, hosts without a \
             mirror rule are reached on ports {SHARED_PORTS:?} only"
        ),
    )
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(format!("{text}\n")));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names() {
        assert_eq!(
            registry_name("reg.example.test:443", "https"),
            "reg.example.test"
        );
        assert_eq!(
            registry_name("reg.example.test:5000", "https"),
            "reg.example.test:5000"
        );
        assert_eq!(registry_name("Reg.io:80", "http"), "reg.io");
        assert_eq!(registry_name("reg.io:443", "http"), "reg.io:443");
    }

    #[test]
    fn targets_lose_user_info() {
        for (uri, expected) in [
            (
                "http://user:secret@reg.example.test:5000/v2/",
                Some("reg.example.test:5000"),
            ),
            ("http://reg.example.test/v2/", Some("reg.example.test")),
            ("http://[::1]:5000/", Some("[::1]:5000")),
            ("/v2/", None),
        ] {
            let uri: hyper::Uri = uri.parse().unwrap();
            assert_eq!(host_and_port(&uri).as_deref(), expected, "{uri}");
        }
        let connect: hyper::Uri = "reg.example.test:443".parse().unwrap();
        assert_eq!(
            host_and_port(&connect).as_deref(),
            Some("reg.example.test:443")
        );
    }

    #[test]
    fn registry_api_paths() {
        for path in ["/v2", "/v2/", "/v2/library/app/manifests/1", "/v2/_catalog"] {
            assert!(is_registry_api(path), "{path}");
        }
        for path in ["/", "/token", "/v2x", "/v20/", "/oauth/token", "/v1/_ping"] {
            assert!(!is_registry_api(path), "{path}");
        }
    }

    #[test]
    fn queries_lose_ns() {
        assert_eq!(origin_query(Some("ns=docker.io")), None);
        assert_eq!(
            origin_query(Some("n=10&ns=x&last=a")).as_deref(),
            Some("n=10&last=a")
        );
        assert_eq!(origin_query(None), None);
    }

    #[test]
    fn mirrors_only_errors() {
        let omitted = OmittedOrigin {
            url: Arc::from("https://reg.io"),
            source: Arc::from("m.json:1:80 mirror-registries[0].mirrors-only"),
        };
        let digest = format!("sha256:{}", "a".repeat(64));
        let failed = |path: &str, not_found: bool| {
            let summary = "http://m1: HTTP 404 Not Found".to_owned();
            let error = if not_found {
                UpstreamError::NotFound { summary }
            } else {
                UpstreamError::Failed { summary }
            };
            every_mirror_failed("reg.io", &route::parse(path).unwrap(), &omitted, &error)
        };
        for (path, code) in [
            ("/v2/team/app/manifests/v1", ErrorCode::ManifestUnknown),
            (
                &format!("/v2/team/app/blobs/{digest}"),
                ErrorCode::BlobUnknown,
            ),
            ("/v2/team/app/tags/list", ErrorCode::NameUnknown),
            (
                &format!("/v2/team/app/referrers/{digest}"),
                ErrorCode::ManifestUnknown,
            ),
        ] {
            assert_eq!(failed(path, true).code, code, "{path}");
            assert_eq!(failed(path, false).code, ErrorCode::Unavailable, "{path}");
        }
        assert_eq!(
            failed("/v2/team/app/manifests/v1", true).message,
            "reg.io: every mirror failed (http://m1: HTTP 404 Not Found), and the origin \
             https://reg.io is never tried (mirrors-only, m.json:1:80 mirror-registries[0].mirrors-only)"
        );

        let ping = mirrors_only_non_pull("reg.io", &Method::GET, &V2Request::Base, &omitted)
            .expect("the ping is answered");
        assert_eq!(ping.status(), StatusCode::OK);
        assert_eq!(
            ping.headers()["docker-distribution-api-version"],
            "registry/2.0"
        );
        let push = route::parse("/v2/team/app/blobs/uploads/").unwrap();
        let refused = mirrors_only_non_pull("reg.io", &Method::POST, &push, &omitted).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Denied);
        assert!(
            refused.message.contains("POST is not a pull"),
            "{refused:?}"
        );
    }
}

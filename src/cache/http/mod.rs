//! The cache's HTTP surface: one handler that parses the `/v2/` path into a [`V2Request`], asks
//! the service that decides it (blobs, manifests and tags, referrers, pushes) and turns its
//! answer into a response ([`response`]; the lists in [`lists`]).
//!
//! Every `/v2/` response carries `Docker-Distribution-API-Version`, and every answer about a
//! manifest, blob, tag list or referrers list routed by `?ns=` its `OCI-Namespace`; every error is OCI error JSON
//! (built by [`crate::registry::error_response`] only); every request is logged once with its
//! repository, reference, cache result, upstream and duration.

mod lists;
mod response;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;

use super::App;
use super::auth::Refusal;
use super::blobs::BlobRequest;
use super::metrics::{self, Levels};
use super::routing::Route;
use super::{fleet, push, status, uploads};
use crate::registry::route::{self, ManifestRef, V2Request};
use crate::registry::{
    API_VERSION, API_VERSION_HEADER, CACHE_HEADER, CacheOutcome, ErrorCode, NAMESPACE_HEADER,
    PLATFORMS_HEADER, RegistryError, error_response,
};
use crate::sendfile::SendfileQueue;
use lists::Query;

/// The part of the API a request is for: the duration histogram's `kind`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Area {
    Base,
    Catalog,
    Tags,
    Manifest,
    Blob,
    Upload,
    Referrers,
    /// The fleet's internal route.
    Fleet,
    /// Anything else: `/healthz`, `/metrics`, the status page, paths outside the API.
    #[default]
    Other,
}

impl Area {
    fn of(request: &V2Request) -> Self {
        match request {
            V2Request::Base => Area::Base,
            V2Request::Catalog => Area::Catalog,
            V2Request::Tags { .. } => Area::Tags,
            V2Request::Manifest { .. } => Area::Manifest,
            V2Request::Blob { .. } => Area::Blob,
            V2Request::Upload { .. } => Area::Upload,
            V2Request::Referrers { .. } => Area::Referrers,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Area::Base => "base",
            Area::Catalog => "catalog",
            Area::Tags => "tags",
            Area::Manifest => "manifest",
            Area::Blob => "blob",
            Area::Upload => "upload",
            Area::Referrers => "referrers",
            Area::Fleet => "fleet",
            Area::Other => "other",
        }
    }
}

/// What the request log records about how a request was served.
#[derive(Debug, Default)]
struct Outcome {
    area: Area,
    /// How the cache served it (none for an error, a push, or a request of another kind).
    cache: Option<CacheOutcome>,
    /// A push: an upload, or a manifest PUT.
    pushed: bool,
    upstream: Option<String>,
    repository: Option<String>,
    reference: Option<String>,
    /// The upstream's metrics label (bounded) and its counters, for the status page.
    label: Option<String>,
    counters: Option<Arc<status::UpstreamCounters>>,
    /// The OCI error code and message of an error answer.
    error: Option<(&'static str, String)>,
    /// The `?ns=` that chose the upstream, for `OCI-Namespace`.
    namespace: Option<String>,
}

impl Outcome {
    /// The request log's `cache=` word.
    fn word(&self) -> &'static str {
        match (&self.error, self.pushed, self.cache) {
            (Some(_), _, _) => "error",
            (None, true, _) => "push",
            (None, false, Some(cache)) => cache.as_str(),
            (None, false, None) => "-",
        }
    }

    /// Records the route; returns the upstream's status counters.
    fn note(
        &mut self,
        app: &App,
        route: &Route,
        reference: Option<&str>,
    ) -> Arc<status::UpstreamCounters> {
        let counters = app.status.counters(route.upstream.label());
        self.upstream = Some(route.upstream.name.clone());
        self.label = Some(route.upstream.label().to_owned());
        self.counters = Some(counters.clone());
        self.repository = Some(route.repository.clone());
        self.reference = reference.map(str::to_owned);
        counters
    }
}

/// The one entry point for every request.
pub(crate) async fn handle(app: Arc<App>, request: Request) -> Response {
    let started = Instant::now();
    let (request, body) = request.into_parts();
    let mut outcome = Outcome::default();
    let mut response = answer(&app, &request, body, &mut outcome).await;
    add_headers(&app, &mut response, &outcome);
    record(&app, &request, &response, &outcome, started);
    response
}

/// The answer to a request: `/healthz` and the fleet's route as they are, everything else
/// behind `auth.htpasswd` (when set) and with the API version header.
async fn answer(app: &Arc<App>, request: &Parts, body: Body, outcome: &mut Outcome) -> Response {
    let path = request.uri.path();
    if path == "/healthz" {
        return response::text(StatusCode::OK, "text/plain", "ok\n");
    }
    if path.starts_with(fleet::FILLS_PATH) {
        outcome.area = Area::Fleet;
        return fleet_fill(app, request).await;
    }
    // With auth.htpasswd, everything but /healthz needs it (/metrics too).
    let refusal = match &app.options.htpasswd {
        Some(htpasswd) => {
            let header = request
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            htpasswd.authenticate(header).await.err()
        }
        None => None,
    };
    let result = match refusal {
        Some(Refusal::Unauthorized) => Err(RegistryError::new(
            ErrorCode::Unauthorized,
            "authentication required",
        )),
        Some(Refusal::Busy) => Err(RegistryError::new(
            ErrorCode::TooManyRequests,
            "too many password checks in progress; try again shortly",
        )),
        None => authenticated(app, request, body, outcome).await,
    };
    let mut response = match result {
        Ok(response) => response,
        Err(error) => {
            outcome.cache = None;
            // A path outside the API (a browser's /favicon.ico) is no registry error.
            if error.code != ErrorCode::NotFound {
                app.metrics.error(error.code.as_str());
            }
            outcome.error = Some((error.code.as_str(), error.message.clone()));
            error_response(&error, request.method == Method::HEAD)
        }
    };
    response
        .headers_mut()
        .insert(API_VERSION_HEADER, HeaderValue::from_static(API_VERSION));
    if refusal == Some(Refusal::Unauthorized) {
        let challenge = app.options.htpasswd.as_ref().map(|h| h.challenge());
        if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
    }
    response
}

/// An authenticated request: the status page, the metrics, or the registry API.
async fn authenticated(
    app: &Arc<App>,
    request: &Parts,
    body: Body,
    outcome: &mut Outcome,
) -> Result<Response, RegistryError> {
    match request.uri.path() {
        "/" => Ok(status_page(app, false)),
        status::JSON_PATH => Ok(status_page(app, true)),
        "/metrics" => Ok(response::text(
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            &app.metrics.render(Levels {
                fills: app.blobs.fills().in_flight(),
                buffer_bytes: app.blobs.buffer_bytes(),
                manifest_memo_bytes: app.manifests.memo_bytes(),
                blob_memo_bytes: app.blobs.memo_bytes(),
            }),
        )),
        _ => registry(app, request, body, outcome).await,
    }
}

/// What every response gets: how a manifest or blob was served, the `?ns=` it was scoped by,
/// `nosniff`, `http.headers`.
fn add_headers(app: &App, response: &mut Response, outcome: &Outcome) {
    // How a manifest or blob was served, for `regmirror warm` and anyone debugging a pull.
    let served = outcome
        .cache
        .filter(|_| matches!(outcome.area, Area::Manifest | Area::Blob));
    if let Some(cache) = served {
        response
            .headers_mut()
            .insert(CACHE_HEADER, HeaderValue::from_static(cache.as_str()));
    }
    // Answers about content only: uploads (refused on `?ns=` routes) and lists of the whole
    // registry are no part of a namespace's content.
    let scoped = matches!(
        outcome.area,
        Area::Manifest | Area::Blob | Area::Tags | Area::Referrers
    );
    if let Some(ns) = outcome.namespace.as_deref().filter(|_| scoped) {
        response::insert(response.headers_mut(), NAMESPACE_HEADER, ns);
    }
    // `proxy.platforms`, for `regmirror warm` to walk only those children of an index.
    let platforms = app.options.platforms.as_ref();
    if let Some(platforms) = platforms.filter(|_| outcome.area == Area::Manifest) {
        response
            .headers_mut()
            .insert(PLATFORMS_HEADER, platforms.clone());
    }
    // No answer is ever run as another type than it says (a manifest as a page), as
    // distribution's answers say too.
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    for (name, value) in &app.options.extra_headers {
        let headers = response.headers_mut();
        // distribution's example config adds `X-Content-Type-Options: nosniff` itself.
        if !headers.get_all(name).iter().any(|v| v == value) {
            headers.append(name, value.clone());
        }
    }
}

/// Counts the request in the metrics and on the status page, and logs it.
fn record(app: &App, request: &Parts, response: &Response, outcome: &Outcome, started: Instant) {
    let (method, path) = (&request.method, request.uri.path());
    app.metrics
        .answered(outcome.area.as_str(), started.elapsed());
    if let (Some(label), Some(counters), Some(repository)) =
        (&outcome.label, &outcome.counters, &outcome.repository)
    {
        let is_tag = outcome.area == Area::Manifest && method != Method::PUT;
        app.status.answered(&status::Answered {
            label,
            counters,
            repository,
            tag: outcome
                .reference
                .as_deref()
                .filter(|r| is_tag && !r.contains(':')),
            cache: outcome.cache,
            status: response.status().as_u16(),
            error: outcome.error.as_ref().map(|(c, m)| (*c, m.as_str())),
            method: method.as_str(),
            path,
        });
    }
    tracing::info!(
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        repository = outcome.repository.as_deref().unwrap_or("-"),
        reference = outcome.reference.as_deref().unwrap_or("-"),
        cache = outcome.word(),
        upstream = outcome.upstream.as_deref().unwrap_or("-"),
        ms = %format_args!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
        "request"
    );
}

/// A `/v2/` request: parsed, routed, and answered by the service that decides it.
async fn registry(
    app: &Arc<App>,
    request: &Parts,
    body: Body,
    outcome: &mut Outcome,
) -> Result<Response, RegistryError> {
    let parsed = route::parse(request.uri.path())?;
    outcome.area = Area::of(&parsed);
    let method = &request.method;
    let head = *method == Method::HEAD;
    let query = Query::parse(request.uri.query());
    // The route, and the `?ns=` that chose it (echoed in `OCI-Namespace`).
    let route_for = |name: &str, outcome: &mut Outcome| {
        let domain = request.headers.get("domain").and_then(|v| v.to_str().ok());
        let router = app.upstreams.router();
        let route = router.route(name, query.ns.as_deref(), domain)?;
        outcome.namespace = query.ns.clone().filter(|_| router.scopes_by_ns());
        Ok::<_, RegistryError>(route)
    };
    match (&parsed, method.clone()) {
        (V2Request::Base, Method::GET | Method::HEAD) => {
            Ok(response::json(StatusCode::OK, "{}".into(), head))
        }
        (V2Request::Catalog, Method::GET) => lists::catalog(app, &query).await,
        (V2Request::Tags { name }, Method::GET) => {
            let route = route_for(name, outcome)?;
            outcome.note(app, &route, None);
            may_fetch(app, &route)?;
            lists::tags(app, &route, name, &query).await
        }
        (V2Request::Manifest { name, reference }, Method::GET | Method::HEAD) => {
            let route = route_for(name, outcome)?;
            outcome.note(app, &route, Some(reference.as_str()));
            may_fetch(app, &route)?;
            let answer = app.manifests.get(&route, reference).await?;
            outcome.cache = Some(answer.outcome);
            Ok(response::manifest(&answer.manifest, head, answer.warning))
        }
        (V2Request::Blob { name, digest }, Method::GET | Method::HEAD) => {
            let route = route_for(name, outcome)?;
            let counters = outcome.note(app, &route, Some(digest.as_str()));
            may_fetch(app, &route)?;
            let range = request
                .headers
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok());
            let answer = app
                .blobs
                .get(&route, digest, BlobRequest { head, range })
                .await?;
            outcome.cache = Some(answer.outcome);
            let sends = request.extensions.get::<SendfileQueue>().cloned();
            Ok(response::blob(
                answer,
                digest,
                &app.metrics,
                &counters,
                sends,
            ))
        }
        (V2Request::Referrers { name, subject }, Method::GET) => {
            let route = route_for(name, outcome)?;
            outcome.note(app, &route, Some(subject.as_str()));
            may_fetch(app, &route)?;
            let listing = app.referrers.list(&route, subject).await?;
            outcome.cache = Some(listing.outcome);
            lists::referrers(name, subject, listing, &query)
        }
        (V2Request::Upload { name, .. }, _)
        | (V2Request::Manifest { name, .. }, Method::PUT | Method::DELETE)
        | (V2Request::Blob { name, .. }, Method::DELETE) => {
            let route = route_for(name, outcome)?;
            push_request(app, &parsed, &route, request, body, outcome).await
        }
        _ => Err(unsupported(method)),
    }
}

/// The fetch policy (`allow`/`deny`) for a read of `route`: a repository it refuses is 403
/// DENIED naming the rule, counted in the metrics and on the status page, before anything is read
/// from the store or asked of the upstream. Pushed (local) repositories have no policy.
fn may_fetch(app: &App, route: &Route) -> Result<(), RegistryError> {
    let upstream = &route.upstream;
    let Err(refusal) = upstream.may_fetch(&route.repository) else {
        return Ok(());
    };
    app.metrics.refused(upstream.label(), &refusal.rule);
    app.status
        .refused(upstream.label(), &route.repository, &refusal);
    Err(RegistryError::new(
        ErrorCode::Denied,
        format!(
            "{} on {}: the fetch policy refuses it: {refusal}",
            route.repository, upstream.name
        ),
    ))
}

/// What a push changes: an upload, a manifest PUT, or a DELETE (the requests [`registry`] sends
/// here), on a local repository only.
async fn push_request(
    app: &App,
    parsed: &V2Request,
    route: &Route,
    request: &Parts,
    body: Body,
    outcome: &mut Outcome,
) -> Result<Response, RegistryError> {
    let method = &request.method;
    let refuse = |name: &str| push::refuse(app, route, name);
    match (parsed, method.clone()) {
        (V2Request::Upload { name, id }, _) => {
            outcome.note(app, route, None);
            if !route.upstream.local {
                return Err(refuse(name));
            }
            outcome.pushed = true;
            uploads::upload(app, route, name, id.as_deref(), request, body).await
        }
        (V2Request::Manifest { name, reference }, Method::PUT) => {
            outcome.note(app, route, Some(reference.as_str()));
            if !route.upstream.local {
                return Err(refuse(name));
            }
            outcome.pushed = true;
            push::put_manifest(app, route, name, reference, request, body).await
        }
        (V2Request::Manifest { name, reference }, Method::DELETE) => {
            if !route.upstream.local {
                return Err(refuse(name));
            }
            push::delete(app, route, reference, false).await
        }
        (V2Request::Blob { name, digest }, Method::DELETE) => {
            if !route.upstream.local {
                return Err(refuse(name));
            }
            push::delete(app, route, &ManifestRef::Digest(digest.clone()), true).await
        }
        _ => Err(unsupported(method)),
    }
}

fn unsupported(method: &Method) -> RegistryError {
    RegistryError::new(
        ErrorCode::Unsupported,
        format!("{method} is not supported here"),
    )
}

/// The status page (HTML) or its data (JSON): see [`super::status`].
fn status_page(app: &App, json: bool) -> Response {
    let data = app.status.snapshot(
        &status::upstream_views(&app.upstreams),
        &app.blobs.fills().progress(20),
        app.options.max_size,
    );
    if json {
        // Plain data (strings, integers, a finite ratio): it always serialises.
        let body = serde_json::to_string(&data).unwrap_or_default();
        response::json(StatusCode::OK, body, false)
    } else {
        response::text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            &status::html(&data),
        )
    }
}

/// The internal route of a fleet on one bucket: another replica streams this one's download in
/// flight (see [`super::fleet`]). Refused (403 `DENIED`) without the fleet's signature.
async fn fleet_fill(app: &App, request: &Parts) -> Response {
    let path = request.uri.path();
    let head = request.method == Method::HEAD;
    let signature = request
        .headers
        .get(fleet::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let secret = app.fleet.as_ref().and(app.options.secret.as_ref());
    if !fleet::verify(secret, path, signature, super::meta::now()) {
        let refusal = RegistryError::new(
            ErrorCode::Denied,
            "the fleet's internal route needs an unexpired signature of a replica with the same \
             http.secret",
        );
        return error_response(&refusal, head);
    }
    let no_fill =
        |why: &str| error_response(&RegistryError::new(ErrorCode::BlobUnknown, why), head);
    let fill = fleet::parse_fill_path(path)
        .and_then(|(upstream, digest)| app.blobs.fills().get(&upstream, &digest));
    let Some(fill) = fill else {
        return no_fill("no download of it in flight here");
    };
    let Ok(size) = fill.started().await else {
        return no_fill("its download failed");
    };
    // A follower going on after a broken stream asks for the rest; without a size, all of it.
    let range = request
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .zip(size)
        .and_then(|(range, size)| super::range::parse_range(range, size).ok().flatten());
    let start = range.map_or(0, |r| r.start);
    let sends = request.extensions.get::<SendfileQueue>().cloned();
    let mut response = Response::new(Body::from_stream(fill.reader(start, None, sends)));
    if range.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    let headers = response.headers_mut();
    if let (Some(range), Some(size)) = (range, size) {
        let span = format!("bytes {}-{}/{size}", range.start, size - 1);
        response::insert(headers, header::CONTENT_RANGE.as_str(), &span);
    }
    if let Some(size) = size {
        let length = size - start;
        response::insert(
            headers,
            header::CONTENT_LENGTH.as_str(),
            &length.to_string(),
        );
    }
    response
}

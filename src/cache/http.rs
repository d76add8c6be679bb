//! The cache's HTTP surface: one handler that parses the `/v2/` path into a [`V2Request`] and
//! serves it from the store, joining or starting upstream fills on a miss.
//!
//! Every `/v2/` response carries `Docker-Distribution-API-Version`; every error is OCI error JSON
//! (built by [`crate::registry::error_response`] only); every request is logged once with its repository,
//! reference, cache result, upstream and duration.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt as _;

use super::auth::Refusal;
use super::manifest::CachedManifest;
use super::metrics::Source;
use super::range::{ByteRange, parse_range};
use super::routing::Route;
use super::store::Committed;
use super::{App, Hit};
use super::{push, referrers, status, uploads};
use crate::reference::Digest;
use crate::registry::route::{self, ManifestRef, V2Request};
use crate::registry::{
    API_VERSION, API_VERSION_HEADER, CACHE_HEADER, CONTENT_DIGEST_HEADER, CacheOutcome, ErrorCode,
    RegistryError, error_response, internal,
};

/// What the request log records about how a request was served.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The API area, for the duration histogram.
    pub kind: &'static str,
    /// How the cache served it (none for an error, a push, or a request of another kind).
    pub cache: Option<CacheOutcome>,
    /// A push: an upload, or a manifest PUT.
    pub pushed: bool,
    pub upstream: Option<String>,
    pub repository: Option<String>,
    pub reference: Option<String>,
    /// The upstream's metrics label (bounded) and its counters, for the status page.
    pub label: Option<String>,
    pub counters: Option<Arc<status::UpstreamCounters>>,
    /// The OCI error code and message of an error answer.
    pub error: Option<(&'static str, String)>,
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
}

/// The one entry point for every request.
pub async fn handle(app: Arc<App>, request: Request) -> Response {
    let started = Instant::now();
    let (request, body) = request.into_parts();
    let method = request.method.clone();
    let path = request.uri.path().to_owned();
    let mut outcome = Outcome::default();
    let mut response = if path == "/healthz" {
        text_response(StatusCode::OK, "text/plain", "ok\n")
    } else if path.starts_with(super::fleet::FILLS_PATH) {
        outcome.kind = "fleet";
        fleet_fill(&app, &request).await
    } else {
        // With auth.htpasswd, everything but /healthz needs it (/metrics too).
        let refusal = match &app.htpasswd {
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
            None if path == "/" => Ok(status_page(&app, false)),
            None if path == status::JSON_PATH => Ok(status_page(&app, true)),
            None if path == "/metrics" => Ok(text_response(
                StatusCode::OK,
                super::metrics::CONTENT_TYPE,
                &app.metrics.render(super::metrics::Levels {
                    fills: app.fills.in_flight(),
                    buffer_bytes: app.buffers.in_use(),
                    manifest_memo_bytes: app.memo.bytes(),
                    blob_memo_bytes: app.blob_memo.bytes(),
                }),
            )),
            None => registry(&app, &request, body, &mut outcome).await,
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
                error_response(&error, method == Method::HEAD)
            }
        };
        response
            .headers_mut()
            .insert(API_VERSION_HEADER, HeaderValue::from_static(API_VERSION));
        if refusal == Some(Refusal::Unauthorized) {
            let challenge = app.htpasswd.as_ref().map(|h| h.challenge());
            if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
            }
        }
        response
    };
    // How a manifest or blob was served, for `regmirror warm` and anyone debugging a pull.
    if let Some(cache) = outcome
        .cache
        .filter(|_| matches!(outcome.kind, "manifest" | "blob"))
    {
        response
            .headers_mut()
            .insert(CACHE_HEADER, HeaderValue::from_static(cache.as_str()));
    }
    // No answer is ever run as another type than it says (a manifest as a page), as
    // distribution's answers say too.
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    for (name, value) in &app.extra_headers {
        let headers = response.headers_mut();
        // distribution's example config adds `X-Content-Type-Options: nosniff` itself.
        if !headers.get_all(name).iter().any(|v| v == value) {
            headers.append(name, value.clone());
        }
    }
    app.metrics.answered(
        if outcome.kind.is_empty() {
            "other"
        } else {
            outcome.kind
        },
        started.elapsed(),
    );
    if let (Some(label), Some(counters), Some(repository)) =
        (&outcome.label, &outcome.counters, &outcome.repository)
    {
        let is_tag = outcome.kind == "manifest" && method != Method::PUT;
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
            path: &path,
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
    response
}

async fn registry(
    app: &Arc<App>,
    request: &Parts,
    body: Body,
    outcome: &mut Outcome,
) -> Result<Response, RegistryError> {
    let parsed = route::parse(request.uri.path())?;
    outcome.kind = match &parsed {
        V2Request::Base => "base",
        V2Request::Catalog => "catalog",
        V2Request::Tags { .. } => "tags",
        V2Request::Manifest { .. } => "manifest",
        V2Request::Blob { .. } => "blob",
        V2Request::Upload { .. } => "upload",
        V2Request::Referrers { .. } => "referrers",
    };
    let method = &request.method;
    let head = *method == Method::HEAD;
    let query = Query::parse(request.uri.query());
    let route_for = |name: &str| {
        let domain = request.headers.get("domain").and_then(|v| v.to_str().ok());
        app.router.route(name, query.ns.as_deref(), domain)
    };
    match (&parsed, method.clone()) {
        (V2Request::Base, Method::GET | Method::HEAD) => {
            Ok(json_response(StatusCode::OK, "{}".into(), head))
        }
        (V2Request::Catalog, Method::GET) => catalog(app, &query).await,
        (V2Request::Tags { name }, Method::GET) => {
            let route = route_for(name)?;
            note(app, outcome, &route, None);
            tags(app, &route, name, &query).await
        }
        (V2Request::Manifest { name, reference }, Method::GET | Method::HEAD) => {
            let route = route_for(name)?;
            note(app, outcome, &route, Some(reference.as_str()));
            let answer = match reference {
                ManifestRef::Digest(digest) => app.manifest_by_digest(&route, digest).await?,
                ManifestRef::Tag(tag) => app.manifest_by_tag(&route, tag).await?,
            };
            outcome.cache = Some(answer.cache);
            let (manifest, warning) = (answer.manifest, answer.warning);
            app.mark_used(&manifest.digest);
            Ok(manifest_response(&manifest, head, warning))
        }
        (V2Request::Blob { name, digest }, Method::GET | Method::HEAD) => {
            let route = route_for(name)?;
            let counters = note(app, outcome, &route, Some(digest.as_str()));
            let range = request
                .headers
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            blob(
                app,
                &route,
                &counters,
                digest,
                head,
                range.as_deref(),
                outcome,
            )
            .await
        }
        (V2Request::Referrers { name, subject }, Method::GET) => {
            let route = route_for(name)?;
            note(app, outcome, &route, Some(subject.as_str()));
            let listing = referrers::list(app, &route, subject).await?;
            outcome.cache = Some(listing.cache);
            referrers_response(name, subject, listing, &query)
        }
        (V2Request::Upload { name, id }, _) => {
            let route = route_for(name)?;
            note(app, outcome, &route, None);
            if !route.upstream.local {
                return Err(push::refuse(app, &route, name));
            }
            outcome.pushed = true;
            uploads::upload(app, &route, name, id.as_deref(), request, body).await
        }
        (V2Request::Manifest { name, reference }, Method::PUT) => {
            let route = route_for(name)?;
            note(app, outcome, &route, Some(reference.as_str()));
            if !route.upstream.local {
                return Err(push::refuse(app, &route, name));
            }
            outcome.pushed = true;
            push::put_manifest(app, &route, name, reference, request, body).await
        }
        (V2Request::Manifest { name, reference }, Method::DELETE) => {
            let route = route_for(name)?;
            if !route.upstream.local {
                return Err(push::refuse(app, &route, name));
            }
            push::delete(app, &route, reference, false).await
        }
        (V2Request::Blob { name, digest }, Method::DELETE) => {
            let route = route_for(name)?;
            if !route.upstream.local {
                return Err(push::refuse(app, &route, name));
            }
            push::delete(app, &route, &ManifestRef::Digest(digest.clone()), true).await
        }
        _ => Err(RegistryError::new(
            ErrorCode::Unsupported,
            format!("{method} is not supported here"),
        )),
    }
}

/// Records the route in the outcome; returns the upstream's status counters.
fn note(
    app: &App,
    outcome: &mut Outcome,
    route: &Route,
    reference: Option<&str>,
) -> Arc<status::UpstreamCounters> {
    let counters = app.status.counters(route.upstream.label());
    outcome.upstream = Some(route.upstream.name.clone());
    outcome.label = Some(route.upstream.label().to_owned());
    outcome.counters = Some(counters.clone());
    outcome.repository = Some(route.repository.clone());
    outcome.reference = reference.map(str::to_owned);
    counters
}

/// The query parameters the registry API uses.
#[derive(Debug, Default)]
struct Query {
    ns: Option<String>,
    n: Option<usize>,
    last: Option<String>,
    /// The referrers API's filter.
    artifact_type: Option<String>,
}

impl Query {
    fn parse(query: Option<&str>) -> Self {
        let mut parsed = Query::default();
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "ns" => parsed.ns = Some(value.into_owned()),
                "n" => parsed.n = value.parse().ok(),
                "last" => parsed.last = Some(value.into_owned()),
                "artifactType" => parsed.artifact_type = Some(value.into_owned()),
                _ => {}
            }
        }
        parsed
    }
}

/// Sorted names after `last`, at most `n`, and the `Link` to the next page. `n=0` is an empty
/// page without a `Link`, as distribution answers it: a `Link` would name the same page again,
/// and a client following it would never stop.
fn paginate(mut names: Vec<String>, query: &Query, path: &str) -> (Vec<String>, Option<String>) {
    names.sort();
    names.dedup();
    if let Some(last) = &query.last {
        names.retain(|name| name > last);
    }
    match query.n {
        Some(0) => (Vec::new(), None),
        Some(n) if names.len() > n => {
            names.truncate(n);
            let last = names.last().cloned().unwrap_or_default();
            let link = format!(
                "<{path}?n={n}&last={}>; rel=\"next\"",
                url::form_urlencoded::byte_serialize(last.as_bytes()).collect::<String>()
            );
            (names, Some(link))
        }
        _ => (names, None),
    }
}

/// A page of referrers as an image index, with `OCI-Filters-Applied` when filtered and `Link`
/// when more pages follow.
fn referrers_response(
    name: &str,
    subject: &Digest,
    listing: referrers::Listing,
    query: &Query,
) -> Result<Response, RegistryError> {
    let filter = query.artifact_type.as_deref();
    let (page, more) = referrers::page(
        listing.descriptors,
        filter,
        query.last.as_deref(),
        query.n,
        referrers::PAGE_BYTES,
    );
    let mut response = json_response(StatusCode::OK, referrers::index(page), false);
    let headers = response.headers_mut();
    insert(
        headers,
        header::CONTENT_TYPE.as_str(),
        crate::registry::OCI_INDEX,
    );
    if filter.is_some() {
        insert(headers, "oci-filters-applied", "artifactType");
    }
    if let Some(last) = more {
        let mut next = url::form_urlencoded::Serializer::new(String::new());
        next.append_pair("last", &last);
        if let Some(n) = query.n {
            next.append_pair("n", &n.to_string());
        }
        if let Some(filter) = filter {
            next.append_pair("artifactType", filter);
        }
        if let Some(ns) = &query.ns {
            next.append_pair("ns", ns);
        }
        let link = format!(
            "</v2/{name}/referrers/{subject}?{}>; rel=\"next\"",
            next.finish()
        );
        headers.insert(
            header::LINK,
            HeaderValue::from_str(&link).map_err(internal)?,
        );
    }
    // 110: served stale because the upstream failed; 299: the list is cut at the limits.
    for (code, warning) in [(110, listing.warning), (299, listing.cut)] {
        if let Some(warning) = warning {
            let value = format!("{code} regmirror \"{}\"", warning.replace('"', "'"));
            headers.append(
                header::WARNING,
                HeaderValue::from_str(&value).map_err(internal)?,
            );
        }
    }
    Ok(response)
}

async fn catalog(app: &App, query: &Query) -> Result<Response, RegistryError> {
    let repositories = app.meta.repositories().await.map_err(internal)?;
    let names = repositories
        .iter()
        .map(|(upstream, repository)| app.router.catalog_name(upstream, repository))
        .collect();
    let (names, link) = paginate(names, query, "/v2/_catalog");
    let body = serde_json::json!({ "repositories": names }).to_string();
    let mut response = json_response(StatusCode::OK, body, false);
    if let Some(link) = link {
        response.headers_mut().insert(
            header::LINK,
            HeaderValue::from_str(&link).map_err(internal)?,
        );
    }
    Ok(response)
}

async fn tags(
    app: &App,
    route: &Route,
    name: &str,
    query: &Query,
) -> Result<Response, RegistryError> {
    let mut names = app
        .meta
        .tags(&route.upstream.name, &route.repository)
        .await
        .map_err(internal)?;
    let upstream = app.upstream_tags(route).await;
    let reachable = upstream.is_ok();
    match upstream {
        Ok(tags) => names.extend(tags),
        Err(e) if names.is_empty() => return Err(e),
        Err(e) => tracing::warn!(error = %e, "tag list from cache only"),
    }
    let (tags, link) = paginate(names, query, &format!("/v2/{name}/tags/list"));
    let body = serde_json::json!({ "name": name, "tags": tags }).to_string();
    let mut response = json_response(StatusCode::OK, body, false);
    if let Some(link) = link {
        response.headers_mut().insert(
            header::LINK,
            HeaderValue::from_str(&link).map_err(internal)?,
        );
    }
    if !reachable {
        response.headers_mut().insert(
            header::WARNING,
            HeaderValue::from_static(
                "110 regmirror \"upstream unreachable: tags from cache only\"",
            ),
        );
    }
    Ok(response)
}

async fn blob(
    app: &App,
    route: &Route,
    counters: &Arc<status::UpstreamCounters>,
    digest: &Digest,
    head: bool,
    range: Option<&str>,
    outcome: &mut Outcome,
) -> Result<Response, RegistryError> {
    // Content the store has for another namespace is a miss here: this upstream must deliver
    // the bytes itself before they are served on its routes.
    let access = app.access(route, digest).await?;
    let cached = if access.held {
        app.committed_blob(digest).await?
    } else {
        None
    };
    if let Some(committed) = cached {
        if !access.linked {
            app.confirm_access(route, digest, ErrorCode::BlobUnknown)
                .await?;
        }
        let size = committed.size();
        app.mark_used(digest);
        outcome.cache = Some(CacheOutcome::Hit);
        app.metrics.request("blob", CacheOutcome::Hit);
        let (status, span) = match resolve_range(range, Some(size))? {
            Some(span) => (StatusCode::PARTIAL_CONTENT, span),
            None => (
                StatusCode::OK,
                ByteRange {
                    start: 0,
                    end: size,
                },
            ),
        };
        if head {
            return Ok(blob_response(
                status,
                digest,
                span,
                Some(size),
                Body::empty(),
            ));
        }
        // A body already in memory, answered at once.
        let whole = |bytes: bytes::Bytes| {
            app.metrics.bytes(Source::Cache, bytes.len() as u64);
            counters.bytes(true, bytes.len() as u64);
            Ok(blob_response(
                status,
                digest,
                span,
                Some(size),
                bytes.into(),
            ))
        };
        let reader = match committed {
            // Lossless casts: the span lies within the bytes' own length.
            Hit::Remembered(bytes) => {
                return whole(bytes.slice(span.start as usize..span.end as usize));
            }
            Hit::Stored(Committed::File { file, .. }) => {
                let now = super::fill::read_now(&file, span.start, span.end, &app.buffers);
                if let Some(read) = now {
                    let bytes = read.map_err(internal)?;
                    if span.start == 0 && span.end == size {
                        app.remember_blob(digest, &bytes);
                    }
                    return whole(bytes);
                }
                super::fill::file_reader(file, span.start, span.end, app.buffers.clone()).boxed()
            }
            Hit::Stored(Committed::Object { key, redirect, .. }) if redirect => {
                // distribution's default on object storage: the client fetches from the bucket.
                let url = app.store.presigned(&key).await.map_err(internal)?;
                outcome.cache = Some(CacheOutcome::Redirect);
                return Ok(redirect_response(&url));
            }
            Hit::Stored(Committed::Object { key, .. })
                if size <= super::fill::READ_NOW_UP_TO && app.blob_memo.keeps(size as usize) =>
            {
                // A small object is read whole and remembered: its next hits ask the bucket
                // nothing (not even the HEAD that `open` costs).
                let bytes = app.store.read_object(&key, size).await.map_err(internal)?;
                app.remember_blob(digest, &bytes);
                return whole(bytes.slice(span.start as usize..span.end as usize));
            }
            Hit::Stored(Committed::Object { key, .. }) => app
                .store
                .stream_object(&key, span.start, span.end)
                .await
                .map_err(internal)?,
        };
        let metrics = app.metrics.clone();
        let counters = counters.clone();
        let body = Body::from_stream(reader.inspect(move |chunk| {
            if let Ok(bytes) = chunk {
                metrics.bytes(Source::Cache, bytes.len() as u64);
                counters.bytes(true, bytes.len() as u64);
            }
        }));
        return Ok(blob_response(status, digest, span, Some(size), body));
    }
    if route.upstream.local {
        return Err(RegistryError::new(
            ErrorCode::BlobUnknown,
            format!("{digest} is not in {}", route.repository),
        ));
    }
    let (fill, started) = app.start_fill(route, digest)?;
    if !started && fill.repository != route.repository {
        // Joining another repository's download: the upstream must confirm this one may read
        // the blob. (The same repository's clients need no check: they asked for the same.)
        app.require_access(route, digest, ErrorCode::BlobUnknown)
            .await?;
    }
    let cache = if started {
        CacheOutcome::Miss
    } else {
        CacheOutcome::Joined
    };
    outcome.cache = Some(cache);
    app.metrics.request("blob", cache);
    if head {
        // A HEAD on a miss fills the blob rather than asking the upstream with a HEAD: a cache
        // upstream may not know a blob it lacks until a GET (distribution#4747), or fetch it
        // whole to answer a HEAD; the client's GET follows anyway.
        let size = fill.size().await?;
        let span = ByteRange {
            start: 0,
            end: size,
        };
        return Ok(blob_response(
            StatusCode::OK,
            digest,
            span,
            Some(size),
            Body::empty(),
        ));
    }
    let size = fill.started().await?;
    let (status, span) = match resolve_range(range, size)? {
        Some(span) => (StatusCode::PARTIAL_CONTENT, span),
        None => (
            StatusCode::OK,
            ByteRange {
                start: 0,
                end: size.unwrap_or(u64::MAX),
            },
        ),
    };
    let end = size.map(|_| span.end);
    let metrics = app.metrics.clone();
    let counters = counters.clone();
    let body = Body::from_stream(fill.reader(span.start, end).inspect(move |chunk| {
        if let Ok(bytes) = chunk {
            metrics.bytes(Source::Fill, bytes.len() as u64);
            counters.bytes(false, bytes.len() as u64);
        }
    }));
    Ok(blob_response(status, digest, span, size, body))
}

/// The status page (HTML) or its data (JSON): see [`super::status`].
fn status_page(app: &App, json: bool) -> Response {
    let upstreams: Vec<status::UpstreamView> = app
        .router
        .configured()
        .into_iter()
        .map(|u| {
            let origin = u.origin();
            let url = origin.map_or(String::new(), |o| o.base.to_string());
            let budget = origin
                .and_then(|o| app.client.budget(&o.base))
                .map(|b| (b.limit, b.remaining));
            let label = u.label().to_owned();
            // The walk of any repository of it: `--mirrors` rules are per registry.
            let walk = Route {
                upstream: u,
                repository: String::new(),
            };
            let endpoints = app
                .router
                .targets(&walk)
                .iter()
                .map(|t| status::EndpointView {
                    url: t.base.to_string(),
                    role: if t.is_mirror() { "mirror" } else { "origin" },
                    health: app.client.health(&t.base),
                })
                .collect();
            status::UpstreamView {
                label,
                url,
                endpoints,
                budget,
            }
        })
        .collect();
    let data = app
        .status
        .snapshot(&upstreams, &app.fills.snapshot(20), app.max_size);
    if json {
        json_response(StatusCode::OK, data.to_string(), false)
    } else {
        text_response(
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
        .get(super::fleet::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let secret = app.fleet.as_ref().and(app.secret.as_ref());
    if !super::fleet::verify(secret, path, signature, super::meta::now()) {
        let refusal = RegistryError::new(
            ErrorCode::Denied,
            "the fleet's internal route needs an unexpired signature of a replica with the same \
             http.secret",
        );
        return error_response(&refusal, head);
    }
    let no_fill =
        |why: &str| error_response(&RegistryError::new(ErrorCode::BlobUnknown, why), head);
    let fill = super::fleet::parse_fill_path(path)
        .and_then(|(upstream, digest)| app.fills.get(&upstream, &digest));
    let Some(fill) = fill else {
        return no_fill("no download of it in flight here");
    };
    let Ok(size) = fill.started().await else {
        return no_fill("its download failed");
    };
    let mut response = Response::new(Body::from_stream(fill.reader(0, None)));
    if let Some(size) = size {
        insert(
            response.headers_mut(),
            header::CONTENT_LENGTH.as_str(),
            &size.to_string(),
        );
    }
    response
}

/// A `Range` header against a known size: `Ok(None)` serves the whole blob.
fn resolve_range(
    range: Option<&str>,
    size: Option<u64>,
) -> Result<Option<ByteRange>, RegistryError> {
    let (Some(range), Some(size)) = (range, size) else {
        return Ok(None);
    };
    match parse_range(range, size) {
        Ok(span) => Ok(span),
        Err(()) => Err(RegistryError::new(
            ErrorCode::RangeInvalid,
            format!("range {range:?} is not satisfiable for {size} bytes"),
        )),
    }
}

fn blob_response(
    status: StatusCode,
    digest: &Digest,
    span: ByteRange,
    size: Option<u64>,
    body: Body,
) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    insert(headers, CONTENT_DIGEST_HEADER, digest.as_str());
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(size) = size {
        insert(
            headers,
            header::CONTENT_LENGTH.as_str(),
            &(span.end - span.start).to_string(),
        );
        if status == StatusCode::PARTIAL_CONTENT {
            insert(
                headers,
                header::CONTENT_RANGE.as_str(),
                &format!("bytes {}-{}/{size}", span.start, span.end - 1),
            );
        }
    }
    response
}

/// 307 to where the client fetches a blob itself.
fn redirect_response(url: &url::Url) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    insert(
        response.headers_mut(),
        header::LOCATION.as_str(),
        url.as_str(),
    );
    response
}

fn manifest_response(manifest: &CachedManifest, head: bool, warning: Option<String>) -> Response {
    let body = if head {
        Body::empty()
    } else {
        Body::from(manifest.bytes.clone())
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    insert(headers, header::CONTENT_TYPE.as_str(), &manifest.media_type);
    insert(headers, CONTENT_DIGEST_HEADER, manifest.digest.as_str());
    insert(
        headers,
        header::CONTENT_LENGTH.as_str(),
        &manifest.bytes.len().to_string(),
    );
    if let Some(warning) = warning {
        insert(
            headers,
            header::WARNING.as_str(),
            &format!("110 regmirror \"{}\"", warning.replace('"', "'")),
        );
    }
    response
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

fn json_response(status: StatusCode, body: String, head: bool) -> Response {
    let length = body.len();
    let mut response = Response::new(if head {
        Body::empty()
    } else {
        Body::from(body)
    });
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    insert(
        response.headers_mut(),
        header::CONTENT_LENGTH.as_str(),
        &length.to_string(),
    );
    response
}

fn text_response(status: StatusCode, content_type: &'static str, body: &str) -> Response {
    let mut response = Response::new(Body::from(body.to_owned()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(n: Option<usize>, last: Option<&str>) -> Query {
        Query {
            n,
            last: last.map(str::to_owned),
            ..Query::default()
        }
    }

    #[test]
    fn pagination() {
        let names: Vec<String> = ["c", "a", "b", "d", "b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (page, link) = paginate(names.clone(), &query(Some(2), None), "/v2/_catalog");
        assert_eq!(page, ["a", "b"]);
        assert_eq!(
            link.as_deref(),
            Some("</v2/_catalog?n=2&last=b>; rel=\"next\"")
        );
        let (page, link) = paginate(names.clone(), &query(Some(2), Some("b")), "/v2/_catalog");
        assert_eq!(page, ["c", "d"]);
        assert_eq!(link, None);
        let (page, _) = paginate(names.clone(), &query(None, None), "/v2/_catalog");
        assert_eq!(page, ["a", "b", "c", "d"]);
        let (page, link) = paginate(names, &query(Some(0), None), "/v2/_catalog");
        assert!(page.is_empty());
        assert_eq!(link, None, "a Link would name the same page");
    }

    #[test]
    fn query_parsing() {
        let q = Query::parse(Some(
            "ns=ghcr.io&n=10&last=a%2Fb&x=1&artifactType=application%2Fvnd.dev.sig",
        ));
        assert_eq!(q.artifact_type.as_deref(), Some("application/vnd.dev.sig"));
        assert_eq!(q.ns.as_deref(), Some("ghcr.io"));
        assert_eq!(q.n, Some(10));
        assert_eq!(q.last.as_deref(), Some("a/b"));
    }
}

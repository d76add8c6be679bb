//! Requests from the cache to a route's upstream: each in its turn under the upstream's request
//! limits, walked through the route's endpoints (`--mirrors` first), timed in the metrics with
//! the pull budget the upstream states, and its failures mapped to the registry error a client
//! gets. The services ([`super::blobs`], [`super::manifests`], [`super::referrers`]) ask their
//! upstreams only through here.

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt as _;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_RANGE};
use reqwest::{Method, StatusCode};

use super::fill::UpstreamBody;

use super::metrics::Metrics;
use super::routing::{Route, Router, Upstream};
use crate::reference::Digest;
use crate::registry::{ErrorCode, MANIFEST_ACCEPT, RegistryError};
use crate::upstream::{Budget, Target, UpstreamClient, UpstreamError, UpstreamRequest};

/// The way to every upstream: the routing table, the shared client and the metrics. Cheap to
/// clone (three handles), so a task that outlives its request takes its own.
#[derive(Debug, Clone)]
pub(crate) struct Upstreams {
    router: Arc<Router>,
    client: Arc<UpstreamClient>,
    metrics: Arc<Metrics>,
}

impl Upstreams {
    pub(crate) fn new(
        router: Arc<Router>,
        client: Arc<UpstreamClient>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Upstreams {
            router,
            client,
            metrics,
        }
    }

    pub(crate) fn router(&self) -> &Router {
        &self.router
    }

    /// Sends a request through the route's endpoints (see [`send_upstream`]).
    pub(crate) async fn send(
        &self,
        route: &Route,
        request: UpstreamRequest,
    ) -> Result<reqwest::Response, UpstreamError> {
        let targets = self.router.targets(route);
        send_upstream(
            &self.client,
            &self.metrics,
            &route.upstream,
            &targets,
            &request,
        )
        .await
    }

    /// [`send`](Self::send) for a request that must be answered 200: anything else becomes the
    /// registry error a client gets (`not_found` for a 404).
    pub(crate) async fn send_ok(
        &self,
        route: &Route,
        request: UpstreamRequest,
        not_found: ErrorCode,
    ) -> Result<reqwest::Response, RegistryError> {
        let upstream = &route.upstream.name;
        let response = self
            .send(route, request)
            .await
            .map_err(|e| unreachable(upstream, e))?;
        if response.status() != StatusCode::OK {
            return Err(upstream_status(upstream, &response, not_found));
        }
        Ok(response)
    }

    /// A HEAD of `digest` in the route's repository (`BlobUnknown` asks for a blob, anything
    /// else for a manifest): the upstream's answer, or why there is none.
    pub(crate) async fn head(
        &self,
        route: &Route,
        digest: &Digest,
        unknown: ErrorCode,
    ) -> Result<reqwest::Response, UpstreamError> {
        let kind = if unknown == ErrorCode::BlobUnknown {
            "blobs"
        } else {
            "manifests"
        };
        let mut request = UpstreamRequest::pull(
            Method::HEAD,
            &route.repository,
            format!("/v2/{}/{kind}/{digest}", route.repository),
        );
        if kind == "manifests" {
            request = request.header(ACCEPT, MANIFEST_ACCEPT);
        }
        self.send(route, request).await
    }

    /// The pull budget the route's upstream stated, when it has fallen under the upstream's
    /// `ratelimit_reserve`: cached tags are then served without asking, and the rest of the
    /// budget goes to content not cached.
    pub(crate) fn budget_in_reserve(&self, route: &Route) -> Option<Budget> {
        let origin = route.upstream.origin()?;
        self.client.budget(&origin.base).filter(|b| {
            route
                .upstream
                .ratelimit_reserve
                .reached(b.limit, b.remaining)
        })
    }

    /// The shared client: its breakers and the budgets upstreams stated.
    pub(crate) fn client(&self) -> &UpstreamClient {
        &self.client
    }
}

/// One request to `upstream` through `targets`: in its turn under the upstream's request limits
/// (the turn held until the answer's body ends), timed in /metrics, with the pull budget the
/// upstream states noted there.
async fn send_upstream(
    client: &UpstreamClient,
    metrics: &Metrics,
    upstream: &Upstream,
    targets: &[Target],
    request: &UpstreamRequest,
) -> Result<reqwest::Response, UpstreamError> {
    let label = upstream.label();
    let admitted = match &upstream.limiter {
        None => None,
        Some(limiter) => {
            let queued = Instant::now();
            let admitted = limiter.admit().await;
            metrics.queued(label, queued.elapsed());
            Some(admitted.map_err(UpstreamError::queued)?)
        }
    };
    let started = Instant::now();
    let result = client.walk(targets, request).await;
    let status = result.as_ref().map_or(0, |(_, r)| r.status().as_u16());
    metrics.upstream(label, status, started.elapsed());
    if !upstream.dynamic {
        if let Some(budget) = upstream.origin().and_then(|o| client.budget(&o.base)) {
            metrics.budget(label, budget.limit, budget.remaining);
        }
    }
    let (_, response) = result?;
    Ok(match admitted {
        Some(admitted) => admitted.hold(response),
        None => response,
    })
}

/// The Content-Length of an upstream's answer, when it states one.
pub(crate) fn content_length(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A blob answer's body from byte `from` on, with the blob's whole size when stated: a 206 must
/// start at `from`; a 200 (the server ignored the `Range`, or none was asked) has its first
/// `from` bytes dropped. `None`: the answer is neither.
pub(crate) fn body_from(
    response: reqwest::Response,
    from: u64,
) -> Option<(Option<u64>, UpstreamBody)> {
    let stream = |response: reqwest::Response| {
        response
            .bytes_stream()
            .map(|r| r.map_err(std::io::Error::other))
    };
    match response.status() {
        StatusCode::OK => {
            let size = content_length(&response);
            let mut skip = from;
            let body = stream(response).filter_map(move |chunk| {
                let chunk = match chunk {
                    Ok(chunk) if (chunk.len() as u64) <= skip => {
                        skip -= chunk.len() as u64;
                        None
                    }
                    Ok(mut chunk) => {
                        let rest = chunk.split_off(skip as usize);
                        skip = 0;
                        Some(Ok(rest))
                    }
                    Err(e) => Some(Err(e)),
                };
                std::future::ready(chunk)
            });
            Some((size, body.boxed()))
        }
        StatusCode::PARTIAL_CONTENT if from > 0 => {
            let (start, total) = response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(super::range::content_range)?;
            (start == from).then(|| (total, stream(response).boxed()))
        }
        _ => None,
    }
}

/// An upstream's HTTP error as the registry error to give the client (with the upstream's
/// `Retry-After` on a 429).
pub(crate) fn upstream_status(
    upstream: &str,
    response: &reqwest::Response,
    not_found: ErrorCode,
) -> RegistryError {
    let status = response.status();
    let code = match status.as_u16() {
        404 => not_found,
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Denied,
        429 => ErrorCode::TooManyRequests,
        _ => ErrorCode::Unavailable,
    };
    let wait = crate::upstream::retry_after(response.headers(), std::time::SystemTime::now());
    RegistryError::new(code, format!("upstream {upstream} answered HTTP {status}"))
        .with_retry_after(wait.filter(|_| code == ErrorCode::TooManyRequests))
}

/// A failed walk as the registry error to give the client.
pub(crate) fn unreachable(upstream: &str, error: UpstreamError) -> RegistryError {
    error.registry_error(&format!("upstream {upstream}"))
}

/// An answer whose body broke (or could not be read) as the registry error to give the client.
pub(crate) fn unreachable_text(upstream: &str, why: &str) -> RegistryError {
    RegistryError::new(
        ErrorCode::Unavailable,
        format!("upstream {upstream} unreachable: {why}"),
    )
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn answer(
        status: u16,
        headers: &[(&str, &str)],
        chunks: &[&'static [u8]],
    ) -> reqwest::Response {
        let chunks: Vec<std::io::Result<Bytes>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        let mut builder = axum::http::Response::builder().status(status);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
        reqwest::Response::from(builder.body(body).unwrap())
    }

    async fn bytes(body: UpstreamBody) -> Vec<u8> {
        let chunks: Vec<Bytes> = body.map(Result::unwrap).collect().await;
        chunks.concat()
    }

    #[tokio::test]
    async fn a_body_goes_on_from_the_byte_asked_for() {
        // A 200 (the range ignored): the first bytes are dropped, across chunks.
        let whole = answer(200, &[("content-length", "10")], &[b"abc", b"defg", b"hij"]);
        let (size, body) = body_from(whole, 5).unwrap();
        assert_eq!((size, bytes(body).await), (Some(10), b"fghij".to_vec()));
        let whole = answer(200, &[], &[b"abc", b"defg"]);
        let (size, body) = body_from(whole, 3).unwrap();
        assert_eq!((size, bytes(body).await), (None, b"defg".to_vec()));
        // A 206 from that byte, with the whole size.
        let rest = answer(206, &[("content-range", "bytes 5-9/10")], &[b"fghij"]);
        let (size, body) = body_from(rest, 5).unwrap();
        assert_eq!((size, bytes(body).await), (Some(10), b"fghij".to_vec()));
        // A 206 from another byte, without its Content-Range, or to no range; anything else.
        let refused = [
            (answer(206, &[("content-range", "bytes 4-9/10")], &[]), 5),
            (answer(206, &[], &[]), 5),
            (answer(206, &[("content-range", "bytes 0-9/10")], &[]), 0),
            (answer(404, &[], &[]), 0),
        ];
        for (response, from) in refused {
            assert!(body_from(response, from).is_none());
        }
    }
}

//! What passes between a client of the shim and an upstream: which request headers go on (to
//! mirrors, only those a pull needs; to a request's own host, every end-to-end header), the
//! client's request body as a stream, and the upstream's answer streamed back as it is, less its
//! hop-by-hop headers and with its `Retry-After` capped. A blob body that breaks mid-way
//! continues from the next endpoint with a `Range` request, so the client sees one body.

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use hyper::Response;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::upstream::{Target, UpstreamClient, UpstreamRequest};

/// Request headers passed on to upstream endpoints.
const FORWARDED_HEADERS: [HeaderName; 4] = [
    header::ACCEPT,
    header::RANGE,
    header::USER_AGENT,
    header::IF_NONE_MATCH,
];

/// Response headers that belong to one connection and are not copied.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// The headers of a pull sent to every endpoint: never the client's `Authorization`.
pub fn forwarded(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in FORWARDED_HEADERS {
        for value in headers.get_all(&name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Every header but hop-by-hop ones, `Host` and `Authorization` (the target adds its own).
pub fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || n == "host" || n == "authorization" || n == "proxy-connection"
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// A client's request body, streamed on as it arrives.
pub fn streaming_body(body: Incoming) -> reqwest::Body {
    let stream = http_body_util::BodyStream::new(body)
        .try_filter_map(|frame| async move { Ok(frame.into_data().ok()) });
    reqwest::Body::wrap_stream(stream)
}

/// The answer's end-to-end headers, with its `Retry-After` capped (`upstream::ratelimit`).
fn copy_headers(response: &reqwest::Response, into: &mut HeaderMap<HeaderValue>) {
    for (name, value) in response.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            into.append(name.clone(), value.clone());
        }
    }
    crate::upstream::cap_retry_after(into, std::time::SystemTime::now());
}

/// An upstream response, streamed to the client as it is.
pub fn relay(response: reqwest::Response) -> Response<Body> {
    let mut out = Response::new(Body::empty());
    *out.status_mut() = response.status();
    copy_headers(&response, out.headers_mut());
    *out.body_mut() = Body::from_stream(response.bytes_stream());
    out
}

/// A blob response that, if its body breaks, continues from the next endpoints with a Range
/// request at the byte where it stopped.
pub fn relay_resumable(
    response: reqwest::Response,
    client: Arc<UpstreamClient>,
    rest: Vec<Target>,
    request: UpstreamRequest,
) -> Response<Body> {
    let mut out = Response::new(Body::empty());
    *out.status_mut() = response.status();
    copy_headers(&response, out.headers_mut());
    struct Resume {
        current: futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>,
        sent: u64,
        rest: std::vec::IntoIter<Target>,
        client: Arc<UpstreamClient>,
        request: UpstreamRequest,
    }
    let state = Resume {
        current: response.bytes_stream().boxed(),
        sent: 0,
        rest: rest.into_iter(),
        client,
        request,
    };
    let stream = futures_util::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        loop {
            match state.current.next().await {
                Some(Ok(bytes)) => {
                    state.sent += bytes.len() as u64;
                    return Some((Ok(bytes), Some(state)));
                }
                None => return None,
                Some(Err(error)) => {
                    tracing::warn!(%error, sent = state.sent, "blob body broke; resuming from the next endpoint");
                    let mut resumed = None;
                    for target in state.rest.by_ref() {
                        let mut request = state.request.clone();
                        let range = format!("bytes={}-", state.sent);
                        if let Ok(value) = HeaderValue::from_str(&range) {
                            request.headers.insert(header::RANGE, value);
                        }
                        match state.client.send(&target, &request).await {
                            Ok(r) if r.status() == reqwest::StatusCode::PARTIAL_CONTENT => {
                                resumed = Some(r);
                                break;
                            }
                            Ok(r) => {
                                tracing::warn!(endpoint = %target.base, status = %r.status(), "cannot resume here")
                            }
                            Err(e) => {
                                tracing::warn!(endpoint = %target.base, error = %e, "cannot resume here")
                            }
                        }
                    }
                    match resumed {
                        Some(r) => state.current = r.bytes_stream().boxed(),
                        None => {
                            return Some((
                                Err(std::io::Error::other(format!("blob body broke: {error}"))),
                                None,
                            ));
                        }
                    }
                }
            }
        }
    });
    *out.body_mut() = Body::from_stream(stream);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_filters() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer secret"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let pulled = forwarded(&headers);
        assert!(
            pulled.get(header::AUTHORIZATION).is_none(),
            "never to mirrors"
        );
        assert!(pulled.get(header::ACCEPT).is_some());
        let pushed = end_to_end(&headers);
        assert!(pushed.get(header::CONNECTION).is_none());
        assert!(
            pushed.get(header::AUTHORIZATION).is_none(),
            "set per target instead"
        );
        assert!(pushed.get(header::CONTENT_TYPE).is_some());
    }
}

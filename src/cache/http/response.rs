//! The answers the services give, as HTTP responses: a blob in each of the forms the blob service
//! hands back (with its bytes counted in the metrics and the status page as they go out), a
//! manifest, JSON and text. Errors are rendered by [`crate::registry::error_response`] only.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt as _;

use crate::cache::blobs::{BlobAnswer, BlobBody, BodyStream};
use crate::cache::manifest::CachedManifest;
use crate::cache::metrics::{Metrics, Source};
use crate::cache::range::ByteRange;
use crate::cache::status::UpstreamCounters;
use crate::reference::Digest;
use crate::registry::CONTENT_DIGEST_HEADER;
use crate::sendfile::SendfileQueue;

/// A blob answer as a response: 307 for a redirect, else 200 (206 for a range) with the blob's
/// headers and its body, each byte counted once it leaves (from the cache or from a fill).
/// Every form carries `Docker-Content-Digest`.
/// `sends`: the connection's sendfile queue, on plain http.
pub(super) fn blob(
    answer: BlobAnswer,
    digest: &Digest,
    metrics: &Arc<Metrics>,
    counters: &Arc<UpstreamCounters>,
    sends: Option<SendfileQueue>,
) -> Response {
    let status = if answer.partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let counted = |stream: BodyStream, source: Source| {
        let (metrics, counters) = (metrics.clone(), counters.clone());
        let cached = matches!(source, Source::Cache);
        Body::from_stream(stream.inspect(move |chunk| {
            if let Ok(bytes) = chunk {
                metrics.bytes(source, bytes.len() as u64);
                counters.bytes(cached, bytes.len() as u64);
            }
        }))
    };
    let body = match answer.body {
        BlobBody::Redirect(url) => return redirect(&url, digest),
        BlobBody::Head => Body::empty(),
        // A body already in memory, answered at once.
        BlobBody::Whole(bytes) => {
            metrics.bytes(Source::Cache, bytes.len() as u64);
            counters.bytes(true, bytes.len() as u64);
            bytes.into()
        }
        BlobBody::File(stream) | BlobBody::Object(stream) => counted(stream, Source::Cache),
        BlobBody::Fill(fill) => counted(fill.stream(sends).boxed(), Source::Fill),
    };
    blob_response(status, digest, answer.span, answer.size, body)
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

/// 307 to where the client fetches a blob itself, naming the blob's digest.
fn redirect(url: &url::Url, digest: &Digest) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    let headers = response.headers_mut();
    insert(headers, header::LOCATION.as_str(), url.as_str());
    insert(headers, CONTENT_DIGEST_HEADER, digest.as_str());
    response
}

pub(super) fn manifest(manifest: &CachedManifest, head: bool, warning: Option<String>) -> Response {
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

pub(super) fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

pub(super) fn json(status: StatusCode, body: String, head: bool) -> Response {
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

pub(super) fn text(status: StatusCode, content_type: &'static str, body: &str) -> Response {
    let mut response = Response::new(Body::from(body.to_owned()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

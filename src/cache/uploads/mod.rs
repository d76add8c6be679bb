//! The upload API of local repositories (`local:` in the config): monolithic and chunked
//! uploads and cross-repository mounts. An upload in progress lives in the local spool
//! ([`local`]) or, on a bucket, in the bucket ([`shared`]), so that any replica continues it.
//! The final PUT verifies the digest (a mismatch deletes the upload) and stores the blob as a
//! fill does: its records first, then the content.
//!
//! Bounds: an upload grows to `limits.max_blob_size` at most (past it the upload is abandoned
//! with SIZE_INVALID); a request body that sends nothing for `limits.idle_timeout` fails.

pub(crate) mod local;
pub(crate) mod shared;

use std::path::PathBuf;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;

use super::App;
use super::meta::NewBlob;
use super::routing::Route;
use crate::reference::{Digest, Hasher};
use crate::registry::{CONTENT_DIGEST_HEADER, ErrorCode, RegistryError, internal};

/// The upload API: POST (start, monolithic, or mount), PATCH, PUT, GET and DELETE.
pub(crate) async fn upload(
    app: &App,
    route: &Route,
    name: &str,
    id: Option<&str>,
    parts: &Parts,
    body: Body,
) -> Result<Response, RegistryError> {
    if parts.method == Method::POST && id.is_none() {
        if let Some(mounted) = mount(app, route, name, parts).await? {
            return Ok(mounted);
        }
    }
    let monolithic = query(parts, "digest").is_some() && id.is_none();
    match app.store.bucket() {
        // On a bucket, any replica continues an upload another started.
        Some(bucket) if !monolithic => {
            shared::upload(app, bucket, route, name, id, parts, body).await
        }
        _ => local::upload(app, route, name, id, parts, body).await,
    }
}

/// `POST ?mount=<digest>&from=<repository>`: links a blob another repository of the namespace
/// holds, when it does (`None`: not mountable, a new upload starts instead). Without `from`
/// (an anonymous mount), any repository of the namespace will do: pushed repositories share
/// one set of credentials, so this reveals nothing a client could not pull.
async fn mount(
    app: &App,
    route: &Route,
    name: &str,
    parts: &Parts,
) -> Result<Option<Response>, RegistryError> {
    let Some(mount) = query(parts, "mount") else {
        return Ok(None);
    };
    let Ok(digest) = Digest::parse(&mount) else {
        return Ok(None);
    };
    let upstream = &route.upstream.name;
    let linked = match query(parts, "from") {
        Some(from) => app.meta.is_linked(upstream, &from, &digest).await?,
        None => true,
    } && app.meta.has_source(upstream, &digest).await?;
    if !linked || app.store.size(&digest).await?.is_none() {
        return Ok(None);
    }
    app.meta.link(upstream, &route.repository, &digest).await?;
    Ok(Some(created(format!("/v2/{name}/blobs/{digest}"), &digest)))
}

/// A fresh upload id: 128 random bits, so one client cannot guess (and write to) another's
/// upload.
pub(crate) fn new_upload_id() -> Result<String, RegistryError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(internal)?;
    Ok(hex::encode(bytes))
}

pub(crate) fn accepted(name: &str, id: &str, size: u64) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::ACCEPTED;
    let headers = response.headers_mut();
    let set = |headers: &mut axum::http::HeaderMap, key: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(key, value);
        }
    };
    set(
        headers,
        "location",
        format!("/v2/{name}/blobs/uploads/{id}"),
    );
    set(headers, "docker-upload-uuid", id.to_owned());
    set(headers, "range", format!("0-{}", size.saturating_sub(1)));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

/// GET of an upload: 204 with its `Location` and `Range`.
pub(crate) fn progress(name: &str, id: &str, size: u64) -> Response {
    let mut response = accepted(name, id, size);
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// DELETE of an upload: 204.
pub(crate) fn cancelled() -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// The refusal of a new upload when `max` are in progress (`limits.max_uploads`).
pub(crate) fn too_many(max: usize) -> RegistryError {
    RegistryError::new(
        ErrorCode::TooManyRequests,
        format!("{max} uploads are in progress (limits.max_uploads)"),
    )
}

/// A method the upload API does not have.
pub(crate) fn unsupported(method: &Method) -> RegistryError {
    RegistryError::new(ErrorCode::Unsupported, format!("{method} on an upload"))
}

pub(crate) fn created(location: String, digest: &Digest) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::CREATED;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, value);
    }
    if let Ok(value) = HeaderValue::from_str(digest.as_str()) {
        headers.insert(CONTENT_DIGEST_HEADER, value);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

/// The 416 for a chunk whose `Content-Range` does not start where the upload ends (the spec's
/// answer to chunks out of order), with the upload's `Location` and `Range` so the client can
/// resume; `None` when the chunk fits (or carries no `Content-Range`).
pub(crate) fn out_of_order(parts: &Parts, name: &str, id: &str, size: u64) -> Option<Response> {
    let range = content_range(parts)?;
    if chunk_start(range) == Some(size) {
        return None;
    }
    let why = format!("the chunk {range:?} does not start at {size}, where the upload ends");
    Some(range_invalid(name, id, size, why))
}

/// The 416 for a chunk with a `Content-Range` sent while another request writes the upload
/// (that request moves the end the chunk must start at); `None` without `Content-Range`.
pub(crate) fn overtaken(parts: &Parts, name: &str, id: &str, size: u64) -> Option<Response> {
    let range = content_range(parts)?;
    let why = format!(
        "upload {id} is being written by another request; the chunk {range:?} may start only \
         where that one ends"
    );
    Some(range_invalid(name, id, size, why))
}

fn content_range(parts: &Parts) -> Option<&str> {
    parts.headers.get(header::CONTENT_RANGE)?.to_str().ok()
}

/// 416 RANGE_INVALID saying `why`, with the upload's `Location` and `Range` (it holds `size`
/// bytes).
fn range_invalid(name: &str, id: &str, size: u64, why: String) -> Response {
    let mut response = accepted(name, id, size);
    *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
    let error = RegistryError::new(ErrorCode::RangeInvalid, why);
    let body = error.body();
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    *response.body_mut() = Body::from(body);
    response
}

/// Where a chunk's `Content-Range` (`<start>-<end>`, as the distribution spec writes it, or
/// `bytes <start>-<end>/<size>`) starts.
fn chunk_start(range: &str) -> Option<u64> {
    let range = range.trim();
    let range = range.strip_prefix("bytes").map_or(range, str::trim_start);
    let range = range.strip_prefix('=').unwrap_or(range).trim();
    range.split_once('-')?.0.trim().parse().ok()
}

pub(crate) fn query(parts: &Parts, key: &str) -> Option<String> {
    url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Appends a request body to an upload file of `size` bytes; returns the new size. Past
/// `limits.max_blob_size`, or after `limits.idle_timeout` without data, it fails.
pub(crate) async fn append(
    app: &App,
    path: &std::path::Path,
    mut size: u64,
    body: Body,
) -> Result<u64, RegistryError> {
    let limits = &app.options.limits;
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(internal)?;
    let mut stream = body.into_data_stream();
    loop {
        let chunk = match tokio::time::timeout(limits.idle_timeout, stream.next()).await {
            Ok(Some(chunk)) => chunk
                .map_err(|e| RegistryError::new(ErrorCode::BlobUploadInvalid, e.to_string()))?,
            Ok(None) => break,
            Err(_) => {
                return Err(RegistryError::new(
                    ErrorCode::BlobUploadInvalid,
                    format!(
                        "no data for {:?} (limits.idle_timeout)",
                        limits.idle_timeout
                    ),
                ));
            }
        };
        size += chunk.len() as u64;
        if size > limits.max_blob_size {
            return Err(RegistryError::new(
                ErrorCode::SizeInvalid,
                format!(
                    "the upload passed limits.max_blob_size ({} bytes)",
                    limits.max_blob_size
                ),
            ));
        }
        file.write_all(&chunk).await.map_err(internal)?;
    }
    file.sync_all().await.map_err(internal)?;
    Ok(size)
}

/// Verifies a complete upload in the spool file `path` against `digest` and commits it.
pub(crate) async fn finish_file(
    app: &App,
    route: &Route,
    name: &str,
    path: PathBuf,
    size: u64,
    digest: &str,
) -> Result<Response, RegistryError> {
    let digest = Digest::parse(digest)
        .map_err(|e| RegistryError::new(ErrorCode::DigestInvalid, format!("{digest:?}: {e}")))?;
    let (hashed, like) = (path.clone(), digest.clone());
    let actual = tokio::task::spawn_blocking(move || -> std::io::Result<Digest> {
        use std::io::Read as _;
        let mut file = std::fs::File::open(&hashed)?;
        let mut hasher = Hasher::like(&like);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok(hasher.finish());
            }
            hasher.update(&buf[..n]);
        }
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    if actual != digest {
        let _ = std::fs::remove_file(&path);
        return Err(RegistryError::new(
            ErrorCode::DigestInvalid,
            format!("uploaded content has digest {actual}, not {digest}"),
        ));
    }
    // The record first: every file in the store has one (see `meta`).
    let new = app
        .meta
        .put_blob(&NewBlob {
            upstream: &route.upstream.name,
            repository: &route.repository,
            digest: &digest,
            size,
        })
        .await?;
    let commit = app.store.commit(path, &digest);
    match &app.fleet {
        Some(fleet) => fleet.storing(&digest, commit).await,
        None => commit.await,
    }?;
    if new {
        app.status.stored().committed(size);
    }
    Ok(created(format!("/v2/{name}/blobs/{digest}"), &digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_starts() {
        assert_eq!(chunk_start("0-1023"), Some(0));
        assert_eq!(chunk_start("1024-2047"), Some(1024));
        assert_eq!(chunk_start("bytes 1024-2047/4096"), Some(1024));
        assert_eq!(chunk_start("bytes=5-9"), Some(5));
        assert_eq!(chunk_start("nonsense"), None);
    }
}

//! The push API for local repositories (`local:` in the config): blob uploads (monolithic and
//! chunked), cross-repository mounts, manifest PUT, and deletes when `storage.delete.enabled`.
//!
//! Uploads are written to temp files in the store's own file system; the final PUT hashes the file,
//! refuses a digest mismatch (the file is deleted) and commits it with the same atomic rename as
//! fills. A manifest is accepted only when every blob and manifest it references is already in the
//! repository. Proxied repositories refuse all of this with DENIED, naming the local prefixes.
//!
//! Bounds: an upload grows to `limits.max_blob_size` at most (past it the upload is abandoned
//! with SIZE_INVALID); a request body that sends nothing for `limits.idle_timeout` fails; an
//! upload no request touched for `limits.upload_lifetime` is abandoned and its file deleted
//! ([`Uploads::expire`], run periodically by the server); at most `limits.max_uploads` are in
//! progress.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use super::App;
use super::http::internal;
use super::manifest;
use super::meta::{NewBlob, NewManifest};
use super::routing::Route;
use crate::reference::Digest;
use crate::registry::route::ManifestRef;
use crate::registry::{CONTENT_DIGEST_HEADER, ErrorCode, RegistryError};

/// Uploads in progress, by id.
#[derive(Debug, Default)]
pub struct Uploads {
    active: Mutex<HashMap<String, Upload>>,
}

#[derive(Debug, Clone)]
struct Upload {
    repository: String,
    path: PathBuf,
    size: u64,
    /// When a request last finished with it.
    touched: Instant,
    /// A request is writing to it now.
    busy: bool,
}

impl Uploads {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Upload>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A known, live upload of `repository`, marked busy when `claim` (for a request that writes
    /// to it: another one at the same time is refused).
    fn get(
        &self,
        id: &str,
        repository: &str,
        lifetime: Duration,
        claim: bool,
    ) -> Result<Upload, RegistryError> {
        let mut active = self.lock();
        let upload = active
            .get_mut(id)
            .filter(|u| u.repository == repository)
            .filter(|u| u.busy || u.touched.elapsed() < lifetime)
            .ok_or_else(|| {
                RegistryError::new(
                    ErrorCode::BlobUploadUnknown,
                    format!("upload {id} is not known (or was abandoned)"),
                )
            })?;
        if claim {
            if upload.busy {
                return Err(RegistryError::new(
                    ErrorCode::BlobUploadInvalid,
                    format!("upload {id} is being written by another request"),
                ));
            }
            upload.busy = true;
        }
        Ok(upload.clone())
    }

    /// Starts tracking a new upload, unless `max` are in progress.
    fn start(&self, id: &str, upload: Upload, max: usize) -> Result<(), RegistryError> {
        let mut active = self.lock();
        if active.len() >= max {
            return Err(RegistryError::new(
                ErrorCode::TooManyRequests,
                format!("{max} uploads are in progress (limits.max_uploads)"),
            ));
        }
        active.insert(id.to_owned(), upload);
        Ok(())
    }

    /// A request is done with the upload: its new size, or `None` when the upload ended.
    fn release(&self, id: &str, size: Option<u64>) {
        let mut active = self.lock();
        match size {
            Some(size) => {
                if let Some(upload) = active.get_mut(id) {
                    upload.size = size;
                    upload.busy = false;
                    upload.touched = Instant::now();
                }
            }
            None => {
                active.remove(id);
            }
        }
    }

    /// Abandons uploads no request touched for `lifetime`, deleting their files. Returns how
    /// many went.
    pub fn expire(&self, lifetime: Duration) -> usize {
        let expired: Vec<Upload> = {
            let mut active = self.lock();
            let ids: Vec<String> = active
                .iter()
                .filter(|(_, u)| !u.busy && u.touched.elapsed() >= lifetime)
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| active.remove(id)).collect()
        };
        for upload in &expired {
            let _ = std::fs::remove_file(&upload.path);
        }
        expired.len()
    }
}

/// DENIED for a push to a repository that is proxied.
pub fn refuse(app: &App, route: &Route, name: &str) -> RegistryError {
    RegistryError::new(
        ErrorCode::Denied,
        format!(
            "{name} is proxied from {}: pushes are accepted only for local repositories ({})",
            route.upstream.name,
            app.router.local.describe()
        ),
    )
}

/// A fresh upload id: 128 random bits, so one client cannot guess (and write to) another's
/// upload.
pub(super) fn new_upload_id() -> Result<String, RegistryError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(internal)?;
    Ok(hex::encode(bytes))
}

pub(super) fn accepted(name: &str, id: &str, size: u64) -> Response {
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

fn created(location: String, digest: &Digest) -> Response {
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

pub(super) fn query(parts: &Parts, key: &str) -> Option<String> {
    url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Appends a request body to an upload file of `size` bytes; returns the new size. Past
/// `limits.max_blob_size`, or after `limits.idle_timeout` without data, it fails.
pub(super) async fn append(
    app: &App,
    path: &std::path::Path,
    mut size: u64,
    body: Body,
) -> Result<u64, RegistryError> {
    let limits = &app.limits;
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

/// Appends `body` to an upload a request claimed, then releases it; an upload whose body
/// failed is abandoned (its file deleted).
async fn append_claimed(
    app: &App,
    id: &str,
    upload: &Upload,
    body: Body,
) -> Result<u64, RegistryError> {
    match append(app, &upload.path, upload.size, body).await {
        Ok(size) => Ok(size),
        Err(error) => {
            app.uploads.release(id, None);
            let _ = std::fs::remove_file(&upload.path);
            Err(error)
        }
    }
}

/// The upload API: POST (start, monolithic or mount), PATCH, PUT, GET and DELETE.
pub async fn upload(
    app: &App,
    route: &Route,
    name: &str,
    id: Option<&str>,
    parts: &Parts,
    body: Body,
) -> Result<Response, RegistryError> {
    let lifetime = app.limits.upload_lifetime;
    let monolithic = query(parts, "digest").is_some() && id.is_none();
    let mounting = query(parts, "mount").is_some() && id.is_none();
    if let Some(bucket) = app.store.bucket().filter(|_| !monolithic && !mounting) {
        // On a bucket, any replica continues an upload another started.
        return super::shared_uploads::upload(app, bucket, route, name, id, parts, body).await;
    }
    match (&parts.method, id) {
        (&Method::POST, None) => {
            if let (Some(mount), Some(from)) = (query(parts, "mount"), query(parts, "from")) {
                if let Ok(digest) = Digest::parse(&mount) {
                    let upstream = &route.upstream.name;
                    let linked = app
                        .meta
                        .is_linked(upstream, &from, &digest)
                        .await
                        .map_err(internal)?
                        && app
                            .meta
                            .has_source(upstream, &digest)
                            .await
                            .map_err(internal)?;
                    if linked && app.store.size(&digest).await.map_err(internal)?.is_some() {
                        app.meta
                            .link(upstream, &route.repository, &digest)
                            .await
                            .map_err(internal)?;
                        return Ok(created(format!("/v2/{name}/blobs/{digest}"), &digest));
                    }
                }
                // Not mountable: a new upload, on the bucket when there is one.
                if let Some(bucket) = app.store.bucket().filter(|_| !monolithic) {
                    return super::shared_uploads::upload(
                        app, bucket, route, name, id, parts, body,
                    )
                    .await;
                }
            }
            let id = new_upload_id()?;
            let upload = Upload {
                repository: route.repository.clone(),
                path: app.store.temp_path(),
                size: 0,
                touched: Instant::now(),
                busy: true,
            };
            app.uploads
                .start(&id, upload.clone(), app.limits.max_uploads)?;
            let size = append_claimed(app, &id, &upload, body).await?;
            if let Some(digest) = query(parts, "digest") {
                app.uploads.release(&id, None);
                return finish(app, route, name, Upload { size, ..upload }, &digest).await;
            }
            app.uploads.release(&id, Some(size));
            Ok(accepted(name, &id, size))
        }
        (&Method::PATCH, Some(id)) => {
            let upload = app.uploads.get(id, &route.repository, lifetime, true)?;
            let size = append_claimed(app, id, &upload, body).await?;
            app.uploads.release(id, Some(size));
            Ok(accepted(name, id, size))
        }
        (&Method::PUT, Some(id)) => {
            let upload = app.uploads.get(id, &route.repository, lifetime, true)?;
            let size = append_claimed(app, id, &upload, body).await?;
            app.uploads.release(id, None);
            let digest = query(parts, "digest").ok_or_else(|| {
                let _ = std::fs::remove_file(&upload.path);
                RegistryError::new(ErrorCode::DigestInvalid, "the final PUT needs ?digest=")
            })?;
            finish(app, route, name, Upload { size, ..upload }, &digest).await
        }
        (&Method::GET, Some(id)) => {
            let upload = app.uploads.get(id, &route.repository, lifetime, false)?;
            let mut response = accepted(name, id, upload.size);
            *response.status_mut() = StatusCode::NO_CONTENT;
            Ok(response)
        }
        (&Method::DELETE, Some(id)) => {
            let upload = app.uploads.get(id, &route.repository, lifetime, true)?;
            app.uploads.release(id, None);
            let _ = std::fs::remove_file(&upload.path);
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            Ok(response)
        }
        (method, _) => Err(RegistryError::new(
            ErrorCode::Unsupported,
            format!("{method} on an upload"),
        )),
    }
}

/// Verifies a complete upload against `digest` and commits it.
async fn finish(
    app: &App,
    route: &Route,
    name: &str,
    upload: Upload,
    digest: &str,
) -> Result<Response, RegistryError> {
    finish_file(app, route, name, upload.path, upload.size, digest).await
}

/// Verifies a complete upload in the spool file `path` against `digest` and commits it.
pub(super) async fn finish_file(
    app: &App,
    route: &Route,
    name: &str,
    path: PathBuf,
    size: u64,
    digest: &str,
) -> Result<Response, RegistryError> {
    let digest = Digest::parse(digest)
        .map_err(|e| RegistryError::new(ErrorCode::DigestInvalid, format!("{digest:?}: {e}")))?;
    let hashed = path.clone();
    let actual = tokio::task::spawn_blocking(move || -> std::io::Result<Digest> {
        let mut file = std::fs::File::open(&hashed)?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher)?;
        Ok(Digest::sha256_from_bytes(&hasher.finalize()))
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
    app.meta
        .put_blob(&NewBlob {
            upstream: &route.upstream.name,
            repository: &route.repository,
            digest: &digest,
            size,
        })
        .await
        .map_err(internal)?;
    let commit = app.store.commit(path, &digest);
    match &app.fleet {
        Some(fleet) => fleet.storing(&digest, commit).await,
        None => commit.await,
    }
    .map_err(internal)?;
    Ok(created(format!("/v2/{name}/blobs/{digest}"), &digest))
}

/// PUT of a manifest by tag or digest.
pub async fn put_manifest(
    app: &App,
    route: &Route,
    name: &str,
    reference: &ManifestRef,
    parts: &Parts,
    body: Body,
) -> Result<Response, RegistryError> {
    let limit = usize::try_from(app.limits.max_manifest_size).unwrap_or(usize::MAX);
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        RegistryError::new(
            ErrorCode::ManifestInvalid,
            format!("manifest body (limits.max_manifest_size is {limit} bytes): {e}"),
        )
    })?;
    let digest = super::store::sha256(&bytes);
    if let ManifestRef::Digest(expected) = reference {
        if *expected != digest {
            return Err(RegistryError::new(
                ErrorCode::DigestInvalid,
                format!("manifest digest is {digest}, not {expected}"),
            ));
        }
    }
    let media_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
        .filter(|v| !v.is_empty())
        .or_else(|| manifest::declared_media_type(&bytes))
        .ok_or_else(|| RegistryError::new(ErrorCode::ManifestInvalid, "no media type"))?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .map_err(|e| RegistryError::new(ErrorCode::ManifestInvalid, format!("not JSON: {e}")))?;
    let references = manifest::references(&bytes);
    for referenced in &references {
        if !app
            .meta
            .is_linked(&route.upstream.name, &route.repository, referenced)
            .await
            .map_err(internal)?
        {
            return Err(RegistryError::new(
                ErrorCode::ManifestBlobUnknown,
                format!("{referenced} is not in {}: push it first", route.repository),
            ));
        }
    }
    let tag = match reference {
        ManifestRef::Tag(tag) => Some(tag.as_str()),
        ManifestRef::Digest(_) => None,
    };
    // The record first: every file in the store has one (see `meta`).
    app.meta
        .put_manifest(&NewManifest {
            upstream: &route.upstream.name,
            repository: &route.repository,
            tag,
            digest: &digest,
            media_type: &media_type,
            size: bytes.len() as u64,
            references: &references,
        })
        .await
        .map_err(internal)?;
    app.store
        .put_verified(&digest, bytes.clone())
        .await
        .map_err(internal)?;
    Ok(created(format!("/v2/{name}/manifests/{digest}"), &digest))
}

/// DELETE of a manifest (by digest: its tags go too) or of a blob link.
pub async fn delete(
    app: &App,
    route: &Route,
    reference: &ManifestRef,
    blob: bool,
) -> Result<Response, RegistryError> {
    if !app.delete_enabled {
        return Err(RegistryError::new(
            ErrorCode::Unsupported,
            "deletes are disabled (storage.delete.enabled)",
        ));
    }
    let ManifestRef::Digest(digest) = reference else {
        return Err(RegistryError::new(
            ErrorCode::Unsupported,
            "delete by digest, not by tag",
        ));
    };
    let upstream = &route.upstream.name;
    if !app
        .meta
        .is_linked(upstream, &route.repository, digest)
        .await
        .map_err(internal)?
    {
        let code = if blob {
            ErrorCode::BlobUnknown
        } else {
            ErrorCode::ManifestUnknown
        };
        return Err(RegistryError::new(
            code,
            format!("{digest} is not in {}", route.repository),
        ));
    }
    app.meta
        .unlink(upstream, &route.repository, digest)
        .await
        .map_err(internal)?;
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::ACCEPTED;
    Ok(response)
}

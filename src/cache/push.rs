//! The manifest side of pushing to local repositories (`local:` in the config): manifest PUT
//! (accepted only when every blob and manifest it references is already in the repository) and
//! deletes when `storage.delete.enabled`. Proxied repositories refuse pushes with DENIED, naming
//! the local prefixes. Blob uploads are in [`super::uploads`].

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::Response;

use super::App;
use super::manifest;
use super::meta::NewManifest;
use super::routing::Route;
use super::uploads::created;
use crate::reference::Hasher;
use crate::registry::route::ManifestRef;
use crate::registry::{ErrorCode, RegistryError, internal};

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
    // Named by digest: with that digest's algorithm (sha512 too); by tag: sha256.
    let digest = match reference {
        ManifestRef::Digest(expected) => Hasher::digest(expected, &bytes),
        ManifestRef::Tag(_) => super::store::sha256(&bytes),
    };
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

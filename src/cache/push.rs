//! The manifest side of pushing to local repositories (`local:` in the config): manifest PUT
//! (accepted only when every blob and manifest it references is already in the repository) and
//! deletes when `storage.delete.enabled`. Proxied repositories refuse pushes with DENIED, naming
//! the local prefixes. Blob uploads are in [`super::uploads`].

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use super::App;
use super::manifest::{self, CachedManifest};
use super::routing::Route;
use super::uploads::created;
use crate::reference::{Digest, Hasher, is_valid_tag};
use crate::registry::route::ManifestRef;
use crate::registry::{ErrorCode, RegistryError};

/// The most `?tag=` parameters one manifest push by digest may carry.
const MAX_TAG_PARAMS: usize = 100;
/// Names each tag a push by digest set from its `?tag=` parameters.
const TAG_HEADER: &str = "oci-tag";
/// Set on the answer to a pushed manifest that has a `subject`.
const SUBJECT_HEADER: &str = "oci-subject";

/// DENIED for a push to a repository that is proxied.
pub(crate) fn refuse(app: &App, route: &Route, name: &str) -> RegistryError {
    RegistryError::new(
        ErrorCode::Denied,
        format!(
            "{name} is proxied from {}: pushes are accepted only for local repositories ({})",
            route.upstream.name,
            app.upstreams.router().local.describe()
        ),
    )
}

/// PUT of a manifest by tag or digest.
pub(crate) async fn put_manifest(
    app: &App,
    route: &Route,
    name: &str,
    reference: &ManifestRef,
    parts: &Parts,
    body: Body,
) -> Result<Response, RegistryError> {
    let limit = usize::try_from(app.options.limits.max_manifest_size).unwrap_or(usize::MAX);
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
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .map_err(|e| RegistryError::new(ErrorCode::ManifestInvalid, format!("not JSON: {e}")))?;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    let media_type = manifest::pushed_media_type(&bytes, content_type)
        .map_err(|why| RegistryError::new(ErrorCode::ManifestInvalid, why.to_string()))?
        .to_owned();
    // A subject may come later, and non-distributable layers never come.
    let references = manifest::required_references(&bytes);
    for referenced in &references {
        if !app
            .meta
            .is_linked(&route.upstream.name, &route.repository, referenced)
            .await?
        {
            return Err(RegistryError::new(
                ErrorCode::ManifestBlobUnknown,
                format!("{referenced} is not in {}: push it first", route.repository),
            ));
        }
    }
    let tags = tags_of(reference, parts)?;
    let pushed = CachedManifest {
        digest,
        media_type,
        bytes,
    };
    // Its subject's list first: a full one refuses the push before anything is stored.
    let subject = app.referrers.record_push(route, &pushed).await?;
    if let Err(error) = store_pushed(app, route, &pushed, &tags, &references).await {
        if let Some(subject) = &subject {
            app.referrers.forget(route, subject, &pushed.digest).await?;
        }
        return Err(error);
    }
    let mut response = created(
        format!("/v2/{name}/manifests/{}", pushed.digest),
        &pushed.digest,
    );
    if let Some(value) = subject.and_then(|s| HeaderValue::from_str(s.as_str()).ok()) {
        // The spec's sign that this registry keeps referrers itself (no tag schema needed).
        response.headers_mut().insert(SUBJECT_HEADER, value);
    }
    if matches!(reference, ManifestRef::Digest(_)) {
        for tag in &tags {
            if let Ok(value) = HeaderValue::from_str(tag) {
                response.headers_mut().append(TAG_HEADER, value);
            }
        }
    }
    Ok(response)
}

/// A pushed manifest, stored with a record per tag it sets.
async fn store_pushed(
    app: &App,
    route: &Route,
    pushed: &CachedManifest,
    tags: &[String],
    references: &[Digest],
) -> Result<(), RegistryError> {
    let tagged: Vec<Option<&str>> = if tags.is_empty() {
        vec![None]
    } else {
        tags.iter().map(|t| Some(t.as_str())).collect()
    };
    app.manifests
        .store(route, &tagged, pushed, references)
        .await
}

/// The tags a manifest PUT sets: the one it is pushed by, or, pushed by digest, its `?tag=`
/// parameters (at most [`MAX_TAG_PARAMS`]).
fn tags_of(reference: &ManifestRef, parts: &Parts) -> Result<Vec<String>, RegistryError> {
    if let ManifestRef::Tag(tag) = reference {
        return Ok(vec![tag.clone()]);
    }
    let query = parts.uri.query().unwrap_or("");
    let mut tags: Vec<String> = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if key != "tag" || tags.iter().any(|t| *t == value) {
            continue;
        }
        if !is_valid_tag(&value) {
            return Err(RegistryError::new(
                ErrorCode::ManifestInvalid,
                format!("invalid tag {value:?}"),
            ));
        }
        tags.push(value.into_owned());
    }
    if tags.len() > MAX_TAG_PARAMS {
        return Err(RegistryError::new(
            ErrorCode::ManifestInvalid,
            format!("{} tags in one push; at most {MAX_TAG_PARAMS}", tags.len()),
        ));
    }
    Ok(tags)
}

/// DELETE of a manifest (by digest: its tags go too), of a tag alone, or of a blob link.
pub(crate) async fn delete(
    app: &App,
    route: &Route,
    reference: &ManifestRef,
    blob: bool,
) -> Result<Response, RegistryError> {
    if !app.options.delete_enabled {
        return Err(RegistryError::new(
            ErrorCode::Unsupported,
            "deletes are disabled (storage.delete.enabled)",
        ));
    }
    let upstream = &route.upstream.name;
    let digest = match reference {
        ManifestRef::Digest(digest) => digest,
        ManifestRef::Tag(tag) if !blob => {
            // The tag alone goes; the manifest stays, by digest and under its other tags.
            let known = app.meta.tag(upstream, &route.repository, tag).await?;
            if known.is_none() {
                return Err(RegistryError::new(
                    ErrorCode::ManifestUnknown,
                    format!("{}:{tag} is not known", route.repository),
                ));
            }
            app.meta
                .forget_tag(upstream, &route.repository, tag)
                .await?;
            return Ok(accepted());
        }
        ManifestRef::Tag(_) => {
            return Err(RegistryError::new(
                ErrorCode::DigestInvalid,
                "blobs are deleted by digest",
            ));
        }
    };
    if !app
        .meta
        .is_linked(upstream, &route.repository, digest)
        .await?
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
    if !blob {
        app.referrers.forget_delete(route, digest).await?;
    }
    app.meta.unlink(upstream, &route.repository, digest).await?;
    Ok(accepted())
}

fn accepted() -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::ACCEPTED;
    response
}

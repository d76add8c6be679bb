//! The referrers API (`GET /v2/<name>/referrers/<digest>`, OCI distribution-spec 1.1): the
//! manifests whose `subject` is a digest (signatures, SBOMs, attestations), listed as an image
//! index of their descriptors.
//!
//! - Local repositories answer from the records written when a manifest with a `subject` is
//!   pushed, and removed when it is deleted or evicted ([`record_push`], [`forget_delete`]).
//! - Proxied repositories ask the upstream's referrers API. An upstream without one (404 on the
//!   endpoint) is read through the referrers tag schema, the index tagged `<alg>-<hex>`, as the
//!   spec tells clients to; that tag is cached like any tag. The answer is recorded per
//!   (upstream, repository, subject) and follows the tag rules: served without asking within
//!   the upstream's `tag_revalidate`, and from the records with a `Warning` while the upstream
//!   fails. The referring manifests and their blobs are then pulled through the cache like any
//!   content.
//! - [`page`] applies `artifactType=` and cuts answers over `n=` descriptors or [`PAGE_BYTES`]
//!   into pages linked with `Link`.

use std::collections::BTreeMap;
use std::sync::Arc;

use reqwest::header::{ACCEPT, LINK};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::routing::Route;
use super::{App, manifest, unreachable, unreachable_text, upstream_status};
use crate::reference::Digest;
use crate::registry::{ErrorCode, OCI_INDEX, RegistryError, internal};
use crate::upstream::{UpstreamRequest, read_limited};

/// The most JSON one page of an answer carries; a larger answer is paginated.
pub const PAGE_BYTES: usize = 1 << 20;
/// The most pages of an upstream's paginated answer that are followed.
const MAX_UPSTREAM_PAGES: usize = 16;

/// Referrers of one subject, sorted by digest.
#[derive(Debug)]
pub struct Listing {
    pub descriptors: Vec<Value>,
    /// Set when the records are served because the upstream failed.
    pub warning: Option<String>,
    /// local, fresh (within the revalidation window), hit, or stale.
    pub cache: &'static str,
}

/// The referrers of `subject` in the route's repository.
pub async fn list(
    app: &Arc<App>,
    route: &Route,
    subject: &Digest,
) -> Result<Listing, RegistryError> {
    if route.upstream.local {
        return Ok(Listing {
            descriptors: recorded(app, route, subject).await?,
            warning: None,
            cache: "local",
        });
    }
    let key = format!(
        "{}\u{1f}{}\u{1f}referrers\u{1f}{subject}",
        route.upstream.name, route.repository
    );
    let window = route.upstream.tag_revalidate;
    if app.fresh(&key, window) {
        return Ok(Listing {
            descriptors: recorded(app, route, subject).await?,
            warning: None,
            cache: "fresh",
        });
    }
    let asked = match from_api(app, route, subject).await {
        Ok(Some(descriptors)) => Ok((descriptors, None)),
        Ok(None) => from_tag_schema(app, route, subject).await,
        Err(e) => Err(e),
    };
    match asked {
        Ok((descriptors, warning)) => {
            if warning.is_none() {
                app.validated(&key, window);
            }
            let descriptors = replace(app, route, subject, descriptors).await?;
            Ok(Listing {
                descriptors,
                cache: if warning.is_some() { "stale" } else { "hit" },
                warning,
            })
        }
        Err(failure) if matches!(failure.code, ErrorCode::Unauthorized | ErrorCode::Denied) => {
            Err(failure)
        }
        Err(failure) => {
            let descriptors = recorded(app, route, subject).await?;
            if descriptors.is_empty() {
                return Err(failure);
            }
            Ok(Listing {
                descriptors,
                warning: Some(format!(
                    "upstream failed ({}); serving the cached referrers",
                    failure.message
                )),
                cache: "stale",
            })
        }
    }
}

/// Records a pushed manifest that has a `subject` as one of its referrers.
pub async fn record_push(
    app: &App,
    route: &Route,
    manifest: &manifest::CachedManifest,
) -> Result<Option<Digest>, RegistryError> {
    let Some(subject) = manifest::subject(&manifest.bytes) else {
        return Ok(None);
    };
    let descriptor =
        manifest::referrer_descriptor(&manifest.bytes, &manifest.digest, &manifest.media_type);
    app.meta
        .put_referrer(
            &route.upstream.name,
            &route.repository,
            &subject,
            &manifest.digest,
            descriptor.to_string().as_bytes(),
        )
        .await
        .map_err(internal)?;
    Ok(Some(subject))
}

/// Forgets a deleted manifest as a referrer of its subject.
pub async fn forget_delete(app: &App, route: &Route, digest: &Digest) -> Result<(), RegistryError> {
    let Some(manifest) = app.cached_manifest(digest).await? else {
        return Ok(());
    };
    if let Some(subject) = manifest::subject(&manifest.bytes) {
        app.meta
            .forget_referrer(&route.upstream.name, &route.repository, &subject, digest)
            .await
            .map_err(internal)?;
    }
    Ok(())
}

/// One page of `descriptors` (sorted by digest): those of `artifact_type` when given, after
/// the digest `last`, at most `n` and about [`PAGE_BYTES`] of JSON (at least one). Returns the
/// page and, when more follow, the last digest on it (the next page's `last`).
pub fn page(
    descriptors: Vec<Value>,
    artifact_type: Option<&str>,
    last: Option<&str>,
    n: Option<usize>,
    budget: usize,
) -> (Vec<Value>, Option<String>) {
    let mut selected = descriptors
        .into_iter()
        .filter(|d| artifact_type.is_none_or(|t| d["artifactType"].as_str() == Some(t)))
        .filter(|d| last.is_none_or(|last| d["digest"].as_str().unwrap_or("") > last))
        .peekable();
    let mut page = Vec::new();
    let mut bytes = 0;
    while let Some(descriptor) = selected.peek() {
        let size = descriptor.to_string().len() + 1;
        let full =
            n.is_some_and(|n| page.len() >= n) || (!page.is_empty() && bytes + size > budget);
        if full {
            let cursor = page
                .last()
                .and_then(|d: &Value| d["digest"].as_str())
                .map(str::to_owned);
            return (page, cursor);
        }
        bytes += size;
        page.extend(selected.next());
    }
    (page, None)
}

/// An image index listing `descriptors`.
pub fn index(descriptors: Vec<Value>) -> String {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": descriptors,
    })
    .to_string()
}

/// The recorded referrers of `subject`, sorted by digest.
async fn recorded(app: &App, route: &Route, subject: &Digest) -> Result<Vec<Value>, RegistryError> {
    let records = app
        .meta
        .referrers(&route.upstream.name, &route.repository, subject)
        .await
        .map_err(internal)?;
    Ok(by_digest(
        records
            .iter()
            .filter_map(|r| serde_json::from_slice(r).ok())
            .collect(),
    ))
}

/// Valid descriptors (a digest and a media type), one per digest, sorted by digest.
fn by_digest(descriptors: Vec<Value>) -> Vec<Value> {
    let mut sorted = BTreeMap::new();
    for descriptor in descriptors {
        let digest = descriptor["digest"]
            .as_str()
            .and_then(|d| Digest::parse(d).ok());
        if let Some(digest) = digest.filter(|_| descriptor["mediaType"].is_string()) {
            sorted.insert(digest, descriptor);
        }
    }
    sorted.into_values().collect()
}

/// Makes the records of `subject` what the upstream answered; returns them sorted.
async fn replace(
    app: &App,
    route: &Route,
    subject: &Digest,
    answered: Vec<Value>,
) -> Result<Vec<Value>, RegistryError> {
    let answered = by_digest(answered);
    let old = recorded(app, route, subject).await?;
    let (upstream, repository) = (&route.upstream.name, &route.repository);
    for descriptor in &answered {
        if old.contains(descriptor) {
            continue;
        }
        let digest = Digest::parse(descriptor["digest"].as_str().unwrap_or(""))
            .map_err(|e| internal(format!("a sorted descriptor lost its digest: {e}")))?;
        app.meta
            .put_referrer(
                upstream,
                repository,
                subject,
                &digest,
                descriptor.to_string().as_bytes(),
            )
            .await
            .map_err(internal)?;
    }
    for gone in old.iter().filter(|d| {
        !answered
            .iter()
            .any(|a| a["digest"].as_str() == d["digest"].as_str())
    }) {
        if let Ok(digest) = Digest::parse(gone["digest"].as_str().unwrap_or("")) {
            app.meta
                .forget_referrer(upstream, repository, subject, &digest)
                .await
                .map_err(internal)?;
        }
    }
    Ok(answered)
}

/// The upstream's referrers API, every page of it; `Ok(None)` when it has none (404).
async fn from_api(
    app: &App,
    route: &Route,
    subject: &Digest,
) -> Result<Option<Vec<Value>>, RegistryError> {
    let upstream = &route.upstream.name;
    let path = format!("/v2/{}/referrers/{subject}", route.repository);
    let limit = usize::try_from(app.limits.max_manifest_size).unwrap_or(usize::MAX);
    let mut descriptors = Vec::new();
    let mut query = None;
    for _ in 0..MAX_UPSTREAM_PAGES {
        let mut request = UpstreamRequest::pull(Method::GET, &route.repository, path.clone())
            .header(ACCEPT, OCI_INDEX);
        request.query = query.take();
        let response = app
            .upstream(route, request)
            .await
            .map_err(|e| unreachable(upstream, e))?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND if descriptors.is_empty() => return Ok(None),
            _ => {
                return Err(upstream_status(
                    upstream,
                    &response,
                    ErrorCode::ManifestUnknown,
                ));
            }
        }
        let next = response
            .headers()
            .get(LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(|link| next_query(link, &path));
        let bytes = read_limited(response, limit)
            .await
            .map_err(|e| unreachable_text(upstream, &format!("referrers: {e}")))?;
        descriptors.extend(manifests_of(&bytes).ok_or_else(|| {
            RegistryError::new(
                ErrorCode::Unavailable,
                format!("upstream {upstream} answered referrers of {subject} with no index"),
            )
        })?);
        match next {
            Some(next) => query = Some(next),
            None => return Ok(Some(descriptors)),
        }
    }
    tracing::warn!(
        upstream = %upstream,
        %subject,
        pages = MAX_UPSTREAM_PAGES,
        "referrers: more pages than followed; the answer is cut"
    );
    Ok(Some(descriptors))
}

/// The referrers tag schema: the index tagged `<alg>-<hex>` (hex cut at 64), cached like any
/// tag. No such tag: no referrers.
async fn from_tag_schema(
    app: &Arc<App>,
    route: &Route,
    subject: &Digest,
) -> Result<(Vec<Value>, Option<String>), RegistryError> {
    let hex = subject.hex();
    let tag = format!("{}-{}", subject.algorithm(), &hex[..hex.len().min(64)]);
    match app.manifest_by_tag(route, &tag).await {
        Ok(answer) => {
            app.mark_used(&answer.manifest.digest);
            Ok((
                manifests_of(&answer.manifest.bytes).unwrap_or_default(),
                answer.warning,
            ))
        }
        Err(e) if e.code == ErrorCode::ManifestUnknown => Ok((Vec::new(), None)),
        Err(e) => Err(e),
    }
}

/// The `manifests` of an image index.
fn manifests_of(bytes: &[u8]) -> Option<Vec<Value>> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    value.get("manifests")?.as_array().cloned()
}

/// The query of a `Link: <...>; rel="next"` that continues `path` (a link elsewhere is not
/// followed).
fn next_query(link: &str, path: &str) -> Option<String> {
    let target = link
        .split(',')
        .find(|part| part.contains("rel=\"next\"") || part.contains("rel=next"))?;
    let url = target.split('>').next()?.trim().trim_start_matches('<');
    let relative = match url.find("/v2/") {
        Some(at) => &url[at..],
        None => return None,
    };
    let (link_path, query) = relative.split_once('?')?;
    (link_path == path).then(|| query.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(i: usize, artifact_type: &str) -> Value {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{i:064x}"),
            "size": 10,
            "artifactType": artifact_type,
        })
    }

    #[test]
    fn pages_filter_and_continue() {
        let all: Vec<Value> = (1..=5)
            .map(|i| descriptor(i, if i % 2 == 0 { "sig" } else { "sbom" }))
            .collect();
        let (page1, cursor) = page(all.clone(), None, None, Some(2), PAGE_BYTES);
        assert_eq!(page1, all[..2]);
        let cursor = cursor.unwrap();
        assert_eq!(cursor, format!("sha256:{:064x}", 2));
        let (page2, cursor) = page(all.clone(), None, Some(&cursor), Some(2), PAGE_BYTES);
        assert_eq!(page2, all[2..4]);
        let (page3, end) = page(all.clone(), None, cursor.as_deref(), Some(2), PAGE_BYTES);
        assert_eq!((page3, end), (all[4..].to_vec(), None));
        let (sigs, end) = page(all.clone(), Some("sig"), None, None, PAGE_BYTES);
        assert_eq!((sigs, end), (vec![all[1].clone(), all[3].clone()], None));
        // By size: each page holds what fits, and at least one.
        let one = all[0].to_string().len() + 1;
        let (small, cursor) = page(all.clone(), None, None, None, one * 2);
        assert_eq!((small.len(), cursor.is_some()), (2, true));
        let (tiny, _) = page(all, None, None, None, 1);
        assert_eq!(tiny.len(), 1);
    }

    #[test]
    fn descriptors_are_deduplicated_sorted_and_checked() {
        let mut bad = descriptor(9, "x");
        bad["digest"] = "sha256:nope".into();
        let sorted = by_digest(vec![
            descriptor(3, "a"),
            descriptor(1, "b"),
            bad,
            descriptor(3, "c"),
        ]);
        let digests: Vec<&str> = sorted
            .iter()
            .map(|d| d["digest"].as_str().unwrap())
            .collect();
        assert_eq!(
            digests,
            [format!("sha256:{:064x}", 1), format!("sha256:{:064x}", 3)]
        );
        let empty: Value = serde_json::from_str(&index(Vec::new())).unwrap();
        assert_eq!(empty["mediaType"], OCI_INDEX);
        assert_eq!(empty["schemaVersion"], 2);
        assert_eq!(empty["manifests"], serde_json::json!([]));
    }

    #[test]
    fn upstream_links_are_followed_only_along_the_same_path() {
        let path = "/v2/a/referrers/sha256:1";
        assert_eq!(
            next_query(r#"</v2/a/referrers/sha256:1?n=2&last=x>; rel="next""#, path).as_deref(),
            Some("n=2&last=x")
        );
        assert_eq!(
            next_query(
                r#"<https://r.test/v2/a/referrers/sha256:1?last=y>; rel="next""#,
                path
            )
            .as_deref(),
            Some("last=y")
        );
        assert_eq!(
            next_query(r#"</v2/b/referrers/sha256:1?last=y>; rel="next""#, path),
            None
        );
        assert_eq!(
            next_query(r#"</v2/a/referrers/sha256:1?last=y>; rel="prev""#, path),
            None
        );
    }
}

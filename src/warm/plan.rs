//! What `regmirror warm` asks a cache for, decided without I/O: how an image maps to cache
//! requests, what a manifest references, which children of an index a platform selection keeps,
//! what the cache's `X-Regmirror-Cache` header says about an answer, and the lines of a `--file`
//! list.
//!
//! Pure: no I/O, no printing.

use std::sync::Arc;

use serde::Deserialize;

pub use crate::platform::{IndexPlatform, Platform, PlatformError};
use crate::reference::{Digest, DigestError, ImageRef};
use crate::registry::{CacheOutcome, DOCKER_LIST, OCI_INDEX};

/// Where an image's requests go on the cache: the repository path and the `?ns=` that routes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRoute {
    /// The `/v2/<repository>/…` part, as the image names it (`library/nginx` for `nginx`).
    pub repository: String,
    /// The image's registry, sent as `?ns=` (containerd's way of asking a mirror), or `None`
    /// when the image names the cache itself.
    pub ns: Option<String>,
}

impl CacheRoute {
    /// `ghcr.io/org/img:tag` through the cache is `/v2/org/img/manifests/tag?ns=ghcr.io`, as
    /// containerd asks a mirror; Docker Hub names are normalised first (`nginx` is
    /// `/v2/library/nginx/manifests/latest?ns=docker.io`). An image whose registry is the cache
    /// itself (`cache_authority`, `host[:port]`) is asked as a client of that registry asks it,
    /// without `?ns=`: the cache routes it by path prefix (`cache:5000/ghcr.io/org/img`), as a
    /// local repository, or to its default upstream.
    pub fn for_image(image: &ImageRef, cache_authority: &str) -> Self {
        let ns = (!image.registry().eq_ignore_ascii_case(cache_authority))
            .then(|| image.registry().to_owned());
        CacheRoute {
            repository: image.repository().to_owned(),
            ns,
        }
    }

    /// `/v2/<repository>/manifests/<reference>` (the `?ns=` is added by the client's target).
    pub fn manifest_path(&self, reference: &str) -> String {
        format!("/v2/{}/manifests/{reference}", self.repository)
    }

    /// `/v2/<repository>/blobs/<digest>`
    pub fn blob_path(&self, digest: &Digest) -> String {
        format!("/v2/{}/blobs/{digest}", self.repository)
    }

    /// One key per (namespace, repository) and content: the cache links content to a repository,
    /// so the same layer warmed in two repositories is asked for in each.
    pub fn key(&self, digest: &Digest) -> String {
        format!(
            "{}\u{1f}{}\u{1f}{digest}",
            self.ns.as_deref().unwrap_or(""),
            self.repository
        )
    }
}

/// How the cache says it served an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Fetched from the upstream now (a miss, or joining another client's download).
    Upstream,
    /// Already in the cache.
    Cached,
    /// The cache did not say (not a regmirror cache, or an older one).
    Unknown,
}

impl Source {
    /// From the `X-Regmirror-Cache` header ([`crate::registry::CACHE_HEADER`]): its
    /// [`CacheOutcome`] says whether the cache held the answer. An answer without the header
    /// that was redirected away from the cache is a committed blob in its bucket.
    pub fn from_header(value: Option<&str>, redirected: bool) -> Self {
        match value.and_then(CacheOutcome::parse) {
            Some(outcome) if outcome.is_cached() => Source::Cached,
            Some(_) => Source::Upstream,
            None if redirected => Source::Cached,
            None => Source::Unknown,
        }
    }
}

/// A content descriptor of a manifest or index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub platform: Option<IndexPlatform>,
}

/// What a manifest references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// An OCI image index or a Docker manifest list: child manifests.
    Index { children: Vec<Descriptor> },
    /// An image (or artifact) manifest: its config and its layers, less the non-distributable
    /// ones (clients fetch those from their `urls`, never through a registry).
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<u64>,
    media_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
    platform: Option<IndexPlatform>,
}

/// Why manifest bytes were not read as a manifest.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ManifestError {
    #[error("not a manifest: {0}")]
    NotJson(#[source] Arc<serde_json::Error>),
    #[error("a Docker schema 1 manifest (not served by regmirror)")]
    SchemaOne,
    #[error("a manifest ({media_type}) without a config")]
    NoConfig { media_type: String },
    #[error("descriptor digest {digest:?}: {source}")]
    Digest {
        digest: String,
        #[source]
        source: DigestError,
    },
}

impl RawDescriptor {
    fn parse(self) -> Result<Descriptor, ManifestError> {
        let digest = Digest::parse(&self.digest).map_err(|source| ManifestError::Digest {
            digest: self.digest.clone(),
            source,
        })?;
        Ok(Descriptor {
            media_type: self.media_type,
            digest,
            size: self.size,
            platform: self.platform,
        })
    }
}

impl Manifest {
    /// Parses manifest bytes; `content_type` is the answer's `Content-Type` (the body's own
    /// `mediaType` decides when it is missing or generic).
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Self, ManifestError> {
        let raw: RawManifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::NotJson(Arc::new(e)))?;
        if raw.schema_version == Some(1) {
            return Err(ManifestError::SchemaOne);
        }
        let content_type = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim())
            .filter(|c| c.starts_with("application/vnd."));
        let media_type = content_type.or(raw.media_type.as_deref()).unwrap_or("");
        let index = media_type == OCI_INDEX
            || media_type == DOCKER_LIST
            || (raw.config.is_none() && raw.manifests.is_some());
        if index {
            let children = raw
                .manifests
                .unwrap_or_default()
                .into_iter()
                .map(RawDescriptor::parse)
                .collect::<Result<_, _>>()?;
            return Ok(Manifest::Index { children });
        }
        let config = raw
            .config
            .ok_or_else(|| ManifestError::NoConfig {
                media_type: media_type.to_owned(),
            })?
            .parse()?;
        let layers = raw
            .layers
            .unwrap_or_default()
            .into_iter()
            .map(RawDescriptor::parse)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|l| {
                !(l.media_type.contains(".nondistributable.") || l.media_type.contains(".foreign."))
            })
            .collect();
        Ok(Manifest::Image { config, layers })
    }
}

/// The platforms a cache states it keeps (`X-Regmirror-Platforms: linux/amd64, linux/arm64`,
/// its `proxy.platforms`); none without the header. An entry that is not a platform is skipped.
pub fn stated_platforms(header: Option<&str>) -> Vec<Platform> {
    header
        .unwrap_or_default()
        .split(',')
        .filter_map(|p| Platform::parse(p.trim()).ok())
        .collect()
}

/// The children of an index that `platforms` keep (every child when none is given), or why none
/// is: the platforms the index has.
pub fn select<'a>(
    children: &'a [Descriptor],
    platforms: &[Platform],
) -> Result<Vec<&'a Descriptor>, NoPlatform> {
    if platforms.is_empty() {
        return Ok(children.iter().collect());
    }
    let kept: Vec<&Descriptor> = children
        .iter()
        .filter(|c| {
            c.platform
                .as_ref()
                .is_some_and(|p| platforms.iter().any(|wanted| wanted.matches(p)))
        })
        .collect();
    if kept.is_empty() {
        let wanted: Vec<String> = platforms.iter().map(ToString::to_string).collect();
        let mut has: Vec<String> = children
            .iter()
            .filter_map(|c| c.platform.as_ref().map(ToString::to_string))
            .collect();
        has.dedup();
        return Err(NoPlatform { wanted, has });
    }
    Ok(kept)
}

/// No child of an index is for a platform asked for: the platforms asked for, and those the
/// index has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the index has no manifest for {} (it has {})",
    wanted.join(", "),
    if has.is_empty() { "no platforms".to_owned() } else { has.join(", ") }
)]
pub struct NoPlatform {
    pub wanted: Vec<String>,
    pub has: Vec<String>,
}

/// An error answer in a few words: `HTTP 404 MANIFEST_UNKNOWN: manifest unknown to registry`
/// from the OCI error JSON's first error, else the status and the start of the body.
pub fn describe_error(status: u16, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<OciError>,
    }
    #[derive(Deserialize)]
    struct OciError {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(Errors { errors }) = serde_json::from_slice::<Errors>(body) {
        if let Some(first) = errors.first() {
            let more = match errors.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            return format!("HTTP {status} {}: {}{more}", first.code, first.message);
        }
    }
    let text = String::from_utf8_lossy(body);
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.char_indices().nth(200) {
        _ if text.is_empty() => format!("HTTP {status}"),
        Some((cut, _)) => format!("HTTP {status}: {}…", &text[..cut]),
        None => format!("HTTP {status}: {text}"),
    }
}

/// The entries of a `--file` list with their line numbers: one image a line, `#` starting a
/// comment, blank lines ignored.
pub fn list_entries(text: &str) -> Vec<(usize, &str)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let entry = line.split('#').next().unwrap_or("").trim();
            (!entry.is_empty()).then_some((i + 1, entry))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    #[test]
    fn images_map_to_cache_requests() {
        let cases = [
            // (image, cache authority, repository, ns, manifest path)
            (
                "ghcr.io/org/img:tag",
                "127.0.0.1:5000",
                "org/img",
                Some("ghcr.io"),
                "/v2/org/img/manifests/tag",
            ),
            (
                "nginx",
                "127.0.0.1:5000",
                "library/nginx",
                Some("docker.io"),
                "/v2/library/nginx/manifests/latest",
            ),
            (
                "index.docker.io/bitnami/redis:7",
                "cache:5000",
                "bitnami/redis",
                Some("docker.io"),
                "/v2/bitnami/redis/manifests/7",
            ),
            (
                &format!("quay.io/a/b:1@{A}"),
                "cache:5000",
                "a/b",
                Some("quay.io"),
                &format!("/v2/a/b/manifests/{A}"),
            ),
            (
                "127.0.0.1:5001/library/demo:v1",
                "127.0.0.1:5000",
                "library/demo",
                Some("127.0.0.1:5001"),
                "/v2/library/demo/manifests/v1",
            ),
            // The cache itself: no ns, so path prefixes and local repositories work as for
            // any client of it.
            (
                "cache:5000/ghcr.io/org/img:1",
                "cache:5000",
                "ghcr.io/org/img",
                None,
                "/v2/ghcr.io/org/img/manifests/1",
            ),
            (
                "cache:5000/team/app:1",
                "cache:5000",
                "team/app",
                None,
                "/v2/team/app/manifests/1",
            ),
        ];
        for (image, cache, repository, ns, path) in cases {
            let parsed = ImageRef::parse(image).unwrap();
            let route = CacheRoute::for_image(&parsed, cache);
            assert_eq!(route.repository, repository, "{image}");
            assert_eq!(route.ns.as_deref(), ns, "{image}");
            assert_eq!(
                route.manifest_path(parsed.manifest_reference()),
                path,
                "{image}"
            );
        }
        let route = CacheRoute::for_image(&ImageRef::parse("ghcr.io/org/img").unwrap(), "c");
        let digest = Digest::parse(A).unwrap();
        assert_eq!(route.blob_path(&digest), format!("/v2/org/img/blobs/{A}"));
        assert_ne!(
            route.key(&digest),
            CacheRoute::for_image(&ImageRef::parse("ghcr.io/org/other").unwrap(), "c").key(&digest)
        );
    }

    #[test]
    fn cache_header_values() {
        let cases = [
            (Some("miss"), false, Source::Upstream),
            (Some("joined"), false, Source::Upstream),
            (Some("hit"), false, Source::Cached),
            (Some("fresh"), false, Source::Cached),
            (Some("stale"), false, Source::Cached),
            (Some("reserve"), false, Source::Cached),
            (Some("local"), false, Source::Cached),
            (Some("redirect"), false, Source::Cached),
            (Some(" hit "), false, Source::Cached),
            (Some("something-new"), false, Source::Unknown),
            (None, false, Source::Unknown),
            (None, true, Source::Cached),
        ];
        for (header, redirected, source) in cases {
            assert_eq!(
                Source::from_header(header, redirected),
                source,
                "{header:?}"
            );
        }
    }

    fn index() -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": A, "size": 500,
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": B, "size": 501,
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": C, "size": 502,
                 "platform": {"os": "unknown", "architecture": "unknown"},
                 "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
            ],
        }))
        .unwrap()
    }

    #[test]
    fn platforms_stated_by_the_cache() {
        let stated = |h: Option<&str>| -> Vec<String> {
            stated_platforms(h)
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            stated(Some("linux/amd64, linux/arm64/v8")),
            ["linux/amd64", "linux/arm64/v8"]
        );
        assert_eq!(stated(Some("linux/amd64,bogus")), ["linux/amd64"]);
        assert!(stated(None).is_empty());
        assert!(stated(Some("")).is_empty());
    }

    #[test]
    fn index_children_by_platform() {
        let Manifest::Index { children } = Manifest::parse(&index(), Some(OCI_INDEX)).unwrap()
        else {
            panic!("an index");
        };
        assert_eq!(children.len(), 3);
        let digests = |platforms: &[&str]| -> Result<Vec<String>, String> {
            let platforms: Vec<Platform> = platforms
                .iter()
                .map(|p| Platform::parse(p).unwrap())
                .collect();
            select(&children, &platforms)
                .map(|kept| kept.iter().map(|d| d.digest.to_string()).collect())
                .map_err(|e| e.to_string())
        };
        // Every child without --platform (what `skopeo copy --all` copies).
        assert_eq!(digests(&[]).unwrap(), [A, B, C]);
        assert_eq!(digests(&["linux/amd64"]).unwrap(), [A]);
        assert_eq!(digests(&["linux/arm64"]).unwrap(), [B]);
        assert_eq!(digests(&["linux/arm64", "linux/amd64"]).unwrap(), [A, B]);
        let error = digests(&["linux/s390x"]).unwrap_err();
        assert!(
            error.contains("no manifest for linux/s390x")
                && error.contains("linux/amd64, linux/arm64/v8, unknown/unknown"),
            "{error}"
        );
    }

    #[test]
    fn manifests_by_media_type_or_shape() {
        // A Docker manifest list without a Content-Type is recognised by its own mediaType.
        let list = serde_json::json!({
            "schemaVersion": 2, "mediaType": DOCKER_LIST,
            "manifests": [{"mediaType": "x", "digest": A, "size": 1,
                           "platform": {"os": "linux", "architecture": "amd64"}}],
        });
        let parsed = Manifest::parse(list.to_string().as_bytes(), None).unwrap();
        assert!(matches!(parsed, Manifest::Index { children } if children.len() == 1));
        // An image: config and layers, the non-distributable layer left out.
        let image = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": A, "size": 10},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": B, "size": 20},
                {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "digest": C, "size": 30,
                 "urls": ["https://example.invalid/layer"]},
            ],
        });
        let parsed = Manifest::parse(
            image.to_string().as_bytes(),
            Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
        )
        .unwrap();
        let Manifest::Image { config, layers } = parsed else {
            panic!("an image");
        };
        assert_eq!((config.digest.as_str(), config.size), (A, 10));
        assert_eq!(layers.len(), 1);
        assert_eq!((layers[0].digest.as_str(), layers[0].size), (B, 20));
        // Refusals say what they saw.
        let schema1 = br#"{"schemaVersion": 1, "name": "x", "fsLayers": []}"#;
        assert!(
            Manifest::parse(schema1, None)
                .unwrap_err()
                .to_string()
                .contains("schema 1")
        );
        assert!(
            Manifest::parse(b"<html>", None)
                .unwrap_err()
                .to_string()
                .contains("not a manifest")
        );
        let bad_digest = serde_json::json!({"schemaVersion": 2,
            "config": {"mediaType": "x", "digest": "sha256:zz", "size": 1}, "layers": []});
        assert!(
            Manifest::parse(bad_digest.to_string().as_bytes(), None)
                .unwrap_err()
                .to_string()
                .contains("sha256:zz")
        );
        let negative = serde_json::json!({"schemaVersion": 2,
            "config": {"mediaType": "x", "digest": A, "size": -1}, "layers": []});
        assert!(Manifest::parse(negative.to_string().as_bytes(), None).is_err());
    }

    #[test]
    fn error_answers() {
        let oci =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(
            describe_error(404, oci),
            "HTTP 404 MANIFEST_UNKNOWN: manifest unknown"
        );
        let two = br#"{"errors":[{"code":"UNAVAILABLE","message":"upstream down"},{"code":"X"}]}"#;
        assert_eq!(
            describe_error(503, two),
            "HTTP 503 UNAVAILABLE: upstream down (and 1 more)"
        );
        assert_eq!(describe_error(502, b""), "HTTP 502");
        assert_eq!(
            describe_error(502, b"<html>\n  Bad gateway\n</html>"),
            "HTTP 502: <html> Bad gateway </html>"
        );
        let long = "x".repeat(500);
        assert_eq!(
            describe_error(500, long.as_bytes()),
            format!("HTTP 500: {}…", "x".repeat(200))
        );
    }

    #[test]
    fn list_files() {
        let text = "# images for the rollout\nnginx:1.27\n\n  ghcr.io/org/img:tag   # the app\n\t\n#quay.io/old\nredis\n";
        assert_eq!(
            list_entries(text),
            [(2, "nginx:1.27"), (4, "ghcr.io/org/img:tag"), (7, "redis")]
        );
        assert!(list_entries("").is_empty());
        assert!(list_entries("# only a comment\n\n").is_empty());
    }
}

//! Cached manifests: the exact upstream bytes with their media type and digest, and what a
//! manifest references (for repository links). Hot ones are kept in a [`crate::cache::memo`].

use bytes::Bytes;

use crate::reference::Digest;
use crate::registry::{DOCKER_V1_SIGNED, OCI_INDEX, OCI_MANIFEST, manifest_media_type};

/// A manifest as served.
#[derive(Debug, Clone)]
pub(crate) struct CachedManifest {
    pub(crate) digest: Digest,
    pub(crate) media_type: String,
    pub(crate) bytes: Bytes,
}

/// Everything a manifest or index points at: config, layers, child manifests. Not its subject:
/// a signature does not hold the image it signs (the referrers records link the two).
pub fn references(bytes: &[u8]) -> Vec<Digest> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Vec::new();
    };
    let descriptor = |d: &serde_json::Value| {
        d.get("digest")?
            .as_str()
            .and_then(|s| Digest::parse(s).ok())
    };
    let mut digests = Vec::new();
    if let Some(d) = value.get("config").and_then(descriptor) {
        digests.push(d);
    }
    for key in ["layers", "manifests", "blobs"] {
        if let Some(items) = value.get(key).and_then(|v| v.as_array()) {
            digests.extend(items.iter().filter_map(descriptor));
        }
    }
    digests
}

/// What a pushed manifest needs in its repository first: its config, layers, child manifests
/// and blobs, but not non-distributable (foreign) layers, which are never uploaded, nor its
/// subject, which may come later.
pub fn required_references(bytes: &[u8]) -> Vec<Digest> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Vec::new();
    };
    let distributable = |d: &&serde_json::Value| {
        let media_type = d.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
        !(media_type.contains(".nondistributable.") || media_type.contains(".foreign."))
    };
    let digest = |d: &serde_json::Value| {
        d.get("digest")?
            .as_str()
            .and_then(|s| Digest::parse(s).ok())
    };
    let mut digests: Vec<Digest> = value.get("config").and_then(digest).into_iter().collect();
    for key in ["layers", "manifests", "blobs"] {
        if let Some(items) = value.get(key).and_then(|v| v.as_array()) {
            digests.extend(items.iter().filter(distributable).filter_map(digest));
        }
    }
    digests
}

/// The manifest a manifest refers to (`subject`: it is a signature, an SBOM, an attestation of
/// it).
pub fn subject(bytes: &[u8]) -> Option<Digest> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let digest = value.get("subject")?.get("digest")?.as_str()?;
    Digest::parse(digest).ok()
}

/// A manifest's descriptor as the referrers API lists it: media type, digest, size, artifact
/// type (its `artifactType`, else its config's media type) and annotations.
pub fn referrer_descriptor(bytes: &[u8], digest: &Digest, media_type: &str) -> serde_json::Value {
    let value: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    let artifact_type = value
        .get("artifactType")
        .and_then(|t| t.as_str())
        .or_else(|| value.get("config")?.get("mediaType")?.as_str());
    let mut descriptor = serde_json::json!({
        "mediaType": media_type,
        "digest": digest.as_str(),
        "size": bytes.len(),
    });
    if let Some(artifact_type) = artifact_type {
        descriptor["artifactType"] = artifact_type.into();
    }
    if let Some(annotations) = value.get("annotations").filter(|a| a.is_object()) {
        descriptor["annotations"] = annotations.clone();
    }
    descriptor
}

/// The media type from the manifest itself.
fn declared_media_type(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    value.get("mediaType")?.as_str().map(str::to_owned)
}

/// The type a manifest is stored and served with: its own `mediaType` when that is a manifest
/// media type, else `content_type` (the upstream's, or the one recorded) when that is one, else
/// the type its shape says (an index lists `manifests`; schema 1 says so; else an image).
/// Never anything but [`MANIFEST_MEDIA_TYPES`](crate::registry::MANIFEST_MEDIA_TYPES).
pub fn media_type(bytes: &[u8], content_type: Option<&str>) -> &'static str {
    let value: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    let declared = value.get("mediaType").and_then(|t| t.as_str());
    if let Some(known) = declared
        .into_iter()
        .chain(content_type)
        .find_map(manifest_media_type)
    {
        return known;
    }
    if value.get("manifests").is_some() {
        OCI_INDEX
    } else if value.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) {
        DOCKER_V1_SIGNED
    } else {
        OCI_MANIFEST
    }
}

/// The type a pushed manifest is stored with, or why it is refused: a `Content-Type` or a
/// `mediaType` that is not a manifest media type (distribution answers a push of `text/html`
/// with 400 too), or neither of them.
pub fn pushed_media_type(
    bytes: &[u8],
    content_type: Option<&str>,
) -> Result<&'static str, MediaTypeRefused> {
    let content_type = content_type.map(str::trim).filter(|t| !t.is_empty());
    if let Some(given) = content_type.filter(|t| manifest_media_type(t).is_none()) {
        return Err(MediaTypeRefused::ContentType(given.to_owned()));
    }
    let declared = declared_media_type(bytes);
    if let Some(declared) = declared
        .as_deref()
        .filter(|t| manifest_media_type(t).is_none())
    {
        return Err(MediaTypeRefused::Declared(declared.to_owned()));
    }
    if content_type.is_none() && declared.is_none() {
        return Err(MediaTypeRefused::None);
    }
    Ok(media_type(bytes, content_type))
}

/// Why a pushed manifest's media type is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaTypeRefused {
    #[error("Content-Type {0} is not a manifest media type")]
    ContentType(String),
    #[error("its mediaType {0} is not a manifest media type")]
    Declared(String),
    #[error("no media type: send a Content-Type or a mediaType")]
    None,
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn manifest_references() {
        let image = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"digest":"{A}"}},"layers":[{{"digest":"{B}"}},{{"digest":"bad"}}]}}"#
        );
        let refs: Vec<String> = references(image.as_bytes())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(refs, [A, B]);
        assert_eq!(
            declared_media_type(image.as_bytes()).as_deref(),
            Some("application/vnd.oci.image.manifest.v1+json")
        );
        let index = format!(r#"{{"manifests":[{{"digest":"{A}"}},{{"digest":"{B}"}}]}}"#);
        assert_eq!(references(index.as_bytes()).len(), 2);
        assert!(references(b"not json").is_empty());
    }

    #[test]
    fn only_manifest_media_types_are_stored_and_served() {
        let oci = format!(r#"{{"mediaType":"{OCI_MANIFEST}","config":{{}},"layers":[]}}"#);
        let bare_index = r#"{"schemaVersion":2,"manifests":[]}"#;
        let bare_image = r#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        let schema1 = r#"{"schemaVersion":1,"fsLayers":[]}"#;
        let html = r#"{"mediaType":"text/html","layers":[]}"#;
        let docker = crate::registry::DOCKER_MANIFEST;
        for (bytes, content_type, expected) in [
            (oci.as_str(), Some("text/html"), OCI_MANIFEST),
            (oci.as_str(), Some(docker), OCI_MANIFEST),
            (bare_image, Some(docker), docker),
            (
                bare_image,
                Some("Application/VND.Docker.Distribution.Manifest.V2+JSON; x=1"),
                docker,
            ),
            (bare_image, Some("text/html"), OCI_MANIFEST),
            (bare_image, None, OCI_MANIFEST),
            (bare_index, Some("text/html"), OCI_INDEX),
            (schema1, None, DOCKER_V1_SIGNED),
            (html, Some("text/html"), OCI_MANIFEST),
            ("not json", Some("text/html"), OCI_MANIFEST),
        ] {
            assert_eq!(
                media_type(bytes.as_bytes(), content_type),
                expected,
                "{bytes} {content_type:?}"
            );
        }
        assert_eq!(pushed_media_type(oci.as_bytes(), None), Ok(OCI_MANIFEST));
        assert_eq!(
            pushed_media_type(bare_image.as_bytes(), Some(docker)),
            Ok(docker)
        );
        for (bytes, content_type, refusal) in [
            (
                oci.as_str(),
                Some("text/html"),
                "Content-Type text/html is not",
            ),
            (html, Some(OCI_MANIFEST), "its mediaType text/html is not"),
            (bare_image, None, "no media type"),
            (bare_image, Some(" "), "no media type"),
        ] {
            let error = pushed_media_type(bytes.as_bytes(), content_type)
                .unwrap_err()
                .to_string();
            assert!(error.starts_with(refusal), "{error}");
        }
    }

    #[test]
    fn what_a_push_needs_and_what_it_refers_to() {
        let image = format!(
            r#"{{"schemaVersion":2,"artifactType":"application/vnd.example.sbom","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{A}"}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip","digest":"{B}","urls":["https://example.test/l"]}}],"subject":{{"digest":"{B}"}},"annotations":{{"a":"b"}}}}"#
        );
        let required: Vec<String> = required_references(image.as_bytes())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(required, [A], "no foreign layer, no subject");
        assert_eq!(subject(image.as_bytes()).unwrap().as_str(), B);
        let digest = Digest::parse(A).unwrap();
        let d = referrer_descriptor(image.as_bytes(), &digest, crate::registry::OCI_MANIFEST);
        assert_eq!(d["artifactType"], "application/vnd.example.sbom");
        assert_eq!(d["annotations"]["a"], "b");
        assert_eq!(d["size"], image.len());
        let image = format!(r#"{{"config":{{"mediaType":"application/x.cfg","digest":"{A}"}}}}"#);
        let d = referrer_descriptor(image.as_bytes(), &digest, "m");
        assert_eq!(
            d["artifactType"], "application/x.cfg",
            "the config's media type"
        );
        assert!(subject(b"{}").is_none());
    }
}

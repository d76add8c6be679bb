//! Cached manifests: the exact upstream bytes with their media type and digest, and what a
//! manifest references (for repository links). Hot ones are kept in a [`crate::cache::memo`].

use bytes::Bytes;

use crate::reference::Digest;

/// A manifest as served.
#[derive(Debug, Clone)]
pub struct CachedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
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

/// The media type from the manifest itself, when the upstream's Content-Type is missing.
pub fn declared_media_type(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    value.get("mediaType")?.as_str().map(str::to_owned)
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

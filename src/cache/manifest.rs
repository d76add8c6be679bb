//! Cached manifests: the exact upstream bytes with their media type and digest, what a manifest
//! references (for repository links), and an in-memory memo of hot manifests, bounded in bytes
//! (`limits.manifest_memo`), so that manifest-by-digest requests cost no file I/O.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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

/// Hot manifests by digest, at most `budget` bytes of them; the least recently used go first.
#[derive(Debug)]
pub struct ManifestMemo {
    entries: Mutex<Memo>,
    budget: usize,
}

#[derive(Debug, Default)]
struct Memo {
    manifests: HashMap<Digest, (Arc<CachedManifest>, u64)>,
    bytes: usize,
    /// A use counter: each get or insert stamps its entry with the next value.
    clock: u64,
}

impl ManifestMemo {
    pub fn new(budget: usize) -> Self {
        ManifestMemo {
            entries: Mutex::new(Memo::default()),
            budget,
        }
    }

    pub fn get(&self, digest: &Digest) -> Option<Arc<CachedManifest>> {
        let mut memo = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        memo.clock += 1;
        let clock = memo.clock;
        let (manifest, used) = memo.manifests.get_mut(digest)?;
        *used = clock;
        Some(manifest.clone())
    }

    pub fn insert(&self, manifest: Arc<CachedManifest>) {
        let size = manifest.bytes.len();
        if size > self.budget / 4 {
            return;
        }
        let mut memo = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        memo.clock += 1;
        let clock = memo.clock;
        if let Some((old, _)) = memo
            .manifests
            .insert(manifest.digest.clone(), (manifest, clock))
        {
            memo.bytes -= old.bytes.len();
        }
        memo.bytes += size;
        if memo.bytes > self.budget {
            // Down to three quarters at once, so the sort is paid rarely.
            let mut by_use: Vec<(u64, Digest)> = memo
                .manifests
                .iter()
                .map(|(digest, (_, used))| (*used, digest.clone()))
                .collect();
            by_use.sort_unstable();
            for (_, digest) in by_use {
                if memo.bytes <= self.budget / 4 * 3 {
                    break;
                }
                if let Some((gone, _)) = memo.manifests.remove(&digest) {
                    memo.bytes -= gone.bytes.len();
                }
            }
        }
    }
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

    #[test]
    fn memo_is_bounded_by_bytes_and_keeps_what_is_used() {
        let memo = ManifestMemo::new(4000);
        let make = |i: u8| {
            Arc::new(CachedManifest {
                digest: crate::cache::store::sha256(&[i]),
                media_type: String::new(),
                bytes: Bytes::from(vec![i; 500]),
            })
        };
        memo.insert(make(0));
        for i in 1..40u8 {
            memo.insert(make(i));
            assert!(memo.get(&make(0).digest).is_some(), "the hot one stays");
            let entries = memo.entries.lock().unwrap();
            assert!(entries.bytes <= 4000, "{} bytes", entries.bytes);
            assert_eq!(
                entries.bytes,
                entries
                    .manifests
                    .values()
                    .map(|(m, _)| m.bytes.len())
                    .sum::<usize>()
            );
        }
        assert!(memo.get(&make(1).digest).is_none(), "cold ones went");
        // A manifest over a quarter of the budget is served from the store instead.
        memo.insert(Arc::new(CachedManifest {
            digest: crate::cache::store::sha256(b"big"),
            media_type: String::new(),
            bytes: Bytes::from(vec![0; 1001]),
        }));
        assert!(memo.get(&crate::cache::store::sha256(b"big")).is_none());
    }
}

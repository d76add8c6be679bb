//! Cached manifests: the exact upstream bytes with their media type and digest, what a manifest
//! references (for repository links), and a bounded in-memory memo of hot manifests so that
//! manifest-by-digest requests cost no file I/O.

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

/// Everything a manifest or index points at: config, layers, child manifests, subject.
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
    for key in ["config", "subject"] {
        if let Some(d) = value.get(key).and_then(descriptor) {
            digests.push(d);
        }
    }
    for key in ["layers", "manifests", "blobs"] {
        if let Some(items) = value.get(key).and_then(|v| v.as_array()) {
            digests.extend(items.iter().filter_map(descriptor));
        }
    }
    digests
}

/// The media type from the manifest itself, when the upstream's Content-Type is missing.
pub fn declared_media_type(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    value.get("mediaType")?.as_str().map(str::to_owned)
}

/// Hot manifests by digest, at most `capacity` of them.
#[derive(Debug)]
pub struct ManifestMemo {
    entries: Mutex<HashMap<Digest, Arc<CachedManifest>>>,
    capacity: usize,
}

impl ManifestMemo {
    pub fn new(capacity: usize) -> Self {
        ManifestMemo {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    pub fn get(&self, digest: &Digest) -> Option<Arc<CachedManifest>> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(digest)
            .cloned()
    }

    pub fn insert(&self, manifest: Arc<CachedManifest>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity {
            // Cheap bound: drop an arbitrary half; hot entries come straight back.
            let evict: Vec<Digest> = entries
                .keys()
                .take(self.capacity / 2 + 1)
                .cloned()
                .collect();
            for digest in &evict {
                entries.remove(digest);
            }
        }
        entries.insert(manifest.digest.clone(), manifest);
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
    fn memo_is_bounded() {
        let memo = ManifestMemo::new(4);
        for i in 0..10u8 {
            let digest = crate::cache::store::sha256(&[i]);
            memo.insert(Arc::new(CachedManifest {
                digest,
                media_type: String::new(),
                bytes: Bytes::new(),
            }));
        }
        assert!(memo.entries.lock().unwrap().len() <= 4);
        let last = crate::cache::store::sha256(&[9]);
        assert!(memo.get(&last).is_some());
    }
}

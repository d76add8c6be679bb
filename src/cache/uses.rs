//! Last uses, for eviction ([`super::gc`]): every hit notes its digest (or referrer list) in
//! memory, and the server writes the notes to the metadata in batches, at each collection and at
//! shutdown, instead of one write per request.

use std::collections::HashMap;
use std::sync::Mutex;

use super::meta::{self, ListKey, MetaError, Metadata};
use crate::reference::Digest;

/// The uses noted since the last flush: name (a digest, or a list's [`ListKey::use_key`]) ->
/// unix seconds.
#[derive(Debug, Default)]
pub(crate) struct LastUses {
    noted: Mutex<HashMap<String, u64>>,
}

impl LastUses {
    /// Notes that `digest` was served: hits keep content from eviction.
    pub(crate) fn digest(&self, digest: &Digest) {
        self.note(digest.to_string());
    }

    /// Notes that a referrer list was served.
    pub(crate) fn list(&self, list: &ListKey) {
        self.note(list.use_key());
    }

    fn note(&self, name: String) {
        crate::sync::lock(&self.noted).insert(name, meta::now());
    }

    /// Writes the noted uses to the metadata.
    pub(crate) async fn flush(&self, meta: &Metadata) -> Result<(), MetaError> {
        let uses: Vec<(String, u64)> = crate::sync::lock(&self.noted).drain().collect();
        meta.record_use(&uses).await
    }
}

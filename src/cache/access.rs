//! Who may read cached content: a digest is served on a route only when the route's namespace
//! holds its bytes (its own upstream delivered them, or they were pushed there: see
//! [`super::meta`], sources) and the route's repository is linked to it, or the upstream
//! confirms that the repository may read it (a HEAD 200, which links them). Used by the blob and
//! the manifest services alike.

use std::sync::Arc;

use reqwest::StatusCode;

use super::meta::{Access, Metadata};
use super::routing::Route;
use super::upstreams::{Upstreams, unreachable, upstream_status};
use crate::reference::Digest;
use crate::registry::{ErrorCode, RegistryError};

/// The checks, on the metadata and through the upstreams.
#[derive(Debug, Clone)]
pub(crate) struct ContentAccess {
    meta: Arc<Metadata>,
    upstreams: Upstreams,
}

impl ContentAccess {
    pub(crate) fn new(meta: Arc<Metadata>, upstreams: Upstreams) -> Self {
        ContentAccess { meta, upstreams }
    }

    /// Whether the route's namespace holds the content of `digest` (its own upstream delivered
    /// it, or it was pushed there: the store is shared, and this keeps content from being served
    /// on the word of another upstream), and whether the route's repository is linked to it.
    pub(crate) async fn access(
        &self,
        route: &Route,
        digest: &Digest,
    ) -> Result<Access, RegistryError> {
        Ok(self
            .meta
            .access(&route.upstream.name, &route.repository, digest)
            .await?)
    }

    /// Content already cached may be served for `route`'s repository only if a manifest of that
    /// repository referenced it, or the upstream confirms the repository can read it.
    pub(crate) async fn require(
        &self,
        route: &Route,
        digest: &Digest,
        unknown: ErrorCode,
    ) -> Result<(), RegistryError> {
        let linked = self
            .meta
            .is_linked(&route.upstream.name, &route.repository, digest)
            .await?;
        if linked {
            return Ok(());
        }
        self.confirm(route, digest, unknown).await
    }

    /// For a repository not linked to `digest`: the upstream must confirm the repository can
    /// read it (HEAD 200), which links them.
    pub(crate) async fn confirm(
        &self,
        route: &Route,
        digest: &Digest,
        unknown: ErrorCode,
    ) -> Result<(), RegistryError> {
        let upstream = &route.upstream.name;
        if route.upstream.local {
            return Err(RegistryError::new(
                unknown,
                format!("{digest} is not in {}", route.repository),
            ));
        }
        match self.upstreams.head(route, digest, unknown).await {
            Ok(response) if response.status() == StatusCode::OK => {
                Ok(self.meta.link(upstream, &route.repository, digest).await?)
            }
            Ok(response) => Err(upstream_status(upstream, &response, unknown)),
            Err(e) => Err(RegistryError::new(
                unknown,
                format!(
                    "{digest} is not known for {}, and upstream {upstream} cannot confirm it: {e}",
                    route.repository
                ),
            )),
        }
    }

    /// A check, to run later, that the upstream lets `route`'s repository read the blob
    /// `digest` (HEAD 200); nothing is linked.
    pub(crate) fn upstream_confirms(
        &self,
        route: &Route,
        digest: &Digest,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send + 'static {
        let (upstreams, route, digest) = (self.upstreams.clone(), route.clone(), digest.clone());
        async move {
            let upstream = &route.upstream.name;
            let response = upstreams
                .head(&route, &digest, ErrorCode::BlobUnknown)
                .await
                .map_err(|e| unreachable(upstream, e))?;
            if response.status() == StatusCode::OK {
                Ok(())
            } else {
                Err(upstream_status(upstream, &response, ErrorCode::BlobUnknown))
            }
        }
    }
}

//! The OCI distribution API surface shared by the cache and the shim: request routing
//! ([`route`]), the registry a client names with `?ns=` ([`namespace`]), the error envelope and
//! its one mapping to an HTTP response ([`error`]) and media types. Pure: no I/O.

pub mod error;
pub mod namespace;
pub mod route;

pub use error::{ErrorCode, RegistryError, error_response, internal};
pub use namespace::RegistryHost;
pub use route::{ManifestRef, V2Request};

/// The `Docker-Distribution-API-Version` header every `/v2/` response carries.
pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";
pub const API_VERSION: &str = "registry/2.0";
pub const CONTENT_DIGEST_HEADER: &str = "docker-content-digest";
/// How `regmirror serve` served a manifest or blob (the request log's `cache=` word): for blobs
/// `hit`, `miss` (this request started the download), `joined` (it joined one in progress) or
/// `redirect` (to the bucket); for manifests `hit`, `miss`, `fresh` (a tag within its
/// `tag_revalidate` window), `stale` (the upstream failed), `reserve` (its pull budget is in the
/// reserve) or `local` (pushed).
pub const CACHE_HEADER: &str = "x-regmirror-cache";

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The Accept header sent upstream for manifests: every type regmirror stores and serves.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

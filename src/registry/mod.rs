//! The OCI distribution API surface shared by the cache and the shim: request routing
//! ([`route`]), the registry a client names with `?ns=` ([`namespace`]), the error envelope and
//! its one mapping to an HTTP response ([`error`]) and media types. Pure: no I/O.

pub mod error;
pub mod namespace;
pub mod outcome;
pub mod route;

pub use error::{ErrorCode, RegistryError, error_response, internal, whole_seconds};
pub use namespace::RegistryHost;
pub use outcome::CacheOutcome;
pub use route::{ManifestRef, V2Request};

/// The `Docker-Distribution-API-Version` header every `/v2/` response carries.
pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";
pub const API_VERSION: &str = "registry/2.0";
pub const CONTENT_DIGEST_HEADER: &str = "docker-content-digest";
/// The `ns` a request was scoped by, echoed in its answer (distribution-spec, "Registry
/// Proxying": a registry that scopes a request by `ns` SHOULD return it in `OCI-Namespace`).
pub const NAMESPACE_HEADER: &str = "oci-namespace";
/// How `regmirror serve` served a manifest or blob: a [`CacheOutcome`]'s word (the request
/// log's `cache=`). Blobs are `hit`, `miss`, `joined` or `redirect`; manifests `hit`, `miss`,
/// `fresh`, `stale`, `reserve` or `local`.
pub const CACHE_HEADER: &str = "x-regmirror-cache";
/// The platforms `regmirror serve` keeps (`proxy.platforms`), on its manifest answers:
/// `linux/amd64, linux/arm64/v8`. `regmirror warm` without `--platform` walks only the index
/// children for them.
pub const PLATFORMS_HEADER: &str = "x-regmirror-platforms";

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Docker's image manifest schema 1, unsigned and signed: still served by some old registries.
pub const DOCKER_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Every media type a manifest is stored and served with. Nothing else is: a type such as
/// `text/html` on the cache's own origin would let a browser run a pushed or fetched script
/// beside the status page and the push API.
pub const MANIFEST_MEDIA_TYPES: [&str; 6] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_LIST,
    DOCKER_V1,
    DOCKER_V1_SIGNED,
];

/// Whether `media_type` (without parameters; case does not matter) is a manifest media type,
/// and its canonical spelling.
pub fn manifest_media_type(media_type: &str) -> Option<&'static str> {
    let bare = media_type.split(';').next().unwrap_or("").trim();
    MANIFEST_MEDIA_TYPES
        .into_iter()
        .find(|known| known.eq_ignore_ascii_case(bare))
}

/// The Accept header sent upstream for manifests: the types regmirror asks for (schema 1 is
/// only taken when an upstream has nothing else).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

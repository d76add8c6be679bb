//! `/v2/…` paths parsed into one [`V2Request`], with every name, reference and digest validated
//! before anything touches storage: no component can be `..`, empty, or carry a slash, so no
//! path built from them can escape the store.

use crate::reference::{self, Digest, is_valid_path_component, is_valid_tag};

use super::error::{ErrorCode, RegistryError};

/// What a manifest request names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ManifestRef {
    Tag(String),
    Digest(Digest),
}

impl ManifestRef {
    pub fn as_str(&self) -> &str {
        match self {
            ManifestRef::Tag(tag) => tag,
            ManifestRef::Digest(digest) => digest.as_str(),
        }
    }
}

/// A parsed `/v2/` request path. `name` may start with a registry host (`ghcr.io/org/img`):
/// see [`split_registry_prefix`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V2Request {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags { name: String },
    /// `/v2/<name>/manifests/<tag|digest>`
    Manifest {
        name: String,
        reference: ManifestRef,
    },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: String, digest: Digest },
    /// `/v2/<name>/blobs/uploads/` and `/v2/<name>/blobs/uploads/<id>`
    Upload { name: String, id: Option<String> },
    /// `/v2/<name>/referrers/<digest>`: the manifests whose `subject` is `digest`.
    Referrers { name: String, subject: Digest },
}

/// Parses the path of a request (without query string).
pub fn parse(path: &str) -> Result<V2Request, RegistryError> {
    let rest = match path.strip_prefix("/v2") {
        Some("" | "/") => return Ok(V2Request::Base),
        Some(rest) => rest.strip_prefix('/').ok_or_else(not_found)?,
        None => return Err(not_found()),
    };
    if rest == "_catalog" {
        return Ok(V2Request::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(V2Request::Tags {
            name: valid_name(name)?,
        });
    }
    if let Some((name, id)) = rest.rsplit_once("/blobs/uploads/") {
        let id = match id {
            "" => None,
            id if is_valid_upload_id(id) => Some(id.to_owned()),
            _ => {
                return Err(RegistryError::new(
                    ErrorCode::BlobUploadUnknown,
                    "blob upload unknown to registry",
                ));
            }
        };
        return Ok(V2Request::Upload {
            name: valid_name(name)?,
            id,
        });
    }
    if let Some(name) = rest.strip_suffix("/blobs/uploads") {
        return Ok(V2Request::Upload {
            name: valid_name(name)?,
            id: None,
        });
    }
    if let Some((name, subject)) = rest.rsplit_once("/referrers/") {
        // A digest has no slash: `x/referrers/manifests/v1` is repository `x/referrers`.
        if !subject.contains('/') {
            return Ok(V2Request::Referrers {
                name: valid_name(name)?,
                subject: valid_digest(subject)?,
            });
        }
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        let name = valid_name(name)?;
        let reference = if reference.contains(':') {
            ManifestRef::Digest(valid_digest(reference)?)
        } else if is_valid_tag(reference) {
            ManifestRef::Tag(reference.to_owned())
        } else {
            return Err(RegistryError::new(
                ErrorCode::ManifestInvalid,
                format!("invalid tag {reference:?}"),
            ));
        };
        return Ok(V2Request::Manifest { name, reference });
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        return Ok(V2Request::Blob {
            name: valid_name(name)?,
            digest: valid_digest(digest)?,
        });
    }
    Err(not_found())
}

fn not_found() -> RegistryError {
    RegistryError::new(
        ErrorCode::NotFound,
        "no such path: the registry API is under /v2/",
    )
}

fn valid_digest(s: &str) -> Result<Digest, RegistryError> {
    Digest::parse(s)
        .map_err(|e| RegistryError::new(ErrorCode::DigestInvalid, format!("{s:?}: {e}")))
}

fn is_valid_upload_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A repository name, optionally led by a registry host component.
fn valid_name(name: &str) -> Result<String, RegistryError> {
    let invalid = |why: String| RegistryError::new(ErrorCode::NameInvalid, why);
    let (_, repository) = split_registry_prefix(name);
    if let Some((host, _)) = name
        .split_once('/')
        .filter(|_| repository.len() < name.len())
    {
        if !reference::is_valid_host(host) {
            return Err(invalid(format!(
                "invalid registry host {host:?} in {name:?}"
            )));
        }
    }
    if repository.is_empty() || repository.len() > reference::MAX_PATH_LEN {
        return Err(invalid(format!(
            "invalid repository name length in {name:?}"
        )));
    }
    if let Some(bad) = repository.split('/').find(|c| !is_valid_path_component(c)) {
        return Err(invalid(format!(
            "invalid repository name component {bad:?} in {name:?}"
        )));
    }
    Ok(name.to_owned())
}

/// Splits `ghcr.io/org/img` into (`Some("ghcr.io")`, `org/img`): the first component is a
/// registry host when it has a `.` or `:` or is `localhost` and more components follow, as in an
/// image reference. `library/nginx` has no host.
pub fn split_registry_prefix(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:7173b809ca12ec5dee4506cd86be934c4596dd234ee82c0662eac04a8c2c71dc";

    #[test]
    fn routes() {
        let digest = Digest::parse(D).unwrap();
        let cases: Vec<(String, V2Request)> = vec![
            ("/v2/".into(), V2Request::Base),
            ("/v2".into(), V2Request::Base),
            ("/v2/_catalog".into(), V2Request::Catalog),
            (
                "/v2/library/nginx/tags/list".into(),
                V2Request::Tags {
                    name: "library/nginx".into(),
                },
            ),
            (
                "/v2/library/nginx/manifests/latest".into(),
                V2Request::Manifest {
                    name: "library/nginx".into(),
                    reference: ManifestRef::Tag("latest".into()),
                },
            ),
            (
                format!("/v2/a/b/c/manifests/{D}"),
                V2Request::Manifest {
                    name: "a/b/c".into(),
                    reference: ManifestRef::Digest(digest.clone()),
                },
            ),
            (
                format!("/v2/ghcr.io/org/img/blobs/{D}"),
                V2Request::Blob {
                    name: "ghcr.io/org/img".into(),
                    digest: digest.clone(),
                },
            ),
            (
                "/v2/team/app/blobs/uploads/".into(),
                V2Request::Upload {
                    name: "team/app".into(),
                    id: None,
                },
            ),
            (
                "/v2/team/app/blobs/uploads/abc-123".into(),
                V2Request::Upload {
                    name: "team/app".into(),
                    id: Some("abc-123".into()),
                },
            ),
            (
                format!("/v2/team/app/referrers/{D}"),
                V2Request::Referrers {
                    name: "team/app".into(),
                    subject: digest.clone(),
                },
            ),
            // a repository literally named "referrers" is still a name
            (
                "/v2/x/referrers/manifests/v1".into(),
                V2Request::Manifest {
                    name: "x/referrers".into(),
                    reference: ManifestRef::Tag("v1".into()),
                },
            ),
            // a repository literally named "manifests" is still a name
            (
                "/v2/x/manifests/manifests/v1".into(),
                V2Request::Manifest {
                    name: "x/manifests".into(),
                    reference: ManifestRef::Tag("v1".into()),
                },
            ),
        ];
        for (path, expected) in cases {
            assert_eq!(parse(&path).unwrap(), expected, "{path}");
        }
    }

    #[test]
    fn refusals() {
        for (path, code) in [
            ("/v2/../etc/passwd/manifests/latest", ErrorCode::NameInvalid),
            ("/v2/a/../../b/manifests/latest", ErrorCode::NameInvalid),
            ("/v2/A/manifests/latest", ErrorCode::NameInvalid),
            ("/v2//manifests/latest", ErrorCode::NameInvalid),
            ("/v2/a//b/manifests/latest", ErrorCode::NameInvalid),
            ("/v2/a/manifests/../../x", ErrorCode::ManifestInvalid),
            ("/v2/a/manifests/sha256:abc", ErrorCode::DigestInvalid),
            ("/v2/a/blobs/sha256:../../x", ErrorCode::DigestInvalid),
            ("/v2/a/blobs/latest", ErrorCode::DigestInvalid),
            ("/v2/a/blobs/uploads/../x", ErrorCode::BlobUploadUnknown),
            ("/v2/bad_host!.io/x/manifests/v1", ErrorCode::NameInvalid),
            ("/v2/a/unknown", ErrorCode::NotFound),
            ("/v2/a/referrers/latest", ErrorCode::DigestInvalid),
            ("/v3/", ErrorCode::NotFound),
            ("/v2x", ErrorCode::NotFound),
        ] {
            assert_eq!(parse(path).unwrap_err().code, code, "{path}");
        }
    }

    #[test]
    fn registry_prefix() {
        assert_eq!(
            split_registry_prefix("ghcr.io/org/img"),
            (Some("ghcr.io"), "org/img")
        );
        assert_eq!(
            split_registry_prefix("127.0.0.1:5001/x"),
            (Some("127.0.0.1:5001"), "x")
        );
        assert_eq!(
            split_registry_prefix("localhost/x"),
            (Some("localhost"), "x")
        );
        assert_eq!(
            split_registry_prefix("library/nginx"),
            (None, "library/nginx")
        );
        assert_eq!(split_registry_prefix("nginx"), (None, "nginx"));
    }
}

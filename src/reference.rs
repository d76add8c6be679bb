//! Image references: parsing and normalisation as distribution/reference v0.6 does it.
//!
//! `nginx` becomes `docker.io/library/nginx:latest`, `index.docker.io/x/y` becomes
//! `docker.io/x/y:latest`, `localhost:5000/a@sha256:…` keeps its registry and digest. The grammar
//! is hand-written (no regex engine): each rule below names the production it implements.
//!
//! Pure: no I/O. One deliberate difference from the Go library: when the first component is taken
//! as a registry host (it has a `.` or `:`, is `localhost`, or has an uppercase letter) but is not a
//! valid host, this module reports that, where Go would quietly reinterpret it as a path.

use std::fmt;

/// The registry every name without an explicit host belongs to.
pub const DOCKER_HUB: &str = "docker.io";
/// The legacy spelling of Docker Hub, normalised to [`DOCKER_HUB`].
pub const LEGACY_DOCKER_HUB: &str = "index.docker.io";
/// The host that serves Docker Hub's registry API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// The tag a reference without tag and digest gets.
pub const DEFAULT_TAG: &str = "latest";
/// distribution/reference v0.6 limits the repository path (not the whole name) to this length.
pub const MAX_PATH_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// Why a reference was refused. The messages follow distribution's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("repository name must have at least one component")]
    Empty,
    #[error(
        "invalid repository name ({0}), cannot specify 64-byte hexadecimal strings; use a name"
    )]
    HexIdentifier(String),
    #[error("invalid reference format: repository name ({0}) must be lowercase")]
    Uppercase(String),
    #[error("invalid reference format: registry host {0:?} is not a valid host[:port]")]
    InvalidHost(String),
    #[error(
        "invalid reference format: path component {0:?} is not valid (lowercase letters, digits, and single '.', '_', '__' or dashes between them)"
    )]
    InvalidPathComponent(String),
    #[error("repository name must not be more than {MAX_PATH_LEN} characters")]
    NameTooLong,
    #[error(
        "invalid reference format: tag {0:?} is not valid (1-128 of [A-Za-z0-9_.-], not starting with '.' or '-')"
    )]
    InvalidTag(String),
    #[error("invalid digest: {0}")]
    Digest(#[from] DigestError),
}

/// Why a digest was refused, with go-digest's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("invalid checksum digest format")]
    Format,
    #[error("invalid checksum digest length")]
    Length,
    #[error("unsupported digest algorithm")]
    Unsupported,
}

/// A content digest, `algorithm:hex`, validated for sha256, sha384 and sha512.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses and validates a digest string.
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let (algorithm, hex) = s.split_once(':').ok_or(DigestError::Format)?;
        if algorithm.is_empty() || hex.is_empty() {
            return Err(DigestError::Format);
        }
        let expected_len = match algorithm {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ if is_digest_algorithm(algorithm) && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                return Err(DigestError::Unsupported);
            }
            _ => return Err(DigestError::Format),
        };
        if hex.len() != expected_len {
            return Err(DigestError::Length);
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::Format);
        }
        Ok(Digest(s.to_owned()))
    }

    /// A sha256 digest from its 32 raw bytes.
    pub fn sha256_from_bytes(bytes: &[u8]) -> Self {
        Digest(format!("sha256:{}", hex::encode(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `sha256`, `sha384` or `sha512`.
    pub fn algorithm(&self) -> &str {
        self.0.split_once(':').map_or("", |(a, _)| a)
    }

    /// The lowercase hex part.
    pub fn hex(&self) -> &str {
        self.0.split_once(':').map_or("", |(_, h)| h)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Content hashed incrementally with a digest's algorithm (sha256, sha384 or sha512), to check
/// content against that digest.
#[derive(Debug, Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A hasher with `digest`'s algorithm.
    pub fn like(digest: &Digest) -> Self {
        use sha2::Digest as _;
        match digest.algorithm() {
            "sha384" => Hasher::Sha384(sha2::Sha384::new()),
            "sha512" => Hasher::Sha512(sha2::Sha512::new()),
            // `Digest::parse` admits the three; sha256 is the default of every other path.
            _ => Hasher::Sha256(sha2::Sha256::new()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        use sha2::Digest as _;
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha384(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Digest {
        use sha2::Digest as _;
        let (algorithm, raw) = match self {
            Hasher::Sha256(h) => ("sha256", h.finalize().to_vec()),
            Hasher::Sha384(h) => ("sha384", h.finalize().to_vec()),
            Hasher::Sha512(h) => ("sha512", h.finalize().to_vec()),
        };
        Digest(format!("{algorithm}:{}", hex::encode(raw)))
    }

    /// The digest of `bytes` with `like`'s algorithm.
    pub fn digest(like: &Digest, bytes: &[u8]) -> Digest {
        let mut hasher = Hasher::like(like);
        hasher.update(bytes);
        hasher.finish()
    }
}

/// `[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*`
fn is_digest_algorithm(s: &str) -> bool {
    s.split(['-', '_', '+', '.']).all(|part| {
        let mut bytes = part.bytes();
        matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic())
            && bytes.all(|b| b.is_ascii_alphanumeric())
    })
}

/// A normalised image reference: registry host, repository path, tag and/or digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageRef {
    /// Parses a reference as `docker pull` does (ParseNormalizedNamed + TagNameOnly): Hub names are
    /// normalised and a reference with neither tag nor digest gets `latest`.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if input.len() == 64
            && input
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(ReferenceError::HexIdentifier(input.to_owned()));
        }
        let (registry, remainder) = split_registry(input);
        let remote_name = remainder
            .split_once(':')
            .map_or(remainder, |(name, _)| name);
        if remote_name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase(remote_name.to_owned()));
        }
        let (name_and_tag, digest) = match remainder.split_once('@') {
            Some((name, digest)) => (name, Some(Digest::parse(digest)?)),
            None => (remainder, None),
        };
        let (path, tag) = match name_and_tag.split_once(':') {
            Some((path, tag)) => (path, Some(tag)),
            None => (name_and_tag, None),
        };
        if !is_valid_host(registry) {
            return Err(ReferenceError::InvalidHost(registry.to_owned()));
        }
        validate_path(path)?;
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        if repository.len() > MAX_PATH_LEN {
            return Err(ReferenceError::NameTooLong);
        }
        if let Some(tag) = tag {
            if !is_valid_tag(tag) {
                return Err(ReferenceError::InvalidTag(tag.to_owned()));
            }
        }
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (tag, _) => tag.map(str::to_owned),
        };
        Ok(ImageRef {
            registry: registry.to_owned(),
            repository,
            tag,
            digest,
        })
    }

    /// The registry host as written (normalised for the Hub): `docker.io`, `localhost:5000`, `[::1]:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path on that registry: `library/nginx`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What to ask the registry's manifest endpoint for: the digest when there is one, else the tag.
    pub fn manifest_reference(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.as_str(),
            (None, Some(tag)) => tag,
            (None, None) => DEFAULT_TAG,
        }
    }

    /// True for Docker Hub.
    pub fn is_docker_hub(&self) -> bool {
        self.registry == DOCKER_HUB
    }
}

impl fmt::Display for ImageRef {
    /// The fully qualified form: `docker.io/library/nginx:latest`, `reg/x@sha256:…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// splitDockerDomain: the first component is a registry when it has `.` or `:`, is `localhost`,
/// or has an uppercase letter; otherwise the whole input is a Docker Hub name.
fn split_registry(input: &str) -> (&str, &str) {
    match input.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            if first == LEGACY_DOCKER_HUB {
                (DOCKER_HUB, rest)
            } else {
                (first, rest)
            }
        }
        _ => (DOCKER_HUB, input),
    }
}

/// `host[:port]` where host is a dotted name of `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?`
/// components, or an IPv6 literal in brackets; port is `[0-9]+`.
pub fn is_valid_host(s: &str) -> bool {
    let (host, port) = split_host_port(s);
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.strip_suffix(']') {
            Some(ip) => !ip.is_empty() && ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b':'),
            None => false,
        };
    }
    !host.is_empty() && host.split('.').all(is_valid_host_component)
}

/// Splits `host[:port]`, aware of `[ipv6]:port`.
pub fn split_host_port(s: &str) -> (&str, Option<&str>) {
    if s.starts_with('[') {
        return match s.find(']') {
            Some(end) => match s[end + 1..].strip_prefix(':') {
                Some(port) => (&s[..=end], Some(port)),
                None if end + 1 == s.len() => (s, None),
                // Garbage after the bracket: keep it in the host so validation rejects it.
                None => (s, None),
            },
            None => (s, None),
        };
    }
    match s.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    }
}

fn is_valid_host_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    match bytes {
        [] => false,
        [only] => only.is_ascii_alphanumeric(),
        [first, middle @ .., last] => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && middle
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        }
    }
}

fn validate_path(path: &str) -> Result<(), ReferenceError> {
    if path.is_empty() {
        return Err(ReferenceError::Empty);
    }
    for component in path.split('/') {
        if !is_valid_path_component(component) {
            return Err(ReferenceError::InvalidPathComponent(component.to_owned()));
        }
    }
    Ok(())
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
pub fn is_valid_path_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let mut i = 0;
    loop {
        let run_start = i;
        while i < bytes.len() && matches!(bytes[i], b'a'..=b'z' | b'0'..=b'9') {
            i += 1;
        }
        if i == run_start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        let sep_start = i;
        while i < bytes.len() && matches!(bytes[i], b'.' | b'_' | b'-') {
            i += 1;
        }
        let separator = &bytes[sep_start..i];
        let ok = matches!(separator, b"." | b"_" | b"__") || separator.iter().all(|b| *b == b'-');
        if !ok {
            return false;
        }
    }
}

/// `[\w][\w.-]{0,127}`
pub fn is_valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    !bytes.is_empty()
        && bytes.len() <= MAX_TAG_LEN
        && word(&bytes[0])
        && bytes[1..]
            .iter()
            .all(|b| word(b) || *b == b'.' || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_algorithm_hashes_as_its_digest_says() {
        let abc = b"abc";
        for (algorithm, hex_len) in [("sha256", 64), ("sha384", 96), ("sha512", 128)] {
            let like = Digest::parse(&format!("{algorithm}:{}", "0".repeat(hex_len))).unwrap();
            let digest = Hasher::digest(&like, abc);
            assert_eq!(digest.algorithm(), algorithm);
            assert_eq!(Digest::parse(digest.as_str()).unwrap(), digest);
        }
        let sha512 = Digest::parse(&format!("sha512:{}", "0".repeat(128))).unwrap();
        assert!(
            Hasher::digest(&sha512, abc)
                .hex()
                .starts_with("ddaf35a193617aba"),
            "the known sha512 of abc"
        );
    }

    const D256: &str = "sha256:7173b809ca12ec5dee4506cd86be934c4596dd234ee82c0662eac04a8c2c71dc";

    fn sha512() -> String {
        format!("sha512:{}", "ab".repeat(64))
    }

    /// (input, Ok(full form) | Err(message fragment))
    fn cases() -> Vec<(String, Result<String, &'static str>)> {
        let ok = |s: &str| Ok(s.to_owned());
        let long_component = "a".repeat(MAX_PATH_LEN);
        let too_long = format!("{}/b", "a".repeat(MAX_PATH_LEN - 1));
        let tag128 = "t".repeat(128);
        let tag129 = "t".repeat(129);
        vec![
            // Docker Hub normalisation
            ("nginx".into(), ok("docker.io/library/nginx:latest")),
            ("nginx:1.25".into(), ok("docker.io/library/nginx:1.25")),
            ("library/nginx".into(), ok("docker.io/library/nginx:latest")),
            (
                "docker.io/nginx".into(),
                ok("docker.io/library/nginx:latest"),
            ),
            (
                "docker.io/library/nginx".into(),
                ok("docker.io/library/nginx:latest"),
            ),
            (
                "index.docker.io/nginx".into(),
                ok("docker.io/library/nginx:latest"),
            ),
            (
                "index.docker.io/user/app:v2".into(),
                ok("docker.io/user/app:v2"),
            ),
            ("user/app".into(), ok("docker.io/user/app:latest")),
            ("a/b/c/d".into(), ok("docker.io/a/b/c/d:latest")),
            // registry-1.docker.io is not normalised by the grammar
            (
                "registry-1.docker.io/nginx".into(),
                ok("registry-1.docker.io/nginx:latest"),
            ),
            // a bare host-looking word is a repository
            (
                "example.com".into(),
                ok("docker.io/library/example.com:latest"),
            ),
            ("localhost".into(), ok("docker.io/library/localhost:latest")),
            ("foo:5000".into(), ok("docker.io/library/foo:5000")),
            // domain detection
            ("localhost/foo".into(), ok("localhost/foo:latest")),
            ("localhost:5000/foo".into(), ok("localhost:5000/foo:latest")),
            ("example.com/foo".into(), ok("example.com/foo:latest")),
            (
                "example.com:443/foo/bar:v1".into(),
                ok("example.com:443/foo/bar:v1"),
            ),
            (
                "reg.test1.com/library/nginx:latest".into(),
                ok("reg.test1.com/library/nginx:latest"),
            ),
            ("a:1/b".into(), ok("a:1/b:latest")),
            ("Example.com/foo".into(), ok("Example.com/foo:latest")),
            ("UPPER/foo".into(), ok("UPPER/foo:latest")),
            (
                "sub-domain.example.com/foo".into(),
                ok("sub-domain.example.com/foo:latest"),
            ),
            ("127.0.0.1:5000/foo".into(), ok("127.0.0.1:5000/foo:latest")),
            (
                "xn--bcher-kva.example/foo".into(),
                ok("xn--bcher-kva.example/foo:latest"),
            ),
            // IPv6
            ("[::1]/foo".into(), ok("[::1]/foo:latest")),
            ("[::1]:5000/foo:v1".into(), ok("[::1]:5000/foo:v1")),
            (
                "[2001:db8::1]:443/a/b".into(),
                ok("[2001:db8::1]:443/a/b:latest"),
            ),
            ("[::1:5000/foo".into(), Err("not a valid host")),
            ("[fe80::1%eth0]/foo".into(), Err("not a valid host")),
            ("[]:5000/foo".into(), Err("not a valid host")),
            // ports
            ("example.com:/foo".into(), Err("not a valid host")),
            ("example.com:50a/foo".into(), Err("not a valid host")),
            ("-example.com/foo".into(), Err("not a valid host")),
            ("example-.com/foo".into(), Err("not a valid host")),
            ("exa_mple.com/foo".into(), Err("not a valid host")),
            ("example..com/foo".into(), Err("not a valid host")),
            // path components
            ("foo/bar_baz".into(), ok("docker.io/foo/bar_baz:latest")),
            ("foo/bar__baz".into(), ok("docker.io/foo/bar__baz:latest")),
            ("foo/bar.baz".into(), ok("docker.io/foo/bar.baz:latest")),
            ("foo/bar-baz".into(), ok("docker.io/foo/bar-baz:latest")),
            ("foo/bar---baz".into(), ok("docker.io/foo/bar---baz:latest")),
            ("foo/bar___baz".into(), Err("path component")),
            ("foo/bar..baz".into(), Err("path component")),
            ("foo/bar._baz".into(), Err("path component")),
            ("foo/-bar".into(), Err("path component")),
            ("foo/bar-".into(), Err("path component")),
            ("foo/.bar".into(), Err("path component")),
            ("foo//bar".into(), Err("path component")),
            ("foo/".into(), Err("path component")),
            ("example.com/".into(), Err("at least one component")),
            ("/foo".into(), Err("path component")),
            ("foo/Bar".into(), Err("must be lowercase")),
            ("Nginx".into(), Err("must be lowercase")),
            ("example.com/Foo".into(), Err("must be lowercase")),
            ("foo/b%r".into(), Err("path component")),
            ("foo bar".into(), Err("path component")),
            ("".into(), Err("at least one component")),
            // tags
            (
                "foo:v1.0-rc_1".into(),
                ok("docker.io/library/foo:v1.0-rc_1"),
            ),
            ("foo:_private".into(), ok("docker.io/library/foo:_private")),
            ("foo:LATEST".into(), ok("docker.io/library/foo:LATEST")),
            ("foo:.hidden".into(), Err("tag")),
            ("foo:-dash".into(), Err("tag")),
            ("foo:".into(), Err("tag")),
            ("foo:a:b".into(), Err("tag")),
            ("foo:tag!".into(), Err("tag")),
            (
                format!("foo:{tag128}"),
                ok(&format!("docker.io/library/foo:{tag128}")),
            ),
            (format!("foo:{tag129}"), Err("tag")),
            // digests
            (
                format!("foo@{D256}"),
                ok(&format!("docker.io/library/foo@{D256}")),
            ),
            (
                format!("foo:v1@{D256}"),
                ok(&format!("docker.io/library/foo:v1@{D256}")),
            ),
            (
                format!("localhost:5000/foo@{D256}"),
                ok(&format!("localhost:5000/foo@{D256}")),
            ),
            (
                format!("foo@{}", sha512()),
                ok(&format!("docker.io/library/foo@{}", sha512())),
            ),
            (
                "foo@sha256:abc".into(),
                Err("invalid checksum digest length"),
            ),
            (
                format!("foo@sha512:{}", &D256[7..]),
                Err("invalid checksum digest length"),
            ),
            (
                format!("foo@{}", D256.to_uppercase().replace("SHA256", "sha256")),
                Err("invalid checksum digest format"),
            ),
            (
                format!("foo@md5:{}", "a".repeat(32)),
                Err("unsupported digest algorithm"),
            ),
            ("foo@sha256".into(), Err("invalid checksum digest format")),
            ("foo@:abc".into(), Err("invalid checksum digest format")),
            ("foo@sha256:".into(), Err("invalid checksum digest format")),
            (
                format!("foo@sha256:{}", "g".repeat(64)),
                Err("invalid checksum digest format"),
            ),
            // 64-hex identifiers
            (D256[7..].into(), Err("64-byte hexadecimal")),
            (
                format!("{}:tag", &D256[7..]),
                ok(&format!("docker.io/library/{}:tag", &D256[7..])),
            ),
            // length limits (path only, v0.6)
            (long_component.clone(), Err("255")),
            (
                format!("example.com/{}", "a".repeat(MAX_PATH_LEN)),
                ok(&format!("example.com/{}:latest", "a".repeat(MAX_PATH_LEN))),
            ),
            (format!("example.com/{too_long}"), Err("255")),
            (
                format!("x/{}", "a".repeat(MAX_PATH_LEN - 2)),
                ok(&format!(
                    "docker.io/x/{}:latest",
                    "a".repeat(MAX_PATH_LEN - 2)
                )),
            ),
        ]
    }

    #[test]
    fn table() {
        let cases = cases();
        assert!(cases.len() >= 60, "only {} cases", cases.len());
        for (input, expected) in cases {
            match (ImageRef::parse(&input), expected) {
                (Ok(r), Ok(full)) => assert_eq!(r.to_string(), full, "input {input:?}"),
                (Err(e), Err(fragment)) => assert!(
                    e.to_string().contains(fragment),
                    "input {input:?}: error {e:?} lacks {fragment:?}"
                ),
                (got, want) => panic!("input {input:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn accessors() {
        let r = ImageRef::parse(&format!("reg.test1.com:5000/team/app:v1@{D256}")).unwrap();
        assert_eq!(r.registry(), "reg.test1.com:5000");
        assert_eq!(r.repository(), "team/app");
        assert_eq!(r.tag(), Some("v1"));
        assert_eq!(r.digest().unwrap().as_str(), D256);
        assert_eq!(r.manifest_reference(), D256);
        assert!(!r.is_docker_hub());
        let hub = ImageRef::parse("nginx").unwrap();
        assert!(hub.is_docker_hub());
        assert_eq!(hub.manifest_reference(), "latest");
        assert_eq!(hub.digest(), None);
    }

    #[test]
    fn digest_parts() {
        let d = Digest::parse(D256).unwrap();
        assert_eq!(d.algorithm(), "sha256");
        assert_eq!(d.hex(), &D256[7..]);
        assert_eq!(Digest::sha256_from_bytes(&[0u8; 32]).hex(), "0".repeat(64));
    }

    #[test]
    fn host_splitting() {
        assert_eq!(split_host_port("a.b:5000"), ("a.b", Some("5000")));
        assert_eq!(split_host_port("[::1]:5000"), ("[::1]", Some("5000")));
        assert_eq!(split_host_port("[::1]"), ("[::1]", None));
        assert_eq!(split_host_port("a.b"), ("a.b", None));
        assert!(is_valid_host("[::1]:5000"));
        assert!(!is_valid_host("[::1]x"));
        assert!(!is_valid_host("a.b:"));
    }
}

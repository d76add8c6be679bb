//! The cache server's configuration: distribution's `config.yml` format, plus the seed's
//! `proxy.remoteregistries` / `proxy.on`, and distribution's `REGISTRY_*` environment overrides.
//!
//! Pure: the caller passes the file text and the environment. Unknown keys produce warnings that
//! name them; keys distribution knows but regmirror does not implement produce warnings too; a
//! value of the wrong type is an error with its line.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

use super::Credentials;
use super::mirrors::{MirrorUrl, canonical_registry};

/// Where the embedded default listens.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5000";
/// Where the embedded default keeps its data (relative to the working directory).
pub const DEFAULT_ROOT: &str = "./regmirror-data";
/// Well-known public registries the embedded default routes by `?ns=` or path prefix.
pub const WELL_KNOWN_REGISTRIES: [&str; 6] = [
    "ghcr.io",
    "quay.io",
    "gcr.io",
    "registry.k8s.io",
    "mcr.microsoft.com",
    "public.ecr.aws",
];
/// The namespace of pushed repositories in the cache: never the name of an upstream.
pub const LOCAL_NAMESPACE: &str = "local";
/// How often the server evicts by default.
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(600);
/// distribution's default `proxy.ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(168 * 3600);

/// `limits`: bounds on what clients and upstreams can make the server hold, each with its
/// default. A limit that is hit gives a clear error naming its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `header_timeout`: time to send a request head, and how long an idle keep-alive connection
    /// waits for the next one.
    pub header_timeout: Duration,
    /// `tls_handshake_timeout`: time to complete the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// `idle_timeout`: a connection that makes no progress writing a response (a client that does
    /// not read) or reading a request body for this long is closed.
    pub idle_timeout: Duration,
    /// `max_connections`: connections served at once; `None` derives it from the open-file
    /// limit (a connection may hold a socket and a file).
    pub max_connections: Option<usize>,
    /// `max_manifest_size`: the largest manifest accepted from an upstream or a push.
    pub max_manifest_size: u64,
    /// `max_blob_size`: the largest blob filled or pushed.
    pub max_blob_size: u64,
    /// `fill_min_rate` (bytes per second): a fill that falls behind this rate by more than the
    /// upstream read timeout is abandoned.
    pub fill_min_rate: u64,
    /// `max_fills`: upstream downloads in flight at once.
    pub max_fills: usize,
    /// `max_fills_per_upstream`: of those, the most one upstream may hold (every dynamic
    /// upstream together counts as one); by default three quarters of `max_fills`, at least 1.
    pub max_fills_per_upstream: usize,
    /// `upload_lifetime`: an upload no request touched for this long is abandoned.
    pub upload_lifetime: Duration,
    /// `max_uploads`: uploads in progress at once.
    pub max_uploads: usize,
    /// `upstream_queue_timeout`: the longest a request waits for its turn under an upstream's
    /// `max_concurrent`/`max_rate`; past it the client gets 429.
    pub upstream_queue_timeout: Duration,
    /// `manifest_memo`: bytes of hot manifests kept in memory.
    pub manifest_memo: u64,
    /// `blob_memo`: bytes of hot small blobs (up to 128 KiB each) kept in memory.
    pub blob_memo: u64,
    /// `buffer_memory`: blob data held in memory for clients and fills; past it, reads shrink
    /// and nothing is read ahead.
    pub buffer_memory: u64,
    /// `max_referrers`: referrers kept per subject and repository; an upstream's longer answer
    /// is cut (served with a `Warning`), a push past it refused.
    pub max_referrers: usize,
    /// `max_referrers_size`: bytes of referrer descriptors kept per subject and repository, and
    /// of an upstream's referrers answer read (all pages together, plus the page that crossed
    /// it).
    pub max_referrers_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(20),
            tls_handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
            max_manifest_size: 4 << 20,
            max_blob_size: 64 << 30,
            fill_min_rate: 32 << 10,
            max_fills: 256,
            max_fills_per_upstream: 192,
            upload_lifetime: Duration::from_secs(3600),
            max_uploads: 1000,
            upstream_queue_timeout: Duration::from_secs(30),
            manifest_memo: 64 << 20,
            blob_memo: 128 << 20,
            buffer_memory: 256 << 20,
            max_referrers: 1000,
            max_referrers_size: 1 << 20,
        }
    }
}

/// The shortest `http.secret` accepted.
pub const MIN_SECRET_BYTES: usize = 16;

/// A secret from the config: compared, never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the cache keeps content and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageBackend {
    /// `storage.filesystem`: everything under the local root.
    Filesystem,
    /// `storage.s3`: an S3-compatible bucket shared by any number of replicas.
    S3(S3Config),
}

/// `storage.s3`, as distribution spells it, and `storage.redirect`.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    pub region: String,
    /// `regionendpoint`, with its scheme (`http://minio:9000`); `None` for AWS itself.
    pub endpoint: Option<String>,
    /// `accesskey` / `secretkey`; `None`: the usual AWS environment (and instance roles).
    pub credentials: Option<Credentials>,
    /// `rootdirectory`: the key prefix everything lives under (no leading or trailing `/`).
    pub prefix: String,
    /// `forcepathstyle` (default: true with a `regionendpoint`, false for AWS).
    pub path_style: bool,
    /// `chunksize`: the part size of multipart uploads (default 10 MiB, at least 5 MiB).
    pub chunk_size: u64,
    /// Not `storage.redirect.disable`: a GET of a committed blob may answer 307 to a presigned
    /// URL (distribution's default).
    pub redirect: bool,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("credentials", &self.credentials)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("chunk_size", &self.chunk_size)
            .field("redirect", &self.redirect)
            .finish()
    }
}

/// The default multipart part size (distribution's).
pub const DEFAULT_S3_CHUNK_SIZE: u64 = 10 << 20;
/// S3's smallest part size.
pub const MIN_S3_CHUNK_SIZE: u64 = 5 << 20;

/// One upstream registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The registry's name as clients say it (`docker.io`, `ghcr.io`, `127.0.0.1:5001`): the
    /// `?ns=` value, the path prefix, and the namespace of its cached content.
    pub name: String,
    /// Where its registry API lives.
    pub url: MirrorUrl,
    pub credentials: Option<Credentials>,
    /// How long a tag is served from cache without asking this upstream (`tag_revalidate`).
    pub tag_revalidate: Duration,
    /// `ratelimit_reserve`: the part of the pull budget the upstream states that is kept for
    /// content not cached yet.
    pub ratelimit_reserve: RateLimitReserve,
    /// `max_concurrent` and `max_rate`.
    pub requests: RequestLimits,
}

/// `ratelimit_reserve`: `10%` of the stated limit, or a number of pulls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitReserve {
    Percent(u8),
    Pulls(u64),
}

impl Default for RateLimitReserve {
    fn default() -> Self {
        RateLimitReserve::Percent(10)
    }
}

impl RateLimitReserve {
    /// Whether `remaining` pulls of `limit` have fallen under the reserve.
    pub fn reached(self, limit: u64, remaining: u64) -> bool {
        let reserve = match self {
            RateLimitReserve::Percent(percent) => limit.saturating_mul(u64::from(percent)) / 100,
            RateLimitReserve::Pulls(pulls) => pulls,
        };
        remaining < reserve
    }

    fn parse(value: &Value) -> Result<Self, String> {
        let invalid = || format!("{value:?} is not a reserve like 10% or 20 (pulls)");
        match value {
            Value::Number(n) => n.as_u64().map(RateLimitReserve::Pulls).ok_or_else(invalid),
            Value::String(text) => match text.trim().strip_suffix('%') {
                Some(percent) => percent
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= 100)
                    .map(RateLimitReserve::Percent)
                    .ok_or_else(invalid),
                None => text
                    .trim()
                    .parse()
                    .map(RateLimitReserve::Pulls)
                    .map_err(|_| invalid()),
            },
            _ => Err(invalid()),
        }
    }
}

/// `max_concurrent` (requests in flight, a download until its body ends) and `max_rate`
/// (requests per second) for one upstream; none by default.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RequestLimits {
    pub max_concurrent: Option<usize>,
    pub max_rate: Option<f64>,
}

impl Eq for RequestLimits {}

impl RequestLimits {
    fn parse(
        max_concurrent: Option<usize>,
        max_rate: Option<f64>,
        defaults: RequestLimits,
        err: impl Fn(&str, String) -> String,
        at: &str,
    ) -> Result<Self, String> {
        if max_concurrent == Some(0) {
            return Err(err(
                &format!("{at}.max_concurrent"),
                "must be at least 1".into(),
            ));
        }
        if let Some(rate) = max_rate.filter(|r| !(r.is_finite() && *r >= 0.001)) {
            return Err(err(
                &format!("{at}.max_rate"),
                format!("{rate} is not a rate of at least 0.001 requests per second"),
            ));
        }
        Ok(RequestLimits {
            max_concurrent: max_concurrent.or(defaults.max_concurrent),
            max_rate: max_rate.or(defaults.max_rate),
        })
    }
}

/// Repositories that accept pushes and are never proxied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LocalRepositories {
    #[default]
    None,
    /// `local: all`: every repository a request does not name an upstream for (no `?ns=`,
    /// `domain` header or registry path prefix); there is then no default upstream.
    All,
    /// `local: [{prefix: "myteam/"}]`
    Prefixes(Vec<String>),
}

impl LocalRepositories {
    pub fn contains(&self, repository: &str) -> bool {
        match self {
            LocalRepositories::None => false,
            LocalRepositories::All => true,
            LocalRepositories::Prefixes(prefixes) => {
                prefixes.iter().any(|p| repository.starts_with(p.as_str()))
            }
        }
    }

    /// How a refusal names them: `myteam/, ci/`.
    pub fn describe(&self) -> String {
        match self {
            LocalRepositories::None => "none are configured (local:)".to_owned(),
            LocalRepositories::All => "all repositories without an upstream".to_owned(),
            LocalRepositories::Prefixes(prefixes) => prefixes.join(", "),
        }
    }
}

/// The validated cache configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// `host:port` to listen on.
    pub listen: String,
    /// The local directory: the whole store with the filesystem driver
    /// (`storage.filesystem.rootdirectory`), the spool of work in progress with s3
    /// (`storage.spool`).
    pub root: PathBuf,
    /// Where verified content and metadata live.
    pub storage: StorageBackend,
    /// `http.tls.certificate` / `http.tls.key`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `http.tls.clientcas`: when set, clients must present a certificate signed by one of them.
    pub client_cas: Vec<PathBuf>,
    /// `auth.htpasswd`: (realm, file).
    pub htpasswd: Option<(String, PathBuf)>,
    /// `local`: repositories that accept pushes.
    pub local: LocalRepositories,
    /// `storage.delete.enabled`: local manifests and blobs may be deleted.
    pub delete_enabled: bool,
    /// `storage.maxsize`: least recently used images are evicted above it.
    pub max_size: Option<u64>,
    /// `storage.gc_interval`: how often the server collects (default 10m).
    pub gc_interval: Duration,
    /// `http.headers`: added to every response.
    pub headers: Vec<(String, String)>,
    /// `http.host`: the URL other replicas reach this one at (advertised in fill leases).
    pub host: Option<String>,
    /// `http.secret`: shared by the replicas of one bucket; authenticates their internal route.
    pub secret: Option<Secret>,
    /// Configured upstreams; the first is the default for requests that name none.
    pub upstreams: Vec<UpstreamConfig>,
    /// `proxy.on`: serve registries that are not configured, without stored credentials.
    pub dynamic_upstreams: bool,
    /// `proxy.ratelimit_reserve` and `proxy.max_concurrent`/`max_rate`: the defaults of every
    /// upstream, and what dynamic upstreams get (their limits shared by all of them).
    pub proxy_reserve: RateLimitReserve,
    pub proxy_requests: RequestLimits,
    /// `proxy.allow_private_upstreams`: let dynamic upstreams be loopback, link-local or private.
    pub allow_private_upstreams: bool,
    /// `proxy.ttl`.
    pub ttl: Duration,
    /// `proxy.serve_stale_on_404`: a tag the upstream answers 404 for is still served from cache.
    pub serve_stale_on_404: bool,
    /// `log.level`, when set.
    pub log_level: Option<String>,
    /// `limits`.
    pub limits: Limits,
    /// Keys that were ignored, and why.
    pub warnings: Vec<String>,
}

impl CacheConfig {
    /// The configuration used when no file is given: Docker Hub as the default upstream, the
    /// well-known public registries routable by `?ns=` or path prefix.
    pub fn embedded_default() -> Self {
        let hub = upstream("docker.io", "https://registry-1.docker.io");
        let mut upstreams = vec![hub];
        upstreams.extend(
            WELL_KNOWN_REGISTRIES
                .iter()
                .map(|host| upstream(host, &format!("https://{host}"))),
        );
        CacheConfig {
            listen: DEFAULT_LISTEN.to_owned(),
            root: PathBuf::from(DEFAULT_ROOT),
            tls: None,
            client_cas: Vec::new(),
            htpasswd: None,
            storage: StorageBackend::Filesystem,
            local: LocalRepositories::None,
            delete_enabled: false,
            max_size: None,
            gc_interval: DEFAULT_GC_INTERVAL,
            headers: Vec::new(),
            host: None,
            secret: None,
            upstreams,
            dynamic_upstreams: false,
            proxy_reserve: RateLimitReserve::default(),
            proxy_requests: RequestLimits::default(),
            allow_private_upstreams: false,
            ttl: DEFAULT_TTL,
            serve_stale_on_404: false,
            log_level: None,
            limits: Limits::default(),
            warnings: Vec::new(),
        }
    }

    /// Parses `config.yml` text (`file` names it in messages) with `REGISTRY_*` overrides from
    /// `env`. With no text, the embedded default is the base the overrides apply to.
    pub fn parse(file: &str, text: Option<&str>, env: &[(String, String)]) -> Result<Self, String> {
        let Some(text) = text else {
            if env_overrides(env).next().is_none() {
                return Ok(Self::embedded_default());
            }
            // The environment alone: over the embedded default's upstreams unless it names its own.
            let names_upstreams = env.iter().any(|(k, _)| k.starts_with("REGISTRY_PROXY_"));
            let base = if names_upstreams {
                "version: 0.1\n".to_owned()
            } else {
                let urls: Vec<String> = Self::embedded_default()
                    .upstreams
                    .iter()
                    .map(|u| format!("{{url: \"{}\"}}", u.url))
                    .collect();
                format!(
                    "version: 0.1\nproxy: {{remoteregistries: [{}]}}\n",
                    urls.join(", ")
                )
            };
            return Self::parse(file, Some(&base), env);
        };
        let mut document: Value =
            serde_yaml_ng::from_str(text).map_err(|e| format!("{file}: {e}"))?;
        if document.is_null() {
            document = Value::Mapping(Mapping::new());
        }
        let mut overridden = false;
        let mut driver = None;
        for (path, value) in env_overrides(env) {
            // `REGISTRY_STORAGE=s3` names the storage driver, as with distribution.
            if path == ["storage"] {
                driver = value.as_str().map(str::to_owned);
            } else {
                set_path(&mut document, &path, value);
            }
            overridden = true;
        }
        if let Some(driver) = driver {
            select_driver(&mut document, &driver);
        }
        let mut warnings = Vec::new();
        check_keys(&document, &SCHEMA, "", &mut warnings);
        let raw: RawConfig = if overridden {
            serde_yaml_ng::from_value(document)
                .map_err(|e| format!("{file} (with REGISTRY_* overrides): {e}"))?
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| format!("{file}: {e}"))?
        };
        raw.validate(file, warnings)
    }
}

fn upstream(name: &str, url: &str) -> UpstreamConfig {
    UpstreamConfig {
        name: name.to_owned(),
        url: MirrorUrl::parse(url).expect("built-in upstream URLs are valid"),
        credentials: None,
        tag_revalidate: Duration::ZERO,
        ratelimit_reserve: RateLimitReserve::default(),
        requests: RequestLimits::default(),
    }
}

/// `REGISTRY_HTTP_ADDR=:5000` -> (["http", "addr"], ":5000").
fn env_overrides(env: &[(String, String)]) -> impl Iterator<Item = (Vec<String>, Value)> + '_ {
    env.iter().filter_map(|(key, value)| {
        let rest = key.strip_prefix("REGISTRY_")?;
        if rest.is_empty() {
            return None;
        }
        let words: Vec<String> = rest.split('_').map(str::to_ascii_lowercase).collect();
        let value = serde_yaml_ng::from_str(value).unwrap_or(Value::String(value.clone()));
        Some((schema_path(&words), value))
    })
}

/// Joins words back into keys that contain underscores (`gc_interval`, `tag_revalidate`) where
/// the schema knows such a key; otherwise every word is a level, as distribution reads them.
fn schema_path(words: &[String]) -> Vec<String> {
    let mut path = Vec::new();
    let mut node = Some(&SCHEMA);
    let mut i = 0;
    while i < words.len() {
        let fields: &[(&str, Key)] = match node {
            Some(Key::Map(fields)) => fields,
            _ => &[],
        };
        let longest = (i + 1..=words.len()).rev().find_map(|j| {
            let candidate = words[i..j].join("_");
            fields
                .iter()
                .find(|(k, _)| *k == candidate)
                .map(|(_, sub)| (j, candidate, sub))
        });
        match longest {
            Some((j, key, sub)) => {
                path.push(key);
                node = Some(sub);
                i = j;
            }
            None => {
                path.push(words[i].clone());
                node = None;
                i += 1;
            }
        }
    }
    path
}

/// Storage drivers distribution knows: one of them is the storage.
const DRIVERS: [&str; 7] = [
    "filesystem",
    "s3",
    "inmemory",
    "azure",
    "gcs",
    "swift",
    "oss",
];

/// Keeps `driver` as the storage (with its parameters, or none) and drops the other drivers'.
fn select_driver(document: &mut Value, driver: &str) {
    if !document.is_mapping() {
        *document = Value::Mapping(Mapping::new());
    }
    let root = document.as_mapping_mut().expect("just made a mapping");
    let storage = root
        .entry(Value::String("storage".to_owned()))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !storage.is_mapping() {
        *storage = Value::Mapping(Mapping::new());
    }
    let storage = storage.as_mapping_mut().expect("just made a mapping");
    storage.retain(|key, _| {
        key.as_str()
            .is_none_or(|k| k == driver || !DRIVERS.contains(&k))
    });
    if !storage.contains_key(driver) {
        storage.insert(
            Value::String(driver.to_owned()),
            Value::Mapping(Mapping::new()),
        );
    }
}

fn set_path(document: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = document;
    for key in parents {
        if !node.is_mapping() {
            *node = Value::Mapping(Mapping::new());
        }
        let map = node.as_mapping_mut().expect("just made a mapping");
        node = map
            .entry(Value::String(key.clone()))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
    }
    if !node.is_mapping() {
        *node = Value::Mapping(Mapping::new());
    }
    node.as_mapping_mut()
        .expect("just made a mapping")
        .insert(Value::String(last.clone()), value);
}

/// What the config file may hold. `Known` keys are read; `Ignored` ones are distribution's and
/// get a warning that regmirror does not implement them; `Any` accepts every sub-key.
enum Key {
    Map(&'static [(&'static str, Key)]),
    List(&'static Key),
    Known,
    Ignored,
    Any,
}

const SCHEMA: Key = Key::Map(&[
    ("version", Key::Known),
    (
        "log",
        Key::Map(&[
            ("level", Key::Known),
            ("formatter", Key::Ignored),
            ("fields", Key::Any),
            ("accesslog", Key::Any),
            ("hooks", Key::Ignored),
        ]),
    ),
    ("loglevel", Key::Ignored),
    (
        "storage",
        Key::Map(&[
            (
                "filesystem",
                Key::Map(&[("rootdirectory", Key::Known), ("maxthreads", Key::Any)]),
            ),
            ("cache", Key::Any),
            ("delete", Key::Map(&[("enabled", Key::Known)])),
            ("maxsize", Key::Known),
            ("gc_interval", Key::Known),
            ("maintenance", Key::Ignored),
            ("redirect", Key::Map(&[("disable", Key::Known)])),
            ("spool", Key::Known),
            ("inmemory", Key::Ignored),
            (
                "s3",
                Key::Map(&[
                    ("bucket", Key::Known),
                    ("region", Key::Known),
                    ("regionendpoint", Key::Known),
                    ("accesskey", Key::Known),
                    ("secretkey", Key::Known),
                    ("rootdirectory", Key::Known),
                    ("secure", Key::Known),
                    ("forcepathstyle", Key::Known),
                    ("chunksize", Key::Known),
                    ("encrypt", Key::Ignored),
                    ("keyid", Key::Ignored),
                    ("v4auth", Key::Any),
                    ("skipverify", Key::Ignored),
                    ("storageclass", Key::Ignored),
                    ("multipartcopychunksize", Key::Any),
                    ("multipartcopymaxconcurrency", Key::Any),
                    ("multipartcopythresholdsize", Key::Any),
                    ("loglevel", Key::Any),
                ]),
            ),
            ("azure", Key::Ignored),
            ("gcs", Key::Ignored),
            ("swift", Key::Ignored),
            ("oss", Key::Ignored),
        ]),
    ),
    (
        "http",
        Key::Map(&[
            ("addr", Key::Known),
            ("net", Key::Known),
            ("prefix", Key::Ignored),
            ("host", Key::Known),
            ("secret", Key::Known),
            ("relativeurls", Key::Any),
            ("draintimeout", Key::Any),
            (
                "tls",
                Key::Map(&[
                    ("certificate", Key::Known),
                    ("key", Key::Known),
                    ("clientcas", Key::Known),
                    ("minimumtls", Key::Ignored),
                    ("letsencrypt", Key::Ignored),
                ]),
            ),
            ("headers", Key::Any),
            ("debug", Key::Ignored),
            ("http2", Key::Any),
        ]),
    ),
    (
        "proxy",
        Key::Map(&[
            ("remoteurl", Key::Known),
            ("username", Key::Known),
            ("password", Key::Known),
            ("ttl", Key::Known),
            (
                "remoteregistries",
                Key::List(&Key::Map(&[
                    ("url", Key::Known),
                    ("username", Key::Known),
                    ("password", Key::Known),
                    ("tag_revalidate", Key::Known),
                    ("ratelimit_reserve", Key::Known),
                    ("max_concurrent", Key::Known),
                    ("max_rate", Key::Known),
                ])),
            ),
            ("on", Key::Known),
            ("tag_revalidate", Key::Known),
            ("ratelimit_reserve", Key::Known),
            ("max_concurrent", Key::Known),
            ("max_rate", Key::Known),
            ("serve_stale_on_404", Key::Known),
            ("allow_private_upstreams", Key::Known),
        ]),
    ),
    ("local", Key::Any),
    ("health", Key::Any),
    (
        "auth",
        Key::Map(&[
            (
                "htpasswd",
                Key::Map(&[("realm", Key::Known), ("path", Key::Known)]),
            ),
            ("token", Key::Ignored),
            ("silly", Key::Ignored),
        ]),
    ),
    (
        "limits",
        Key::Map(&[
            ("header_timeout", Key::Known),
            ("tls_handshake_timeout", Key::Known),
            ("idle_timeout", Key::Known),
            ("max_connections", Key::Known),
            ("max_manifest_size", Key::Known),
            ("max_blob_size", Key::Known),
            ("fill_min_rate", Key::Known),
            ("max_fills", Key::Known),
            ("max_fills_per_upstream", Key::Known),
            ("upload_lifetime", Key::Known),
            ("upstream_queue_timeout", Key::Known),
            ("max_uploads", Key::Known),
            ("manifest_memo", Key::Known),
            ("blob_memo", Key::Known),
            ("buffer_memory", Key::Known),
            ("max_referrers", Key::Known),
            ("max_referrers_size", Key::Known),
        ]),
    ),
    ("notifications", Key::Ignored),
    ("redis", Key::Ignored),
    ("validation", Key::Any),
    ("compatibility", Key::Any),
    ("reporting", Key::Ignored),
    ("middleware", Key::Ignored),
]);

fn check_keys(value: &Value, schema: &Key, path: &str, warnings: &mut Vec<String>) {
    match (schema, value) {
        (Key::Map(fields), Value::Mapping(map)) => {
            for (key, child) in map {
                let name = key
                    .as_str()
                    .map_or_else(|| format!("{key:?}"), str::to_owned);
                let child_path = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                match fields.iter().find(|(k, _)| *k == name) {
                    Some((_, sub)) => check_keys(child, sub, &child_path, warnings),
                    None => warnings.push(format!("unknown key {child_path}: ignored")),
                }
            }
        }
        (Key::List(item), Value::Sequence(items)) => {
            for (i, child) in items.iter().enumerate() {
                check_keys(child, item, &format!("{path}[{i}]"), warnings);
            }
        }
        (Key::Ignored, _) => warnings.push(format!(
            "{path}: a distribution setting regmirror does not implement; ignored"
        )),
        _ => {}
    }
}

/// The typed shape of the file, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawConfig {
    log: RawLog,
    limits: RawLimits,
    auth: RawAuth,
    local: Option<serde_yaml_ng::Value>,
    storage: RawStorage,
    http: RawHttp,
    /// Absent: a plain registry (every repository local), as distribution without `proxy`.
    proxy: Option<RawProxy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawLimits {
    header_timeout: Option<String>,
    tls_handshake_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<usize>,
    max_manifest_size: Option<Value>,
    max_blob_size: Option<Value>,
    fill_min_rate: Option<Value>,
    max_fills: Option<usize>,
    max_fills_per_upstream: Option<usize>,
    upload_lifetime: Option<String>,
    max_uploads: Option<usize>,
    upstream_queue_timeout: Option<String>,
    manifest_memo: Option<Value>,
    blob_memo: Option<Value>,
    buffer_memory: Option<Value>,
    max_referrers: Option<usize>,
    max_referrers_size: Option<Value>,
}

impl RawLimits {
    fn validate(self, err: impl Fn(&str, String) -> String) -> Result<Limits, String> {
        let defaults = Limits::default();
        let duration = |key: &str, value: Option<String>, default: Duration| match value {
            None => Ok(default),
            Some(text) => parse_duration(&text)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    err(
                        &format!("limits.{key}"),
                        format!("{text:?} is not a positive duration like 30s"),
                    )
                }),
        };
        // A size must be positive, except a memo's, which 0 turns off.
        let sized = |key: &str, value: Option<Value>, default: u64, zero: Zero| match value {
            None => Ok(default),
            Some(value) => size_value(&value)
                .filter(|n| *n > 0 || zero == Zero::TurnsOff)
                .ok_or_else(|| {
                    let expected = match zero {
                        Zero::Refused => "a positive size like 4MiB",
                        Zero::TurnsOff => "a size like 64MiB (0 turns it off)",
                    };
                    err(
                        &format!("limits.{key}"),
                        format!("{value:?} is not {expected}"),
                    )
                }),
        };
        let size = |key: &str, value: Option<Value>, default: u64| {
            sized(key, value, default, Zero::Refused)
        };
        let memo_size = |key: &str, value: Option<Value>, default: u64| {
            sized(key, value, default, Zero::TurnsOff)
        };
        let count = |key: &str, value: Option<usize>, default: usize| match value {
            Some(0) => Err(err(&format!("limits.{key}"), "must be at least 1".into())),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let max_fills = count("max_fills", self.max_fills, defaults.max_fills)?;
        let max_fills_per_upstream = match self.max_fills_per_upstream {
            Some(n) if n > max_fills => {
                return Err(err(
                    "limits.max_fills_per_upstream",
                    format!("{n} is more than limits.max_fills ({max_fills})"),
                ));
            }
            given => count("max_fills_per_upstream", given, (max_fills * 3 / 4).max(1))?,
        };
        Ok(Limits {
            header_timeout: duration(
                "header_timeout",
                self.header_timeout,
                defaults.header_timeout,
            )?,
            tls_handshake_timeout: duration(
                "tls_handshake_timeout",
                self.tls_handshake_timeout,
                defaults.tls_handshake_timeout,
            )?,
            idle_timeout: duration("idle_timeout", self.idle_timeout, defaults.idle_timeout)?,
            max_connections: match self.max_connections {
                Some(0) => {
                    return Err(err("limits.max_connections", "must be at least 1".into()));
                }
                other => other,
            },
            max_manifest_size: size(
                "max_manifest_size",
                self.max_manifest_size,
                defaults.max_manifest_size,
            )?,
            max_blob_size: size("max_blob_size", self.max_blob_size, defaults.max_blob_size)?,
            fill_min_rate: size(
                "fill_min_rate",
                self.fill_min_rate.map(|v| match v {
                    Value::String(text) => Value::String(text.trim_end_matches("/s").to_owned()),
                    other => other,
                }),
                defaults.fill_min_rate,
            )?,
            max_fills,
            max_fills_per_upstream,
            upload_lifetime: duration(
                "upload_lifetime",
                self.upload_lifetime,
                defaults.upload_lifetime,
            )?,
            max_uploads: count("max_uploads", self.max_uploads, defaults.max_uploads)?,
            upstream_queue_timeout: duration(
                "upstream_queue_timeout",
                self.upstream_queue_timeout,
                defaults.upstream_queue_timeout,
            )?,
            manifest_memo: memo_size("manifest_memo", self.manifest_memo, defaults.manifest_memo)?,
            blob_memo: memo_size("blob_memo", self.blob_memo, defaults.blob_memo)?,
            buffer_memory: size("buffer_memory", self.buffer_memory, defaults.buffer_memory)?,
            max_referrers: count("max_referrers", self.max_referrers, defaults.max_referrers)?,
            max_referrers_size: size(
                "max_referrers_size",
                self.max_referrers_size,
                defaults.max_referrers_size,
            )?,
        })
    }
}

/// What a size of 0 means for a limit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Zero {
    Refused,
    TurnsOff,
}

/// A size written as a number of bytes or as text (`4MiB`).
fn size_value(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(text) => parse_size(text).ok(),
        _ => None,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawAuth {
    htpasswd: Option<RawHtpasswd>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawHtpasswd {
    realm: Option<String>,
    path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawLog {
    level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawStorage {
    filesystem: Option<RawFilesystem>,
    s3: Option<RawS3>,
    redirect: RawRedirect,
    spool: Option<PathBuf>,
    delete: RawDelete,
    maxsize: Option<serde_yaml_ng::Value>,
    gc_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawRedirect {
    disable: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawS3 {
    bucket: Option<String>,
    region: Option<String>,
    regionendpoint: Option<String>,
    accesskey: Option<String>,
    secretkey: Option<String>,
    rootdirectory: Option<String>,
    secure: Option<bool>,
    forcepathstyle: Option<bool>,
    chunksize: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawDelete {
    enabled: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawFilesystem {
    rootdirectory: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawHttp {
    addr: Option<String>,
    host: Option<String>,
    secret: Option<String>,
    net: Option<String>,
    tls: RawTls,
    headers: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawTls {
    certificate: Option<PathBuf>,
    key: Option<PathBuf>,
    clientcas: Vec<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawProxy {
    remoteurl: Option<String>,
    username: Option<String>,
    password: Option<String>,
    ttl: Option<String>,
    remoteregistries: Vec<RawRemote>,
    on: bool,
    allow_private_upstreams: bool,
    tag_revalidate: Option<String>,
    serve_stale_on_404: bool,
    ratelimit_reserve: Option<Value>,
    max_concurrent: Option<usize>,
    max_rate: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawRemote {
    url: String,
    username: Option<String>,
    password: Option<String>,
    tag_revalidate: Option<String>,
    ratelimit_reserve: Option<Value>,
    max_concurrent: Option<usize>,
    max_rate: Option<f64>,
}

/// One upstream's own policy keys, each defaulting to the `proxy` level's.
#[derive(Debug, Default)]
struct RawPolicy<'a> {
    tag_revalidate: Option<&'a str>,
    ratelimit_reserve: Option<&'a Value>,
    max_concurrent: Option<usize>,
    max_rate: Option<f64>,
}

impl RawS3 {
    fn validate(
        self,
        err: impl Fn(&str, String) -> String,
        redirect_disabled: bool,
    ) -> Result<S3Config, String> {
        let bucket = self
            .bucket
            .filter(|b| !b.is_empty())
            .ok_or_else(|| err("storage.s3.bucket", "is required".into()))?;
        let endpoint = match self.regionendpoint.filter(|e| !e.is_empty()) {
            None => None,
            Some(e) if e.contains("://") => Some(e.trim_end_matches('/').to_owned()),
            Some(e) => {
                let scheme = if self.secure.unwrap_or(true) {
                    "https"
                } else {
                    "http"
                };
                Some(format!("{scheme}://{}", e.trim_end_matches('/')))
            }
        };
        if let Some(endpoint) = &endpoint {
            url::Url::parse(endpoint)
                .map_err(|e| err("storage.s3.regionendpoint", format!("{endpoint:?}: {e}")))?;
        }
        let credentials = match (self.accesskey, self.secretkey) {
            (Some(key), Some(secret)) if !key.is_empty() => Some(Credentials::new(key, secret)),
            (None, None) => None,
            (Some(key), None) if key.is_empty() => None,
            _ => {
                return Err(err(
                    "storage.s3.accesskey",
                    "accesskey and secretkey go together".into(),
                ));
            }
        };
        let chunk_size = match self.chunksize {
            None => DEFAULT_S3_CHUNK_SIZE,
            Some(value) => size_value(&value)
                .filter(|n| *n >= MIN_S3_CHUNK_SIZE)
                .ok_or_else(|| {
                    err(
                        "storage.s3.chunksize",
                        format!("{value:?}: at least 5MiB (S3's smallest part)"),
                    )
                })?,
        };
        Ok(S3Config {
            bucket,
            region: self
                .region
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "us-east-1".to_owned()),
            path_style: self.forcepathstyle.unwrap_or(endpoint.is_some()),
            endpoint,
            credentials,
            prefix: self
                .rootdirectory
                .unwrap_or_default()
                .trim_matches('/')
                .to_owned(),
            chunk_size,
            redirect: !redirect_disabled,
        })
    }
}

fn credentials(username: Option<String>, password: Option<String>) -> Option<Credentials> {
    match (username, password) {
        (Some(u), p) if !u.is_empty() => Some(Credentials::new(u, p.unwrap_or_default())),
        _ => None,
    }
}

impl RawConfig {
    fn validate(mut self, file: &str, warnings: Vec<String>) -> Result<CacheConfig, String> {
        let plain = self.proxy.is_none();
        let proxy = self.proxy.take().unwrap_or_default();
        let err = |field: &str, message: String| format!("{file}: {field}: {message}");
        if let Some(net) = self.http.net.as_deref().filter(|n| *n != "tcp") {
            return Err(err("http.net", format!("{net:?}: only tcp is supported")));
        }
        let listen = match self.http.addr.as_deref() {
            None => DEFAULT_LISTEN.to_owned(),
            Some(addr) if addr.starts_with(':') => format!("0.0.0.0{addr}"),
            Some(addr) => addr.to_owned(),
        };
        let tls = match (self.http.tls.certificate, self.http.tls.key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(err(
                    "http.tls",
                    "certificate and key must be given together".into(),
                ));
            }
        };
        let client_cas = self.http.tls.clientcas;
        if !client_cas.is_empty() && tls.is_none() {
            return Err(err(
                "http.tls.clientcas",
                "needs http.tls.certificate and key".into(),
            ));
        }
        let default_revalidate = match proxy.tag_revalidate.as_deref() {
            None => Duration::ZERO,
            Some(text) => parse_duration(text).map_err(|e| err("proxy.tag_revalidate", e))?,
        };
        let htpasswd = match self.auth.htpasswd {
            None => None,
            Some(RawHtpasswd { path: None, .. }) => {
                return Err(err("auth.htpasswd.path", "is required".into()));
            }
            Some(RawHtpasswd {
                realm,
                path: Some(path),
            }) => Some((realm.unwrap_or_else(|| "regmirror".to_owned()), path)),
        };
        let proxy_reserve = match &proxy.ratelimit_reserve {
            None => RateLimitReserve::default(),
            Some(value) => {
                RateLimitReserve::parse(value).map_err(|e| err("proxy.ratelimit_reserve", e))?
            }
        };
        let proxy_requests = RequestLimits::parse(
            proxy.max_concurrent,
            proxy.max_rate,
            RequestLimits::default(),
            err,
            "proxy",
        )?;
        let mut upstreams = Vec::new();
        let mut add = |field: String, url: &str, creds: Option<Credentials>, policy: RawPolicy| {
            let at = field.trim_end_matches(".url");
            let tag_revalidate = match policy.tag_revalidate {
                None => default_revalidate,
                Some(text) => {
                    parse_duration(text).map_err(|e| err(&format!("{at}.tag_revalidate"), e))?
                }
            };
            let ratelimit_reserve = match policy.ratelimit_reserve {
                None => proxy_reserve,
                Some(value) => RateLimitReserve::parse(value)
                    .map_err(|e| err(&format!("{at}.ratelimit_reserve"), e))?,
            };
            let requests = RequestLimits::parse(
                policy.max_concurrent,
                policy.max_rate,
                proxy_requests,
                err,
                at,
            )?;
            let url = MirrorUrl::parse(url).map_err(|e| err(&field, e))?;
            let name = canonical_registry(url.authority());
            if name == LOCAL_NAMESPACE {
                return Err(err(
                    &field,
                    format!(
                        "{name:?} names the namespace of pushed repositories; give the port too"
                    ),
                ));
            }
            if upstreams.iter().any(|u: &UpstreamConfig| u.name == name) {
                return Err(err(&field, format!("upstream {name} is configured twice")));
            }
            upstreams.push(UpstreamConfig {
                name,
                url,
                credentials: creds,
                tag_revalidate,
                ratelimit_reserve,
                requests,
            });
            Ok(())
        };
        if let Some(url) = &proxy.remoteurl {
            add(
                "proxy.remoteurl".into(),
                url,
                credentials(proxy.username, proxy.password),
                RawPolicy::default(),
            )?;
        }
        for (i, remote) in proxy.remoteregistries.into_iter().enumerate() {
            add(
                format!("proxy.remoteregistries[{i}].url"),
                &remote.url,
                credentials(remote.username, remote.password),
                RawPolicy {
                    tag_revalidate: remote.tag_revalidate.as_deref(),
                    ratelimit_reserve: remote.ratelimit_reserve.as_ref(),
                    max_concurrent: remote.max_concurrent,
                    max_rate: remote.max_rate,
                },
            )?;
        }
        let local = match &self.local {
            None if plain => LocalRepositories::All,
            None => LocalRepositories::None,
            Some(Value::String(all)) if all == "all" => LocalRepositories::All,
            Some(Value::Sequence(items)) => {
                let mut prefixes = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let prefix = item
                        .get("prefix")
                        .and_then(Value::as_str)
                        .filter(|p| !p.is_empty());
                    match prefix {
                        Some(prefix) => prefixes.push(prefix.to_owned()),
                        None => {
                            return Err(err(
                                &format!("local[{i}]"),
                                "expected {prefix: \"team/\"}".into(),
                            ));
                        }
                    }
                }
                LocalRepositories::Prefixes(prefixes)
            }
            Some(_) => {
                return Err(err(
                    "local",
                    "expected `all` or a list of {prefix: ...}".into(),
                ));
            }
        };
        if upstreams.is_empty() && !proxy.on && local == LocalRepositories::None {
            return Err(err(
                "proxy",
                "no upstream: set proxy.remoteurl, proxy.remoteregistries or proxy.on: true \
                 (or leave proxy out for a plain registry)"
                    .into(),
            ));
        }
        let limits = self.limits.validate(err)?;
        let max_size = match &self.storage.maxsize {
            None => None,
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(text)) => {
                Some(parse_size(text).map_err(|e| err("storage.maxsize", e))?)
            }
            Some(_) => return Err(err("storage.maxsize", "expected a size like 50GiB".into())),
        };
        let gc_interval = match self.storage.gc_interval.as_deref() {
            None => DEFAULT_GC_INTERVAL,
            Some(text) => parse_duration(text)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    err(
                        "storage.gc_interval",
                        format!("{text:?} is not a positive duration"),
                    )
                })?,
        };
        let ttl = match proxy.ttl.as_deref() {
            None => DEFAULT_TTL,
            Some(text) => parse_duration(text).map_err(|e| err("proxy.ttl", e))?,
        };
        let host = match self.http.host.filter(|h| !h.is_empty()) {
            None => None,
            Some(host) => {
                let url = url::Url::parse(&host)
                    .map_err(|e| err("http.host", format!("{host:?}: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(err("http.host", format!("{host:?}: an http(s) URL")));
                }
                Some(host.trim_end_matches('/').to_owned())
            }
        };
        let secret = match self.http.secret.filter(|s| !s.is_empty()) {
            Some(secret) if secret.len() < MIN_SECRET_BYTES => {
                return Err(err(
                    "http.secret",
                    format!(
                        "{} bytes is too short to sign the fleet's internal route: at least \
                         {MIN_SECRET_BYTES} (a random string such as `openssl rand -hex 32` prints)",
                        secret.len()
                    ),
                ));
            }
            secret => secret.map(Secret),
        };
        let headers = self
            .http
            .headers
            .into_iter()
            .flat_map(|(name, values)| values.into_iter().map(move |v| (name.clone(), v)))
            .collect();
        let (storage, root) = match (self.storage.filesystem, self.storage.s3) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "storage",
                    "both filesystem and s3 are configured: choose one (REGISTRY_STORAGE=s3 \
                     selects s3)"
                        .into(),
                ));
            }
            (None, Some(s3)) => (
                StorageBackend::S3(s3.validate(err, self.storage.redirect.disable)?),
                self.storage
                    .spool
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT)),
            ),
            (filesystem, None) => (
                StorageBackend::Filesystem,
                filesystem
                    .and_then(|f| f.rootdirectory)
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT)),
            ),
        };
        Ok(CacheConfig {
            listen,
            root,
            storage,
            tls,
            client_cas,
            htpasswd,
            local,
            delete_enabled: self.storage.delete.enabled,
            max_size,
            gc_interval,
            headers,
            host,
            secret,
            upstreams,
            dynamic_upstreams: proxy.on,
            proxy_reserve,
            proxy_requests,
            allow_private_upstreams: proxy.allow_private_upstreams,
            ttl,
            serve_stale_on_404: proxy.serve_stale_on_404,
            log_level: self.log.level,
            limits,
            warnings,
        })
    }
}

/// Go's `time.Duration` bound: distribution refuses anything longer (about 292 years), and so does
/// regmirror, which keeps `Instant + duration` from overflowing wherever a duration is used.
const MAX_DURATION: Duration = Duration::from_nanos(i64::MAX as u64);

/// Go-style durations as distribution writes them: `168h`, `30m`, `1h30m`, `45s`, `500ms`, `1.5h`,
/// `0`. humantime does the arithmetic (checked: an overflow is an error); only Go's units are
/// accepted, so a file regmirror reads means the same to distribution (no `2d`, no `1M`, no spaces).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid =
        |why: String| format!("{text:?} is not a duration like 168h, 30m or 1h30m ({why})");
    let text = text.trim();
    if let Some(unit) = text
        .split(|c: char| c.is_ascii_digit() || c == '.')
        .find(|unit| !unit.is_empty() && !GO_DURATION_UNITS.contains(unit))
    {
        return Err(invalid(format!("unknown unit {unit:?}")));
    }
    let duration = humantime::parse_duration(text).map_err(|e| invalid(e.to_string()))?;
    if duration > MAX_DURATION {
        return Err(invalid(format!(
            "longer than Go's longest duration, {}h",
            MAX_DURATION.as_secs() / 3600
        )));
    }
    Ok(duration)
}

/// The units of Go's `time.ParseDuration`.
const GO_DURATION_UNITS: [&str; 7] = ["ns", "us", "µs", "ms", "s", "m", "h"];

/// Sizes as `storage.maxsize` writes them: `50GiB`, `500MB`, `1048576` (bytesize's grammar: units
/// are case-insensitive, `K`/`KB` are powers of ten, `Ki`/`KiB` powers of two). A size beyond
/// `u64::MAX` bytes saturates to it.
pub fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|e| format!("{text:?} is not a size like 50GiB or 500MB ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CacheConfig, String> {
        CacheConfig::parse("config.yml", Some(text), &[])
    }

    const SEED_MULTI: &str = "version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
proxy:
  remoteregistries:
  - url: https://registry-1.docker.io
    username:
    password:
  - url: https://reg.test1.com
    username: username
    password: password
  - url: http://reg.test2.com
    username: username
    password: password
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
";

    #[test]
    fn seed_remoteregistries() {
        let config = parse(SEED_MULTI).unwrap();
        assert_eq!(config.listen, "0.0.0.0:5000");
        assert_eq!(config.root, PathBuf::from("/var/lib/registry"));
        let names: Vec<_> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["docker.io", "reg.test1.com", "reg.test2.com"]);
        assert!(config.upstreams[0].credentials.is_none());
        assert_eq!(
            config.upstreams[1].credentials.as_ref().unwrap().username(),
            "username"
        );
        assert_eq!(config.upstreams[2].url.to_string(), "http://reg.test2.com");
        assert_eq!(
            config.headers,
            [("X-Content-Type-Options".into(), "nosniff".into())]
        );
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        assert_eq!(config.ttl, DEFAULT_TTL);
    }

    #[test]
    fn seed_dynamic() {
        let config = parse("version: 0.1\nproxy:\n  on: true\n").unwrap();
        assert!(config.dynamic_upstreams);
        assert!(config.upstreams.is_empty());
    }

    #[test]
    fn upstream_etiquette_keys_default_from_the_proxy_level() {
        let config = parse(
            "proxy:\n  ratelimit_reserve: 5\n  max_rate: 2.5\n  remoteregistries:\n  - url: https://a.io\n  - url: https://b.io\n    ratelimit_reserve: 25%\n    max_concurrent: 4\n    max_rate: 0.5\nlimits: {upstream_queue_timeout: 5s}\n",
        )
        .unwrap();
        let (a, b) = (&config.upstreams[0], &config.upstreams[1]);
        assert_eq!(a.ratelimit_reserve, RateLimitReserve::Pulls(5));
        assert_eq!(
            a.requests,
            RequestLimits {
                max_concurrent: None,
                max_rate: Some(2.5)
            }
        );
        assert_eq!(b.ratelimit_reserve, RateLimitReserve::Percent(25));
        assert_eq!(
            b.requests,
            RequestLimits {
                max_concurrent: Some(4),
                max_rate: Some(0.5)
            }
        );
        assert_eq!(config.proxy_reserve, RateLimitReserve::Pulls(5));
        assert_eq!(config.limits.upstream_queue_timeout, Duration::from_secs(5));
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        let defaults = parse("proxy: {remoteurl: https://a.io}\n").unwrap();
        assert_eq!(
            defaults.upstreams[0].ratelimit_reserve,
            RateLimitReserve::Percent(10)
        );
        assert_eq!(defaults.upstreams[0].requests, RequestLimits::default());
        assert_eq!(
            defaults.limits.upstream_queue_timeout,
            Duration::from_secs(30)
        );
        for (yaml, field) in [
            (
                "proxy: {remoteurl: https://a.io, ratelimit_reserve: 120%}\n",
                "proxy.ratelimit_reserve",
            ),
            (
                "proxy: {remoteregistries: [{url: https://a.io, ratelimit_reserve: lots}]}\n",
                "proxy.remoteregistries[0].ratelimit_reserve",
            ),
            (
                "proxy: {remoteregistries: [{url: https://a.io, max_concurrent: 0}]}\n",
                "proxy.remoteregistries[0].max_concurrent",
            ),
            (
                "proxy: {remoteurl: https://a.io, max_rate: 0}\n",
                "proxy.max_rate",
            ),
            (
                "proxy: {remoteurl: https://a.io}\nlimits: {upstream_queue_timeout: 0s}\n",
                "limits.upstream_queue_timeout",
            ),
        ] {
            let error = parse(yaml).unwrap_err();
            assert!(error.contains(field), "{field} in {error}");
        }
    }

    #[test]
    fn memos_take_a_size_or_0_to_turn_them_off() {
        let defaults = parse("proxy: {remoteurl: https://a.io}\n").unwrap();
        assert_eq!(defaults.limits.blob_memo, 128 << 20);
        assert_eq!(defaults.limits.manifest_memo, 64 << 20);
        let config = parse(
            "proxy: {remoteurl: https://a.io}\nlimits: {blob_memo: 0, manifest_memo: 8MiB}\n",
        )
        .unwrap();
        assert_eq!(config.limits.blob_memo, 0);
        assert_eq!(config.limits.manifest_memo, 8 << 20);
        let error =
            parse("proxy: {remoteurl: https://a.io}\nlimits: {blob_memo: lots}\n").unwrap_err();
        assert!(error.contains("limits.blob_memo"), "{error}");
        assert!(error.contains("0 turns it off"), "{error}");
    }

    #[test]
    fn referrer_and_fill_share_limits() {
        let defaults = parse("proxy: {remoteurl: https://a.io}\n").unwrap().limits;
        assert_eq!(
            (defaults.max_referrers, defaults.max_referrers_size),
            (1000, 1 << 20)
        );
        assert_eq!(
            (defaults.max_fills, defaults.max_fills_per_upstream),
            (256, 192)
        );
        let limits = |yaml: &str| {
            parse(&format!(
                "proxy: {{remoteurl: https://a.io}}\nlimits: {yaml}\n"
            ))
        };
        let derived = limits("{max_fills: 4, max_referrers: 5, max_referrers_size: 64KiB}")
            .unwrap()
            .limits;
        assert_eq!(
            derived.max_fills_per_upstream, 3,
            "three quarters of max_fills"
        );
        assert_eq!(
            (derived.max_referrers, derived.max_referrers_size),
            (5, 64 << 10)
        );
        assert_eq!(
            limits("{max_fills: 1}")
                .unwrap()
                .limits
                .max_fills_per_upstream,
            1
        );
        assert_eq!(
            limits("{max_fills: 8, max_fills_per_upstream: 8}")
                .unwrap()
                .limits
                .max_fills_per_upstream,
            8
        );
        for (yaml, expected) in [
            (
                "{max_fills: 4, max_fills_per_upstream: 5}",
                "limits.max_fills_per_upstream",
            ),
            (
                "{max_fills_per_upstream: 0}",
                "limits.max_fills_per_upstream",
            ),
            ("{max_referrers: 0}", "limits.max_referrers"),
            ("{max_referrers_size: 0}", "limits.max_referrers_size"),
        ] {
            let error = limits(yaml).unwrap_err();
            assert!(error.contains(expected), "{yaml}: {error}");
        }
    }

    #[test]
    fn a_fleet_secret_is_at_least_16_bytes() {
        let with = |secret: &str| {
            parse(&format!(
                "proxy: {{remoteurl: https://a.io}}\nhttp: {{secret: {secret}}}\n"
            ))
        };
        let error = with("x").unwrap_err();
        assert!(
            error.contains("http.secret")
                && error.contains("1 bytes is too short")
                && error.contains("at least 16"),
            "{error}"
        );
        assert!(!error.contains(": x"), "the secret is not shown: {error}");
        assert!(with("0123456789abcdef").unwrap().secret.is_some());
        assert!(with("''").unwrap().secret.is_none(), "empty: none");
    }

    #[test]
    fn the_reserve_is_reached_under_its_share_of_the_limit() {
        let ten = RateLimitReserve::Percent(10);
        assert!(!ten.reached(100, 10));
        assert!(ten.reached(100, 9));
        assert!(!ten.reached(5, 0), "10% of 5 pulls is none");
        assert!(RateLimitReserve::Pulls(3).reached(100, 2));
        assert!(!RateLimitReserve::Pulls(3).reached(100, 3));
        assert!(!RateLimitReserve::Percent(100).reached(u64::MAX, u64::MAX));
    }

    #[test]
    fn the_packaged_example_config_loads_without_warnings() {
        let config = parse(include_str!("../../contrib/examples/config.yml")).unwrap();
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        assert_eq!(config.upstreams[0].name, "docker.io");
        assert_eq!(config.root, PathBuf::from("/var/lib/regmirror"));
    }

    #[test]
    fn distribution_remoteurl() {
        let config = parse(
            "proxy:\n  remoteurl: http://127.0.0.1:5001\n  username: u\n  password: p\n  ttl: 1h30m\n",
        )
        .unwrap();
        assert_eq!(config.upstreams[0].name, "127.0.0.1:5001");
        assert_eq!(config.ttl, Duration::from_secs(5400));
    }

    #[test]
    fn unknown_and_unsupported_keys_warn() {
        let config = parse(
            "proxy: {remoteurl: https://r.io, remotURL: x}\nauth: {token: {realm: x}}\nbogus: 1\n",
        )
        .unwrap();
        assert_eq!(
            config.warnings,
            [
                "unknown key proxy.remotURL: ignored",
                "auth.token: a distribution setting regmirror does not implement; ignored",
                "unknown key bogus: ignored",
            ]
        );
    }

    #[test]
    fn wrong_type_names_the_line() {
        let e = parse("version: 0.1\nproxy:\n  on: [1]\n  remoteurl: https://r.io\n").unwrap_err();
        assert!(e.starts_with("config.yml: "), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn tag_revalidation_windows() {
        let config = parse(
            "proxy:\n  tag_revalidate: 10m\n  serve_stale_on_404: true\n  remoteregistries:\n  - url: https://a.io\n  - url: https://b.io\n    tag_revalidate: 30s\n",
        )
        .unwrap();
        assert_eq!(config.upstreams[0].tag_revalidate, Duration::from_secs(600));
        assert_eq!(config.upstreams[1].tag_revalidate, Duration::from_secs(30));
        assert!(config.serve_stale_on_404);
        assert_eq!(
            CacheConfig::embedded_default().upstreams[0].tag_revalidate,
            Duration::ZERO
        );
        assert!(
            parse("proxy: {remoteregistries: [{url: https://a.io, tag_revalidate: soon}]}\n")
                .unwrap_err()
                .contains("proxy.remoteregistries[0].tag_revalidate")
        );
    }

    #[test]
    fn local_repositories() {
        let config = parse("proxy: {remoteurl: https://r.io}\nlocal: [{prefix: myteam/}, {prefix: ci/}]\nstorage: {delete: {enabled: true}}\n").unwrap();
        assert!(config.local.contains("myteam/app") && config.local.contains("ci/x"));
        assert!(!config.local.contains("library/nginx"));
        assert!(config.delete_enabled);
        assert_eq!(config.local.describe(), "myteam/, ci/");
        let all = parse("local: all\n").unwrap();
        assert_eq!(all.local, LocalRepositories::All);
        assert!(all.upstreams.is_empty());
        assert!(
            parse("local: [{nope: x}]\n")
                .unwrap_err()
                .contains("local[0]")
        );
        assert!(parse("local: 5\n").unwrap_err().contains("local:"));
    }

    #[test]
    fn env_overrides_apply() {
        let env = vec![
            ("REGISTRY_HTTP_ADDR".to_owned(), "127.0.0.1:6000".to_owned()),
            (
                "REGISTRY_PROXY_REMOTEURL".to_owned(),
                "http://127.0.0.1:5001".to_owned(),
            ),
            (
                "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY".to_owned(),
                "/data".to_owned(),
            ),
            ("HOME".to_owned(), "/root".to_owned()),
            ("REGISTRY_STORAGE_GC_INTERVAL".to_owned(), "1s".to_owned()),
            ("REGISTRY_PROXY_TAG_REVALIDATE".to_owned(), "1m".to_owned()),
        ];
        let config = CacheConfig::parse(
            "config.yml",
            Some("proxy: {remoteurl: https://x.io}\n"),
            &env,
        )
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:6000");
        assert_eq!(config.upstreams[0].name, "127.0.0.1:5001");
        assert_eq!(config.root, PathBuf::from("/data"));
        assert_eq!(
            config.gc_interval,
            Duration::from_secs(1),
            "keys with underscores are found"
        );
        assert_eq!(config.upstreams[0].tag_revalidate, Duration::from_secs(60));
        // Without a file, overrides apply to an empty document.
        let config = CacheConfig::parse("(none)", None, &env).unwrap();
        assert_eq!(config.upstreams.len(), 1);
        assert_eq!(config.listen, "127.0.0.1:6000");
    }

    #[test]
    fn embedded_default() {
        let config = CacheConfig::parse("(none)", None, &[]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:5000");
        assert_eq!(config.upstreams[0].name, "docker.io");
        assert_eq!(
            config.upstreams[0].url.to_string(),
            "https://registry-1.docker.io"
        );
        assert_eq!(config.upstreams.len(), 7);
    }

    /// Seed 000's "cache off" file, verbatim: no proxy section, a plain registry.
    const SEED_CACHE_OFF: &str = include_str!("../../tests/fixtures/seed-000-cache-off.yml");

    #[test]
    fn without_a_proxy_section_every_repository_is_local() {
        let config = parse(SEED_CACHE_OFF).unwrap();
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        assert!(config.upstreams.is_empty() && !config.dynamic_upstreams);
        assert_eq!(config.local, LocalRepositories::All);
        assert!(!config.delete_enabled, "deletes stay off unless enabled");
        // An explicit `local` still decides.
        let some = parse("local: [{prefix: team/}]\n").unwrap();
        assert!(some.local.contains("team/x") && !some.local.contains("other/x"));
    }

    #[test]
    fn invalid_values() {
        assert!(
            parse("proxy: {remoteurl: ftp://x}\n")
                .unwrap_err()
                .contains("proxy.remoteurl")
        );
        assert!(
            parse("http: {addr: ':1'}\nproxy: {ttl: 1h}\n")
                .unwrap_err()
                .contains("no upstream")
        );
        assert!(
            parse("proxy: {remoteurl: https://x, ttl: 5 days}\n")
                .unwrap_err()
                .contains("proxy.ttl")
        );
        assert!(
            parse("http: {tls: {key: /k}}\nproxy: {on: true}\n")
                .unwrap_err()
                .contains("together")
        );
        assert!(
            parse("proxy: {remoteurl: https://registry-1.docker.io, remoteregistries: [{url: https://docker.io}]}\n")
                .unwrap_err()
                .contains("configured twice")
        );
    }

    #[test]
    fn seed_004_s3_environment_verbatim() {
        let env: Vec<(String, String)> = [
            ("REGISTRY_STORAGE", "s3"),
            ("REGISTRY_STORAGE_REDIRECT_DISABLE", "true"),
            ("REGISTRY_STORAGE_S3_BUCKET", "registry"),
            ("REGISTRY_STORAGE_S3_REGION", "minio"),
            ("REGISTRY_STORAGE_S3_REGIONENDPOINT", "http://s3:9000"),
            ("REGISTRY_STORAGE_S3_ACCESSKEY", "minioadmin"),
            ("REGISTRY_STORAGE_S3_SECRETKEY", "minioadmin"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        // With no file at all (seed 004 passes only the environment), and over a file that
        // names the filesystem driver: the environment selects s3.
        for text in [
            None,
            Some(
                "storage: {filesystem: {rootdirectory: /x}, delete: {enabled: true}}\nproxy: {on: true}\n",
            ),
        ] {
            let c = CacheConfig::parse("c.yml", text, &env).unwrap();
            let StorageBackend::S3(s3) = &c.storage else {
                panic!("s3 expected: {:?}", c.storage);
            };
            assert_eq!(s3.bucket, "registry");
            assert_eq!(s3.region, "minio");
            assert_eq!(s3.endpoint.as_deref(), Some("http://s3:9000"));
            assert!(s3.path_style, "path style with an endpoint");
            assert!(!s3.redirect, "REDIRECT_DISABLE");
            assert_eq!(s3.chunk_size, DEFAULT_S3_CHUNK_SIZE);
            let shown = format!("{s3:?}");
            assert!(
                shown.contains("<redacted>") && shown.matches("minioadmin").count() == 1,
                "the secret key is never shown: {shown}"
            );
            if text.is_some() {
                assert!(
                    c.delete_enabled,
                    "other storage keys survive the driver choice"
                );
            }
        }
    }

    #[test]
    fn s3_settings() {
        let c = parse(
            "proxy: {on: true}\nstorage: {s3: {bucket: b, regionendpoint: 127.0.0.1:9000, secure: false, rootdirectory: /cache/, chunksize: 16MiB}, spool: /var/spool/rm}",
        )
        .unwrap();
        let StorageBackend::S3(s3) = &c.storage else {
            panic!()
        };
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s3.prefix, "cache");
        assert_eq!(s3.chunk_size, 16 << 20);
        assert!(s3.redirect, "distribution redirects by default");
        assert!(s3.credentials.is_none(), "the AWS environment then");
        assert_eq!(c.root, PathBuf::from("/var/spool/rm"));
        for (text, field) in [
            ("storage: {s3: {region: x}}", "storage.s3.bucket"),
            (
                "storage: {s3: {bucket: b, chunksize: 1MiB}}",
                "storage.s3.chunksize",
            ),
            (
                "storage: {s3: {bucket: b, accesskey: a}}",
                "storage.s3.accesskey",
            ),
            (
                "storage: {s3: {bucket: b}, filesystem: {rootdirectory: /x}}",
                "storage",
            ),
        ] {
            let e = parse(&format!("proxy: {{on: true}}\n{text}")).unwrap_err();
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn durations() {
        let ok = |text: &str, expected: Duration| {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
        };
        ok("168h", DEFAULT_TTL);
        ok("0", Duration::ZERO);
        ok("1m30s", Duration::from_secs(90));
        ok("1h30m", Duration::from_secs(5400));
        ok("30m", Duration::from_secs(1800));
        ok("45s", Duration::from_secs(45));
        ok("250ms", Duration::from_millis(250));
        ok("500ms", Duration::from_millis(500));
        ok("1.5h", Duration::from_secs(5400));
        ok(" 10m ", Duration::from_secs(600));
        ok("1h0m0.5s", Duration::from_millis(3_600_500));
        ok("1500us", Duration::from_micros(1500));
        ok("2562047h", Duration::from_secs(2_562_047 * 3600));
        let huge_hours = format!("{}h", "9".repeat(400));
        for bad in [
            "10",
            "h",
            "",
            "-1h",
            "1x",
            "5 days",
            "2d",
            "1M",
            "1h 30m",
            "2562048h",
            "18446744073709551615s",
            &huge_hours,
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("50GiB").unwrap(), 50 << 30);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("6MB").unwrap(), 6_000_000);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size(" 2 KiB ").unwrap(), 2048);
        assert_eq!(parse_size("1.5GB").unwrap(), 1_500_000_000);
        assert_eq!(
            parse_size(&format!("{}GiB", "9".repeat(400))).unwrap(),
            u64::MAX
        );
        for bad in ["lots", "5 parsecs", "", "GiB", "-5MB", "1.2.3GB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn huge_values_are_errors_not_panics() {
        let huge = "9".repeat(400);
        let e = parse(&format!(
            "proxy: {{remoteurl: https://r.io, ttl: {huge}h}}\n"
        ))
        .unwrap_err();
        assert!(e.contains("proxy.ttl"), "{e}");
        let env = vec![(
            "REGISTRY_STORAGE_GC_INTERVAL".to_owned(),
            "18446744073709551615s".to_owned(),
        )];
        let e = CacheConfig::parse("config.yml", Some("proxy: {on: true}\n"), &env).unwrap_err();
        assert!(e.contains("storage.gc_interval"), "{e}");
    }
}

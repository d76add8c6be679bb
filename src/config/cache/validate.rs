//! From `raw`'s structs to a [`CacheConfig`]: one validation per section, each reading every
//! value through the [`Report`], which reports a wrong one at its key and goes on, so that every
//! problem of the file is reported at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_yaml_ng::Value;

use super::filter::{self, RepositoryFilter};
use super::raw::{RawAuth, RawConfig, RawHttp, RawLimits, RawProxy, RawRemote, Slot};
use super::report::{Report, Zero};
use super::storage::storage;
use super::units::{parse_reserve, shown};
use super::{
    CacheConfig, DEFAULT_LISTEN, DEFAULT_TTL, LOCAL_NAMESPACE, Limits, LocalRepositories,
    MIN_SECRET_BYTES, RateLimitReserve, RequestLimits, Secret, UpstreamConfig,
};
use crate::config::mirrors::{MirrorUrl, canonical_registry};
use crate::config::{CredentialHelper, Credentials};

/// The configuration, or `None` when the report holds an error.
pub(super) fn validate(raw: RawConfig, r: &mut Report<'_>) -> Option<CacheConfig> {
    let http = http(raw.http, r);
    let storage = storage(raw.storage, r);
    let plain = raw.proxy.is_none();
    let proxy = proxy(raw.proxy.unwrap_or_default(), r);
    let htpasswd = auth(raw.auth, r);
    let local = local(&raw.local, plain, r);
    let limits = limits(raw.limits, r);
    let log_level = r.string(&raw.log.level, "log.level");
    if !proxy.names_upstreams && !proxy.dynamic && local == LocalRepositories::None {
        r.error(
            "proxy",
            "no upstream: set proxy.remoteurl, proxy.remoteregistries or proxy.on: true \
             (or leave proxy out for a plain registry)",
        );
    }
    if r.has_errors() {
        return None;
    }
    Some(CacheConfig {
        listen: http.listen,
        root: storage.root,
        storage: storage.backend,
        tls: http.tls,
        client_cas: http.client_cas,
        htpasswd,
        local,
        delete_enabled: storage.delete_enabled,
        max_size: storage.max_size,
        gc_interval: storage.gc_interval,
        headers: http.headers,
        host: http.host,
        secret: http.secret,
        upstreams: proxy.upstreams,
        dynamic_upstreams: proxy.dynamic,
        proxy_reserve: proxy.policy.reserve,
        proxy_requests: proxy.policy.requests,
        allow_private_upstreams: proxy.allow_private,
        filter: proxy.filter,
        platforms: proxy.platforms,
        ttl: proxy.ttl,
        serve_stale_on_404: proxy.serve_stale,
        log_level,
        limits,
        warnings: Vec::new(),
    })
}

/// The `http` section, validated.
struct Http {
    listen: String,
    tls: Option<(PathBuf, PathBuf)>,
    client_cas: Vec<PathBuf>,
    host: Option<String>,
    secret: Option<Secret>,
    headers: Vec<(String, String)>,
}

fn http(raw: RawHttp, r: &mut Report<'_>) -> Http {
    if let Some(net) = r.string(&raw.net, "http.net").filter(|n| n != "tcp") {
        r.error("http.net", format!("{net:?}: only tcp is supported"));
    }
    let listen = match r.string(&raw.addr, "http.addr") {
        None => DEFAULT_LISTEN.to_owned(),
        Some(addr) if addr.starts_with(':') => format!("0.0.0.0{addr}"),
        Some(addr) => addr,
    };
    let certificate = r.path(&raw.tls.certificate, "http.tls.certificate");
    let key = r.path(&raw.tls.key, "http.tls.key");
    let tls = match (raw.tls.certificate.is_some(), raw.tls.key.is_some()) {
        (true, true) => certificate.zip(key),
        (false, false) => None,
        _ => {
            r.error("http.tls", "certificate and key must be given together");
            None
        }
    };
    let client_cas = r.paths(&raw.tls.clientcas, "http.tls.clientcas");
    if !client_cas.is_empty() && raw.tls.certificate.is_none() {
        r.error("http.tls.clientcas", "needs http.tls.certificate and key");
    }
    Http {
        listen,
        tls,
        client_cas,
        host: host(&raw.host, r),
        secret: secret(&raw.secret, r),
        headers: headers(&raw.headers, r),
    }
}

/// `http.host`: an http(s) URL, without its trailing slash.
fn host(slot: &Slot, r: &mut Report<'_>) -> Option<String> {
    let host = r.string(slot, "http.host").filter(|h| !h.is_empty())?;
    match url::Url::parse(&host) {
        Err(e) => r.error("http.host", format!("{host:?}: {e}")),
        Ok(url) if !matches!(url.scheme(), "http" | "https") => {
            r.error("http.host", format!("{host:?}: an http(s) URL"));
        }
        Ok(_) => return Some(host.trim_end_matches('/').to_owned()),
    }
    None
}

/// `http.secret`: never shown, at least [`MIN_SECRET_BYTES`] long.
fn secret(slot: &Slot, r: &mut Report<'_>) -> Option<Secret> {
    let secret = r.string(slot, "http.secret").filter(|s| !s.is_empty())?;
    if secret.len() < MIN_SECRET_BYTES {
        r.error(
            "http.secret",
            format!(
                "{} bytes is too short to sign the fleet's internal route: at least \
                 {MIN_SECRET_BYTES} (a random string such as `openssl rand -hex 32` prints)",
                secret.len()
            ),
        );
        return None;
    }
    Some(Secret(secret))
}

/// `http.headers`: header names to lists of values, in name order.
fn headers(slot: &Slot, r: &mut Report<'_>) -> Vec<(String, String)> {
    let Some(value) = slot else {
        return Vec::new();
    };
    let Value::Mapping(map) = value else {
        r.error(
            "http.headers",
            format!(
                "{} is not a mapping of header names to lists of values",
                shown(value)
            ),
        );
        return Vec::new();
    };
    let mut headers = BTreeMap::new();
    for (name, values) in map {
        let name = name.as_str().map_or_else(|| shown(name), str::to_owned);
        let field = format!("http.headers.{name}");
        let Value::Sequence(items) = values else {
            r.error(&field, format!("{} is not a list of values", shown(values)));
            continue;
        };
        let values: Vec<String> = items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| r.string(&Some(item.clone()), &format!("{field}[{i}]")))
            .collect();
        headers.insert(name, values);
    }
    headers
        .into_iter()
        .flat_map(|(name, values)| values.into_iter().map(move |v| (name.clone(), v)))
        .collect()
}

/// An upstream's policy keys, each defaulting to the `proxy` level's.
#[derive(Clone, Copy)]
struct Policy {
    tag_revalidate: Duration,
    reserve: RateLimitReserve,
    requests: RequestLimits,
}

/// The `proxy` section, validated.
struct Proxy {
    upstreams: Vec<UpstreamConfig>,
    /// `remoteurl` or `remoteregistries` is given (valid or not).
    names_upstreams: bool,
    dynamic: bool,
    policy: Policy,
    allow_private: bool,
    ttl: Duration,
    serve_stale: bool,
    /// `proxy.allow` and `proxy.deny`.
    filter: RepositoryFilter,
    platforms: Vec<crate::platform::Platform>,
}

fn proxy(raw: RawProxy, r: &mut Report<'_>) -> Proxy {
    let defaults = Policy {
        tag_revalidate: Duration::ZERO,
        reserve: RateLimitReserve::default(),
        requests: RequestLimits::default(),
    };
    let policy = policy(
        [
            &raw.tag_revalidate,
            &raw.ratelimit_reserve,
            &raw.max_concurrent,
            &raw.max_rate,
        ],
        defaults,
        "proxy",
        r,
    );
    let global = RepositoryFilter::over(
        &RepositoryFilter::default(),
        filter::patterns(&raw.allow, "proxy.allow", r),
        filter::patterns(&raw.deny, "proxy.deny", r),
    );
    let mut upstreams = Vec::new();
    let credentials = credentials(&raw.username, &raw.password, "proxy", r);
    let helper = super::exec::helper(raw.exec.as_ref(), &raw.username, "proxy", r);
    if helper.is_some() && raw.remoteurl.is_none() {
        super::exec::warn_unused(r);
    }
    if raw.remoteurl.is_some() {
        let upstream = Upstream {
            field: "proxy.remoteurl".into(),
            url: &raw.remoteurl,
            credentials,
            helper,
            policy,
            filter: global.clone(),
        };
        upstream.add(&mut upstreams, r);
    }
    for (i, remote) in raw.remoteregistries.iter().enumerate() {
        if let Some(remote) = remote {
            remote_registry(remote, i, (policy, &global), &mut upstreams, r);
        }
    }
    Proxy {
        upstreams,
        names_upstreams: raw.remoteurl.is_some() || !raw.remoteregistries.is_empty(),
        dynamic: r.flag(&raw.on, "proxy.on").unwrap_or(false),
        policy,
        allow_private: r
            .flag(
                &raw.allow_private_upstreams,
                "proxy.allow_private_upstreams",
            )
            .unwrap_or(false),
        ttl: r
            .duration(&raw.ttl, "proxy.ttl", Zero::Allowed)
            .unwrap_or(DEFAULT_TTL),
        serve_stale: r
            .flag(&raw.serve_stale_on_404, "proxy.serve_stale_on_404")
            .unwrap_or(false),
        filter: global,
        platforms: filter::platforms(&raw.platforms, r),
    }
}

/// An entry of `proxy.remoteregistries`; `defaults` are the `proxy` level's policy and filter.
fn remote_registry(
    remote: &RawRemote,
    index: usize,
    (defaults, global): (Policy, &RepositoryFilter),
    upstreams: &mut Vec<UpstreamConfig>,
    r: &mut Report<'_>,
) {
    let at = format!("proxy.remoteregistries[{index}]");
    let policy = policy(
        [
            &remote.tag_revalidate,
            &remote.ratelimit_reserve,
            &remote.max_concurrent,
            &remote.max_rate,
        ],
        defaults,
        &at,
        r,
    );
    let filter = RepositoryFilter::over(
        global,
        filter::patterns(&remote.allow, &format!("{at}.allow"), r),
        filter::patterns(&remote.deny, &format!("{at}.deny"), r),
    );
    let credentials = credentials(&remote.username, &remote.password, &at, r);
    let helper = super::exec::helper(remote.exec.as_ref(), &remote.username, &at, r);
    if remote.url.is_none() {
        r.error(&format!("{at}.url"), "is required");
        return;
    }
    let upstream = Upstream {
        field: format!("{at}.url"),
        url: &remote.url,
        credentials,
        helper,
        policy,
        filter,
    };
    upstream.add(upstreams, r);
}

/// `tag_revalidate`, `ratelimit_reserve`, `max_concurrent` and `max_rate` at `at`.
fn policy(slots: [&Slot; 4], defaults: Policy, at: &str, r: &mut Report<'_>) -> Policy {
    let [tag_revalidate, reserve, max_concurrent, max_rate] = slots;
    let reserve_field = format!("{at}.ratelimit_reserve");
    let reserve = match reserve.as_ref().map(parse_reserve) {
        None => defaults.reserve,
        Some(Ok(reserve)) => reserve,
        Some(Err(message)) => {
            r.error(&reserve_field, message);
            defaults.reserve
        }
    };
    let rate_field = format!("{at}.max_rate");
    let max_rate = r.number(max_rate, &rate_field).filter(|rate| {
        let valid = rate.is_finite() && *rate >= 0.001;
        if !valid {
            let message = format!("{rate} is not a rate of at least 0.001 requests per second");
            r.error(&rate_field, message);
        }
        valid
    });
    Policy {
        tag_revalidate: r
            .duration(
                tag_revalidate,
                &format!("{at}.tag_revalidate"),
                Zero::Allowed,
            )
            .unwrap_or(defaults.tag_revalidate),
        reserve,
        requests: RequestLimits {
            max_concurrent: r
                .count(max_concurrent, &format!("{at}.max_concurrent"))
                .or(defaults.requests.max_concurrent),
            max_rate: max_rate.or(defaults.requests.max_rate),
        },
    }
}

/// `username` and `password` at `at`: credentials when the username is not empty.
fn credentials(
    username: &Slot,
    password: &Slot,
    at: &str,
    r: &mut Report<'_>,
) -> Option<Credentials> {
    let username = r.string(username, &format!("{at}.username"));
    let password = r.string(password, &format!("{at}.password"));
    username
        .filter(|u| !u.is_empty())
        .map(|u| Credentials::new(u, password.unwrap_or_default()))
}

/// One upstream as written, before its URL is read.
struct Upstream<'a> {
    field: String,
    url: &'a Slot,
    credentials: Option<Credentials>,
    helper: Option<CredentialHelper>,
    policy: Policy,
    filter: RepositoryFilter,
}

impl Upstream<'_> {
    fn add(self, upstreams: &mut Vec<UpstreamConfig>, r: &mut Report<'_>) {
        let Some(text) = r.string(self.url, &self.field) else {
            return;
        };
        let url = match MirrorUrl::parse(&text) {
            Ok(url) => url,
            Err(message) => return r.error(&self.field, message),
        };
        let name = canonical_registry(url.authority());
        if name == LOCAL_NAMESPACE {
            let message =
                format!("{name:?} names the namespace of pushed repositories; give the port too");
            return r.error(&self.field, message);
        }
        if upstreams.iter().any(|u| u.name == name) {
            return r.error(&self.field, format!("upstream {name} is configured twice"));
        }
        upstreams.push(UpstreamConfig {
            name,
            url,
            credentials: self.credentials,
            credential_helper: self.helper,
            tag_revalidate: self.policy.tag_revalidate,
            ratelimit_reserve: self.policy.reserve,
            requests: self.policy.requests,
            filter: self.filter,
        });
    }
}

/// `auth.htpasswd`: (realm, file).
fn auth(raw: RawAuth, r: &mut Report<'_>) -> Option<(String, PathBuf)> {
    let htpasswd = raw.htpasswd?;
    let realm = r.string(&htpasswd.realm, "auth.htpasswd.realm");
    let path = r.required(&htpasswd.path, "auth.htpasswd.path")?;
    Some((
        realm.unwrap_or_else(|| "regmirror".to_owned()),
        PathBuf::from(path),
    ))
}

/// `local`: `all`, or a list of `{prefix: "team/"}`; without it, every repository of a plain
/// registry.
fn local(slot: &Slot, plain: bool, r: &mut Report<'_>) -> LocalRepositories {
    let items = match slot {
        None if plain => return LocalRepositories::All,
        None => return LocalRepositories::None,
        Some(Value::String(all)) if all == "all" => return LocalRepositories::All,
        Some(Value::Sequence(items)) => items,
        Some(_) => {
            r.error("local", "expected `all` or a list of {prefix: ...}");
            return LocalRepositories::None;
        }
    };
    let mut prefixes = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let prefix = item
            .get("prefix")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty());
        match prefix {
            Some(prefix) => prefixes.push(prefix.to_owned()),
            None => r.error(&format!("local[{i}]"), "expected {prefix: \"team/\"}"),
        }
    }
    LocalRepositories::Prefixes(prefixes)
}

/// The `limits` section: each limit or its default.
fn limits(raw: RawLimits, r: &mut Report<'_>) -> Limits {
    let d = Limits::default();
    let mut duration = |slot: &Slot, key: &str, default: Duration| {
        r.duration(slot, &format!("limits.{key}"), Zero::Refused)
            .unwrap_or(default)
    };
    let header_timeout = duration(&raw.header_timeout, "header_timeout", d.header_timeout);
    let tls_handshake_timeout = duration(
        &raw.tls_handshake_timeout,
        "tls_handshake_timeout",
        d.tls_handshake_timeout,
    );
    let idle_timeout = duration(&raw.idle_timeout, "idle_timeout", d.idle_timeout);
    let upload_lifetime = duration(&raw.upload_lifetime, "upload_lifetime", d.upload_lifetime);
    let upstream_queue_timeout = duration(
        &raw.upstream_queue_timeout,
        "upstream_queue_timeout",
        d.upstream_queue_timeout,
    );
    // A size must be positive, except a memo's, which 0 turns off.
    let mut size = |slot: &Slot, key: &str, default: u64, zero: Zero| {
        let expected = match zero {
            Zero::Refused => "a positive size like 4MiB",
            Zero::Allowed => "a size like 64MiB (0 turns it off)",
        };
        let accept = |n: u64| n > 0 || zero == Zero::Allowed;
        r.size(slot, &format!("limits.{key}"), expected, accept)
            .unwrap_or(default)
    };
    let per_second = raw.fill_min_rate.map(|value| match value {
        Value::String(text) => Value::String(text.trim_end_matches("/s").to_owned()),
        other => other,
    });
    let max_manifest_size = size(
        &raw.max_manifest_size,
        "max_manifest_size",
        d.max_manifest_size,
        Zero::Refused,
    );
    let max_blob_size = size(
        &raw.max_blob_size,
        "max_blob_size",
        d.max_blob_size,
        Zero::Refused,
    );
    let fill_min_rate = size(&per_second, "fill_min_rate", d.fill_min_rate, Zero::Refused);
    let manifest_memo = size(
        &raw.manifest_memo,
        "manifest_memo",
        d.manifest_memo,
        Zero::Allowed,
    );
    let blob_memo = size(&raw.blob_memo, "blob_memo", d.blob_memo, Zero::Allowed);
    let buffer_memory = size(
        &raw.buffer_memory,
        "buffer_memory",
        d.buffer_memory,
        Zero::Refused,
    );
    let max_referrers_size = size(
        &raw.max_referrers_size,
        "max_referrers_size",
        d.max_referrers_size,
        Zero::Refused,
    );
    let max_fills = r
        .count(&raw.max_fills, "limits.max_fills")
        .unwrap_or(d.max_fills);
    Limits {
        header_timeout,
        tls_handshake_timeout,
        idle_timeout,
        max_connections: r.count(&raw.max_connections, "limits.max_connections"),
        max_manifest_size,
        max_blob_size,
        fill_min_rate,
        max_fills,
        max_fills_per_upstream: fills_per_upstream(&raw.max_fills_per_upstream, max_fills, r),
        upload_lifetime,
        max_uploads: r
            .count(&raw.max_uploads, "limits.max_uploads")
            .unwrap_or(d.max_uploads),
        upstream_queue_timeout,
        manifest_memo,
        blob_memo,
        buffer_memory,
        max_referrers: r
            .count(&raw.max_referrers, "limits.max_referrers")
            .unwrap_or(d.max_referrers),
        max_referrers_size,
    }
}

/// `limits.max_fills_per_upstream`: at most `max_fills`; by default three quarters of it, at
/// least 1.
fn fills_per_upstream(slot: &Slot, max_fills: usize, r: &mut Report<'_>) -> usize {
    const FIELD: &str = "limits.max_fills_per_upstream";
    match r.count(slot, FIELD) {
        Some(n) if n > max_fills => {
            r.error(
                FIELD,
                format!("{n} is more than limits.max_fills ({max_fills})"),
            );
            n
        }
        Some(n) => n,
        None => (max_fills * 3 / 4).max(1),
    }
}

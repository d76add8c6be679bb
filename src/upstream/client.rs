//! The upstream HTTP client and the endpoint walker.
//!
//! One pair of pooled `reqwest` clients (certificate-verifying and not) serves every upstream.
//! [`UpstreamClient::send`] adds the endpoint's own credentials (Bearer token from the cache or
//! fetched on a 401 challenge; Basic where the registry asks for it; configured, or a credential
//! helper's answer, asked for only then and dropped when refused) and the `?ns=` / `domain`
//! hints for mirrors. [`UpstreamClient::walk`] tries endpoints in order: a mirror's transport
//! error or HTTP error moves on to the next endpoint; the origin's answer is final.
//! [`UpstreamClient::walk_mirrors`] walks mirrors without their origin (a `mirrors-only` rule),
//! where no answer is final: when every mirror fails, the walk fails.
//! Redirects (to blob storage) are followed by reqwest, which drops `Authorization` when the
//! redirect leaves the host; for targets a client named, every hop must pass the address guard.
//! Bodies the client reads whole (token answers, and manifests and tag lists for the cache) are
//! read through [`read_limited`], never beyond their limit.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt as _;
use reqwest::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Client, Method, Response, StatusCode};

use super::auth::{Challenge, TokenCache};
use super::breaker::{Admission, Breakers, Health, Probe, Resting, Trip};
use super::certs::{HostRoots, TrustError};
use super::error::{UpstreamError, Walked};
use super::guard::{AddressPolicy, AddressRefused, GuardedResolver, HostOverrides};
use super::ratelimit::{self, Budget, Budgets};
use super::target::{Target, UpstreamRequest};
use crate::config::Credentials;
use crate::reference::split_host_port;
use crate::registry::whole_seconds;
use crate::resolve::TlsMode;
use crate::sync::lock;

/// What a request carries in `Authorization`.
enum Authorization {
    /// The full header value, `Bearer <token>`.
    Bearer(String),
    Basic(Credentials),
    /// The client's own header, passed through.
    Relayed(HeaderValue),
}

/// Shared by every request to every upstream.
pub struct UpstreamClient {
    verify: Client,
    skip_verify: Client,
    /// The same, with the address guard in the resolver, for untrusted targets.
    guarded_verify: Client,
    guarded_skip_verify: Client,
    tokens: TokenCache,
    basic_hosts: Mutex<HashSet<String>>,
    policy: Arc<AddressPolicy>,
    breakers: Breakers,
    budgets: Budgets,
    first_byte_timeout: Duration,
}

impl fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamClient").finish_non_exhaustive()
    }
}

/// Timeouts for each endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP (and TLS) connection set-up.
    pub connect: Duration,
    /// From sending the request to the response headers.
    pub first_byte: Duration,
    /// Longest silence between body bytes.
    pub read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_secs(10),
            read: Duration::from_secs(30),
        }
    }
}

/// Redirects followed at most for one request.
const MAX_REDIRECTS: usize = 10;
/// The largest token service answer read.
const MAX_TOKEN_ANSWER: usize = 1 << 20;

/// Why a body read whole was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    Broken(String),
}

/// Reads a response body whole, refusing (without reading further) once it passes `limit` bytes:
/// a Content-Length over the limit is refused before the first byte.
pub async fn read_limited(response: Response, limit: usize) -> Result<Bytes, BodyError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Broken(describe(&e)))?;
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// Why the shared client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The certificate trust (the system's roots, certs.d files).
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("cannot build the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

/// Installs the process-wide rustls crypto provider (ring) once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl UpstreamClient {
    /// `host_roots`: per-host CAs (certs.d) trusted in addition to the system's roots.
    pub fn new(
        overrides: HostOverrides,
        policy: AddressPolicy,
        timeouts: Timeouts,
        host_roots: &HostRoots,
    ) -> Result<Self, ClientError> {
        install_crypto_provider();
        let policy = Arc::new(policy);
        let resolver = GuardedResolver {
            overrides: Arc::new(overrides),
            policy: policy.clone(),
        };
        let open = GuardedResolver {
            overrides: resolver.overrides.clone(),
            policy: Arc::new(AddressPolicy::new(true)),
        };
        let build =
            |skip_verify: bool, resolver: &GuardedResolver| -> Result<Client, ClientError> {
                // Every redirect of a guarded client passes the same address policy as the first
                // request: its resolver checks names, this checks IP literals.
                let hops = resolver.policy.clone();
                let redirects = reqwest::redirect::Policy::custom(move |attempt| {
                    if attempt.previous().len() >= MAX_REDIRECTS {
                        return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
                    }
                    match hops.check_url(attempt.url()) {
                        Ok(()) => attempt.follow(),
                        Err(refused) => attempt.error(refused),
                    }
                });
                let mut builder = Client::builder()
                    .redirect(redirects)
                    .connect_timeout(timeouts.connect)
                    .read_timeout(timeouts.read)
                    .pool_idle_timeout(Duration::from_secs(90))
                    .user_agent(concat!("regmirror/", env!("CARGO_PKG_VERSION")))
                    .dns_resolver(resolver.clone());
                builder = if skip_verify {
                    builder.danger_accept_invalid_certs(true)
                } else if !host_roots.is_empty() {
                    builder.tls_backend_preconfigured(host_roots.client_config()?)
                } else {
                    builder
                };
                builder.build().map_err(ClientError::Build)
            };
        Ok(UpstreamClient {
            verify: build(false, &open)?,
            skip_verify: build(true, &open)?,
            guarded_verify: build(false, &resolver)?,
            guarded_skip_verify: build(true, &resolver)?,
            tokens: TokenCache::default(),
            basic_hosts: Mutex::new(HashSet::new()),
            policy,
            breakers: Breakers::default(),
            budgets: Budgets::default(),
            first_byte_timeout: timeouts.first_byte,
        })
    }

    fn client(&self, tls: TlsMode, trusted: bool) -> &Client {
        match (tls, trusted) {
            (TlsMode::SkipVerify, true) => &self.skip_verify,
            (TlsMode::None | TlsMode::Verify, true) => &self.verify,
            (TlsMode::SkipVerify, false) => &self.guarded_skip_verify,
            (TlsMode::None | TlsMode::Verify, false) => &self.guarded_verify,
        }
    }

    /// Sends `request` to one endpoint, answering one auth challenge if needed.
    pub async fn send(
        &self,
        target: &Target,
        request: &UpstreamRequest,
    ) -> Result<Response, UpstreamError> {
        self.send_with_body(target, request, None).await
    }

    /// [`send`](Self::send) with a request body. A request with a body is sent once: its 401
    /// answer goes back as it is.
    pub async fn send_with_body(
        &self,
        target: &Target,
        request: &UpstreamRequest,
        mut body: Option<reqwest::Body>,
    ) -> Result<Response, UpstreamError> {
        self.check_ip_literal(target)?;
        let url = endpoint_url(target, request)?;
        let scope = request.scope.as_deref().unwrap_or("");
        let mut authorization = match &target.client_authorization {
            Some(value) => Some(Authorization::Relayed(value.clone())),
            None => self.cached_authorization(target, scope).await?,
        };
        for attempt in 0..2 {
            let mut builder = self
                .client(target.tls, target.trusted)
                .request(request.method.clone(), url.clone())
                .headers(request.headers.clone());
            if let Some(ns) = &target.ns {
                builder = builder.header("domain", format!("https://{ns}"));
            }
            if let Some(body) = body.take() {
                builder = builder.body(body);
            }
            builder = match &authorization {
                Some(Authorization::Bearer(token)) => builder.header(AUTHORIZATION, token),
                Some(Authorization::Basic(credentials)) => {
                    builder.basic_auth(credentials.username(), Some(credentials.password()))
                }
                Some(Authorization::Relayed(value)) => builder.header(AUTHORIZATION, value.clone()),
                None => builder,
            };
            let response = match tokio::time::timeout(self.first_byte_timeout, builder.send()).await
            {
                Ok(result) => result.map_err(|e| {
                    let summary = format!("{}: {}", target.base, describe(&e));
                    if refused_by_policy(&e) {
                        UpstreamError::denied(summary)
                    } else {
                        UpstreamError::new(summary, e.is_connect() || e.is_timeout())
                    }
                })?,
                Err(_) => {
                    return Err(UpstreamError::new(
                        format!(
                            "{}: no response within {:?}",
                            target.base, self.first_byte_timeout
                        ),
                        true,
                    ));
                }
            };
            self.budgets
                .observe(&target.base, response.headers(), Instant::now());
            let final_answer = response.status() != StatusCode::UNAUTHORIZED
                || attempt == 1
                || !target.answer_challenges
                || request.method != Method::GET && request.method != Method::HEAD;
            if final_answer {
                if response.status() == StatusCode::UNAUTHORIZED {
                    if let (Some(helper), Some(Authorization::Basic(used))) =
                        (&target.helper, &authorization)
                    {
                        helper.refused(used).await;
                    }
                }
                return Ok(response);
            }
            let challenge = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(Challenge::parse);
            authorization = match challenge {
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope: challenge_scope,
                }) => {
                    let scope = challenge_scope.unwrap_or_else(|| scope.to_owned());
                    Some(Authorization::Bearer(
                        self.fetch_token(target, &realm, service.as_deref(), &scope)
                            .await?,
                    ))
                }
                Some(Challenge::Basic) if target.has_credentials() => {
                    // A config.json helper may hold nothing for the host: the 401 stands.
                    let Some(credentials) = credentials(target).await? else {
                        return Ok(response);
                    };
                    lock(&self.basic_hosts).insert(target.authority.to_string());
                    Some(Authorization::Basic(credentials))
                }
                _ => return Ok(response),
            };
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Tries `targets` in order. Returns the index of the endpoint that answered and its response.
    /// A mirror's error or HTTP status >= 400 moves on; the last endpoint's response is returned
    /// whatever its status. Endpoints whose breaker is open are skipped; the last one too unless
    /// it rests after a 5xx answer (it answers, so it is asked): when every endpoint rests, the
    /// error comes at once, saying when they take requests again. Transport errors, timeouts
    /// and 5xx answers open an endpoint's breaker; a 429 closes the endpoint to requests until
    /// its `Retry-After`.
    pub async fn walk(
        &self,
        targets: &[Target],
        request: &UpstreamRequest,
    ) -> Result<(usize, Response), UpstreamError> {
        self.walk_until(targets, request, true).await
    }

    /// [`walk`](Self::walk) for mirrors without their origin (a `mirrors-only` rule): no answer is
    /// final, so when the last mirror answers HTTP >= 400 too, the walk fails naming every
    /// mirror's failure (`not_found` when each answered 404), and no mirror's error answer (a
    /// 401 challenge naming its own token service) ever reaches the caller as it is.
    pub async fn walk_mirrors(
        &self,
        targets: &[Target],
        request: &UpstreamRequest,
    ) -> Result<(usize, Response), UpstreamError> {
        self.walk_until(targets, request, false).await
    }

    async fn walk_until(
        &self,
        targets: &[Target],
        request: &UpstreamRequest,
        last_is_final: bool,
    ) -> Result<(usize, Response), UpstreamError> {
        let mut failures = Vec::new();
        let mut unreachable = true;
        let mut not_found = true;
        let mut denied = false;
        // Each resting endpoint and the wait its failure line states (whole seconds), so that
        // `Retry-After` is the number the message says.
        let mut resting: Vec<(Resting, Option<u64>)> = Vec::new();
        for (index, target) in targets.iter().enumerate() {
            let last = index + 1 == targets.len();
            let now = Instant::now();
            let admission = self.breakers.admit(&target.base, now);
            if let Admission::Skipped(rest) = admission {
                if !last || rest.trip != Trip::ServerError {
                    let wait = rest
                        .until
                        .map(|until| whole_seconds(until.saturating_duration_since(now)));
                    failures.push(format!(
                        "{}: {}",
                        target.base,
                        describe_rest(rest.trip, wait)
                    ));
                    resting.push((rest, wait));
                    not_found = false;
                    denied = false;
                    continue;
                }
            }
            // Held across the request: if this future is dropped mid-way, the probe is given
            // back instead of leaving the endpoint half-open forever.
            let probe =
                (admission == Admission::Probe).then(|| Probe::new(&self.breakers, &target.base));
            let result = self.send(target, request).await;
            self.record(target, &result);
            denied = matches!(&result, Err(e) if e.is_denied());
            if let Some(probe) = probe.filter(|_| !denied) {
                probe.resolved();
            }
            match result {
                Ok(response)
                    if (last && last_is_final)
                        || !target.is_mirror()
                        || response.status().as_u16() < 400 =>
                {
                    return Ok((index, response));
                }
                Ok(response) => {
                    unreachable = false;
                    not_found &= response.status() == StatusCode::NOT_FOUND;
                    tracing::debug!(mirror = %target.base, status = %response.status(), path = %request.path, "mirror failed, trying the next endpoint");
                    failures.push(format!("{}: HTTP {}", target.base, response.status()));
                }
                Err(e) => {
                    unreachable &= e.is_unreachable();
                    not_found = false;
                    tracing::debug!(endpoint = %target.base, error = %e, path = %request.path, "endpoint failed");
                    failures.push(e.summary().to_owned());
                }
            }
        }
        let all_resting = !targets.is_empty() && resting.len() == targets.len();
        Err(UpstreamError::walked(Walked {
            summary: if failures.is_empty() {
                "no endpoint to try".to_owned()
            } else {
                failures.join("; ")
            },
            unreachable,
            // A probe in flight (no wait stated) is worth asking again in a second.
            retry_after: all_resting.then(|| {
                let seconds = resting.iter().map(|(_, wait)| wait.unwrap_or(1)).min();
                Duration::from_secs(seconds.unwrap_or(1).max(1))
            }),
            throttled: resting
                .last()
                .is_some_and(|(r, _)| r.trip == Trip::Throttled)
                && all_resting,
            not_found: not_found && !failures.is_empty(),
            denied,
        }))
    }

    /// What an endpoint's answer (or failure) does to its breaker: a 429 rests it until its
    /// `Retry-After`, a transport error, timeout or 5xx opens it, any other answer closes it.
    fn record(&self, target: &Target, result: &Result<Response, UpstreamError>) {
        let now = Instant::now();
        match result {
            Ok(response) if response.status() == StatusCode::TOO_MANY_REQUESTS => {
                let wait = ratelimit::retry_after(response.headers(), SystemTime::now())
                    .unwrap_or(ratelimit::DEFAULT_RETRY_AFTER);
                tracing::warn!(endpoint = %target.base, retry_after = ?wait, "upstream answered 429; resting it");
                self.breakers.throttled(&target.base, now, wait);
            }
            Ok(response) if response.status().is_server_error() => {
                self.breakers.failure(&target.base, now, Trip::ServerError);
            }
            Ok(_) => self.breakers.success(&target.base),
            // A refusal by the address policy says nothing of the endpoint's health: its
            // breaker is left as it was (a probe is handed back).
            Err(e) if e.is_denied() => {}
            Err(e) if e.is_unreachable() => {
                self.breakers.failure(&target.base, now, Trip::Unreachable)
            }
            Err(_) => self.breakers.failure(&target.base, now, Trip::ServerError),
        }
    }

    /// What the walk does with `endpoint` now (its breaker): healthy, resting or probing.
    pub fn health(&self, endpoint: &str) -> Health {
        self.breakers.health(endpoint, Instant::now())
    }

    /// The pull budget `endpoint` stated in its last answer, while it is current.
    pub fn budget(&self, endpoint: &str) -> Option<Budget> {
        self.budgets.get(endpoint, Instant::now())
    }

    async fn cached_authorization(
        &self,
        target: &Target,
        scope: &str,
    ) -> Result<Option<Authorization>, UpstreamError> {
        if let Some(token) = self.tokens.get(&target.authority, scope) {
            return Ok(Some(Authorization::Bearer(format!("Bearer {token}"))));
        }
        let uses_basic = lock(&self.basic_hosts).contains(&*target.authority);
        if uses_basic {
            Ok(credentials(target).await?.map(Authorization::Basic))
        } else {
            Ok(None)
        }
    }

    async fn fetch_token(
        &self,
        target: &Target,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, UpstreamError> {
        let fail = |message: String| {
            UpstreamError::new(
                format!("{}: token service {realm}: {message}", target.base),
                false,
            )
        };
        let mut url = url::Url::parse(realm).map_err(|e| fail(e.to_string()))?;
        if !target.trusted {
            // The realm is the target's word, not the operator's: held to the same rule.
            self.policy.check_url(&url).map_err(|refused| {
                UpstreamError::denied(format!("{}: token service: {refused}", target.base))
            })?;
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            if !scope.is_empty() {
                query.append_pair("scope", scope);
            }
        }
        let tls = if url.scheme() == "https" && target.tls == TlsMode::SkipVerify {
            TlsMode::SkipVerify
        } else {
            TlsMode::Verify
        };
        let mut builder = self.client(tls, target.trusted).get(url);
        let credentials = credentials(target).await?;
        if let Some(credentials) = &credentials {
            builder = builder.basic_auth(credentials.username(), Some(credentials.password()));
        }
        let response = builder.send().await.map_err(|e| fail(describe(&e)))?;
        if !response.status().is_success() {
            if response.status() == StatusCode::UNAUTHORIZED {
                if let (Some(helper), Some(used)) = (&target.helper, &credentials) {
                    helper.refused(used).await;
                }
            }
            return Err(fail(format!("HTTP {}", response.status())));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let bytes = read_limited(response, MAX_TOKEN_ANSWER)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let body: TokenResponse =
            serde_json::from_slice(&bytes).map_err(|e| fail(format!("invalid answer: {e}")))?;
        let token = body
            .token
            .or(body.access_token)
            .ok_or_else(|| fail("no token in the answer".into()))?;
        let lifetime = Duration::from_secs(body.expires_in.unwrap_or(60).max(60));
        self.tokens
            .put(&target.authority, scope, token.clone(), lifetime);
        Ok(format!("Bearer {token}"))
    }

    /// reqwest's resolver guards names; IP literals never reach it, so check them here.
    fn check_ip_literal(&self, target: &Target) -> Result<(), UpstreamError> {
        if target.trusted {
            return Ok(());
        }
        let (host, _) = split_host_port(&target.authority);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse() {
            self.policy
                .check(host, ip)
                .map_err(|refused| UpstreamError::denied(refused.to_string()))?;
        }
        Ok(())
    }
}

/// The endpoint's own credentials: its helper's answer when it has one (a failed run is the
/// endpoint's failure, naming the helper, never its output), else the configured ones.
async fn credentials(target: &Target) -> Result<Option<Credentials>, UpstreamError> {
    match &target.helper {
        Some(helper) => helper
            .get()
            .await
            .map_err(|e| UpstreamError::new(format!("{}: {e}", target.base), false)),
        None => Ok(target.credentials.clone()),
    }
}

/// The URL of `request` on `target`, built with the `url` crate from parts: the base's scheme,
/// host, port and API root, the request's path (its own `?` or `#` cannot start a query), its
/// query, and `ns` form-encoded. Refused unless the base is a plain `scheme://authority[/root]`
/// of exactly the target's authority, so no text in a base or an authority can send a request
/// to another host, port or path.
fn endpoint_url(target: &Target, request: &UpstreamRequest) -> Result<url::Url, UpstreamError> {
    let refused = |why: &str| {
        UpstreamError::new(
            format!("{}: not an endpoint URL ({why})", target.base),
            false,
        )
    };
    let mut url = url::Url::parse(&target.base).map_err(|e| refused(&e.to_string()))?;
    let authority = url::Url::parse(&format!("{}://{}", url.scheme(), target.authority))
        .map_err(|_| refused("its authority is not host[:port]"))?;
    let plain = |u: &url::Url| {
        u.username().is_empty()
            && u.password().is_none()
            && u.query().is_none()
            && u.fragment().is_none()
    };
    if !plain(&url) || !plain(&authority) || authority.path() != "/" {
        return Err(refused("user info, a query or a path beyond host[:port]"));
    }
    if url.host() != authority.host()
        || url.port_or_known_default() != authority.port_or_known_default()
    {
        return Err(refused(&format!("it is not {}", target.authority)));
    }
    let path = format!("{}{}", url.path().trim_end_matches('/'), request.path);
    url.set_path(&path);
    url.set_query(request.query.as_deref());
    if let Some(ns) = &target.ns {
        url.query_pairs_mut().append_pair("ns", ns);
    }
    Ok(url)
}

/// Why an endpoint was skipped, for the error a client reads: `wait` is the rest left in whole
/// seconds (`None` while a probe is in flight).
fn describe_rest(trip: Trip, wait: Option<u64>) -> String {
    let why = trip.as_str();
    match wait {
        Some(seconds) => format!("{why} recently, not asked again for {seconds} s"),
        None => format!("{why} recently, being probed now"),
    }
}

/// Whether the address policy refused the request (in the resolver, or at a redirect): an
/// [`AddressRefused`] somewhere in the chain of causes.
fn refused_by_policy(error: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause.is::<AddressRefused>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The chain of causes of a reqwest error, without any URL credentials (there are none: mirror
/// URLs are validated to carry no user info).
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_of(
        base: &str,
        authority: &str,
        ns: Option<&str>,
        path: &str,
        query: Option<&str>,
    ) -> Result<String, String> {
        let mut target = Target::pass_through(base, authority);
        target.ns = ns.map(Arc::from);
        let mut request = UpstreamRequest::new(Method::GET, path.to_owned());
        request.query = query.map(str::to_owned);
        endpoint_url(&target, &request)
            .map(|url| url.to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn endpoint_urls_are_built_from_parts() {
        let path = "/v2/x/manifests/t";
        for (base, authority, ns, query, expected) in [
            (
                "https://reg.test",
                "reg.test",
                None,
                None,
                "https://reg.test/v2/x/manifests/t",
            ),
            (
                "https://reg.test:443",
                "reg.test",
                None,
                None,
                "https://reg.test/v2/x/manifests/t",
            ),
            (
                "http://m:5000/root",
                "m:5000",
                Some("ghcr.io"),
                Some("n=1"),
                "http://m:5000/root/v2/x/manifests/t?n=1&ns=ghcr.io",
            ),
            (
                "http://m",
                "m",
                Some("127.0.0.1:5001"),
                None,
                "http://m/v2/x/manifests/t?ns=127.0.0.1%3A5001",
            ),
            (
                "http://m",
                "m",
                Some("a&b=c"),
                None,
                "http://m/v2/x/manifests/t?ns=a%26b%3Dc",
            ),
            (
                "https://Reg.Test:443",
                "Reg.Test:443",
                None,
                None,
                "https://reg.test/v2/x/manifests/t",
            ),
            (
                "http://[::1]:5000",
                "[::1]:5000",
                None,
                None,
                "http://[::1]:5000/v2/x/manifests/t",
            ),
        ] {
            assert_eq!(
                url_of(base, authority, ns, path, query).as_deref(),
                Ok(expected),
                "{base}"
            );
        }
        // A path's own `?` or `#` stays in the path.
        assert_eq!(
            url_of("http://m", "m", None, "/v2/x?y#z", None).as_deref(),
            Ok("http://m/v2/x%3Fy%23z")
        );
    }

    #[test]
    fn an_authority_or_base_with_more_than_host_and_port_sends_nothing() {
        for (base, authority) in [
            // the shim's raw `?ns=` as it was turned into an origin
            (
                "https://127.0.0.1:8080/admin/wipe?all=1&",
                "127.0.0.1:8080/admin/wipe?all=1&",
            ),
            ("https://127.0.0.1:8080", "127.0.0.1:8080/admin"),
            ("https://user@reg.test", "user@reg.test"),
            ("https://reg.test#x", "reg.test#x"),
            ("https://reg.test", "other.test"),
            ("https://reg.test", "reg.test:8443"),
            ("https://reg.test:8443", "reg.test"),
        ] {
            let error = url_of(base, authority, None, "/v2/", None).expect_err(authority);
            assert!(
                error.contains("not an endpoint URL"),
                "{authority}: {error}"
            );
        }
    }
}

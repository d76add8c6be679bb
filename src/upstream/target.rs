//! Where a registry request goes and what it is: a [`Target`] (an endpoint's base URL,
//! authority, TLS mode, credentials, the `ns` a mirror gets, and whether the operator configured
//! it) and an [`UpstreamRequest`] (method, path, query, headers and token scope, independent of
//! the endpoint). Plain data: the client in `client.rs` sends one to the other.

use std::fmt;
use std::sync::Arc;

use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderValue};

use super::helper::HelperCredentials;
use crate::config::{Credentials, MirrorUrl};
use crate::resolve::{Endpoint, Role, TlsMode};

/// One endpoint to send registry requests to.
#[derive(Clone)]
pub struct Target {
    /// `scheme://host[:port][/api-root]`
    pub base: Arc<str>,
    /// `host[:port]`
    pub authority: Arc<str>,
    pub tls: TlsMode,
    /// Credentials for this endpoint only.
    pub credentials: Option<Credentials>,
    /// A credential helper for this endpoint only; when set, its answer replaces
    /// `credentials`.
    pub helper: Option<Arc<HelperCredentials>>,
    /// For mirrors: the origin registry, sent as `?ns=` and the `domain` header.
    pub ns: Option<Arc<str>>,
    /// A client's own `Authorization`, relayed as is (the shim's origin requests). When set, or
    /// when `answer_challenges` is false, 401 answers go back to the client untouched.
    pub client_authorization: Option<HeaderValue>,
    pub answer_challenges: bool,
    /// Configured by the operator: may resolve to (and redirect to) private addresses. Targets a
    /// client named (dynamic upstreams) are not, and neither are their redirects.
    pub trusted: bool,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("base", &self.base)
            .field("tls", &self.tls)
            .field("credentials", &self.credentials)
            .field("helper", &self.helper)
            .field("ns", &self.ns)
            .field(
                "client_authorization",
                &self.client_authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Target {
    /// A configured upstream registry itself.
    pub fn origin(url: &MirrorUrl, credentials: Option<Credentials>, tls: TlsMode) -> Self {
        Target {
            base: Arc::from(url.to_string()),
            authority: Arc::from(url.authority()),
            tls,
            credentials,
            helper: None,
            ns: None,
            client_authorization: None,
            answer_challenges: true,
            trusted: true,
        }
    }

    /// An endpoint that gets requests exactly as the client sent them: `http://` or `https://`
    /// (certificates verified) `authority`.
    pub fn pass_through(base: &str, authority: &str) -> Self {
        Target {
            base: Arc::from(base),
            authority: Arc::from(authority),
            tls: if base.starts_with("https://") {
                TlsMode::Verify
            } else {
                TlsMode::None
            },
            credentials: None,
            helper: None,
            ns: None,
            client_authorization: None,
            answer_challenges: false,
            trusted: true,
        }
    }

    /// A target a client named: kept off private addresses, redirects included.
    pub fn untrusted(mut self) -> Self {
        self.trusted = false;
        self
    }

    /// Takes this endpoint's credentials from `helper` (shared by every target of the endpoint,
    /// so that they share its runs).
    pub fn with_helper(mut self, helper: Option<Arc<HelperCredentials>>) -> Self {
        self.helper = helper;
        self
    }

    /// Whether requests to this endpoint may carry credentials of its own.
    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some() || self.helper.is_some()
    }

    /// Relays the client's `Authorization` to this endpoint and leaves challenges to the client.
    pub fn with_client_authorization(mut self, authorization: Option<HeaderValue>) -> Self {
        self.client_authorization = authorization;
        self.answer_challenges = false;
        self
    }

    /// A resolver endpoint. Mirrors get `mirror_credentials`, the origin `origin_credentials`.
    pub fn from_endpoint(endpoint: &Endpoint, credentials: Option<Credentials>) -> Self {
        Target {
            base: endpoint.url.clone(),
            authority: endpoint.authority.clone(),
            tls: endpoint.tls,
            credentials,
            helper: None,
            ns: match endpoint.role {
                Role::Mirror => endpoint.ns.clone(),
                Role::Origin => None,
            },
            client_authorization: None,
            answer_challenges: true,
            trusted: true,
        }
    }

    pub fn is_mirror(&self) -> bool {
        self.ns.is_some()
    }
}

/// One registry API request, independent of the endpoint it goes to.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub method: Method,
    /// `/v2/<repository>/…`
    pub path: String,
    /// Extra query parameters (without `ns`), e.g. `n=100&last=x`.
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The token scope, e.g. `repository:library/nginx:pull`.
    pub scope: Option<String>,
}

impl UpstreamRequest {
    pub fn new(method: Method, path: String) -> Self {
        UpstreamRequest {
            method,
            path,
            query: None,
            headers: HeaderMap::new(),
            scope: None,
        }
    }

    /// A pull-scoped request on `repository`.
    pub fn pull(method: Method, repository: &str, path: String) -> Self {
        let mut request = Self::new(method, path);
        request.scope = Some(format!("repository:{repository}:pull"));
        request
    }

    pub fn header(mut self, name: reqwest::header::HeaderName, value: &str) -> Self {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.insert(name, value);
        }
        self
    }
}

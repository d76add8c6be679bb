//! `regmirror resolve --probe`: ask the endpoints in order for the image's manifest (HEAD), as a
//! pull walks them, and report which one serves it, with latency, and why the ones before it
//! would be skipped; the endpoints after it are not reached, so they are not asked. TLS is
//! verified with the system's roots plus `--certs-dir`'s per-host CAs, as the shim does.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header::ACCEPT;
use serde::Serialize;

use crate::reference::ImageRef;
use crate::registry::MANIFEST_ACCEPT;
use crate::resolve::{Endpoints, Role};
use crate::upstream::{
    AddressPolicy, HostOverrides, HostRoots, Target, Timeouts, UpstreamClient, UpstreamRequest,
};

/// What one endpoint answered (nothing when it was not reached).
#[derive(Debug, Serialize)]
pub struct Probe {
    pub url: String,
    pub status: Option<u16>,
    pub ms: Option<f64>,
    pub error: Option<String>,
    /// "serves", "answers HTTP …: the pull fails" (the origin), "skipped: …" or "not reached".
    pub verdict: String,
}

/// Whether an endpoint serves the image (answered 2xx): a pull would succeed.
pub fn served(probes: &[Probe]) -> bool {
    probes.iter().any(|p| p.verdict == "serves")
}

pub fn run(
    image: &ImageRef,
    endpoints: &Endpoints,
    overrides: HostOverrides,
    roots: &HostRoots,
    timeout: Duration,
) -> anyhow::Result<Vec<Probe>> {
    let timeouts = Timeouts {
        connect: timeout,
        first_byte: timeout,
        read: timeout,
    };
    let client = UpstreamClient::new(overrides, AddressPolicy::new(true), timeouts, roots)
        .map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let path = format!(
        "/v2/{}/manifests/{}",
        image.repository(),
        image.manifest_reference()
    );
    let mut probes = Vec::new();
    // An endpoint gave the pull its final answer: the rest are not reached.
    let mut answered = false;
    for endpoint in &endpoints.endpoints {
        if answered {
            probes.push(Probe {
                url: endpoint.url.to_string(),
                status: None,
                ms: None,
                error: None,
                verdict: "not reached".to_owned(),
            });
            continue;
        }
        let target = Target::from_endpoint(endpoint, None);
        let request = UpstreamRequest::pull(Method::HEAD, image.repository(), path.clone())
            .header(ACCEPT, MANIFEST_ACCEPT);
        let started = Instant::now();
        let result = runtime.block_on(client.send(&target, &request));
        let ms = (started.elapsed().as_secs_f64() * 10_000.0).round() / 10.0;
        let (status, error) = match &result {
            Ok(response) => (Some(response.status().as_u16()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let ok = status.is_some_and(|s| (200..300).contains(&s));
        let verdict = if ok {
            answered = true;
            "serves".to_owned()
        } else if let (Role::Origin, Some(status)) = (endpoint.role, status) {
            // The origin's answer is the pull's, whatever it is.
            answered = true;
            format!("answers HTTP {status}: the pull fails")
        } else {
            match (status, &error) {
                (Some(status), _) => format!("skipped: HTTP {status}"),
                (None, Some(error)) => format!("skipped: {error}"),
                (None, None) => "skipped".to_owned(),
            }
        };
        probes.push(Probe {
            url: endpoint.url.to_string(),
            status,
            ms: Some(ms),
            error,
            verdict,
        });
    }
    Ok(probes)
}

pub fn table(probes: &[Probe]) -> String {
    let mut out = String::from("\nPROBE\n");
    for (i, probe) in probes.iter().enumerate() {
        let status = probe
            .status
            .map_or_else(|| "-".to_owned(), |s| s.to_string());
        let ms = probe
            .ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1} ms"));
        let _ = writeln!(
            out,
            "{}  {:<40} {:>4}  {:>11}  {}",
            i + 1,
            probe.url,
            status,
            ms,
            probe.verdict
        );
    }
    out
}

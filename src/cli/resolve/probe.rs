//! `regmirror resolve --probe`: ask every endpoint for the image's manifest (HEAD) and report
//! which one a pull would be served by, with latency, and why the others would be skipped.

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

/// What one endpoint answered.
#[derive(Debug, Serialize)]
pub struct Probe {
    pub url: String,
    pub status: Option<u16>,
    pub ms: f64,
    pub error: Option<String>,
    /// "serves", "skipped: …" or "not reached".
    pub verdict: String,
}

pub fn run(
    image: &ImageRef,
    endpoints: &Endpoints,
    overrides: HostOverrides,
    timeout: Duration,
) -> anyhow::Result<Vec<Probe>> {
    let timeouts = Timeouts {
        connect: timeout,
        first_byte: timeout,
        read: timeout,
    };
    let client = UpstreamClient::new(
        overrides,
        AddressPolicy::new(true),
        timeouts,
        &HostRoots::default(),
    )
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
    let mut served = false;
    for endpoint in &endpoints.endpoints {
        let target = Target::from_endpoint(endpoint, None);
        let request = UpstreamRequest::pull(Method::HEAD, image.repository(), path.clone())
            .header(ACCEPT, MANIFEST_ACCEPT);
        let started = Instant::now();
        let result = runtime.block_on(client.send(&target, &request));
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let (status, error) = match &result {
            Ok(response) => (Some(response.status().as_u16()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let ok = status.is_some_and(|s| (200..300).contains(&s));
        let verdict = if served {
            "not reached".to_owned()
        } else if ok || (endpoint.role == Role::Origin && status.is_some()) {
            served = true;
            "serves".to_owned()
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
            ms,
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
        let _ = writeln!(
            out,
            "{}  {:<40} {:>4}  {:>8.1} ms  {}",
            i + 1,
            probe.url,
            status,
            probe.ms,
            probe.verdict
        );
    }
    out
}

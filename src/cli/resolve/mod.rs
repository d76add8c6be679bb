//! `regmirror resolve`: which endpoints a pull of an image tries, in order, and why.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use super::BadInput;
use super::mirror_config::MirrorConfigArgs;
use crate::reference::ImageRef;
use crate::resolve::{Endpoints, MatchKind, Resolver, Role, TlsMode};
use crate::upstream::{HostOverrides, HostRoots};

mod probe;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: MirrorConfigArgs,
    /// Print exactly one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Contact each endpoint (HEAD of the manifest) and report which would serve, with latency,
    /// and why the others would be skipped.
    #[arg(long)]
    probe: bool,
    /// With --probe: answer NAME with IP instead of DNS. Repeatable.
    #[arg(long = "add-host", value_name = "NAME:IP")]
    add_host: Vec<String>,
    /// With --probe: seconds each endpoint gets to answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    probe_timeout: f64,
    /// With --probe: per-host CA files (<host[:port]>/*.crt) trusted besides the system's, as
    /// dockerd and the shim read them.
    #[arg(long, value_name = "DIR", default_value = "/etc/docker/certs.d")]
    certs_dir: PathBuf,
    /// The image reference, as given to `docker pull`.
    image: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.config.load("resolve")?;
    let image =
        ImageRef::parse(&args.image).map_err(|e| BadInput(format!("{:?}: {e}", args.image)))?;
    let resolver = Resolver::new(config).map_err(|e| BadInput(e.to_string()))?;
    let endpoints = resolver.resolve(&image);
    let probes = if args.probe {
        let overrides =
            HostOverrides::parse(&args.add_host).map_err(|e| BadInput(e.to_string()))?;
        let timeout = super::serve::seconds("--probe-timeout", args.probe_timeout)?;
        // As the shim reads it: its own CA (`shim install-ca`) vouches for no upstream.
        let roots = HostRoots::read_dir(&args.certs_dir, "regmirror-ca.crt");
        Some(probe::run(&image, &endpoints, overrides, &roots, timeout)?)
    } else {
        None
    };
    if args.json {
        let mut report = serde_json::to_value(Report::new(&image, &endpoints))?;
        if let Some(probes) = &probes {
            report["probe"] = serde_json::to_value(probes)?;
        }
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&image, &endpoints));
        if let Some(probes) = &probes {
            print!("{}", probe::table(probes));
        }
    }
    match probes {
        Some(probes) if !probe::served(&probes) => {
            eprintln!("regmirror: no endpoint serves {image}");
            Ok(ExitCode::FAILURE)
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// The `--json` document.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    reference: String,
    registry: &'a str,
    repository: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
    rule: Option<&'a str>,
    endpoints: Vec<EndpointReport<'a>>,
    /// The origin a `mirrors-only` rule keeps out of `endpoints`.
    omitted_origin: Option<OmittedReport<'a>>,
}

#[derive(Debug, Serialize)]
struct OmittedReport<'a> {
    url: &'a str,
    source: &'a str,
}

#[derive(Debug, Serialize)]
struct EndpointReport<'a> {
    url: &'a str,
    role: Role,
    tls: TlsMode,
    ns: Option<&'a str>,
    source: &'a str,
}

impl<'a> Report<'a> {
    pub fn new(image: &'a ImageRef, endpoints: &'a Endpoints) -> Self {
        Report {
            reference: image.to_string(),
            registry: &endpoints.registry,
            repository: image.repository(),
            tag: image.tag(),
            digest: image.digest().map(|d| d.as_str()),
            rule: endpoints.rule.as_ref().map(|r| &*r.domain),
            endpoints: endpoints
                .endpoints
                .iter()
                .map(|e| EndpointReport {
                    url: &e.url,
                    role: e.role,
                    tls: e.tls,
                    ns: e.ns.as_deref(),
                    source: &e.source,
                })
                .collect(),
            omitted_origin: endpoints.omitted_origin.as_ref().map(|o| OmittedReport {
                url: &o.url,
                source: &o.source,
            }),
        }
    }
}

/// The human-readable form.
fn table(image: &ImageRef, endpoints: &Endpoints) -> String {
    let mut out = String::new();
    let rule = match &endpoints.rule {
        Some(rule) => {
            let why = match rule.kind {
                MatchKind::Exact => "exact match",
                MatchKind::Pattern => "longest matching pattern",
                MatchKind::CatchAll => "catch-all: no exact or pattern rule matched",
            };
            format!("{} ({why}; {})", rule.domain, rule.location)
        }
        None => "none: no rule matches, the origin is the only endpoint".to_owned(),
    };
    let _ = writeln!(out, "image       {image}");
    let _ = writeln!(out, "registry    {}", endpoints.registry);
    let _ = writeln!(out, "repository  {}", image.repository());
    let _ = writeln!(out, "rule        {rule}");
    if let Some(omitted) = &endpoints.omitted_origin {
        let _ = writeln!(
            out,
            "origin      {} omitted: mirrors-only ({})",
            omitted.url, omitted.source
        );
    }
    let _ = writeln!(out);
    let header = ["#", "ROLE", "TLS", "URL", "NS", "WHY"];
    let rows: Vec<[String; 6]> = endpoints
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            [
                (i + 1).to_string(),
                e.role.as_str().to_owned(),
                e.tls.as_str().to_owned(),
                e.url.to_string(),
                e.ns.as_deref().unwrap_or("-").to_owned(),
                e.source.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut line = |cells: [&str; 6]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(header);
    for row in &rows {
        line(row.each_ref().map(String::as_str));
    }
    out
}

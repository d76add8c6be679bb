//! `regmirror warm`: pull images through a running cache so that it holds them (the pulling is
//! [`crate::warm`]'s). On a terminal a progress bar per blob and one for the total; otherwise one
//! line per manifest and blob. A summary at the end; each failed image on stderr, exit code 1.

use std::collections::HashMap;
use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::BadInput;
use crate::config::Credentials;
use crate::config::MirrorUrl;
use crate::config::docker_auth::{RegistryAuth, RegistryAuths};
use crate::reference::ImageRef;
use crate::upstream::{
    AddressPolicy, HelperCredentials, HostOverrides, HostRoots, Timeouts, UpstreamClient,
};
use crate::warm::plan::{self, Platform, Source};
use crate::warm::{Item, Options, Report, Totals, WarmError, Warmer};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Images to warm: nginx, ghcr.io/org/img:tag, quay.io/org/img@sha256:…
    #[arg(value_name = "IMAGE")]
    images: Vec<String>,
    /// The running cache (`regmirror serve`); a bare host:port is http. An image is asked for
    /// as containerd asks a mirror: ghcr.io/org/img:tag is /v2/org/img/manifests/tag?ns=ghcr.io.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:5000")]
    cache: String,
    /// Keep only this platform's manifests from multi-platform indexes (plus the index itself).
    /// Repeatable. Default: the cache's proxy.platforms (stated on its manifest answers), else
    /// every platform.
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]", value_parser = Platform::parse)]
    platforms: Vec<Platform>,
    /// Also warm the images listed in LIST, one a line (`#` starts a comment, blank lines are
    /// ignored); `-` reads standard input.
    #[arg(long, value_name = "LIST")]
    file: Option<PathBuf>,
    /// Docker's config.json (as `docker login CACHE` writes it): the entry for the cache's
    /// host[:port] (or its `credHelpers` or `credsStore` helper's answer) answers a cache with
    /// auth.htpasswd. Sent to the cache only.
    #[arg(long, value_name = "FILE")]
    credentials: Option<PathBuf>,
    /// Manifests and blobs read at once (and images walked at once).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: u16,
}

/// The credentials config.json `path` gives `authority`: stored, or its helper's answer (run
/// once, here).
async fn credentials(path: &std::path::Path, authority: &str) -> Result<Credentials, BadInput> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BadInput(format!("{}: cannot read: {e}", path.display())))?;
    let auths = RegistryAuths::parse(&path.display().to_string(), &text).map_err(BadInput)?;
    match auths.get(authority) {
        Some(RegistryAuth::Stored(credentials)) => Ok(credentials),
        Some(RegistryAuth::Helper(helper)) => HelperCredentials::new(helper, authority, authority)
            .get()
            .await
            .map_err(|e| BadInput(format!("{}: {e}", path.display())))?
            .ok_or_else(|| {
                BadInput(format!(
                    "{}: no credentials for {authority}",
                    path.display()
                ))
            }),
        None => Err(BadInput(format!(
            "{}: no credentials for {authority}",
            path.display()
        ))),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cache =
        MirrorUrl::parse(&cache_url(&args.cache)).map_err(|e| BadInput(format!("--cache: {e}")))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let credentials = match &args.credentials {
        Some(path) => Some(runtime.block_on(credentials(path, cache.authority()))?),
        None => None,
    };
    let images = images(&args)?;
    let client = UpstreamClient::new(
        HostOverrides::default(),
        AddressPolicy::new(true),
        Timeouts {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(60),
            read: Duration::from_secs(60),
        },
        &HostRoots::default(),
    )
    .map_err(anyhow::Error::msg)?;
    let report: Arc<dyn Report> = if std::io::stdout().is_terminal() {
        Arc::new(Bars::new())
    } else {
        Arc::new(Lines)
    };
    let options = Options {
        cache,
        credentials,
        platforms: args.platforms,
        jobs: usize::from(args.jobs),
    };
    let started = Instant::now();
    let warmer = Warmer::new(client, options, report);
    let outcome = runtime.block_on(warmer.warm(images));
    drop(warmer);
    let failed: Vec<&(String, Result<(), WarmError>)> =
        outcome.images.iter().filter(|(_, r)| r.is_err()).collect();
    let _ = writeln!(
        std::io::stdout().lock(),
        "{}",
        summary(
            outcome.images.len() - failed.len(),
            outcome.images.len(),
            &outcome.totals,
            started.elapsed()
        )
    );
    for (image, result) in &failed {
        if let Err(why) = result {
            eprintln!("error: warm {image}: {why}");
        }
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The images of the command line, then those of `--file`, each parsed: every bad one is named
/// (with its file and line), and any makes the run bad input.
fn images(args: &Args) -> anyhow::Result<Vec<ImageRef>> {
    let mut entries: Vec<(String, String)> = args
        .images
        .iter()
        .map(|image| (image.clone(), image.clone()))
        .collect();
    if let Some(path) = &args.file {
        let name = path.display().to_string();
        let text = if name == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| BadInput(format!("standard input: cannot read: {e}")))?;
            text
        } else {
            std::fs::read_to_string(path)
                .map_err(|e| BadInput(format!("{name}: cannot read: {e}")))?
        };
        entries.extend(
            plan::list_entries(&text)
                .into_iter()
                .map(|(line, image)| (format!("{name}:{line}: {image}"), image.to_owned())),
        );
    }
    if entries.is_empty() {
        return Err(BadInput("no image to warm: name images or give --file LIST".into()).into());
    }
    let mut images = Vec::new();
    let mut errors = Vec::new();
    for (origin, image) in entries {
        match ImageRef::parse(&image) {
            Ok(parsed) if !images.contains(&parsed) => images.push(parsed),
            Ok(_) => {}
            Err(e) => errors.push(format!("{origin}: {e}")),
        }
    }
    if !errors.is_empty() {
        return Err(BadInput(errors.join("\n")).into());
    }
    Ok(images)
}

fn size(bytes: u64) -> String {
    ByteSize::b(bytes).display().iec().to_string()
}

fn how(source: Source) -> &'static str {
    match source {
        Source::Upstream => "fetched upstream",
        Source::Cached => "cached",
        Source::Unknown => "fetched",
    }
}

/// One manifest or blob: `layer  sha256:…  12.3 MiB  fetched upstream  docker.io/library/nginx:1`.
fn line(item: &Item, source: Source, digest: &str) -> String {
    format!(
        "{:<8}  {digest}  {:>10}  {:<16}  {}",
        item.kind.as_str(),
        size(item.size),
        how(source),
        item.image
    )
}

/// `sha256:0123456789ab`
fn short_digest(item: &Item) -> String {
    let hex = item.digest.hex();
    format!("{}:{}", item.digest.algorithm(), &hex[..hex.len().min(12)])
}

fn summary(warmed: usize, images: usize, totals: &Totals, elapsed: Duration) -> String {
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let mut text = format!(
        "warmed {warmed} of {}: {}, {}; {} fetched upstream, {} already cached",
        plural(images, "image", "images"),
        plural(totals.manifests, "manifest", "manifests"),
        plural(totals.blobs, "blob", "blobs"),
        size(totals.upstream_bytes),
        size(totals.cached_bytes),
    );
    if totals.unknown_bytes > 0 {
        text.push_str(&format!(
            ", {} fetched (the cache did not say from where)",
            size(totals.unknown_bytes)
        ));
    }
    text.push_str(&format!("; {:.1} s", elapsed.as_secs_f64()));
    text
}

/// Without a terminal: one line per manifest and blob, as each is read whole.
struct Lines;

impl Report for Lines {
    fn fetched(&self, item: &Item, source: Source) {
        // A closed pipe (`| head`) ends the output, not the warm.
        let _ = writeln!(
            std::io::stdout().lock(),
            "{}",
            line(item, source, item.digest.as_str())
        );
    }
}

/// On a terminal: a bar per blob being read and one for the total; finished content scrolls
/// above them as lines.
struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    blob_style: ProgressStyle,
    bars: Mutex<HashMap<u64, ProgressBar>>,
}

impl Bars {
    fn new() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let total_style = ProgressStyle::with_template(
            "{prefix:<30} [{bar:30}] {binary_bytes:>10}/{binary_total_bytes:<10} {binary_bytes_per_sec:>12} {elapsed}",
        )
        .expect("a valid template")
        .progress_chars("=> ");
        let total = multi.add(
            ProgressBar::new(0)
                .with_style(total_style)
                .with_prefix("total"),
        );
        let blob_style = ProgressStyle::with_template(
            "{prefix:<30} [{bar:30}] {binary_bytes:>10}/{binary_total_bytes:<10} {binary_bytes_per_sec:>12}",
        )
        .expect("a valid template")
        .progress_chars("=> ");
        Bars {
            multi,
            total,
            blob_style,
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn take(&self, item: &Item) -> Option<ProgressBar> {
        crate::sync::lock(&self.bars).remove(&item.id)
    }
}

impl Report for Bars {
    fn queued(&self, bytes: u64) {
        self.total.inc_length(bytes);
    }

    fn started(&self, blob: &Item) {
        let bar = self.multi.insert_before(
            &self.total,
            ProgressBar::new(blob.size)
                .with_style(self.blob_style.clone())
                .with_prefix(format!("{} {}", blob.kind.as_str(), short_digest(blob))),
        );
        crate::sync::lock(&self.bars).insert(blob.id, bar);
    }

    fn progress(&self, blob: &Item, bytes: u64) {
        if let Some(bar) = crate::sync::lock(&self.bars).get(&blob.id) {
            bar.inc(bytes);
        }
        self.total.inc(bytes);
    }

    fn fetched(&self, item: &Item, source: Source) {
        if let Some(bar) = self.take(item) {
            bar.finish_and_clear();
        }
        let _ = self.multi.println(line(item, source, &short_digest(item)));
    }

    fn failed(&self, blob: &Item, error: &str) {
        if let Some(bar) = self.take(blob) {
            bar.finish_and_clear();
        }
        let _ = self.multi.println(format!(
            "{:<8}  {}  failed: {error}  {}",
            blob.kind.as_str(),
            short_digest(blob),
            blob.image
        ));
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.total.finish_and_clear();
    }
}

/// `--cache` as a URL: a bare `host[:port]` (as `regmirror serve` prints its address) is http.
fn cache_url(given: &str) -> String {
    if given.contains("://") {
        given.to_owned()
    } else {
        format!("http://{given}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Digest;
    use crate::warm::Kind;

    #[test]
    fn plain_lines_and_summary() {
        let digest = Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
        let item = Item {
            id: 0,
            kind: Kind::Layer,
            digest: digest.clone(),
            size: 12_900_000,
            image: Arc::from("docker.io/library/nginx:1"),
        };
        assert_eq!(
            line(&item, Source::Upstream, digest.as_str()),
            format!("layer     {digest}    12.3 MiB  fetched upstream  docker.io/library/nginx:1")
        );
        assert_eq!(
            line(&item, Source::Cached, &short_digest(&item)),
            "layer     sha256:abababababab    12.3 MiB  cached            docker.io/library/nginx:1"
        );
        let totals = Totals {
            manifests: 3,
            blobs: 1,
            upstream_bytes: 1536,
            cached_bytes: 0,
            unknown_bytes: 0,
        };
        assert_eq!(
            summary(1, 2, &totals, Duration::from_millis(1300)),
            "warmed 1 of 2 images: 3 manifests, 1 blob; 1.5 KiB fetched upstream, 0 B already cached; 1.3 s"
        );
        let totals = Totals {
            unknown_bytes: 10,
            ..Totals::default()
        };
        assert!(
            summary(1, 1, &totals, Duration::ZERO)
                .contains("1 image: 0 manifests, 0 blobs; 0 B fetched upstream, 0 B already cached, 10 B fetched (the cache did not say from where); 0.0 s")
        );
    }
}

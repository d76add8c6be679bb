//! The referrers API (`GET /v2/<name>/referrers/<digest>`, OCI distribution-spec 1.1): the
//! manifests whose `subject` is a digest (signatures, SBOMs, attestations), listed as an image
//! index of their descriptors.
//!
//! - Local repositories answer from the list kept per subject, changed when a manifest with a
//!   `subject` is pushed or deleted ([`record_push`], [`forget_delete`]).
//! - Proxied repositories ask the upstream's referrers API. An upstream without one (404 on the
//!   endpoint) is read through the referrers tag schema, the index tagged `<alg>-<hex>`, as the
//!   spec tells clients to; that tag is cached like any tag. The answer is kept as one record
//!   per (upstream, repository, subject) and follows the tag rules: served without asking within
//!   the upstream's `tag_revalidate`, and from the record with a `Warning` while the upstream
//!   fails; one request per subject is in flight, shared by every client asking for it at once
//!   ([`super::flights`]). The referring manifests and their blobs are then pulled through the cache like any
//!   content.
//! - Every list is bounded (`limits.max_referrers` descriptors, `limits.max_referrers_size`
//!   bytes): an upstream's longer answer is cut, no more of it is read, and the cut list is
//!   served with a `Warning` saying so; a push past the bounds is refused. Whatever an upstream
//!   answers, it costs one record and a bounded read.
//! - [`page`] applies `artifactType=` and cuts answers over `n=` descriptors or [`PAGE_BYTES`]
//!   into pages linked with `Link`.

use std::collections::BTreeMap;
use std::sync::Arc;

use reqwest::header::{ACCEPT, LINK};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::flights::{Flights, Joined};
use super::manifest;
use super::manifests::Manifests;
use super::meta::{Changed, ListBounds, ListChange, ListKey, Metadata, ReferrerList};
use super::metrics::Metrics;
use super::routing::Route;
use super::upstreams::{Upstreams, unreachable, unreachable_text, upstream_status};
use super::uses::LastUses;
use crate::reference::Digest;
use crate::registry::route::ManifestRef;
use crate::registry::{CacheOutcome, ErrorCode, OCI_INDEX, RegistryError};
use crate::upstream::{UpstreamRequest, read_limited};

/// The most JSON one page of an answer carries; a larger answer is paginated.
pub(crate) const PAGE_BYTES: usize = 1 << 20;
/// The most pages of an upstream's paginated answer that are followed.
const MAX_UPSTREAM_PAGES: usize = 16;

/// Referrers of one subject, sorted by digest.
#[derive(Debug, Clone)]
pub(crate) struct Listing {
    pub(crate) descriptors: Vec<Value>,
    /// Set when the records are served because the upstream failed.
    pub(crate) warning: Option<String>,
    /// Set when the upstream listed more than the limits keep.
    pub(crate) cut: Option<String>,
    /// Local, fresh, hit, stale, or joined (a request in flight for another client answered it).
    pub(crate) outcome: CacheOutcome,
}

/// What an upstream answered, within the bounds.
struct Answer {
    descriptors: Vec<Value>,
    cut: Option<String>,
    /// Set when the tag schema's cached index was served because the upstream failed.
    stale: Option<String>,
}

/// The referrers service (wired by [`super::App::new`]).
#[derive(Debug)]
pub(crate) struct Referrers {
    /// The tag schema's index is read as any tag; the lists share the tags' windows.
    pub(super) manifests: Arc<Manifests>,
    pub(super) upstreams: Upstreams,
    pub(super) meta: Arc<Metadata>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) uses: Arc<LastUses>,
    /// Requests to the upstream in flight, by (upstream, repository, subject).
    pub(super) flights: Flights<Listing>,
    /// `limits.max_referrers`, `limits.max_referrers_size`.
    pub(super) bounds: ListBounds,
    /// `limits.max_manifest_size`: the most one page of an upstream's answer may be.
    pub(super) max_manifest_size: u64,
}

impl Referrers {
    /// The referrers of `subject` in the route's repository.
    pub(crate) async fn list(
        self: &Arc<Self>,
        route: &Route,
        subject: &Digest,
    ) -> Result<Listing, RegistryError> {
        let key = ListKey::new(&route.upstream.name, &route.repository, subject);
        if route.upstream.local {
            let recorded = self.recorded(&key).await?;
            self.metrics.request("referrers", CacheOutcome::Local);
            return Ok(Listing {
                descriptors: recorded.descriptors,
                warning: None,
                cut: recorded.cut,
                outcome: CacheOutcome::Local,
            });
        }
        let window_key = format!(
            "{}\u{1f}{}\u{1f}referrers\u{1f}{subject}",
            route.upstream.name, route.repository
        );
        let window = route.upstream.tag_revalidate;
        if self.manifests.fresh(&window_key, window) {
            let recorded = self.recorded(&key).await?;
            self.uses.list(&key);
            self.metrics.request("referrers", CacheOutcome::Fresh);
            return Ok(Listing {
                descriptors: recorded.descriptors,
                warning: None,
                cut: recorded.cut,
                outcome: CacheOutcome::Fresh,
            });
        }
        let work = || {
            let referrers = self.clone();
            let (route, subject, key) = (route.clone(), subject.clone(), window_key.clone());
            async move { referrers.ask(&route, &subject, &key).await }
        };
        let (flight, joined) = self.flights.join(window_key.clone(), work);
        if joined == Joined::Joined {
            self.metrics.request("referrers", CacheOutcome::Joined);
            let listing = flight.await?;
            return Ok(Listing {
                outcome: CacheOutcome::Joined,
                ..listing
            });
        }
        flight.await
    }

    /// Asks the upstream for the referrers of `subject` (its API, else the tag schema) and
    /// records the answer; the recorded list, with a `Warning`, when the upstream fails.
    async fn ask(
        &self,
        route: &Route,
        subject: &Digest,
        window_key: &str,
    ) -> Result<Listing, RegistryError> {
        let key = ListKey::new(&route.upstream.name, &route.repository, subject);
        let window = route.upstream.tag_revalidate;
        let asked = match self.ask_api(route, subject).await {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => self.read_tag_schema(route, subject).await,
            Err(e) => Err(e),
        };
        match asked {
            Ok(answer) => {
                if answer.stale.is_none() {
                    self.manifests.confirmed(window_key, window);
                }
                self.keep(&key, &answer).await?;
                self.uses.list(&key);
                let outcome = if answer.stale.is_some() {
                    CacheOutcome::Stale
                } else {
                    CacheOutcome::Hit
                };
                self.metrics.request("referrers", outcome);
                Ok(Listing {
                    descriptors: answer.descriptors,
                    outcome,
                    warning: answer.stale,
                    cut: answer.cut,
                })
            }
            Err(failure) if matches!(failure.code, ErrorCode::Unauthorized | ErrorCode::Denied) => {
                Err(failure)
            }
            Err(failure) => self.stale(&key, failure).await,
        }
    }

    /// Replaces the recorded list with an upstream's answer, when it changed.
    async fn keep(&self, key: &ListKey, answer: &Answer) -> Result<(), RegistryError> {
        let recorded = self.recorded(key).await?;
        if recorded.descriptors != answer.descriptors || recorded.cut != answer.cut {
            let list = ReferrerList {
                stored_at: super::meta::now(),
                cut: answer.cut.clone(),
                descriptors: answer.descriptors.clone(),
            };
            self.meta.put_referrer_list(key, &list).await?;
        }
        Ok(())
    }

    /// The recorded list served because the upstream failed; without one, the failure.
    async fn stale(&self, key: &ListKey, failure: RegistryError) -> Result<Listing, RegistryError> {
        let recorded = self.recorded(key).await?;
        if recorded.descriptors.is_empty() {
            return Err(failure);
        }
        self.uses.list(key);
        self.metrics.request("referrers", CacheOutcome::Stale);
        Ok(Listing {
            descriptors: recorded.descriptors,
            warning: Some(format!(
                "upstream failed ({}); serving the cached referrers",
                failure.message
            )),
            cut: recorded.cut,
            outcome: CacheOutcome::Stale,
        })
    }

    /// Records a manifest with a `subject` as one of its referrers, before the manifest itself is
    /// stored: a subject whose list is full refuses the push, and nothing is stored.
    pub(crate) async fn record_push(
        &self,
        route: &Route,
        manifest: &manifest::CachedManifest,
    ) -> Result<Option<Digest>, RegistryError> {
        let Some(subject) = manifest::subject(&manifest.bytes) else {
            return Ok(None);
        };
        let descriptor =
            manifest::referrer_descriptor(&manifest.bytes, &manifest.digest, &manifest.media_type);
        let key = ListKey::new(&route.upstream.name, &route.repository, &subject);
        let bounds = self.bounds;
        match self
            .meta
            .change_referrers(&key, ListChange::Add(descriptor, bounds))
            .await?
        {
            Changed::Applied => Ok(Some(subject)),
            Changed::Full => Err(RegistryError::new(
                ErrorCode::ManifestInvalid,
                format!(
                    "{subject} already has as many referrers in {} as this registry keeps \
                     (limits.max_referrers: {}, limits.max_referrers_size: {} bytes)",
                    route.repository, bounds.count, bounds.bytes
                ),
            )),
        }
    }

    /// Forgets `digest` as a referrer of `subject` (a deleted manifest, or a push that failed
    /// after [`record_push`](Self::record_push)).
    pub(crate) async fn forget(
        &self,
        route: &Route,
        subject: &Digest,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        let key = ListKey::new(&route.upstream.name, &route.repository, subject);
        self.meta
            .change_referrers(&key, ListChange::Remove(digest.to_string()))
            .await?;
        Ok(())
    }

    /// Forgets a deleted manifest as a referrer of its subject.
    pub(crate) async fn forget_delete(
        &self,
        route: &Route,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        let Some(manifest) = self.manifests.cached(digest).await? else {
            return Ok(());
        };
        match manifest::subject(&manifest.bytes) {
            Some(subject) => self.forget(route, &subject, digest).await,
            None => Ok(()),
        }
    }

    /// The upstream's referrers API, its pages followed while the bounds have room (and the
    /// bytes read stay under `limits.max_referrers_size`); `Ok(None)` when it has none (404).
    async fn ask_api(
        &self,
        route: &Route,
        subject: &Digest,
    ) -> Result<Option<Answer>, RegistryError> {
        let bounds = self.bounds;
        let upstream = &route.upstream.name;
        let path = format!("/v2/{}/referrers/{subject}", route.repository);
        let limit = usize::try_from(self.max_manifest_size).unwrap_or(usize::MAX);
        let mut collector = Collector::new(bounds);
        let mut read = 0;
        let mut query = None;
        for page in 0..MAX_UPSTREAM_PAGES {
            let mut request = UpstreamRequest::pull(Method::GET, &route.repository, path.clone())
                .header(ACCEPT, OCI_INDEX);
            request.query = query.take();
            let response = self
                .upstreams
                .send(route, request)
                .await
                .map_err(|e| unreachable(upstream, e))?;
            match response.status() {
                StatusCode::OK => {}
                StatusCode::NOT_FOUND if page == 0 => return Ok(None),
                _ => {
                    return Err(upstream_status(
                        upstream,
                        &response,
                        ErrorCode::ManifestUnknown,
                    ));
                }
            }
            let next = response
                .headers()
                .get(LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(|link| next_query(link, &path));
            let bytes = read_limited(response, limit)
                .await
                .map_err(|e| unreachable_text(upstream, &format!("referrers: {e}")))?;
            read += bytes.len();
            collector.add_index(&bytes).ok_or_else(|| {
                RegistryError::new(
                    ErrorCode::Unavailable,
                    format!("upstream {upstream} answered referrers of {subject} with no index"),
                )
            })?;
            match next {
                Some(_) if collector.is_cut() || read >= bounds.bytes => {
                    collector.cut = true;
                    break;
                }
                Some(next) if page + 1 < MAX_UPSTREAM_PAGES => query = Some(next),
                Some(_) => {
                    tracing::warn!(
                        upstream = %upstream,
                        %subject,
                        pages = MAX_UPSTREAM_PAGES,
                        "referrers: more pages than followed; the answer is cut"
                    );
                    collector.cut = true;
                }
                None => break,
            }
        }
        let (descriptors, cut) = collector.finish(subject);
        Ok(Some(Answer {
            descriptors,
            cut,
            stale: None,
        }))
    }

    /// The referrers tag schema: the index tagged `<alg>-<hex>` (hex cut at 64), cached like any
    /// tag. No such tag: no referrers.
    async fn read_tag_schema(
        &self,
        route: &Route,
        subject: &Digest,
    ) -> Result<Answer, RegistryError> {
        let hex = subject.hex();
        let tag = format!("{}-{}", subject.algorithm(), &hex[..hex.len().min(64)]);
        let mut collector = Collector::new(self.bounds);
        let stale = match self.manifests.get(route, &ManifestRef::Tag(tag)).await {
            Ok(answer) => {
                // Not an index: no referrers.
                let _ = collector.add_index(&answer.manifest.bytes);
                answer.warning
            }
            Err(e) if e.code == ErrorCode::ManifestUnknown => None,
            Err(e) => return Err(e),
        };
        let (descriptors, cut) = collector.finish(subject);
        Ok(Answer {
            descriptors,
            cut,
            stale,
        })
    }

    /// The recorded list of a subject (empty when there is none).
    async fn recorded(&self, key: &ListKey) -> Result<ReferrerList, RegistryError> {
        Ok(self.meta.referrer_list(key).await?.unwrap_or_default())
    }
}
/// One page of `descriptors` (sorted by digest): those of `artifact_type` when given, after
/// the digest `last`, at most `n` and about [`PAGE_BYTES`] of JSON (at least one). Returns the
/// page and, when more follow, the last digest on it (the next page's `last`).
pub(crate) fn page(
    descriptors: Vec<Value>,
    artifact_type: Option<&str>,
    last: Option<&str>,
    n: Option<usize>,
    budget: usize,
) -> (Vec<Value>, Option<String>) {
    let mut selected = descriptors
        .into_iter()
        .filter(|d| artifact_type.is_none_or(|t| d["artifactType"].as_str() == Some(t)))
        .filter(|d| last.is_none_or(|last| d["digest"].as_str().unwrap_or("") > last))
        .peekable();
    let mut page = Vec::new();
    let mut bytes = 0;
    while let Some(descriptor) = selected.peek() {
        let size = descriptor.to_string().len() + 1;
        let full =
            n.is_some_and(|n| page.len() >= n) || (!page.is_empty() && bytes + size > budget);
        if full {
            let cursor = page
                .last()
                .and_then(|d: &Value| d["digest"].as_str())
                .map(str::to_owned);
            return (page, cursor);
        }
        bytes += size;
        page.extend(selected.next());
    }
    (page, None)
}

/// An image index listing `descriptors`.
pub(crate) fn index(descriptors: Vec<Value>) -> String {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": descriptors,
    })
    .to_string()
}

/// An upstream's referrers as they are read, kept within the bounds: valid descriptors (a
/// digest and a media type), one per digest, sorted by digest; past the bounds nothing more is
/// kept and the answer is marked cut.
#[derive(Debug)]
pub struct Collector {
    bounds: ListBounds,
    kept: BTreeMap<Digest, Value>,
    bytes: usize,
    cut: bool,
}

impl Collector {
    pub fn new(bounds: ListBounds) -> Self {
        Collector {
            bounds,
            kept: BTreeMap::new(),
            bytes: 0,
            cut: false,
        }
    }

    /// Adds the `manifests` of an image index (an answer's page, or the tag schema's index);
    /// `None` when `bytes` is not one.
    pub fn add_index(&mut self, bytes: &[u8]) -> Option<()> {
        self.add(manifests_of(bytes)?);
        Some(())
    }

    /// Whether the bounds were reached: what came after was not kept.
    pub fn is_cut(&self) -> bool {
        self.cut
    }

    fn add(&mut self, descriptors: Vec<Value>) {
        for descriptor in descriptors {
            if self.cut {
                return;
            }
            let digest = descriptor["digest"]
                .as_str()
                .and_then(|d| Digest::parse(d).ok());
            let Some(digest) = digest.filter(|_| descriptor["mediaType"].is_string()) else {
                continue;
            };
            if self.kept.contains_key(&digest) {
                continue;
            }
            let size = descriptor.to_string().len();
            if self.kept.len() >= self.bounds.count || self.bytes + size > self.bounds.bytes {
                self.cut = true;
                return;
            }
            self.bytes += size;
            self.kept.insert(digest, descriptor);
        }
    }

    /// The descriptors kept, sorted by digest, and the warning when the answer was cut.
    pub fn finish(self, subject: &Digest) -> (Vec<Value>, Option<String>) {
        let cut = self.cut.then(|| {
            format!(
                "the upstream lists more referrers of {subject} than this cache keeps \
                 (limits.max_referrers: {}, limits.max_referrers_size: {} bytes); {} are listed",
                self.bounds.count,
                self.bounds.bytes,
                self.kept.len()
            )
        });
        (self.kept.into_values().collect(), cut)
    }
}

/// The `manifests` of an image index.
fn manifests_of(bytes: &[u8]) -> Option<Vec<Value>> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    value.get("manifests")?.as_array().cloned()
}

/// The query of a `Link: <...>; rel="next"` that continues `path` (a link elsewhere is not
/// followed).
pub fn next_query(link: &str, path: &str) -> Option<String> {
    let target = link
        .split(',')
        .find(|part| part.contains("rel=\"next\"") || part.contains("rel=next"))?;
    let url = target.split('>').next()?.trim().trim_start_matches('<');
    let relative = match url.find("/v2/") {
        Some(at) => &url[at..],
        None => return None,
    };
    let (link_path, query) = relative.split_once('?')?;
    (link_path == path).then(|| query.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(i: usize, artifact_type: &str) -> Value {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{i:064x}"),
            "size": 10,
            "artifactType": artifact_type,
        })
    }

    #[test]
    fn pages_filter_and_continue() {
        let all: Vec<Value> = (1..=5)
            .map(|i| descriptor(i, if i % 2 == 0 { "sig" } else { "sbom" }))
            .collect();
        let (page1, cursor) = page(all.clone(), None, None, Some(2), PAGE_BYTES);
        assert_eq!(page1, all[..2]);
        let cursor = cursor.unwrap();
        assert_eq!(cursor, format!("sha256:{:064x}", 2));
        let (page2, cursor) = page(all.clone(), None, Some(&cursor), Some(2), PAGE_BYTES);
        assert_eq!(page2, all[2..4]);
        let (page3, end) = page(all.clone(), None, cursor.as_deref(), Some(2), PAGE_BYTES);
        assert_eq!((page3, end), (all[4..].to_vec(), None));
        let (sigs, end) = page(all.clone(), Some("sig"), None, None, PAGE_BYTES);
        assert_eq!((sigs, end), (vec![all[1].clone(), all[3].clone()], None));
        // By size: each page holds what fits, and at least one.
        let one = all[0].to_string().len() + 1;
        let (small, cursor) = page(all.clone(), None, None, None, one * 2);
        assert_eq!((small.len(), cursor.is_some()), (2, true));
        let (tiny, _) = page(all, None, None, None, 1);
        assert_eq!(tiny.len(), 1);
    }

    #[test]
    fn descriptors_are_deduplicated_sorted_and_checked() {
        let mut bad = descriptor(9, "x");
        bad["digest"] = "sha256:nope".into();
        let unbounded = ListBounds {
            count: usize::MAX,
            bytes: usize::MAX,
        };
        let mut collector = Collector::new(unbounded);
        collector.add(vec![
            descriptor(3, "a"),
            descriptor(1, "b"),
            bad,
            descriptor(3, "c"),
        ]);
        let (sorted, cut) =
            collector.finish(&Digest::parse(&format!("sha256:{:064x}", 9)).unwrap());
        assert_eq!(cut, None);
        let digests: Vec<&str> = sorted
            .iter()
            .map(|d| d["digest"].as_str().unwrap())
            .collect();
        assert_eq!(
            digests,
            [format!("sha256:{:064x}", 1), format!("sha256:{:064x}", 3)]
        );
        let empty: Value = serde_json::from_str(&index(Vec::new())).unwrap();
        assert_eq!(empty["mediaType"], OCI_INDEX);
        assert_eq!(empty["schemaVersion"], 2);
        assert_eq!(empty["manifests"], serde_json::json!([]));
    }

    #[test]
    fn answers_past_the_bounds_are_cut_and_say_so() {
        let subject = Digest::parse(&format!("sha256:{:064x}", 0)).unwrap();
        let many: Vec<Value> = (1..=10).map(|i| descriptor(i, "sig")).collect();
        let one = many[0].to_string().len();
        // By count: the first three, and a cut naming the limit.
        let mut collector = Collector::new(ListBounds {
            count: 3,
            bytes: usize::MAX,
        });
        collector.add(many.clone());
        collector.add(many.clone());
        let (kept, cut) = collector.finish(&subject);
        assert_eq!(kept, many[..3]);
        let cut = cut.unwrap();
        assert!(
            cut.contains("limits.max_referrers: 3") && cut.contains("3 are listed"),
            "{cut}"
        );
        // By bytes: what fits.
        let mut collector = Collector::new(ListBounds {
            count: usize::MAX,
            bytes: one * 2 + 1,
        });
        collector.add(many.clone());
        let (kept, cut) = collector.finish(&subject);
        assert_eq!((kept.len(), cut.is_some()), (2, true));
        // Duplicates cost nothing and cut nothing.
        let mut collector = Collector::new(ListBounds {
            count: 1,
            bytes: usize::MAX,
        });
        collector.add(vec![many[0].clone(); 1000]);
        assert_eq!(collector.finish(&subject), (many[..1].to_vec(), None));
    }

    #[test]
    fn upstream_links_are_followed_only_along_the_same_path() {
        let path = "/v2/a/referrers/sha256:1";
        assert_eq!(
            next_query(r#"</v2/a/referrers/sha256:1?n=2&last=x>; rel="next""#, path).as_deref(),
            Some("n=2&last=x")
        );
        assert_eq!(
            next_query(
                r#"<https://r.test/v2/a/referrers/sha256:1?last=y>; rel="next""#,
                path
            )
            .as_deref(),
            Some("last=y")
        );
        assert_eq!(
            next_query(r#"</v2/b/referrers/sha256:1?last=y>; rel="next""#, path),
            None
        );
        assert_eq!(
            next_query(r#"</v2/a/referrers/sha256:1?last=y>; rel="prev""#, path),
            None
        );
    }
}

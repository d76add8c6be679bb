//! Eviction: content not used for `proxy.ttl` goes, and with `storage.maxsize` the least
//! recently used images go until the cache fits.
//!
//! The unit is the image: a manifest and what it references (config, layers, child manifests).
//! Hits refresh an image's last use (unlike distribution's TTL, fixed at fetch time). A blob stays
//! while any remaining manifest references it, or while it was itself used within the TTL, so
//! evicting one image never breaks another that shares its layers. Pushed (local) content is
//! never evicted. A proxied subject's referrer list is a unit of its own, counted in the size and
//! last used when it was stored or served, or when its subject was (so it lives as long as the
//! image it describes is pulled, and not longer than its own use when the subject is not cached);
//! pushed lists are local content. [`plan`] is pure; [`collect`] applies a plan crash-safely: metadata first, in
//! one transaction that also records the files to delete, then the files; a crash in between is
//! finished by the next collection. Readers hold open file handles, so an eviction never cuts a
//! download in progress.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::meta::{Inventory, ListKey, MetaError, Metadata, StoredList};
use super::routing::LOCAL;
use super::store::BlobStore;
use crate::reference::Digest;

/// What decides eviction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub(crate) ttl: Duration,
    pub(crate) max_size: Option<u64>,
    /// Unix seconds.
    pub(crate) now: u64,
}

/// What a collection removes (or would, with `--dry-run`).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Digests of evicted manifests and blobs, sorted.
    pub(crate) evict: Vec<String>,
    /// Evicted referrer lists, sorted.
    pub(crate) referrer_lists: Vec<ListKey>,
    /// The same as an operator reads them: each image, blob no image reaches, and referrer
    /// list, with why it goes; the least recently used first.
    pub(crate) units: Vec<Evicted>,
    pub(crate) manifests: usize,
    pub(crate) blobs: usize,
    pub(crate) freed_bytes: u64,
    pub(crate) kept_bytes: u64,
}

/// Why something is evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Not used for `proxy.ttl`.
    Unused,
    /// The cache is over `storage.maxsize`, and it is among the least recently used.
    OverSize,
}

/// One thing a collection evicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Evicted {
    pub(crate) what: Evictee,
    pub(crate) reason: Reason,
    /// Unix seconds (links count as uses).
    pub(crate) last_used: u64,
    /// What it frees: an image's manifests and the blobs no kept image shares.
    pub(crate) bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Evictee {
    /// An image: its top manifest, and its names (`upstream/repository:tag`, or
    /// `upstream/repository` where no tag points at it), filled by [`collect`] when asked.
    Image { digest: String, names: Vec<String> },
    /// A blob no evicted image references (nor any kept one).
    Blob { digest: String },
    /// A proxied subject's referrer list.
    List(ListKey),
}

/// Decides what goes.
pub(crate) fn plan(inventory: &Inventory, policy: &Policy) -> Plan {
    let uses = Uses::of(inventory, policy);
    let roots = image_roots(inventory, &uses);
    let live_roots: HashSet<&str> = roots
        .iter()
        .copied()
        .filter(|d| uses.local.contains(d) || uses.at(d) >= uses.horizon)
        .collect();
    let (live_lists, dead_lists) = referrer_lists(inventory, &uses);
    let why = Why {
        live_roots: &live_roots,
        uses: &uses,
    };
    // Recently used blobs stay on their own, unless the size cap needs their room.
    let live = live_set(inventory, &live_roots, &uses.local, Some(&uses));
    let kept = sizes(inventory, live.iter().copied()) + lists_bytes(&live_lists);
    let mut dead_lists: Vec<(u64, &StoredList, Reason)> = dead_lists
        .into_iter()
        .map(|(at, l)| (at, l, Reason::Unused))
        .collect();
    let Some(max) = policy.max_size.filter(|&max| kept > max) else {
        return finish(inventory, &live, dead_lists, kept, &why);
    };
    let live_images: Vec<&str> = roots
        .iter()
        .copied()
        .filter(|d| live_roots.contains(d) && !uses.local.contains(d))
        .collect();
    let fitted = fit(inventory, &uses, &live_images, live_lists, max);
    dead_lists.extend(
        fitted
            .evicted_lists
            .into_iter()
            .map(|(at, l)| (at, l, Reason::OverSize)),
    );
    finish(inventory, &fitted.live, dead_lists, fitted.kept, &why)
}

/// Last uses by digest (links count as uses), the local (pushed) digests, and the TTL's
/// horizon.
struct Uses<'a> {
    last_use: HashMap<&'a str, u64>,
    local: HashSet<&'a str>,
    /// Unix seconds: content last used before it is unused for the TTL.
    horizon: u64,
    inventory: &'a Inventory,
}

impl<'a> Uses<'a> {
    fn of(inventory: &'a Inventory, policy: &Policy) -> Self {
        let mut last_use: HashMap<&str, u64> = HashMap::new();
        let mut local: HashSet<&str> = HashSet::new();
        for (upstream, _, digest, at) in &inventory.links {
            let entry = last_use.entry(digest.as_str()).or_default();
            *entry = (*entry).max(*at);
            if upstream == LOCAL {
                local.insert(digest.as_str());
            }
        }
        for (digest, at) in &inventory.last_used {
            let entry = last_use.entry(digest.as_str()).or_default();
            *entry = (*entry).max(*at);
        }
        Uses {
            last_use,
            local,
            horizon: policy.now.saturating_sub(policy.ttl.as_secs()),
            inventory,
        }
    }

    /// When `digest` was last used (0: never).
    fn at(&self, digest: &str) -> u64 {
        self.last_use.get(digest).copied().unwrap_or(0)
    }

    /// A proxied referrer list: last used when stored, served, or its subject was.
    fn of_list(&self, list: &StoredList) -> u64 {
        let own = self.inventory.last_used.get(&list.key.use_key()).copied();
        list.stored_at
            .max(own.unwrap_or(0))
            .max(self.at(&list.key.subject))
    }
}

/// What a digest takes in the store (0 when it is not recorded).
fn size_of(inventory: &Inventory, digest: &str) -> u64 {
    inventory
        .manifests
        .get(digest)
        .map(|m| m.size)
        .or_else(|| inventory.blobs.get(digest).copied())
        .unwrap_or(0)
}

fn sizes<'a>(inventory: &Inventory, digests: impl Iterator<Item = &'a str>) -> u64 {
    digests.map(|d| size_of(inventory, d)).sum()
}

fn lists_bytes(lists: &[(u64, &StoredList)]) -> u64 {
    lists.iter().map(|(_, l)| l.bytes).sum()
}

/// The images: manifests no other manifest references (an index's children belong to it),
/// the least recently used first.
fn image_roots<'a>(inventory: &'a Inventory, uses: &Uses<'_>) -> Vec<&'a str> {
    let children: HashSet<&str> = inventory
        .manifests
        .values()
        .flat_map(|m| m.references.iter().map(String::as_str))
        .filter(|d| inventory.manifests.contains_key(*d))
        .collect();
    let mut roots: Vec<&str> = inventory
        .manifests
        .keys()
        .map(String::as_str)
        .filter(|d| !children.contains(d))
        .collect();
    roots.sort_by_key(|d| (uses.at(d), *d));
    roots
}

/// The proxied referrer lists with their last use, the least recently used first: those used
/// since the horizon, and those not (pushed lists are local content, never evicted).
type ListsByUse<'a> = Vec<(u64, &'a StoredList)>;

fn referrer_lists<'a>(
    inventory: &'a Inventory,
    uses: &Uses<'_>,
) -> (ListsByUse<'a>, ListsByUse<'a>) {
    let mut lists: Vec<(u64, &StoredList)> = inventory
        .referrer_lists
        .iter()
        .filter(|l| l.key.upstream != LOCAL)
        .map(|l| (uses.of_list(l), l))
        .collect();
    lists.sort_by(|a, b| (a.0, &a.1.key).cmp(&(b.0, &b.1.key)));
    lists.into_iter().partition(|(at, _)| *at >= uses.horizon)
}

/// What stays once the size cap is met.
struct Fitted<'a> {
    live: HashSet<&'a str>,
    kept: u64,
    /// Live referrer lists the cap evicts.
    evicted_lists: ListsByUse<'a>,
}

/// Over the cap: the least recently used images and referrer lists go, in one order, until the
/// cache fits. Each digest counts the live images that reach it, so one pass over the images'
/// references decides (a live set recomputed per evicted image made 10,000 images take
/// minutes).
fn fit<'a>(
    inventory: &'a Inventory,
    uses: &Uses<'a>,
    live_images: &[&'a str],
    mut live_lists: ListsByUse<'a>,
    max: u64,
) -> Fitted<'a> {
    let pinned = live_set(inventory, &HashSet::new(), &uses.local, None);
    let images: Vec<Vec<&str>> = live_images
        .iter()
        .map(|root| {
            live_set(inventory, &HashSet::from([*root]), &HashSet::new(), None)
                .into_iter()
                .collect()
        })
        .collect();
    let mut reached: HashMap<&str, usize> = HashMap::new();
    for digest in images.iter().flatten() {
        *reached.entry(*digest).or_default() += 1;
    }
    let mut kept = sizes(
        inventory,
        pinned
            .iter()
            .copied()
            .chain(reached.keys().copied().filter(|d| !pinned.contains(d))),
    ) + lists_bytes(&live_lists);
    let mut units: Vec<(u64, Unit)> = live_images
        .iter()
        .map(|d| uses.at(d))
        .zip(images.iter().map(|image| Unit::Image(image)))
        .chain(
            live_lists
                .iter()
                .map(|(at, _)| *at)
                .zip((0..).map(Unit::List)),
        )
        .collect();
    units.sort_by_key(|(at, _)| *at);
    let mut evicted = Vec::new();
    for (_, unit) in units {
        if kept <= max {
            break;
        }
        match unit {
            Unit::Image(image) => {
                for digest in image {
                    let count = reached.get_mut(digest).expect("counted above");
                    *count -= 1;
                    if *count == 0 && !pinned.contains(digest) {
                        kept -= size_of(inventory, digest);
                    }
                }
            }
            Unit::List(index) => {
                kept -= live_lists[index].1.bytes;
                evicted.push(index);
            }
        }
    }
    evicted.sort_unstable();
    let evicted_lists = evicted
        .into_iter()
        .rev()
        .map(|index| live_lists.swap_remove(index))
        .collect();
    let live = reached
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(digest, _)| digest)
        .chain(pinned)
        .collect();
    Fitted {
        live,
        kept,
        evicted_lists,
    }
}

/// What tells why something goes: the images alive by their own use, and the last uses.
struct Why<'a> {
    live_roots: &'a HashSet<&'a str>,
    uses: &'a Uses<'a>,
}

/// What the size cap evicts, in the order of last use.
enum Unit<'i, 'a> {
    /// The digests an image reaches.
    Image(&'i [&'a str]),
    /// A referrer list, by its index among the live ones.
    List(usize),
}

/// Every digest kept alive by `roots` (transitively), by local links, and, when given, by its
/// own use since the horizon.
fn live_set<'a>(
    inventory: &'a Inventory,
    roots: &HashSet<&'a str>,
    local: &HashSet<&'a str>,
    recent: Option<&Uses<'_>>,
) -> HashSet<&'a str> {
    let mut live: HashSet<&str> = HashSet::new();
    let mut stack: Vec<&str> = roots.iter().copied().chain(local.iter().copied()).collect();
    if let Some(uses) = recent {
        stack.extend(
            inventory
                .blobs
                .keys()
                .map(String::as_str)
                .filter(|d| uses.at(d) >= uses.horizon),
        );
    }
    while let Some(digest) = stack.pop() {
        if !live.insert(digest) {
            continue;
        }
        if let Some(manifest) = inventory.manifests.get(digest) {
            stack.extend(manifest.references.iter().map(String::as_str));
        }
    }
    live
}

fn finish(
    inventory: &Inventory,
    live: &HashSet<&str>,
    dead_lists: Vec<(u64, &StoredList, Reason)>,
    kept: u64,
    why: &Why<'_>,
) -> Plan {
    let mut plan = Plan {
        kept_bytes: kept,
        freed_bytes: dead_lists.iter().map(|(_, l, _)| l.bytes).sum(),
        ..Plan::default()
    };
    plan.units = units(inventory, live, why);
    plan.units
        .extend(dead_lists.iter().map(|(at, l, reason)| Evicted {
            what: Evictee::List(l.key.clone()),
            reason: *reason,
            last_used: *at,
            bytes: l.bytes,
        }));
    plan.units.sort_by_key(|u| u.last_used);
    plan.referrer_lists = dead_lists
        .into_iter()
        .map(|(_, l, _)| l.key.clone())
        .collect();
    plan.referrer_lists.sort();
    for digest in inventory
        .manifests
        .keys()
        .filter(|d| !live.contains(d.as_str()))
    {
        plan.manifests += 1;
        plan.freed_bytes += size_of(inventory, digest);
        plan.evict.push(digest.clone());
    }
    for digest in inventory
        .blobs
        .keys()
        .filter(|d| !live.contains(d.as_str()) && !inventory.manifests.contains_key(*d))
    {
        plan.blobs += 1;
        plan.freed_bytes += size_of(inventory, digest);
        plan.evict.push(digest.clone());
    }
    plan.evict.sort();
    plan
}

/// The evicted images (top manifests that go, each with the evicted digests it reaches first)
/// and the evicted blobs no evicted image reaches, each with why it goes.
fn units(inventory: &Inventory, live: &HashSet<&str>, why: &Why<'_>) -> Vec<Evicted> {
    let children: HashSet<&str> = inventory
        .manifests
        .values()
        .flat_map(|m| m.references.iter().map(String::as_str))
        .collect();
    let mut tops: Vec<&str> = inventory
        .manifests
        .keys()
        .map(String::as_str)
        .filter(|d| !live.contains(d) && !children.contains(d))
        .collect();
    tops.sort_by_key(|d| (why.uses.at(d), *d));
    let mut counted: HashSet<&str> = HashSet::new();
    let mut units = Vec::new();
    for top in tops {
        let mut bytes = 0;
        let mut stack = vec![top];
        while let Some(digest) = stack.pop() {
            if live.contains(digest) || !counted.insert(digest) {
                continue;
            }
            bytes += size_of(inventory, digest);
            if let Some(manifest) = inventory.manifests.get(digest) {
                stack.extend(manifest.references.iter().map(String::as_str));
            }
        }
        let reason = if why.live_roots.contains(top) {
            Reason::OverSize
        } else {
            Reason::Unused
        };
        units.push(Evicted {
            what: Evictee::Image {
                digest: top.to_owned(),
                names: Vec::new(),
            },
            reason,
            last_used: why.uses.at(top),
            bytes,
        });
    }
    let mut alone: Vec<&str> = inventory
        .blobs
        .keys()
        .map(String::as_str)
        .filter(|d| !live.contains(d) && !counted.contains(d))
        .filter(|d| !inventory.manifests.contains_key(*d))
        .collect();
    alone.sort_unstable();
    for digest in alone {
        let last_used = why.uses.at(digest);
        units.push(Evicted {
            what: Evictee::Blob {
                digest: digest.to_owned(),
            },
            reason: if last_used >= why.uses.horizon {
                Reason::OverSize
            } else {
                Reason::Unused
            },
            last_used,
            bytes: size_of(inventory, digest),
        });
    }
    units
}

/// Fills in the names of the evicted images: each repository linking one, with the tags that
/// point at it there (read before the eviction removes them).
async fn name_images(
    meta: &Metadata,
    inventory: &Inventory,
    plan: &mut Plan,
) -> Result<(), MetaError> {
    let mut tags: HashMap<(String, String), Vec<(String, String)>> = HashMap::new();
    for unit in &mut plan.units {
        let Evictee::Image { digest, names } = &mut unit.what else {
            continue;
        };
        for (upstream, repository, linked, _) in &inventory.links {
            if linked != digest {
                continue;
            }
            let key = (upstream.clone(), repository.clone());
            if !tags.contains_key(&key) {
                let mut pointing = Vec::new();
                for tag in meta.tags(upstream, repository).await? {
                    if let Some(record) = meta.tag(upstream, repository, &tag).await? {
                        pointing.push((tag, record.digest));
                    }
                }
                tags.insert(key.clone(), pointing);
            }
            let here: Vec<&str> = tags[&key]
                .iter()
                .filter(|(_, d)| d == digest)
                .map(|(t, _)| t.as_str())
                .collect();
            if here.is_empty() {
                names.push(format!("{upstream}/{repository}"));
            }
            names.extend(here.iter().map(|t| format!("{upstream}/{repository}:{t}")));
        }
        names.sort();
        names.dedup();
    }
    Ok(())
}

/// Plans and (unless `dry_run`) applies a collection.
/// With `name_images`, the plan's images are named ([`Evictee::Image`]): a read of each
/// repository's tags, for `regmirror gc` to say what it removes.
pub(crate) async fn collect(
    meta: &Metadata,
    store: &BlobStore,
    policy: &Policy,
    dry_run: bool,
    name: bool,
) -> Result<Plan, MetaError> {
    let inventory = meta.inventory().await?;
    if !dry_run {
        finish_doomed(meta, store, &inventory.doomed).await?;
    }
    let mut plan = plan(&inventory, policy);
    if name {
        name_images(meta, &inventory, &mut plan).await?;
    }
    if dry_run || (plan.evict.is_empty() && plan.referrer_lists.is_empty()) {
        return Ok(plan);
    }
    meta.evict(&plan.evict, &plan.referrer_lists).await?;
    finish_doomed(meta, store, &plan.evict).await?;
    Ok(plan)
}

/// Gives the memory a collection freed back to the kernel. Planning over a large inventory takes
/// tens of MiB for a moment (about 90 MiB for 100,000 blobs), on whichever thread ran it; glibc
/// keeps freed memory in that thread's arena, so without this a server's RSS kept the peak of
/// every arena a collection had run in (bench 15: 150 MiB after collections every 2 s).
pub(crate) fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only hands free pages of the heap back to the kernel; glibc allows it
    // from any thread at any time (it takes each arena's lock in turn).
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Deletes the content of doomed digests, then forgets them.
async fn finish_doomed(
    meta: &Metadata,
    store: &BlobStore,
    doomed: &[String],
) -> Result<(), MetaError> {
    for digest in doomed {
        let Ok(parsed) = Digest::parse(digest) else {
            continue;
        };
        if let Err(e) = store.delete(&parsed).await {
            tracing::warn!(%digest, error = %e, "cannot delete evicted content");
        }
    }
    meta.clear_doomed(doomed).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::meta::ManifestRecord;

    fn digest(name: &str) -> String {
        crate::cache::store::sha256(name.as_bytes()).to_string()
    }

    /// Images a, b, c sharing layer "shared"; each has its own layer; used at times 10, 20, 30.
    fn inventory() -> Inventory {
        let mut inv = Inventory::default();
        for (image, at) in [("a", 10), ("b", 20), ("c", 30)] {
            let own = digest(&format!("{image}-layer"));
            inv.manifests.insert(
                digest(image),
                ManifestRecord {
                    media_type: String::new(),
                    size: 1,
                    references: vec![own.clone(), digest("shared")],
                },
            );
            inv.blobs.insert(own.clone(), 100);
            inv.last_used.insert(digest(image), at);
            inv.links
                .push(("docker.io".into(), "x".into(), digest(image), 0));
        }
        inv.blobs.insert(digest("shared"), 1000);
        inv.blobs.insert(digest("orphan"), 50);
        inv
    }

    #[test]
    fn ttl_by_last_use_keeps_shared_layers() {
        let inv = inventory();
        let plan = plan(
            &inv,
            &Policy {
                ttl: Duration::from_secs(15),
                max_size: None,
                now: 30,
            },
        );
        // horizon 15: a (10) goes, b and c stay; the shared layer stays; the orphan goes.
        let mut expected = vec![digest("a"), digest("a-layer"), digest("orphan")];
        expected.sort();
        assert_eq!(plan.evict, expected);
        assert_eq!((plan.manifests, plan.blobs), (1, 2));
        // Told as an image (with its own layer) and a blob alone, each unused for the TTL.
        assert_eq!(
            plan.units,
            [
                Evicted {
                    what: Evictee::Blob {
                        digest: digest("orphan")
                    },
                    reason: Reason::Unused,
                    last_used: 0,
                    bytes: 50,
                },
                Evicted {
                    what: Evictee::Image {
                        digest: digest("a"),
                        names: Vec::new()
                    },
                    reason: Reason::Unused,
                    last_used: 10,
                    bytes: 101,
                },
            ]
        );
    }

    #[test]
    fn size_cap_evicts_least_recently_used_images() {
        let inv = inventory();
        // Everything is recent; 1,000 (shared) + 2 x 101 fits in 1,300: only the oldest (a) goes.
        let plan = plan(
            &inv,
            &Policy {
                ttl: Duration::from_secs(1000),
                max_size: Some(1300),
                now: 30,
            },
        );
        assert!(plan.evict.contains(&digest("a")) && plan.evict.contains(&digest("a-layer")));
        assert!(
            !plan.evict.contains(&digest("shared")),
            "still used by b and c"
        );
        assert!(!plan.evict.contains(&digest("b")));
        assert!(plan.kept_bytes <= 1300);
        let image = plan
            .units
            .iter()
            .find(|u| matches!(&u.what, Evictee::Image { digest: d, .. } if *d == digest("a")))
            .unwrap();
        assert_eq!(
            (image.reason, image.bytes),
            (Reason::OverSize, 101),
            "recently used, but the oldest over the cap"
        );
    }

    #[test]
    fn a_shared_layer_goes_with_the_last_image_using_it() {
        let inv = inventory();
        let plan_for = |max| {
            plan(
                &inv,
                &Policy {
                    ttl: Duration::from_secs(1000),
                    max_size: Some(max),
                    now: 30,
                },
            )
        };
        // c alone (1 + 100 + the shared 1,000) fits 1,101 exactly: a and b go (and the loose
        // orphan, which loses its place once the cap is exceeded), the shared layer stays.
        let plan = plan_for(1101);
        let mut expected = vec![
            digest("a"),
            digest("a-layer"),
            digest("b"),
            digest("b-layer"),
            digest("orphan"),
        ];
        expected.sort();
        assert_eq!(plan.evict, expected);
        assert_eq!(plan.kept_bytes, 1101);
        // One byte less: c goes too, and the shared layer with it.
        let plan = plan_for(1100);
        assert!(plan.evict.contains(&digest("shared")) && plan.evict.contains(&digest("c")));
        assert_eq!(plan.kept_bytes, 0);
    }

    #[test]
    fn local_content_is_never_evicted() {
        let mut inv = inventory();
        inv.links
            .push((LOCAL.into(), "team/app".into(), digest("a"), 0));
        let plan = plan(
            &inv,
            &Policy {
                ttl: Duration::from_secs(1),
                max_size: Some(0),
                now: 1000,
            },
        );
        assert!(!plan.evict.contains(&digest("a")) && !plan.evict.contains(&digest("shared")));
        assert!(plan.evict.contains(&digest("b")));
    }

    fn list(upstream: &str, subject: &str, bytes: u64, stored_at: u64) -> StoredList {
        StoredList {
            key: ListKey {
                upstream: upstream.into(),
                repository: "x".into(),
                subject: digest(subject),
            },
            bytes,
            stored_at,
        }
    }

    #[test]
    fn referrer_lists_live_by_their_own_use_or_their_subjects() {
        let mut inv = inventory();
        // Of image c (used at 30), stored at 0; of nothing cached, served at 25; of nothing
        // cached, stored at 5 and never served since; pushed, stored at 0.
        inv.referrer_lists = vec![
            list("docker.io", "c", 10, 0),
            list("docker.io", "unknown", 10, 0),
            list("docker.io", "old", 10, 5),
            list(LOCAL, "pushed", 10, 0),
        ];
        inv.last_used
            .insert(inv.referrer_lists[1].key.use_key(), 25);
        let plan = plan(
            &inv,
            &Policy {
                ttl: Duration::from_secs(10),
                max_size: None,
                now: 30,
            },
        );
        assert_eq!(plan.referrer_lists, [inv.referrer_lists[2].key.clone()]);
        assert_eq!(
            plan.freed_bytes,
            1 + 100 + 50 + 10,
            "a, its layer, the orphan, the list"
        );
    }

    #[test]
    fn referrer_lists_count_in_the_size_cap_in_the_order_of_use() {
        let mut inv = inventory();
        // A big list last used at 15: between images a (10) and b (20).
        inv.referrer_lists = vec![list("docker.io", "unknown", 5000, 15)];
        let plan = plan(
            &inv,
            &Policy {
                ttl: Duration::from_secs(1000),
                max_size: Some(1300),
                now: 30,
            },
        );
        // a goes first, then the list; b and c fit after that.
        assert_eq!(plan.referrer_lists, [inv.referrer_lists[0].key.clone()]);
        assert!(plan.evict.contains(&digest("a")));
        assert!(!plan.evict.contains(&digest("b")) && !plan.evict.contains(&digest("c")));
        assert!(plan.kept_bytes <= 1300);
    }

    #[tokio::test]
    async fn a_crash_between_metadata_and_files_is_finished_by_the_next_collection() {
        use crate::cache::meta::{NewBlob, NewManifest};
        use crate::cache::store::sha256;
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open_files(dir.path()).unwrap();
        let meta = Metadata::open_local(&dir.path().join("metadata.redb")).unwrap();
        let layer = sha256(b"layer");
        store
            .put_verified(&layer, bytes::Bytes::from_static(b"layer"))
            .await
            .unwrap();
        meta.put_blob(&NewBlob {
            upstream: "docker.io",
            repository: "library/x",
            digest: &layer,
            size: 5,
        })
        .await
        .unwrap();
        let manifest = format!(r#"{{"layers":[{{"digest":"{layer}"}}]}}"#);
        let manifest_digest = sha256(manifest.as_bytes());
        store
            .put_verified(&manifest_digest, bytes::Bytes::from(manifest.clone()))
            .await
            .unwrap();
        meta.put_manifest(&NewManifest {
            upstream: "docker.io",
            repository: "library/x",
            tag: Some("v1"),
            digest: &manifest_digest,
            media_type: "application/vnd.oci.image.manifest.v1+json",
            size: manifest.len() as u64,
            references: std::slice::from_ref(&layer),
        })
        .await
        .unwrap();
        let policy = Policy {
            ttl: Duration::ZERO,
            max_size: None,
            now: u64::MAX,
        };
        let plan = super::plan(&meta.inventory().await.unwrap(), &policy);
        assert_eq!(plan.evict.len(), 2);
        // "Crash" right after the metadata transaction: content still there, recorded as doomed.
        meta.evict(&plan.evict, &[]).await.unwrap();
        assert!(store.size(&layer).await.unwrap().is_some());
        drop(meta);
        let meta = Metadata::open_local(&dir.path().join("metadata.redb")).unwrap();
        assert_eq!(
            meta.tag("docker.io", "library/x", "v1").await.unwrap(),
            None,
            "metadata is consistent at once"
        );
        assert!(
            !meta
                .is_linked("docker.io", "library/x", &layer)
                .await
                .unwrap()
        );
        assert!(!meta.has_source("docker.io", &layer).await.unwrap());
        let again = collect(&meta, &store, &policy, false, false).await.unwrap();
        assert!(again.evict.is_empty());
        assert_eq!(
            store.size(&layer).await.unwrap(),
            None,
            "the doomed content is deleted"
        );
        assert_eq!(store.size(&manifest_digest).await.unwrap(), None);
        assert!(meta.inventory().await.unwrap().doomed.is_empty());
    }
}

//! The cache on S3-compatible object storage, and several replicas on one bucket, against real
//! peers: moto_server (a real S3 server process, from the venv `.ci/run` creates; the fleet's
//! scenarios run on Azurite too, the `_on_azurite` tests, through `peers::storage`), the
//! distribution registry as origin, skopeo as client, and `regmirror serve` processes. The
//! in-process FAKE upstream of `fake/` only where no real registry can: wrong bytes, an origin
//! slow enough to kill a replica in the middle of its download, and one holding its body at a
//! chosen byte until released (a replica killed at that point), honouring or ignoring `Range`.
//! Everything on 127.0.0.1.
//! Pushed referrers and sha512 content on the bucket are covered here too, and the fleet's
//! internal route, refused without the signature `http.secret` keys.

mod fake;
mod peers;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::Method;
use bytes::Bytes;
use fake::{FakeUpstream, digest_of, random_bytes};
use peers::oci::{Client, sha256, sha512};
use peers::storage::{Azurite, BUCKET, StoragePeer};
use peers::{Images, Missing, MotoServer, Registry, RegistryOptions, Regmirror, http, skopeo_pull};

const SECRET: &str = "the-fleet-secret-for-tests";

/// A replica's storage on `store` with redirects off and a spool of the replica's own (on
/// moto_server: seed 004's storage block verbatim, with the test's S3 server as endpoint).
fn seed_004(store: &dyn StoragePeer, spool: &Path) -> Vec<(String, String)> {
    let mut env = store.env();
    env.extend([
        (
            "REGISTRY_STORAGE_REDIRECT_DISABLE".to_owned(),
            "true".to_owned(),
        ),
        (
            "REGISTRY_STORAGE_SPOOL".to_owned(),
            spool.display().to_string(),
        ),
    ]);
    env
}

/// The two tests of a scenario that runs on each object store: the first on moto_server, the
/// second on Azurite, both calling the scenario with the store (`async`: with the function that
/// starts it, for scenarios that start their store on the blocking pool).
macro_rules! on_each_store {
    ($on_moto:ident, $on_azurite:ident => $scenario:ident) => {
        #[test]
        fn $on_moto() {
            $scenario(&or_skip!(moto()));
        }

        #[test]
        fn $on_azurite() {
            $scenario(&or_skip!(Azurite::start()));
        }
    };
    (async $on_moto:ident, $on_azurite:ident => $scenario:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $on_moto() {
            $scenario(moto).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $on_azurite() {
            $scenario(Azurite::start).await;
        }
    };
}

/// moto_server with [`BUCKET`] created.
fn moto() -> Result<MotoServer, Missing> {
    let moto = MotoServer::start()?;
    moto.create_bucket(BUCKET);
    Ok(moto)
}

/// A replica on the bucket: `yaml` plus the fleet's secret on its own port.
fn replica(moto: &dyn StoragePeer, yaml: &str) -> Regmirror {
    replica_with(moto, yaml, &[])
}

/// [`replica`] with more environment (`REGISTRY_STORAGE_*` keys: the harness writes `storage`).
fn replica_with(moto: &dyn StoragePeer, yaml: &str, more: &[(&str, &str)]) -> Regmirror {
    replica_with_secret(moto, yaml, more, Some(SECRET))
}

/// A replica on the bucket with `secret` as its `http.secret` (or none).
fn replica_with_secret(
    moto: &dyn StoragePeer,
    yaml: &str,
    more: &[(&str, &str)],
    secret: Option<&str>,
) -> Regmirror {
    let dir = tempfile::tempdir().unwrap();
    let mut env = seed_004(moto, &dir.path().join("spool"));
    env.extend(more.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let port = peers::free_port();
    let secret = secret.map_or(String::new(), |s| format!(", secret: {s}"));
    let yaml = format!("{yaml}\nhttp: {{addr: 127.0.0.1:{port}{secret}}}");
    Regmirror::spawn(dir, &yaml, &[], &env, &[])
}

/// The server's counter line for `name{labels}`, or 0.
fn metric(cache: &Regmirror, series: &str) -> u64 {
    let (_, _, body) = http("GET", cache.addr, "/metrics", &[]);
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{series} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// An origin holding `library/demo:v1` (two layers) and the digests of everything in it.
fn origin_with_image() -> Result<(Registry, Vec<String>), Missing> {
    let origin = Registry::start(RegistryOptions::default())?;
    let images = Images::new()?;
    images.build(
        "v1",
        &[
            ("hello.txt", b"hello from s3"),
            ("big.bin", &[7u8; 300_000]),
        ],
    );
    images.push("v1", &format!("{}/library/demo:v1", origin.host()), &[]);
    let pulled = tempfile::tempdir().unwrap();
    skopeo_pull(
        &format!("{}/library/demo:v1", origin.host()),
        pulled.path(),
        &[],
    )
    .unwrap();
    let digests = peers::dir_blobs(pulled.path())
        .into_iter()
        .map(|(_, bytes)| digest_of(&bytes))
        .collect();
    Ok((origin, digests))
}

/// Waits until the replica has no download in flight (each one stored, or failed).
fn settled(cache: &Regmirror) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(cache, "regmirror_fills_in_flight") > 0 {
        assert!(Instant::now() < deadline, "downloads still in flight");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn object_keys(store: &dyn StoragePeer, prefix: &str) -> Vec<String> {
    store.list_keys(prefix)
}

#[test]
fn seed_004_environment_on_a_real_s3_server() {
    let moto = or_skip!(MotoServer::start());
    moto.create_bucket(BUCKET);
    let (origin, digests) = or_skip!(origin_with_image());
    let cache = replica(&moto, &format!("proxy: {{remoteurl: {}}}", origin.url()));
    let pulled = tempfile::tempdir().unwrap();
    let manifest = skopeo_pull(
        &format!("{}/library/demo:v1", cache.host()),
        pulled.path(),
        &[],
    )
    .unwrap();
    // A client has the last byte once the digest is verified; storing finishes after.
    settled(&cache);
    // Seen from the S3 server's own API, not the cache's.
    let blobs = object_keys(&moto, "blobs/");
    for digest in digests.iter().chain([&digest_of(&manifest)]) {
        let hex = digest.trim_start_matches("sha256:");
        let key = format!("blobs/sha256/{}/{hex}", &hex[..2]);
        assert!(blobs.contains(&key), "{key} in {blobs:?}");
    }
    let meta = object_keys(&moto, "meta/");
    assert!(
        meta.iter().any(|k| k.starts_with(&format!(
            "meta/tags/{}/library/demo/_tags/v1",
            origin.host()
        ))),
        "{meta:?}"
    );
    assert!(meta.iter().any(|k| k.starts_with("meta/manifests/sha256/")));
    assert!(meta.iter().any(|k| k.starts_with("meta/links/")));
    assert!(
        moto.list_multipart_uploads(BUCKET).is_empty(),
        "every upload completed"
    );
}

on_each_store!(
    a_replica_serves_what_another_fetched_with_the_origin_stopped,
    a_replica_serves_what_another_fetched_with_the_origin_stopped_on_azurite
        => a_replica_serves_what_another_fetched_with_the_origin_stopped_on
);

fn a_replica_serves_what_another_fetched_with_the_origin_stopped_on(store: &dyn StoragePeer) {
    let (mut origin, _) = or_skip!(origin_with_image());
    let yaml = format!("proxy: {{remoteurl: {}}}", origin.url());
    let a = replica(store, &yaml);
    let b = replica(store, &yaml);
    let through_a = tempfile::tempdir().unwrap();
    let manifest = skopeo_pull(
        &format!("{}/library/demo:v1", a.host()),
        through_a.path(),
        &[],
    )
    .unwrap();
    origin.stop();
    // By digest: B never asks the upstream.
    let through_b = tempfile::tempdir().unwrap();
    let by_digest = format!("{}/library/demo@{}", b.host(), digest_of(&manifest));
    assert_eq!(
        skopeo_pull(&by_digest, through_b.path(), &[]).unwrap(),
        manifest
    );
    assert_eq!(
        peers::dir_blobs(through_b.path()),
        peers::dir_blobs(through_a.path())
    );
    let asked: u64 = String::from_utf8_lossy(&http("GET", b.addr, "/metrics", &[]).2)
        .lines()
        .filter(|l| l.starts_with("regmirror_upstream_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(asked, 0, "replica B sent no upstream request");
    // By tag: the upstream is down, the bucket's tag is served with a warning.
    let by_tag = tempfile::tempdir().unwrap();
    assert_eq!(
        skopeo_pull(&format!("{}/library/demo:v1", b.host()), by_tag.path(), &[]).unwrap(),
        manifest
    );
}

on_each_store!(
    async wrong_bytes_never_reach_the_bucket,
    wrong_bytes_never_reach_the_bucket_on_azurite
        => wrong_bytes_never_reach_the_bucket_on
);

async fn wrong_bytes_never_reach_the_bucket_on<S: StoragePeer + Sync + 'static>(
    start: fn() -> Result<S, Missing>,
) {
    let upstream = FakeUpstream::start().await;
    let good = random_bytes(200_000, 51);
    let claimed = digest_of(&good);
    let mut evil = good.to_vec();
    evil[1000] ^= 1;
    upstream.blob(
        "library/demo",
        &claimed,
        Bytes::from(evil),
        4,
        Duration::ZERO,
    );
    let url = upstream.url();
    or_skip!(
        tokio::task::spawn_blocking(move || {
            let moto = start()?;
            let cache = replica(&moto, &format!("proxy: {{remoteurl: {url}}}"));
            for _ in 0..2 {
                let (status, _, body) = http(
                    "GET",
                    cache.addr,
                    &format!("/v2/library/demo/blobs/{claimed}"),
                    &[],
                );
                assert!(
                    status != 200 || body.len() < good.len(),
                    "never a whole body"
                );
            }
            assert!(object_keys(&moto, "blobs/").is_empty());
            assert!(object_keys(&moto, "meta/sources/").is_empty());
            assert!(object_keys(&moto, "meta/links/").is_empty());
            if let Some(uploads) = moto.pending_uploads() {
                assert!(uploads.is_empty(), "{uploads:?}");
            }
            Ok::<_, Missing>(())
        })
        .await
        .unwrap()
    );
}

#[test]
fn restarted_replicas_and_a_store_that_comes_back() {
    let mut moto = or_skip!(MotoServer::start());
    moto.create_bucket(BUCKET);
    let (mut origin, _) = or_skip!(origin_with_image());
    let yaml = format!("proxy: {{remoteurl: {}}}", origin.url());
    // A replica started while the store is down starts, and answers 503 for what needs it.
    moto.stop();
    let c = replica(&moto, &yaml);
    let log = c.log();
    let line = log
        .lines()
        .find(|l| l.contains("starting anyway"))
        .unwrap_or_else(|| panic!("one clear line at start-up: {log}"));
    assert!(
        line.contains(&format!("s3://{BUCKET}/")) && line.contains(&moto.endpoint()),
        "names the bucket and the endpoint: {line}"
    );
    let (status, _, body) = http("GET", c.addr, "/v2/library/demo/manifests/v1", &[]);
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("UNAVAILABLE"));
    // Back (moto keeps nothing across a restart: the bucket is made again): C serves.
    moto.start_again();
    moto.create_bucket(BUCKET);
    let through_c = tempfile::tempdir().unwrap();
    let manifest = skopeo_pull(
        &format!("{}/library/demo:v1", c.host()),
        through_c.path(),
        &[],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    // Stopped gracefully: what it was storing is stored first.
    c.stop();
    // Every replica restarted, and the origin gone: all served from the bucket.
    origin.stop();
    let fresh = replica(&moto, &yaml);
    let again = tempfile::tempdir().unwrap();
    let by_digest = format!("{}/library/demo@{}", fresh.host(), digest_of(&manifest));
    assert_eq!(
        skopeo_pull(&by_digest, again.path(), &[]).unwrap(),
        manifest
    );
    assert_eq!(
        peers::dir_blobs(again.path()),
        peers::dir_blobs(through_c.path())
    );
}

on_each_store!(
    push_to_one_replica_pull_from_another,
    push_to_one_replica_pull_from_another_on_azurite
        => push_to_one_replica_pull_from_another_on
);

fn push_to_one_replica_pull_from_another_on(store: &dyn StoragePeer) {
    let a = replica(store, "local: all");
    let b = replica(store, "local: all");
    let images = or_skip!(Images::new());
    images.build("v1", &[("pushed.txt", b"pushed to replica A")]);
    images.push("v1", &format!("{}/team/app:v1", a.host()), &[]);
    let from_b = tempfile::tempdir().unwrap();
    skopeo_pull(&format!("{}/team/app:v1", b.host()), from_b.path(), &[]).unwrap();
    let from_a = tempfile::tempdir().unwrap();
    skopeo_pull(&format!("{}/team/app:v1", a.host()), from_a.path(), &[]).unwrap();
    assert_eq!(
        peers::dir_blobs(from_b.path()),
        peers::dir_blobs(from_a.path())
    );
}

on_each_store!(
    referrers_and_sha512_content_are_shared_by_the_replicas,
    referrers_and_sha512_content_are_shared_by_the_replicas_on_azurite
        => referrers_and_sha512_content_are_shared_by_the_replicas_on
);

fn referrers_and_sha512_content_are_shared_by_the_replicas_on(store: &dyn StoragePeer) {
    let deletes = [("REGISTRY_STORAGE_DELETE_ENABLED", "true")];
    let replica_a = replica_with(store, "local: all", &deletes);
    let b = replica_with(store, "local: all", &deletes);
    let a = Client(replica_a.addr);
    // A sha512 config and an image pushed by its sha512 digest, to A.
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    a.blob("team/app", config, &sha512(config));
    let image = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha512(config), "size": config.len()},
        "layers": [],
    })
    .to_string();
    let image_digest = sha512(image.as_bytes());
    let media_type = "application/vnd.oci.image.manifest.v1+json";
    assert_eq!(
        a.manifest("team/app", &image_digest, image.as_bytes(), media_type)
            .0,
        201
    );
    // A signature about it, pushed to A before anyone asks.
    a.blob("team/app", b"{}", &sha256(b"{}"));
    let signature = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "artifactType": "application/vnd.example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(b"{}"), "size": 2},
        "layers": [],
        "subject": {"mediaType": media_type, "digest": image_digest, "size": image.len()},
    })
    .to_string();
    let signature_digest = sha256(signature.as_bytes());
    let (status, head) = a.manifest(
        "team/app",
        &signature_digest,
        signature.as_bytes(),
        media_type,
    );
    assert_eq!(status, 201, "{head}");
    // B, sharing only the bucket, has both and lists the signature.
    let b_client = Client(b.addr);
    let (status, _, body) = b_client.get(&format!("/v2/team/app/manifests/{image_digest}"));
    assert_eq!((status, body), (200, image.into_bytes()));
    let path = format!("/v2/team/app/referrers/{image_digest}");
    let (listed, _) = b_client.referrers(&path);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["digest"], signature_digest.as_str());
    assert_eq!(
        object_keys(store, "meta/referrer-lists/").len(),
        1,
        "one list per subject"
    );
    // Deleted on B: gone for A too.
    let (status, _, _) = b_client.request(
        "DELETE",
        &format!("/v2/team/app/manifests/{signature_digest}"),
        &[],
        b"",
    );
    assert_eq!(status, 202);
    assert!(a.referrers(&path).0.is_empty());
    assert_eq!(object_keys(store, "meta/referrers/"), Vec::<String>::new());
    assert_eq!(object_keys(store, "meta/referrer-lists/").len(), 1);
}

on_each_store!(
    three_replicas_make_one_upstream_download,
    three_replicas_make_one_upstream_download_on_azurite
        => three_replicas_make_one_upstream_download_on
);

fn three_replicas_make_one_upstream_download_on(store: &dyn StoragePeer) {
    let origin = or_skip!(Registry::start(RegistryOptions::default()));
    let work = tempfile::tempdir().unwrap();
    let (file, digest) = peers::random_file(work.path(), "big", 64 << 20);
    or_skip!(peers::push_blob(origin.addr, "library/big", &file, &digest));
    let yaml = format!("proxy: {{remoteurl: {}}}", origin.url());
    let replicas: Vec<Regmirror> = (0..3).map(|_| replica(store, &yaml)).collect();
    let path = format!("/v2/library/big/blobs/{digest}");
    let clients: Vec<_> = (0..24)
        .map(|i| {
            let addr = replicas[i % 3].addr;
            let path = path.clone();
            std::thread::spawn(move || http("GET", addr, &path, &[]))
        })
        .collect();
    for client in clients {
        let (status, _, body) = client.join().unwrap();
        assert_eq!(status, 200);
        assert_eq!(digest_of(&body), digest, "every body is the blob");
    }
    // Every GET of the blob, whatever its answer (a 206 resume or an error counts too).
    assert_eq!(
        origin.count("GET", &format!("/blobs/{digest}")),
        1,
        "one upstream request for the blob from the whole fleet:\n{}",
        origin.log()
    );
    let roles: Vec<(u64, u64, u64)> = replicas
        .iter()
        .map(|r| {
            (
                metric(r, "regmirror_fleet_fills_total{role=\"led\"}"),
                metric(r, "regmirror_fleet_fills_total{role=\"followed\"}"),
                metric(r, "regmirror_fleet_fills_total{role=\"waited\"}"),
            )
        })
        .collect();
    assert_eq!(
        roles.iter().map(|r| r.0).sum::<u64>(),
        1,
        "one leader: {roles:?}"
    );
}

/// Sets its flag when dropped, so a scoped watcher thread ends even when the test panics.
struct Raise<'a>(&'a AtomicBool);

impl Drop for Raise<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

on_each_store!(
    async a_killed_lease_holder_is_taken_over,
    a_killed_lease_holder_is_taken_over_on_azurite
        => a_killed_lease_holder_is_taken_over_on
);

async fn a_killed_lease_holder_is_taken_over_on<S: StoragePeer + Sync + 'static>(
    start: fn() -> Result<S, Missing>,
) {
    let upstream = FakeUpstream::start().await;
    // 8 MiB at about 1 MiB/s: the holder is killed in the middle.
    let blob = random_bytes(8 << 20, 52);
    let digest = digest_of(&blob);
    upstream.blob(
        "library/slow",
        &digest,
        blob.clone(),
        80,
        Duration::from_millis(100),
    );
    let url = upstream.url();
    let state = upstream.state.clone();
    let d = digest.clone();
    or_skip!(
        tokio::task::spawn_blocking(move || {
            let moto = start()?;
            let yaml = format!("proxy: {{remoteurl: {url}}}");
            let a = replica(&moto, &yaml);
            let b = replica(&moto, &yaml);
            let path = format!("/v2/library/slow/blobs/{d}");
            let hex = d.trim_start_matches("sha256:");
            let key = format!("blobs/sha256/{}/{hex}", &hex[..2]);
            let visible = || object_keys(&moto, &key).contains(&key);
            let done = AtomicBool::new(false);
            std::thread::scope(|scope| {
                // Nothing is under the digest key before it is verified: when the key first shows,
                // the upstream has sent some download its last byte (no replica can verify before
                // that). Looked at every 100 ms from the start until it shows.
                let watcher = scope.spawn(|| {
                    let mut looks = 0;
                    while !done.load(Ordering::Relaxed) {
                        looks += 1;
                        if visible() {
                            assert!(
                                state.finished(&path) >= 1,
                                "{key} is visible before any download of it was complete"
                            );
                            return looks;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    looks
                });
                let stop = Raise(&done);
                let on_a = std::thread::spawn({
                    let (addr, path) = (a.addr, path.clone());
                    move || http("GET", addr, &path, &[])
                });
                std::thread::sleep(Duration::from_millis(800));
                let following = Reading::start(b.addr, &path);
                std::thread::sleep(Duration::from_millis(800));
                assert!(!visible(), "nothing visible while the holder downloads");
                let had = following.have();
                assert!(had > 0 && had < blob.len(), "B's client is mid-body: {had}");
                let killed = Instant::now();
                a.kill();
                let (_, _, cut) = on_a.join().unwrap();
                assert!(cut.len() < blob.len(), "the holder's client got a cut body");
                // B's stream from A broke; A refuses connections: B takes the lease over at once
                // and asks the upstream for the rest, which this one answers with the whole
                // blob again (it ignores ranges). B's client goes on.
                let (head, followed, reads) = following.thread.join().unwrap();
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                assert_eq!(digest_of(&followed), d, "the follower's client gets the blob");
                let next = reads.iter().find(|&&t| t > killed).unwrap();
                println!(
                    "the follower's client paused {:?} after the kill -9 and finished {:?} after it",
                    *next - killed,
                    *reads.last().unwrap() - killed
                );
                settled(&b);
                assert!(visible(), "the blob is stored once verified");
                // The watcher ends at its next look, having seen the key appear.
                let looks = watcher.join().unwrap();
                assert!(looks >= 10, "the watcher looked {looks} times");
                drop(stop);
            });
            assert!(metric(&b, "regmirror_fleet_fills_total{role=\"took_over\"}") >= 1);
            assert!(
                object_keys(&moto, "leases/fills/").is_empty(),
                "leases are released"
            );
            // A collection afterwards: no multipart upload and no temporary key is left, and the
            // verified blob stays.
            gc(&moto, &b, &[]);
            if let Some(uploads) = moto.pending_uploads() {
                assert_eq!(uploads, Vec::<String>::new());
            }
            assert_eq!(object_keys(&moto, "uploads/"), Vec::<String>::new());
            assert_eq!(object_keys(&moto, "leases/"), Vec::<String>::new());
            assert!(visible());
            Ok::<_, Missing>(())
        })
        .await
        .unwrap()
    );
    assert_eq!(
        upstream.hits(Method::GET, &format!("/v2/library/slow/blobs/{digest}")),
        2,
        "the dead holder's download and the one that took over"
    );
    let asked = upstream.state.range_headers.lock().unwrap()
        [&format!("/v2/library/slow/blobs/{digest}")]
        .clone();
    assert!(
        asked[0].is_none() && asked[1].as_ref().is_some_and(|r| r.starts_with("bytes=")),
        "the rest was asked for: {asked:?}"
    );
}

/// A client reading a blob as it arrives: the body bytes it has so far, and when each read
/// returned.
struct Reading {
    have: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: std::thread::JoinHandle<(String, Vec<u8>, Vec<Instant>)>,
}

impl Reading {
    /// `GET path` from `addr`, read on a thread of its own until the server ends the body (a
    /// cut connection ends it too: the body is then short).
    fn start(addr: std::net::SocketAddr, path: &str) -> Self {
        use std::io::{Read as _, Write as _};
        let have = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        let counter = have.clone();
        let thread = std::thread::spawn(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let (mut data, mut reads, mut head) = (Vec::new(), Vec::new(), None);
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n @ 1..) = stream.read(&mut buf) {
                data.extend_from_slice(&buf[..n]);
                if head.is_none() {
                    if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                        head = Some(String::from_utf8_lossy(&data[..end]).into_owned());
                        data.drain(..end + 4);
                    }
                }
                if head.is_some() {
                    reads.push(Instant::now());
                    counter.store(data.len(), Ordering::SeqCst);
                }
            }
            (head.unwrap_or_default(), data, reads)
        });
        Reading { have, thread }
    }

    fn have(&self) -> usize {
        self.have.load(Ordering::SeqCst)
    }
}

/// Polls `done` every 20 ms for at most 20 s.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "waited 20 s for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where in the holder's download it is killed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum KillPoint {
    /// The upstream answered the head, no byte yet.
    BeforeTheFirstByte,
    /// Half the blob received.
    MidBody,
    /// Every byte received and verified (the followers' clients have the whole blob), the blob
    /// not stored yet: the holder's commit is held by pausing the S3 server.
    BeforeTheCommit,
}

/// Three replicas on one bucket; A holds the download, B and C follow it with a client each,
/// and A is killed at `point` (the upstream holds its bytes from that point until A is dead,
/// or, before the commit, the S3 server is paused while A verifies). B's and C's clients get
/// the whole blob, one of them takes over (asking the upstream for the rest only), and the
/// blob is uploaded to the bucket once.
async fn followers_keep_their_clients(point: KillPoint) {
    let upstream = FakeUpstream::start().await;
    let blob = random_bytes(8 << 20, 61);
    let digest = digest_of(&blob);
    upstream.blob(
        "library/slow",
        &digest,
        blob.clone(),
        32,
        Duration::from_millis(10),
    );
    let path = format!("/v2/library/slow/blobs/{digest}");
    let at = match point {
        KillPoint::BeforeTheFirstByte => 0,
        KillPoint::MidBody => blob.len() / 2,
        KillPoint::BeforeTheCommit => blob.len() - 1,
    };
    let open = upstream.gate(&path, at);
    upstream.state.ranges.store(true, Ordering::SeqCst);
    let (url, state, d) = (upstream.url(), upstream.state.clone(), digest.clone());
    let blob_len = blob.len();
    let ranges = or_skip!(
        tokio::task::spawn_blocking(move || {
            let mut moto = MotoServer::start()?;
            moto.create_bucket(BUCKET);
            let yaml = format!("proxy: {{remoteurl: {url}}}");
            let [a, b, c] = [0, 1, 2].map(|_| replica(&moto, &yaml));
            let asked = || state.range_headers.lock().unwrap().get(&path).map_or(0, Vec::len);
            let on_a = Reading::start(a.addr, &path);
            wait_until("A's upstream request", || asked() == 1);
            let followers = [Reading::start(b.addr, &path), Reading::start(c.addr, &path)];
            let followed = r#"regmirror_fleet_fills_total{role="followed"}"#;
            wait_until("B and C following A", || {
                metric(&b, followed) == 1 && metric(&c, followed) == 1
            });
            wait_until("the followers' clients at the kill point", || {
                followers.iter().all(|f| f.have() == at)
            });
            if point == KillPoint::BeforeTheCommit {
                moto.pause();
                open.store(true, Ordering::SeqCst);
                wait_until("the whole blob on the followers' clients", || {
                    followers.iter().all(|f| f.have() == blob_len)
                });
            }
            let killed = Instant::now();
            a.kill();
            open.store(true, Ordering::SeqCst);
            if point == KillPoint::BeforeTheCommit {
                moto.resume();
            }
            drop(on_a);
            for (name, follower) in ["B", "C"].iter().zip(followers) {
                let (head, body, reads) = follower.thread.join().unwrap();
                assert!(head.starts_with("HTTP/1.1 200"), "{name}: {head}");
                assert_eq!(body.len(), blob_len, "{name}'s client got the whole blob");
                assert_eq!(digest_of(&body), d, "{name}'s client got the blob's bytes");
                match reads.iter().find(|&&t| t > killed) {
                    Some(next) => println!(
                        "{point:?}: {name}'s client paused {:?} after the kill -9, done {:?} after it",
                        *next - killed,
                        *reads.last().unwrap() - killed
                    ),
                    None => println!("{point:?}: {name}'s client had the whole blob before the kill -9"),
                }
            }
            settled(&b);
            settled(&c);
            let took_over = r#"regmirror_fleet_fills_total{role="took_over"}"#;
            assert_eq!(metric(&b, took_over) + metric(&c, took_over), 1, "one replica took over");
            let hex = d.trim_start_matches("sha256:");
            let key = format!("blobs/sha256/{}/{hex}", &hex[..2]);
            assert_eq!(object_keys(&moto, &key), vec![key.clone()], "the blob is stored");
            assert_eq!(
                moto.count("POST", &format!("{key}?uploads")),
                1,
                "the blob is uploaded once"
            );
            assert!(object_keys(&moto, "leases/fills/").is_empty(), "leases are released");
            // Served from the bucket now, by every replica left.
            for cache in [&b, &c] {
                let (status, _, body) = http("GET", cache.addr, &path, &[]);
                assert_eq!((status, digest_of(&body)), (200, d.clone()));
            }
            Ok::<_, Missing>(state.range_headers.lock().unwrap()[&path].clone())
        })
        .await
        .unwrap()
    );
    // The holder's download, then the rest from the one that took over (none needed once every
    // byte was received).
    let rest = format!("bytes={at}-");
    let expected = match point {
        KillPoint::BeforeTheFirstByte => vec![None, None],
        KillPoint::MidBody => vec![None, Some(rest.as_str())],
        KillPoint::BeforeTheCommit => vec![None],
    };
    assert_eq!(
        ranges.iter().map(Option::as_deref).collect::<Vec<_>>(),
        expected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_keep_their_clients_when_the_holder_dies_before_the_first_byte() {
    followers_keep_their_clients(KillPoint::BeforeTheFirstByte).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_keep_their_clients_when_the_holder_dies_mid_body() {
    followers_keep_their_clients(KillPoint::MidBody).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_keep_their_clients_when_the_holder_dies_before_the_commit() {
    followers_keep_their_clients(KillPoint::BeforeTheCommit).await;
}

/// A holder killed before any follower asked: the first follower finds it refusing connections
/// with its lease still live, and takes the lease over once the holder missed a renewal, seconds
/// before the lease would expire (the log says which rule took it over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_dead_before_anyone_followed_is_taken_over_at_its_missed_renewal() {
    let upstream = FakeUpstream::start().await;
    let blob = random_bytes(1 << 20, 62);
    let digest = digest_of(&blob);
    upstream.blob("library/slow", &digest, blob.clone(), 16, Duration::ZERO);
    let path = format!("/v2/library/slow/blobs/{digest}");
    // The upstream holds the body back: A holds the lease with nothing downloaded.
    let open = upstream.gate(&path, 0);
    let (url, state, d) = (upstream.url(), upstream.state.clone(), digest.clone());
    let blob_len = blob.len();
    or_skip!(
        tokio::task::spawn_blocking(move || {
            let moto = MotoServer::start()?;
            moto.create_bucket(BUCKET);
            let yaml = format!("proxy: {{remoteurl: {url}}}");
            let [a, b] = [0, 1].map(|_| replica(&moto, &yaml));
            let asked = || {
                state
                    .range_headers
                    .lock()
                    .unwrap()
                    .get(&path)
                    .map_or(0, Vec::len)
            };
            let on_a = Reading::start(a.addr, &path);
            wait_until("A's upstream request", || asked() == 1);
            a.kill();
            drop(on_a);
            open.store(true, Ordering::SeqCst);
            let asked_b = Instant::now();
            let (head, body, reads) = Reading::start(b.addr, &path).thread.join().unwrap();
            println!(
                "B's client waited {:?} for its first byte after the kill -9",
                reads[0] - asked_b
            );
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert_eq!((body.len(), digest_of(&body)), (blob_len, d.clone()));
            let took_over = r#"regmirror_fleet_fills_total{role="took_over"}"#;
            assert_eq!(metric(&b, took_over), 1, "B took the download over");
            let log = b.log();
            assert!(
                log.contains("took over the lease of a holder that stopped answering")
                    && !log.contains("took over an expired lease"),
                "taken over before the lease expired:\n{log}"
            );
            assert_eq!(asked(), 2, "A's download and B's");
            settled(&b);
            assert!(
                object_keys(&moto, "leases/fills/").is_empty(),
                "leases are released"
            );
            Ok::<_, Missing>(())
        })
        .await
        .unwrap()
    );
}

/// Runs `regmirror gc` with `replica`'s configuration (on a spool of its own), plus `more`
/// environment.
fn gc(moto: &dyn StoragePeer, replica: &Regmirror, more: &[(&str, &str)]) -> std::process::Output {
    let env = seed_004(moto, &replica.dir.path().join("gc-spool"));
    peers::run(
        std::process::Command::new(env!("CARGO_BIN_EXE_regmirror"))
            .arg("gc")
            .arg("--config")
            .arg(replica.dir.path().join("config.yml"))
            .envs(env)
            .envs(more.iter().copied()),
    )
}

#[test]
fn gc_aborts_uploads_a_killed_replica_left() {
    let moto = or_skip!(MotoServer::start());
    moto.create_bucket(BUCKET);
    let cache = replica(&moto, "local: all");
    // What a replica killed while storing a blob leaves: an unfinished multipart upload, and
    // its lease, expired. Another blob is being stored by a live replica: its lease is live.
    let dead = format!("ab{}", "0".repeat(62));
    let live = format!("cd{}", "0".repeat(62));
    for hex in [&dead, &live] {
        let key = format!("blobs/sha256/{}/{hex}", &hex[..2]);
        let (status, _, body) = moto.s3("POST", &format!("/{BUCKET}/{key}?uploads"), &[], &[]);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for (hex, expires) in [(&dead, now_ms - 60_000), (&live, now_ms + 60_000)] {
        let lease =
            format!(r#"{{"holder":"x","address":null,"repository":"r","expires":{expires}}}"#);
        let (status, _, _) = moto.put(
            &format!("/{BUCKET}/leases/fills/local/sha256/{hex}"),
            &[],
            lease.as_bytes(),
        );
        assert_eq!(status, 200);
    }
    assert_eq!(moto.list_multipart_uploads(BUCKET).len(), 2);
    let out = gc(&moto, &cache, &[]);
    let left: Vec<String> = moto
        .list_multipart_uploads(BUCKET)
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(
        left,
        [format!("blobs/sha256/cd/{live}")],
        "only the live fill's upload stays: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !object_keys(&moto, "leases/").contains(&"leases/gc".to_owned()),
        "the gc lease is released"
    );
}

/// The fleet's signature of an internal path, valid until `expires` (unix seconds):
/// `<expires>.<hex HMAC-SHA256 of "<expires> <path>" keyed by http.secret>`.
fn fleet_signature(secret: &str, path: &str, expires: u64) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, format!("{expires} {path}").as_bytes());
    format!("{expires}.{}", hex::encode(tag.as_ref()))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The status and OCI error code of a GET of `path` with `headers`.
fn refusal(cache: &Regmirror, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let (status, head, body) = http("GET", cache.addr, path, headers);
    let json: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{e}: {head}\n{}", String::from_utf8_lossy(&body)));
    (
        status,
        json["errors"][0]["code"].as_str().unwrap_or("").to_owned(),
    )
}

on_each_store!(
    the_internal_route_needs_the_fleet_signature,
    the_internal_route_needs_the_fleet_signature_on_azurite
        => the_internal_route_needs_the_fleet_signature_on
);

fn the_internal_route_needs_the_fleet_signature_on(store: &dyn StoragePeer) {
    let fleet = replica(store, "local: all");
    let no_secret = replica_with_secret(store, "local: all", &[], None);
    let path = format!("/_regmirror/fills/docker.io/sha256:{}", "ab".repeat(32));
    let denied = (403, "DENIED".to_owned());
    let header = "Regmirror-Fleet";
    let now = unix_now();
    let right = fleet_signature(SECRET, &path, now + 20);
    let other_secret = fleet_signature("another-fleet-secret", &path, now + 20);
    let other_path = fleet_signature(SECRET, "/_regmirror/fills/docker.io/sha256:00", now + 20);
    // Seen once (a log, a proxy), a signature is no good a minute later, nor one made to last.
    let expired = fleet_signature(SECRET, &path, now - 60);
    let forever = fleet_signature(SECRET, &path, now + 365 * 86_400);
    let unsigned_expiry = right.replacen(&format!("{}.", now + 20), &format!("{}.", now + 25), 1);
    assert_eq!(refusal(&fleet, &path, &[]), denied, "no signature");
    for wrong in [
        other_secret.as_str(),
        other_path.as_str(),
        expired.as_str(),
        forever.as_str(),
        unsigned_expiry.as_str(),
        "zz",
    ] {
        assert_eq!(
            refusal(&fleet, &path, &[(header, wrong)]),
            denied,
            "a wrong signature: {wrong}"
        );
    }
    // Signed right: let in, and there is no download of that blob in flight.
    assert_eq!(
        refusal(&fleet, &path, &[(header, &right)]),
        (404, "BLOB_UNKNOWN".to_owned())
    );
    // A replica without http.secret refuses every request, the fleet's signature included.
    assert_eq!(refusal(&no_secret, &path, &[]), denied);
    assert_eq!(refusal(&no_secret, &path, &[(header, &right)]), denied);
}

on_each_store!(
    blobs_redirect_to_presigned_urls_unless_disabled,
    blobs_redirect_to_presigned_urls_unless_disabled_on_azurite
        => blobs_redirect_to_presigned_urls_unless_disabled_on
);

fn blobs_redirect_to_presigned_urls_unless_disabled_on(store: &dyn StoragePeer) {
    let work = tempfile::tempdir().unwrap();
    let (file, digest) = peers::random_file(work.path(), "blob", 100_000);
    // distribution's default on object storage: redirects on.
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = seed_004(store, &dir.path().join("spool"))
        .into_iter()
        .filter(|(k, _)| k != "REGISTRY_STORAGE_REDIRECT_DISABLE")
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let origin = or_skip!(Registry::start(RegistryOptions::default()));
    let (manifest, layer) = peers::push_small_image(origin.addr, "library/demo");
    let yaml = format!(
        "proxy: {{remoteurl: {}}}\nlocal: [{{prefix: team/}}]",
        origin.url()
    );
    let cache = Regmirror::spawn(dir, &yaml, &[], &env, &[]);
    or_skip!(peers::push_blob(cache.addr, "team/app", &file, &digest));
    let (status, head, _) = http(
        "GET",
        cache.addr,
        &format!("/v2/team/app/blobs/{digest}"),
        &[],
    );
    assert_eq!(status, 307, "{head}");
    let location = peers::header(&head, "location").unwrap();
    assert!(location.starts_with(&store.endpoint()), "{location}");
    assert!(
        location.contains(store.signature_parameter()),
        "signed: {location}"
    );
    if store.checks_signatures() {
        // Only the signature lets the URL through.
        let unsigned = location.split('?').next().unwrap().to_owned();
        assert_eq!(
            fetch(store, &unsigned).0,
            403,
            "{unsigned} without its signature"
        );
    }
    let (status, body) = fetch(store, &location);
    assert_eq!(status, 200);
    assert_eq!(digest_of(&body), digest);
    // HEAD is answered by the cache itself.
    let (status, head, _) = http(
        "HEAD",
        cache.addr,
        &format!("/v2/team/app/blobs/{digest}"),
        &[],
    );
    assert_eq!(status, 200, "{head}");
    // Every answer names the digest, the redirects included (pushed and fetched content, whole
    // and Range; HEAD is answered by the cache itself).
    let fetched = format!("/v2/library/demo/blobs/{layer}");
    let (status, head, _) = http("GET", cache.addr, &fetched, &[]);
    assert_eq!(status, 200, "the fill: {head}");
    assert_eq!(
        peers::header(&head, "docker-content-digest"),
        Some(layer.clone())
    );
    settled(&cache);
    let pushed = format!("/v2/team/app/blobs/{digest}");
    for (path, digest) in [(&pushed, &digest), (&fetched, &layer)] {
        for (method, range, expected) in [
            ("GET", None, 307),
            ("GET", Some("bytes=10-99"), 307),
            ("HEAD", None, 200),
        ] {
            let headers: Vec<(&str, &str)> = range.iter().map(|r| ("Range", *r)).collect();
            let (status, head, _) = http(method, cache.addr, path, &headers);
            assert_eq!(status, expected, "{method} {path} {range:?}: {head}");
            assert_eq!(
                peers::header(&head, "docker-content-digest").as_deref(),
                Some(digest.as_str()),
                "{method} {path} {range:?}: {head}"
            );
        }
    }
    for method in ["GET", "HEAD"] {
        let path = "/v2/library/demo/manifests/v1";
        let (status, head, _) = http(method, cache.addr, path, &[]);
        assert_eq!(status, 200, "{head}");
        assert_eq!(
            peers::header(&head, "docker-content-digest"),
            Some(manifest.clone())
        );
    }
}

/// GET of `url`, an URL on `store`.
fn fetch(store: &dyn StoragePeer, url: &str) -> (u16, Vec<u8>) {
    let target = url.trim_start_matches(&format!("http://{}", store.addr()));
    let (status, _, body) = http("GET", store.addr(), target, &[]);
    (status, body)
}

/// A small blob read from the bucket is remembered (`limits.blob_memo`): with its object deleted
/// behind the replica's back, the next hit is still served, from memory; with the memo off, the
/// same request finds no object and is a miss.
#[test]
fn small_blobs_on_the_bucket_are_served_from_memory_after_a_hit() {
    let moto = or_skip!(MotoServer::start());
    moto.create_bucket(BUCKET);
    let work = tempfile::tempdir().unwrap();
    for (limits, memo, size) in [
        ("", true, 20_000),
        ("\nlimits: {blob_memo: 0}", false, 20_001),
    ] {
        let (file, digest) = peers::random_file(work.path(), "blob", size);
        let path = format!("/v2/team/app/blobs/{digest}");
        let cache = replica(&moto, &format!("local: all{limits}"));
        or_skip!(peers::push_blob(cache.addr, "team/app", &file, &digest));
        let (status, _, body) = http("GET", cache.addr, &path, &[]);
        assert_eq!((status, digest_of(&body)), (200, digest.clone()));
        let hex = digest.trim_start_matches("sha256:");
        let key = object_keys(&moto, "blobs/")
            .into_iter()
            .find(|k| k.ends_with(hex))
            .expect("the pushed blob's object");
        let (status, _, _) = moto.s3("DELETE", &format!("/{BUCKET}/{key}"), &[], b"");
        assert_eq!(status, 204, "delete {key}");
        let (status, head, body) = http("GET", cache.addr, &path, &[]);
        if memo {
            assert_eq!(status, 200, "{head}");
            assert_eq!(digest_of(&body), digest);
            assert!(metric(&cache, "regmirror_memo_bytes{memo=\"blob\"}") >= 20_000);
        } else {
            assert_eq!(status, 404, "no object, no memo: {head}");
        }
    }
}

on_each_store!(
    eviction_on_the_bucket,
    eviction_on_the_bucket_on_azurite
        => eviction_on_the_bucket_on
);

fn eviction_on_the_bucket_on(store: &dyn StoragePeer) {
    let origin = or_skip!(Registry::start(RegistryOptions::default()));
    let work = tempfile::tempdir().unwrap();
    let images = or_skip!(Images::new());
    // Random content: the layers do not compress below the cap.
    images.build("v1", &[("one.bin", &random_bytes(2_000_000, 61))]);
    images.build("v2", &[("two.bin", &random_bytes(2_000_000, 62))]);
    images.push("v1", &format!("{}/library/demo:v1", origin.host()), &[]);
    images.push("v2", &format!("{}/library/demo:v2", origin.host()), &[]);
    // Room for one image; both replicas collect every second, one at a time.
    let yaml = format!("proxy: {{remoteurl: {}}}", origin.url());
    let gc = [
        ("REGISTRY_STORAGE_MAXSIZE", "3MB"),
        ("REGISTRY_STORAGE_GC_INTERVAL", "1s"),
    ];
    let a = replica_with(store, &yaml, &gc);
    let b = replica_with(store, &yaml, &gc);
    // v1 used on A, v2 on B, seconds apart (last uses are kept in seconds): the collecting
    // replica, whichever it is, sees both and evicts v1.
    let v1 = skopeo_pull(&format!("{}/library/demo:v1", a.host()), work.path(), &[]).unwrap();
    settled(&a);
    std::thread::sleep(Duration::from_millis(2500));
    let fresh = tempfile::tempdir().unwrap();
    skopeo_pull(&format!("{}/library/demo:v2", b.host()), fresh.path(), &[]).unwrap();
    settled(&b);
    let v1_blob = {
        let hex = digest_of(&v1);
        let hex = hex.trim_start_matches("sha256:").to_owned();
        format!("blobs/sha256/{}/{hex}", &hex[..2])
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while object_keys(store, "blobs/").contains(&v1_blob) {
        assert!(Instant::now() < deadline, "v1 is evicted for v2");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        object_keys(store, "meta/doomed/").is_empty() || {
            std::thread::sleep(Duration::from_secs(2));
            object_keys(store, "meta/doomed/").is_empty()
        },
        "doomed markers are cleared"
    );
    // v2 stays whole: pulled again without the origin.
    drop(origin);
    let again = tempfile::tempdir().unwrap();
    let manifest = std::fs::read(fresh.path().join("manifest.json")).unwrap();
    skopeo_pull(
        &format!("{}/library/demo@{}", a.host(), digest_of(&manifest)),
        again.path(),
        &[],
    )
    .unwrap();
}

#[test]
fn a_missing_bucket_is_one_clear_line_and_503s() {
    let moto = or_skip!(MotoServer::start());
    // No bucket created.
    let cache = replica(&moto, "local: all");
    let log = cache.log();
    let line = log
        .lines()
        .find(|l| l.contains("starting anyway"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains(&format!("s3://{BUCKET}/")) && line.contains(&moto.endpoint()),
        "names the bucket and the endpoint: {line}"
    );
    let (status, _, body) = http("GET", cache.addr, "/v2/team/app/manifests/v1", &[]);
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    moto.create_bucket(BUCKET);
    let (status, _, _) = http("GET", cache.addr, "/v2/team/app/manifests/v1", &[]);
    assert_eq!(
        status, 404,
        "served (nothing pushed yet) once the bucket exists"
    );
}

/// On Azure a missing container answers 404 like a missing blob: it must read as an outage.
#[test]
fn a_missing_container_is_one_clear_line_and_503s_on_azurite() {
    let azurite = or_skip!(Azurite::start());
    let container = ("REGISTRY_STORAGE_AZURE_CONTAINER", "absent");
    let cache = replica_with(&azurite, "local: all", &[container]);
    let log = cache.log();
    let line = log
        .lines()
        .find(|l| l.contains("starting anyway"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("azure://absent/") && line.contains(&azurite.service_url()),
        "names the container and the service URL: {line}"
    );
    let (status, _, body) = http("GET", cache.addr, "/v2/team/app/manifests/v1", &[]);
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    azurite.create_container("absent");
    let (status, _, _) = http("GET", cache.addr, "/v2/team/app/manifests/v1", &[]);
    assert_eq!(
        status, 404,
        "served (nothing pushed yet) once the container exists"
    );
}

#[test]
fn a_push_moves_between_replicas() {
    let moto = or_skip!(MotoServer::start());
    moto.create_bucket(BUCKET);
    let replicas: Vec<Regmirror> = (0..3).map(|_| replica(&moto, "local: all")).collect();
    let blob = random_bytes(3_000_000, 71);
    let digest = digest_of(&blob);
    // docker push's three requests, each to another replica (a load balancer without stickiness).
    let (status, head, _) = http("POST", replicas[0].addr, "/v2/team/app/blobs/uploads/", &[]);
    assert_eq!(status, 202);
    let location = peers::header(&head, "location").unwrap();
    let (first, second) = blob.split_at(1_000_000);
    for (replica, part, size) in [
        (&replicas[1], first, 1_000_000),
        (&replicas[2], second, 3_000_000),
    ] {
        let (status, head, _) = peers::http_with_body("PATCH", replica.addr, &location, &[], part);
        assert_eq!(status, 202, "{head}");
        assert_eq!(
            peers::header(&head, "range").as_deref(),
            Some(format!("0-{}", size - 1).as_str())
        );
    }
    let (status, head, _) = http("GET", replicas[0].addr, &location, &[]);
    assert_eq!(status, 204, "{head}");
    let (status, head, _) = peers::http_with_body(
        "PUT",
        replicas[0].addr,
        &format!("{location}?digest={digest}"),
        &[],
        b"",
    );
    assert_eq!(status, 201, "{head}");
    let (status, _, body) = http(
        "GET",
        replicas[1].addr,
        &format!("/v2/team/app/blobs/{digest}"),
        &[],
    );
    assert_eq!(status, 200);
    assert_eq!(digest_of(&body), digest);
    assert!(
        object_keys(&moto, "uploads/").is_empty(),
        "parts and record are gone"
    );
}

on_each_store!(
    abandoned_pushes_are_collected,
    abandoned_pushes_are_collected_on_azurite
        => abandoned_pushes_are_collected_on
);

fn abandoned_pushes_are_collected_on(store: &dyn StoragePeer) {
    let cache = replica_with(
        store,
        "local: all",
        &[("REGISTRY_LIMITS_UPLOAD_LIFETIME", "1s")],
    );
    let (_, head, _) = http("POST", cache.addr, "/v2/team/app/blobs/uploads/", &[]);
    let location = peers::header(&head, "location").unwrap();
    let (status, _, _) = peers::http_with_body("PATCH", cache.addr, &location, &[], &[5u8; 1000]);
    assert_eq!(status, 202);
    assert!(!object_keys(store, "uploads/").is_empty());
    std::thread::sleep(Duration::from_secs(3));
    let (status, _, _) = http("GET", cache.addr, &location, &[]);
    assert_eq!(status, 404, "abandoned");
    gc(store, &cache, &[("REGISTRY_LIMITS_UPLOAD_LIFETIME", "1s")]);
    assert!(object_keys(store, "uploads/").is_empty(), "collected");
    if let Some(uploads) = store.pending_uploads() {
        assert!(uploads.is_empty(), "{uploads:?}");
    }
}

on_each_store!(
    the_fleet_holds_to_max_uploads,
    the_fleet_holds_to_max_uploads_on_azurite
        => the_fleet_holds_to_max_uploads_on
);

fn the_fleet_holds_to_max_uploads_on(store: &dyn StoragePeer) {
    let limit = [("REGISTRY_LIMITS_MAX_UPLOADS", "5")];
    let replicas: Vec<Regmirror> = (0..2)
        .map(|_| replica_with(store, "local: all", &limit))
        .collect();
    // Eight uploads started on two replicas in turn: the limit is the bucket's.
    let mut locations = Vec::new();
    let mut refusals = Vec::new();
    for n in 0..8 {
        let replica = &replicas[n % 2];
        let (status, head, body) = http("POST", replica.addr, "/v2/team/app/blobs/uploads/", &[]);
        match status {
            202 => locations.push(peers::header(&head, "location").unwrap()),
            _ => refusals.push((status, String::from_utf8_lossy(&body).into_owned())),
        }
    }
    assert_eq!(locations.len(), 5, "refused: {refusals:?}");
    assert_eq!(refusals.len(), 3);
    for (status, body) in &refusals {
        assert_eq!(*status, 429, "{body}");
        assert!(body.contains("TOOMANYREQUESTS"), "{body}");
        assert!(body.contains("limits.max_uploads"), "{body}");
    }
    // An upload that ends makes room for one more.
    let (status, _, _) = http("DELETE", replicas[1].addr, &locations[0], &[]);
    assert_eq!(status, 204);
    let (status, _, body) = http("POST", replicas[0].addr, "/v2/team/app/blobs/uploads/", &[]);
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
}

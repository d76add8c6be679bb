//! Caches in a chain, every one a real process on 127.0.0.1: the distribution registry as
//! origin, regmirror or distribution's proxy in the middle, regmirror at the front, and 8
//! concurrent cold clients (curl) of one 32 MiB blob, half of them asking with HEAD first as
//! a cache in front would. The origin's access log counts the downloads.

mod peers;

use std::path::Path;

use peers::{Missing, Registry, RegistryOptions, Regmirror};

/// 8 concurrent clients of `url`; clients 0, 2, 4 and 6 send a HEAD first.
fn eight_cold_clients(url: &str, digest: &str, dir: &Path) {
    peers::concurrent_cold_clients(url, digest, dir, 8, |i| i % 2 == 0);
}

fn origin_with_blob(dir: &Path) -> Result<(Registry, String), Missing> {
    let origin = Registry::start(RegistryOptions::default())?;
    let (file, digest) = peers::random_file(dir, "big", 32 << 20);
    peers::push_blob(origin.addr, "library/big", &file, &digest)?;
    Ok((origin, digest))
}

#[test]
fn regmirror_behind_regmirror_downloads_once() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, digest) = or_skip!(origin_with_blob(dir.path()));
    let back = Regmirror::serve(&format!("proxy: {{remoteurl: {}}}", origin.url()), &[]);
    let front = Regmirror::serve(&format!("proxy: {{remoteurl: {}}}", back.url()), &[]);
    let path = format!("/v2/library/big/blobs/{digest}");
    eight_cold_clients(&format!("{}{path}", front.url()), &digest, dir.path());
    assert_eq!(
        origin.count("GET", &path),
        1,
        "one origin download:\n{}",
        origin.log()
    );
    assert_eq!(origin.count("HEAD", &path), 0, "no HEAD before the GET");
}

#[test]
fn regmirror_behind_a_distribution_proxy_sends_it_one_request() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, digest) = or_skip!(origin_with_blob(dir.path()));
    let proxy = or_skip!(Registry::start(RegistryOptions {
        proxy: Some(origin.url()),
        ..RegistryOptions::default()
    }));
    let front = Regmirror::serve(&format!("proxy: {{remoteurl: {}}}", proxy.url()), &[]);
    let path = format!("/v2/library/big/blobs/{digest}");
    eight_cold_clients(&format!("{}{path}", front.url()), &digest, dir.path());
    // The proxy hears one GET, no HEAD: distribution's proxy downloads a blob it lacks whole
    // for a HEAD too, and again for every request that arrives while it is fetching.
    assert_eq!(
        (proxy.count("GET", &path), proxy.count("HEAD", &path)),
        (1, 0),
        "one request to the proxy:\n{}",
        proxy.log()
    );
    // For that one request, distribution's proxy fetches from the origin twice: once to store
    // (`storeLocal`) and once to answer (`copyContent`), each after a HEAD (read from
    // registry/proxy/proxyblobstore.go). regmirror in front adds nothing to that.
    assert_eq!(
        origin.count("GET", &path),
        2,
        "the proxy's own two downloads:\n{}",
        origin.log()
    );
}

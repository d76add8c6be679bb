//! `registry::namespace` on arbitrary `?ns=` values and queries: never panics, and every host it
//! accepts is one a URL cannot be escaped from: its text parses back to the same host, and
//! `https://{host}/v2/` is exactly that host and port (443 by default), the path `/v2/`, no user
//! info, query or fragment.
//!
//! The fuzz target `registry_host` (fuzz/fuzz_targets/registry_host.rs) runs it under libFuzzer;
//! tests/fuzz_corpus.rs replays the committed corpus (fuzz/corpus/registry_host/) through it.

use regmirror::registry::RegistryHost;
use regmirror::registry::namespace::from_query;

/// The property, for one input.
pub fn check(text: &str) {
    let _ = from_query(Some(text));
    let Ok(host) = RegistryHost::parse(text) else {
        return;
    };
    let written = host.to_string();
    assert_eq!(
        RegistryHost::parse(&written).as_ref(),
        Ok(&host),
        "{text:?}"
    );
    let url = url::Url::parse(&format!("https://{written}/v2/"))
        .unwrap_or_else(|e| panic!("{text:?} -> {written:?}: {e}"));
    assert_eq!(url.host_str(), Some(host.host()), "{text:?}");
    assert_eq!(
        url.port_or_known_default(),
        Some(host.port().unwrap_or(443))
    );
    assert_eq!(
        (
            url.path(),
            url.username(),
            url.password(),
            url.query(),
            url.fragment()
        ),
        ("/v2/", "", None, None, None),
        "{text:?}"
    );
}

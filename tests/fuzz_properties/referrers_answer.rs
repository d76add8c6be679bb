//! An upstream's referrers answer: `Collector::add_index` over pages of arbitrary bytes, within
//! small bounds, and `next_query` on an arbitrary `Link`. Never panics; what is kept is within
//! the bounds, one valid descriptor per digest with a media type, sorted by digest, and a cut
//! answer says so; a followed link continues the same path.
//!
//! Input: the `Link` header on the first line, the count bound in decimal on the second, then
//! pages separated by a line holding only `---`.
//!
//! The fuzz target `referrers_answer` (fuzz/fuzz_targets/referrers_answer.rs) runs it under libFuzzer;
//! tests/fuzz_corpus.rs replays the committed corpus (fuzz/corpus/referrers_answer/) through it.

use regmirror::cache::meta::ListBounds;
use regmirror::cache::referrers::{Collector, next_query};
use regmirror::reference::Digest;

const PATH: &str = "/v2/team/app/referrers/sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// The property, for one input.
pub fn check(input: &str) {
    let mut lines = input.splitn(3, '\n');
    let link = lines.next().unwrap_or("");
    let count = lines.next().and_then(|c| c.parse().ok()).unwrap_or(3);
    let pages = lines.next().unwrap_or("");
    if let Some(query) = next_query(link, PATH) {
        assert!(link.contains(&format!("{PATH}?{query}")), "{link:?}");
    }
    let bounds = ListBounds { count, bytes: 4096 };
    let mut collector = Collector::new(bounds);
    for page in pages.split("\n---\n") {
        let _ = collector.add_index(page.as_bytes());
    }
    let cut = collector.is_cut();
    let subject = Digest::sha256_from_bytes(&[0; 32]);
    let (kept, warning) = collector.finish(&subject);
    assert_eq!(cut, warning.is_some());
    assert!(kept.len() <= count);
    let bytes: usize = kept.iter().map(|d| d.to_string().len()).sum();
    assert!(bytes <= bounds.bytes, "{bytes} bytes kept");
    let digests: Vec<Digest> = kept
        .iter()
        .map(|d| {
            assert!(d["mediaType"].is_string(), "{d}");
            Digest::parse(d["digest"].as_str().unwrap()).unwrap()
        })
        .collect();
    assert!(digests.windows(2).all(|w| w[0] < w[1]), "{digests:?}");
}

//! "Did you mean": the known word closest to a misspelt one, as cargo and clap suggest.

/// The candidate nearest to `word` (ignoring case) by edit distance, when it is near enough to be
/// a slip: at most a third of the word's length (at least one edit), a transposition counting as
/// one. Ties go to the first candidate.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_lowercase();
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|candidate| {
            let distance = strsim::damerau_levenshtein(&word, &candidate.to_lowercase());
            (distance, candidate)
        })
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::closest;

    const KEYS: [&str; 3] = [
        "mirror-registries",
        "registry-mirrors",
        "insecure-registries",
    ];

    #[test]
    fn slips_find_their_key() {
        for (word, expected) in [
            ("mirror-registry", Some("mirror-registries")),
            ("mirrors-registries", Some("mirror-registries")),
            ("Registry-Mirrors", Some("registry-mirrors")),
            ("registry-mirror", Some("registry-mirrors")),
            ("insecure-registires", Some("insecure-registries")),
            ("debug", None),
            ("log-driver", None),
            ("registries", None),
        ] {
            assert_eq!(closest(word, KEYS), expected, "{word}");
        }
        assert_eq!(closest("adr", ["addr", "net", "host"]), Some("addr"));
        assert_eq!(
            closest("tag_revalidte", ["ttl", "tag_revalidate"]),
            Some("tag_revalidate")
        );
        assert_eq!(closest("to", ["on"]), None, "two edits in two letters");
        assert_eq!(closest("tls", ["ttl"]), None, "two edits in three");
        assert_eq!(closest("tl", ["ttl"]), Some("ttl"), "one edit");
        assert_eq!(closest("Proxy", ["proxy"]), Some("proxy"), "case alone");
    }
}

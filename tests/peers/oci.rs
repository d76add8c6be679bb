//! A small OCI registry client over plain HTTP for tests: blob uploads, manifest PUTs, header
//! lookups whatever their case, and the referrers API followed page by page.

use std::net::SocketAddr;

use serde_json::Value;
use sha2::Digest as _;

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

pub fn sha512(bytes: &[u8]) -> String {
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(bytes)))
}

/// A header of a response head, whatever its case.
pub fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

pub fn headers(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
        .collect()
}

/// The path (and query) of a `Location`, absolute or not.
pub fn location(head: &str) -> String {
    let location = header(head, "location").expect("a Location header");
    match location.find("://") {
        Some(at) => {
            let rest = &location[at + 3..];
            rest[rest.find('/').unwrap_or(rest.len())..].to_owned()
        }
        None => location,
    }
}

pub fn with_query(path: &str, query: &str) -> String {
    let separator = if path.contains('?') { '&' } else { '?' };
    format!("{path}{separator}{query}")
}

/// A registry spoken to over plain HTTP on loopback.
pub struct Client(pub SocketAddr);

impl Client {
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String, Vec<u8>) {
        super::http_with_body(method, self.0, path, headers, body)
    }

    /// Uploads `bytes` as a blob named `digest` (POST, then PUT with the content).
    pub fn blob(&self, repository: &str, bytes: &[u8], digest: &str) {
        let (status, head, _) = self.request(
            "POST",
            &format!("/v2/{repository}/blobs/uploads/"),
            &[],
            b"",
        );
        assert_eq!(status, 202, "{head}");
        let put = with_query(&location(&head), &format!("digest={digest}"));
        let (status, head, body) = self.request(
            "PUT",
            &put,
            &[("Content-Type", "application/octet-stream")],
            bytes,
        );
        assert_eq!(status, 201, "{head}\n{}", String::from_utf8_lossy(&body));
    }

    /// PUTs a manifest; the answer's status and head.
    pub fn manifest(
        &self,
        repository: &str,
        reference: &str,
        manifest: &[u8],
        media_type: &str,
    ) -> (u16, String) {
        let (status, head, _) = self.request(
            "PUT",
            &format!("/v2/{repository}/manifests/{reference}"),
            &[("Content-Type", media_type)],
            manifest,
        );
        (status, head)
    }

    pub fn get(&self, path: &str) -> (u16, String, Vec<u8>) {
        super::http("GET", self.0, path, &[])
    }

    /// Every page of the referrers of `subject`, following `Link`.
    pub fn referrers(&self, path: &str) -> (Vec<Value>, usize) {
        let mut descriptors = Vec::new();
        let mut next = Some(path.to_owned());
        let mut pages = 0;
        while let Some(path) = next {
            let (status, head, body) = self.get(&path);
            assert_eq!(status, 200, "{path}: {head}");
            assert_eq!(
                header(&head, "content-type").as_deref(),
                Some("application/vnd.oci.image.index.v1+json")
            );
            let index: Value = serde_json::from_slice(&body).unwrap();
            descriptors.extend(index["manifests"].as_array().unwrap().iter().cloned());
            next = header(&head, "link").map(|l| {
                l.split('>')
                    .next()
                    .unwrap()
                    .trim_start_matches('<')
                    .to_owned()
            });
            pages += 1;
        }
        (descriptors, pages)
    }
}

//! OCI distribution-spec 1.1 behaviour of `regmirror serve`, as our own tests: sha512 content,
//! out-of-order chunks, `subject` and the referrers API (locally and through the cache, from an
//! origin with the API and from one with only the referrers tag schema), tag parameters and tag
//! deletes, anonymous mounts, the plain-registry mode (no `proxy` section), and the pages of the
//! catalog and tag lists compared with the real distribution registry's. The official
//! conformance suite (prebuilt in ../shared/tools/oci-conformance) runs against the plain
//! registry (full mode) and through the cache (read-only mode), and must report no failure.
//!
//! Peers: the real distribution registry, dockerd, and regmirror itself as an origin with the
//! referrers API.

mod peers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use peers::oci::{Client, header, headers, location, sha256, sha512, with_query};
use peers::{
    Dockerd, Images, Missing, Registry, RegistryOptions, Regmirror, engine_lock, free_port, http,
};
use serde_json::{Value, json};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";
const SIGNATURE: &str = "application/vnd.example.signature";
const SBOM: &str = "application/vnd.example.sbom";

/// Seed 000's "cache off" file, verbatim.
const SEED_CACHE_OFF: &str = include_str!("fixtures/seed-000-cache-off.yml");

/// An image: one layer, one config; returns (manifest bytes, its sha256 digest).
fn push_image(client: &Client, repository: &str, tag: &str, content: &[u8]) -> (Vec<u8>, String) {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        sha256(content)
    );
    client.blob(repository, config.as_bytes(), &sha256(config.as_bytes()));
    client.blob(repository, content, &sha256(content));
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config.as_bytes()), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(content), "size": content.len()}],
    })
    .to_string()
    .into_bytes();
    let (status, head) = client.manifest(repository, tag, &manifest, OCI_MANIFEST);
    assert_eq!(status, 201, "{head}");
    let digest = sha256(&manifest);
    (manifest, digest)
}

/// An artifact (empty config, one small blob) about `subject`; returns (bytes, digest).
fn artifact(
    client: &Client,
    repository: &str,
    subject: (&str, usize),
    artifact_type: Option<&str>,
    annotation: &str,
) -> (Vec<u8>, String) {
    client.blob(repository, b"{}", &sha256(b"{}"));
    client.blob(
        repository,
        annotation.as_bytes(),
        &sha256(annotation.as_bytes()),
    );
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": artifact_type.map_or(SBOM, |_| EMPTY), "digest": sha256(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": sha256(annotation.as_bytes()), "size": annotation.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.0, "size": subject.1},
        "annotations": {"org.example.note": annotation},
    });
    if let Some(artifact_type) = artifact_type {
        manifest["artifactType"] = artifact_type.into();
    }
    let bytes = manifest.to_string().into_bytes();
    let digest = sha256(&bytes);
    (bytes, digest)
}

/// `local: all` with deletes enabled.
fn plain_registry() -> Regmirror {
    Regmirror::serve_with_env(
        tempfile::tempdir().unwrap(),
        "local: all",
        &[],
        &[("REGISTRY_STORAGE_DELETE_ENABLED", "true")],
    )
}

#[test]
fn sha512_content_works_end_to_end() {
    let origin = plain_registry();
    let client = Client(origin.addr);
    // A chunked upload named by its sha512 digest.
    let layer = b"a layer hashed with sha512".repeat(100);
    let (status, head, _) = client.request(
        "POST",
        "/v2/team/app/blobs/uploads/?digest-algorithm=sha512",
        &[],
        b"",
    );
    assert_eq!(status, 202, "{head}");
    let (status, head, _) = client.request(
        "PATCH",
        &location(&head),
        &[
            ("Content-Range", "0-999"),
            ("Content-Type", "application/octet-stream"),
        ],
        &layer[..1000],
    );
    assert_eq!(status, 202, "{head}");
    let put = with_query(&location(&head), &format!("digest={}", sha512(&layer)));
    let (status, head, _) = client.request("PUT", &put, &[], &layer[1000..]);
    assert_eq!(status, 201, "{head}");
    assert_eq!(header(&head, "docker-content-digest"), Some(sha512(&layer)));
    // A wrong sha512 is refused.
    let (_, head, _) = client.request("POST", "/v2/team/app/blobs/uploads/", &[], b"");
    let put = with_query(&location(&head), &format!("digest={}", sha512(b"other")));
    let (status, _, body) = client.request("PUT", &put, &[], b"not other");
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("DIGEST_INVALID"));
    // Mounted into another repository, and referenced by a manifest pushed by sha512 digest.
    let (status, head, _) = client.request(
        "POST",
        &format!(
            "/v2/team/other/blobs/uploads/?mount={}&from=team/app",
            sha512(&layer)
        ),
        &[],
        b"",
    );
    assert_eq!(status, 201, "{head}");
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    client.blob("team/other", config, &sha512(config));
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha512(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha512(&layer), "size": layer.len()}],
    })
    .to_string()
    .into_bytes();
    let (status, head) = client.manifest("team/other", &sha512(&manifest), &manifest, OCI_MANIFEST);
    assert_eq!(status, 201, "{head}");
    assert_eq!(
        header(&head, "docker-content-digest"),
        Some(sha512(&manifest))
    );
    let (status, _, body) = client.get(&format!("/v2/team/other/manifests/{}", sha512(&manifest)));
    assert_eq!((status, body), (200, manifest.clone()));

    // Through a cache: fills verified with sha512.
    let cache = Regmirror::serve(&format!("proxy: {{remoteurl: {}}}", origin.url()), &[]);
    let through = Client(cache.addr);
    let (status, head, body) =
        through.get(&format!("/v2/team/other/manifests/{}", sha512(&manifest)));
    assert_eq!((status, &body), (200, &manifest), "{head}");
    assert_eq!(
        header(&head, "docker-content-digest"),
        Some(sha512(&manifest))
    );
    for _ in 0..2 {
        let (status, head, body) = through.get(&format!("/v2/team/other/blobs/{}", sha512(&layer)));
        assert_eq!((status, body.len()), (200, layer.len()), "{head}");
        assert_eq!(body, layer);
    }
}

#[test]
fn an_out_of_order_chunk_gets_416_with_the_upload_state() {
    let registry = plain_registry();
    let client = Client(registry.addr);
    let data = b"0123456789abcdefghij";
    let (_, head, _) = client.request("POST", "/v2/team/app/blobs/uploads/", &[], b"");
    let (status, head, _) = client.request(
        "PATCH",
        &location(&head),
        &[("Content-Range", "0-9")],
        &data[..10],
    );
    assert_eq!(status, 202, "{head}");
    let upload = location(&head);
    // Bytes 15-19 while 10 is expected.
    let (status, head, body) =
        client.request("PATCH", &upload, &[("Content-Range", "15-19")], &data[15..]);
    assert_eq!(status, 416, "{head}");
    assert!(String::from_utf8_lossy(&body).contains("RANGE_INVALID"));
    assert_eq!(header(&head, "range").as_deref(), Some("0-9"));
    assert!(header(&head, "location").is_some());
    // The upload is intact and continues from 10.
    let (status, _, _) = client.request(
        "PATCH",
        &location(&head),
        &[("Content-Range", "10-19")],
        &data[10..],
    );
    assert_eq!(status, 202);
    let put = with_query(&upload, &format!("digest={}", sha256(data)));
    let (status, head, _) = client.request("PUT", &put, &[], b"");
    assert_eq!(status, 201, "{head}");
    let (_, _, body) = client.get(&format!("/v2/team/app/blobs/{}", sha256(data)));
    assert_eq!(body, data);
}

#[test]
fn referrers_of_local_manifests() {
    let registry = plain_registry();
    let client = Client(registry.addr);
    // The subject does not exist yet: its referrers are accepted anyway.
    let (subject, subject_digest) = {
        let bytes = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": EMPTY, "digest": sha256(b"{}"), "size": 2}, "layers": []}).to_string().into_bytes();
        let digest = sha256(&bytes);
        (bytes, digest)
    };
    let about = (subject_digest.as_str(), subject.len());
    let (signature, signature_digest) =
        artifact(&client, "team/app", about, Some(SIGNATURE), "signed");
    let (status, head) = client.manifest("team/app", &signature_digest, &signature, OCI_MANIFEST);
    assert_eq!(status, 201, "{head}");
    assert_eq!(header(&head, "oci-subject"), Some(subject_digest.clone()));
    let (sbom, sbom_digest) = artifact(&client, "team/app", about, None, "packages");
    let (status, _) = client.manifest("team/app", &sbom_digest, &sbom, OCI_MANIFEST);
    assert_eq!(status, 201);
    // An index can refer too.
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": SIGNATURE, "manifests": [], "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": subject.len()}}).to_string().into_bytes();
    let (status, head) = client.manifest("team/app", &sha256(&index), &index, OCI_INDEX);
    assert_eq!(status, 201, "{head}");
    // Then the subject itself, by tag.
    client.blob("team/app", b"{}", &sha256(b"{}"));
    let (status, head) = client.manifest("team/app", "v1", &subject, OCI_MANIFEST);
    assert_eq!(status, 201, "{head}");
    assert_eq!(
        header(&head, "oci-subject"),
        None,
        "the subject has no subject"
    );

    let path = format!("/v2/team/app/referrers/{subject_digest}");
    let (all, pages) = client.referrers(&path);
    assert_eq!(pages, 1);
    let mut digests: Vec<&str> = all.iter().map(|d| d["digest"].as_str().unwrap()).collect();
    digests.sort_unstable();
    let mut expected = vec![signature_digest.as_str(), sbom_digest.as_str()];
    let index_digest = sha256(&index);
    expected.push(&index_digest);
    expected.sort_unstable();
    assert_eq!(digests, expected);
    let by_digest = |d: &str| all.iter().find(|x| x["digest"] == d).unwrap().clone();
    let signature_entry = by_digest(&signature_digest);
    assert_eq!(signature_entry["artifactType"], SIGNATURE);
    assert_eq!(signature_entry["mediaType"], OCI_MANIFEST);
    assert_eq!(signature_entry["size"], signature.len());
    assert_eq!(signature_entry["annotations"]["org.example.note"], "signed");
    assert_eq!(
        by_digest(&sbom_digest)["artifactType"],
        SBOM,
        "the config's media type"
    );
    assert_eq!(by_digest(&index_digest)["mediaType"], OCI_INDEX);

    // Filtered by artifactType, which the answer says.
    let (status, head, body) = client.get(&format!("{path}?artifactType={SIGNATURE}"));
    assert_eq!(status, 200);
    assert_eq!(
        header(&head, "oci-filters-applied").as_deref(),
        Some("artifactType")
    );
    let filtered: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(filtered["manifests"].as_array().unwrap().len(), 2);
    assert!(
        filtered["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["artifactType"] == SIGNATURE)
    );
    let (_, head, _) = client.get(&path);
    assert_eq!(header(&head, "oci-filters-applied"), None);

    // Paginated with Link.
    let (paged, pages) = client.referrers(&format!("{path}?n=1"));
    assert_eq!((paged.len(), pages), (3, 3));
    let (paged, pages) = client.referrers(&format!("{path}?n=1&artifactType={SIGNATURE}"));
    assert_eq!((paged.len(), pages), (2, 2));

    // A digest nothing refers to: an empty index.
    let (status, head, body) =
        client.get(&format!("/v2/team/app/referrers/{}", sha256(b"nothing")));
    assert_eq!(status, 200);
    assert_eq!(header(&head, "content-type").as_deref(), Some(OCI_INDEX));
    let empty: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (empty["schemaVersion"].clone(), empty["manifests"].clone()),
        (json!(2), json!([]))
    );
    // Another repository does not see them.
    let (other, _) = client.referrers(&format!("/v2/team/other/referrers/{subject_digest}"));
    assert!(other.is_empty());

    // Deleting a referrer takes it out of the list.
    let (status, _, _) = client.request(
        "DELETE",
        &format!("/v2/team/app/manifests/{signature_digest}"),
        &[],
        b"",
    );
    assert_eq!(status, 202);
    let (left, _) = client.referrers(&path);
    assert_eq!(left.len(), 2);
    assert!(
        left.iter()
            .all(|d| d["digest"] != signature_digest.as_str())
    );
    // A restart keeps them.
    let addr = registry.addr;
    let dir = registry.stop();
    let registry = Regmirror::serve_with_env(
        dir,
        &format!("local: all\nhttp: {{addr: {addr}}}"),
        &[],
        &[("REGISTRY_STORAGE_DELETE_ENABLED", "true")],
    );
    let (kept, _) = Client(registry.addr).referrers(&path);
    assert_eq!(kept, left);
}

#[test]
fn non_distributable_layers_need_no_upload_and_unknown_blobs_are_named() {
    let registry = plain_registry();
    let client = Client(registry.addr);
    client.blob("team/app", b"{}", &sha256(b"{}"));
    let foreign = sha256(b"a foreign layer nobody uploads");
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": EMPTY, "digest": sha256(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "digest": foreign, "size": 30, "urls": ["https://example.test/layer"]}],
    }).to_string().into_bytes();
    let (status, head) = client.manifest("team/app", "foreign", &manifest, OCI_MANIFEST);
    assert_eq!(status, 201, "{head}");
    // A missing distributable layer is still refused, by name.
    let missing = sha256(b"never uploaded");
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": EMPTY, "digest": sha256(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": missing, "size": 14}],
    }).to_string().into_bytes();
    let (status, _, body) = client.request(
        "PUT",
        "/v2/team/app/manifests/missing",
        &[("Content-Type", OCI_MANIFEST)],
        &manifest,
    );
    assert_eq!(status, 400);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("MANIFEST_BLOB_UNKNOWN") && body.contains(&missing),
        "{body}"
    );
}

#[test]
fn tags_by_parameter_tag_deletes_and_anonymous_mounts() {
    let registry = plain_registry();
    let client = Client(registry.addr);
    let (manifest, digest) = push_image(&client, "team/app", "v1", b"layer one");
    // Pushed by digest with tags as parameters: each is named in OCI-Tag.
    let (status, head) = client.manifest(
        "team/app",
        &format!("{digest}?tag=a&tag=b&tag=a"),
        &manifest,
        OCI_MANIFEST,
    );
    assert_eq!(status, 201, "{head}");
    assert_eq!(headers(&head, "oci-tag"), ["a", "b"]);
    let (status, _, body) = client.request(
        "PUT",
        &format!("/v2/team/app/manifests/{digest}?tag=bad!tag"),
        &[("Content-Type", OCI_MANIFEST)],
        &manifest,
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let tags = |client: &Client| {
        let (_, _, body) = client.get("/v2/team/app/tags/list");
        let list: Value = serde_json::from_slice(&body).unwrap();
        list["tags"].clone()
    };
    assert_eq!(tags(&client), json!(["a", "b", "v1"]));
    // A tag is deleted alone: the manifest stays, by digest and by its other tags.
    let (status, head, _) = client.request("DELETE", "/v2/team/app/manifests/a", &[], b"");
    assert_eq!(status, 202, "{head}");
    assert_eq!(tags(&client), json!(["b", "v1"]));
    assert_eq!(client.get("/v2/team/app/manifests/a").0, 404);
    assert_eq!(client.get("/v2/team/app/manifests/b").0, 200);
    assert_eq!(
        client.get(&format!("/v2/team/app/manifests/{digest}")).0,
        200
    );
    assert_eq!(
        client
            .request("DELETE", "/v2/team/app/manifests/a", &[], b"")
            .0,
        404
    );

    // A mount without `from`: any repository of the registry that holds the blob.
    let (status, head, _) = client.request(
        "POST",
        &format!(
            "/v2/team/copy/blobs/uploads/?mount={}",
            sha256(b"layer one")
        ),
        &[],
        b"",
    );
    assert_eq!(status, 201, "{head}");
    assert_eq!(
        client
            .get(&format!("/v2/team/copy/blobs/{}", sha256(b"layer one")))
            .2,
        b"layer one"
    );
    // Not held: a new upload starts instead.
    let (status, _, _) = client.request(
        "POST",
        &format!("/v2/team/copy/blobs/uploads/?mount={}", sha256(b"unknown")),
        &[],
        b"",
    );
    assert_eq!(status, 202);
}

/// A signature about `subject` pushed by digest to `client`'s `repository`; (bytes, digest).
fn push_signature(
    client: &Client,
    repository: &str,
    subject: (&str, usize),
    note: &str,
) -> (Vec<u8>, String) {
    let (bytes, digest) = artifact(client, repository, subject, Some(SIGNATURE), note);
    let (status, head) = client.manifest(repository, &digest, &bytes, OCI_MANIFEST);
    assert_eq!(status, 201, "{head}");
    (bytes, digest)
}

#[test]
fn referrers_through_the_cache_from_an_origin_with_the_referrers_api() {
    let origin = plain_registry();
    let upstream = Client(origin.addr);
    let (image, image_digest) = push_image(&upstream, "team/app", "v1", b"the image");
    let (signature, signature_digest) =
        push_signature(&upstream, "team/app", (&image_digest, image.len()), "api");
    let cache = Regmirror::serve(
        &format!("proxy: {{remoteurl: {}, tag_revalidate: 1h}}", origin.url()),
        &[],
    );
    let client = Client(cache.addr);
    let path = format!("/v2/team/app/referrers/{image_digest}");
    let (listed, _) = client.referrers(&path);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["digest"], signature_digest.as_str());
    assert_eq!(listed[0]["artifactType"], SIGNATURE);
    // The signature and its blobs come through the cache like any content.
    let (status, _, body) = client.get(&format!("/v2/team/app/manifests/{signature_digest}"));
    assert_eq!((status, body), (200, signature));
    assert_eq!(
        client
            .get(&format!("/v2/team/app/blobs/{}", sha256(b"api")))
            .2,
        b"api"
    );
    // Within tag_revalidate the answer is the cache's own, the origin not asked.
    let dir = origin.stop();
    let (status, head, _) = client.get(&path);
    assert_eq!(status, 200);
    assert_eq!(header(&head, "warning"), None, "fresh: {head}");
    let (status, head, body) = client.get(&format!("{path}?artifactType={SBOM}"));
    assert_eq!(status, 200);
    assert_eq!(
        header(&head, "oci-filters-applied").as_deref(),
        Some("artifactType")
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["manifests"],
        json!([])
    );
    drop(dir);
    assert!(cache.log().contains("referrers"), "{}", cache.log());
}

#[test]
fn referrers_through_the_cache_from_an_origin_with_only_the_tag_schema() {
    let mut origin = or_skip!(Registry::start(RegistryOptions::default()));
    let upstream = Client(origin.addr);
    let (image, image_digest) = push_image(&upstream, "team/app", "v1", b"the image");
    // distribution 2.8 has no referrers API: a client pushes the signature, then the index
    // tagged sha256-<hex> that lists it (the referrers tag schema).
    let (status, _, _) = upstream.get(&format!("/v2/team/app/referrers/{image_digest}"));
    assert_eq!(status, 404, "the origin has no referrers API");
    let (signature, signature_digest) = push_signature(
        &upstream,
        "team/app",
        (&image_digest, image.len()),
        "tag schema",
    );
    let mut descriptor = json!({"mediaType": OCI_MANIFEST, "digest": signature_digest, "size": signature.len(), "artifactType": SIGNATURE});
    descriptor["annotations"] = json!({"org.example.note": "tag schema"});
    let referrers = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]})
        .to_string()
        .into_bytes();
    let tag = format!("sha256-{}", image_digest.trim_start_matches("sha256:"));
    let (status, head) = upstream.manifest("team/app", &tag, &referrers, OCI_INDEX);
    assert_eq!(status, 201, "{head}");

    let cache = Regmirror::serve(&format!("proxy: {{remoteurl: {}}}", origin.url()), &[]);
    let client = Client(cache.addr);
    let path = format!("/v2/team/app/referrers/{image_digest}");
    let (listed, _) = client.referrers(&path);
    assert_eq!(listed, vec![descriptor.clone()]);
    assert!(
        origin.count("GET", &format!("/manifests/{tag}")) >= 1,
        "{}",
        origin.log()
    );
    let (status, _, body) = client.get(&format!("/v2/team/app/manifests/{signature_digest}"));
    assert_eq!((status, body), (200, signature.clone()));
    // No tag for a digest: no referrers.
    let (none, _) = client.referrers(&format!("/v2/team/app/referrers/{}", sha256(b"unsigned")));
    assert!(none.is_empty());
    // The origin down: the last answer, with a Warning.
    origin.stop();
    let (status, head, body) = client.get(&path);
    assert_eq!(status, 200, "{head}");
    assert!(
        header(&head, "warning").is_some_and(|w| w.starts_with("110 ")),
        "{head}"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["manifests"],
        json!([descriptor])
    );
    // Never asked while up: an error, not an empty list.
    let (status, _, body) = client.get(&format!(
        "/v2/team/app/referrers/{}",
        sha256(b"never asked")
    ));
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn without_a_proxy_section_it_is_a_plain_registry_across_restarts() {
    let _engine = engine_lock();
    // seed 001's flow with seed 000's "cache off" file: push, pull, stop, start, pull.
    let images = or_skip!(Images::new());
    images.build("v1", &[("hello", b"hello from a plain registry\n")]);
    let source = or_skip!(Registry::start(RegistryOptions::default()));
    images.push(
        "v1",
        &format!("{}/library/ubuntu:16.04", source.host()),
        &[],
    );
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("registry");
    let env = [
        ("REGISTRY_HTTP_ADDR", addr.to_string()),
        (
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY",
            root.display().to_string(),
        ),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let registry = Regmirror::verbatim(dir, SEED_CACHE_OFF, addr, &env);
    assert!(
        registry.log().contains("plain registry"),
        "{}",
        registry.log()
    );
    assert_eq!(
        header(&http("GET", addr, "/v2/", &[]).1, "x-content-type-options").as_deref(),
        Some("nosniff")
    );
    let dockerd = or_skip!(Dockerd::start("{}", None));
    let docker = |args: &[&str]| {
        let output = dockerd.docker(args);
        assert!(
            output.status.success(),
            "docker {args:?}: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            dockerd.log()
        );
    };
    let original = format!("{}/library/ubuntu:16.04", source.host());
    let mine = format!("{addr}/my-ubuntu");
    docker(&["pull", &original]);
    docker(&["tag", &original, &mine]);
    docker(&["push", &mine]);
    docker(&["image", "remove", &original]);
    docker(&["image", "remove", &mine]);
    docker(&["pull", &mine]);
    docker(&["image", "remove", &mine]);
    let dir = registry.stop();
    let registry = Regmirror::verbatim(dir, SEED_CACHE_OFF, addr, &env);
    docker(&["pull", &mine]);
    let (status, _, body) = http("GET", registry.addr, "/v2/_catalog", &[]);
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["repositories"],
        json!(["my-ubuntu"])
    );
    // Deletes stay off unless storage.delete.enabled.
    let (_, head, _) = http(
        "HEAD",
        addr,
        "/v2/my-ubuntu/manifests/latest",
        &[("Accept", OCI_MANIFEST)],
    );
    let digest = header(&head, "docker-content-digest").unwrap();
    let (status, _, _) = http(
        "DELETE",
        addr,
        &format!("/v2/my-ubuntu/manifests/{digest}"),
        &[],
    );
    assert_eq!(status, 405);
}

/// A page of a listing as a client sees it: status, body, and the `Link`'s query as sorted
/// pairs (distribution writes `last` before `n`, regmirror `n` first; both mean the same).
fn listing_page(addr: SocketAddr, path: &str) -> (u16, Value, Option<Vec<(String, String)>>) {
    let (status, head, body) = http("GET", addr, path, &[]);
    let link = header(&head, "link").map(|link| {
        let target = link.trim_start_matches('<').split('>').next().unwrap();
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let mut pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        pairs.sort();
        pairs
    });
    (status, serde_json::from_slice(&body).unwrap(), link)
}

#[test]
fn listing_pages_and_n_0_answer_as_distribution_does() {
    let reference = or_skip!(Registry::start(RegistryOptions::default()));
    let ours = plain_registry();
    for addr in [reference.addr, ours.addr] {
        let client = Client(addr);
        for repository in ["alpha", "beta", "gamma"] {
            for tag in ["v1", "v2", "v3"] {
                push_image(&client, repository, tag, repository.as_bytes());
            }
        }
    }
    // The catalog: distribution 2.8 answers n=0 with an empty page and no Link.
    for query in [
        "",
        "?n=0",
        "?n=1",
        "?n=2",
        "?n=3",
        "?n=4",
        "?n=-1",
        "?n=x",
        "?last=beta",
        "?n=0&last=alpha",
        "?n=1&last=beta",
        "?n=1&last=gamma",
    ] {
        let path = format!("/v2/_catalog{query}");
        let theirs = listing_page(reference.addr, &path);
        assert_eq!(listing_page(ours.addr, &path), theirs, "{path}");
    }
    let (_, body, link) = listing_page(ours.addr, "/v2/_catalog?n=0");
    assert_eq!((body, link), (json!({"repositories": []}), None));
    // Tags: distribution 2.8 has no pages of tags (it ignores n, so n=0 lists every tag) and
    // distribution 3 answers n=0 with an empty page; neither sends a Link, and a Link is what
    // made a client ask for the same page forever. regmirror pages tags, so: the empty page.
    let (status, _, link) = listing_page(reference.addr, "/v2/alpha/tags/list?n=0");
    assert_eq!((status, link), (200, None));
    let (status, body, link) = listing_page(ours.addr, "/v2/alpha/tags/list?n=0");
    assert_eq!(
        (status, body, link),
        (200, json!({"name": "alpha", "tags": []}), None)
    );
    for path in ["/v2/alpha/tags/list", "/v2/alpha/tags/list?n=3"] {
        assert_eq!(
            listing_page(ours.addr, path),
            listing_page(reference.addr, path),
            "{path}"
        );
    }
}

/// The prebuilt conformance suite: `REGMIRROR_OCI_CONFORMANCE`, else ../shared/tools beside
/// the checkout.
fn conformance_suite() -> Result<PathBuf, Missing> {
    let candidates = [
        std::env::var_os("REGMIRROR_OCI_CONFORMANCE").map(PathBuf::from),
        Some(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../shared/tools/oci-conformance/conformance.test"),
        ),
    ];
    match candidates.into_iter().flatten().find(|p| p.is_file()) {
        Some(path) => Ok(path),
        None => peers::missing(
            "the OCI conformance suite (../shared/tools/oci-conformance/conformance.test, or set \
             REGMIRROR_OCI_CONFORMANCE)"
                .to_owned(),
        ),
    }
}

/// Runs `suite` against `registry` with `env`; returns (pass, fail) from its summary.
fn run_conformance(suite: &Path, registry: SocketAddr, env: &[(&str, &str)]) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(suite);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("OCI_")) {
        command.env_remove(key);
    }
    let output = command
        .current_dir(dir.path())
        .env("OCI_REGISTRY", registry.to_string())
        .env("OCI_TLS", "disabled")
        .env("OCI_LOG", "error")
        .env("OCI_RESULTS_DIR", dir.path().join("results"))
        .env("OCI_REPO1", "conformance/repo1")
        .env("OCI_REPO2", "conformance/repo2")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let count = |label: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| {
                rest.trim_start_matches('.')
                    .trim_start_matches(':')
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or_else(|| {
                panic!(
                    "no {label} in the suite's summary:\n{stdout}\n{}",
                    String::from_utf8_lossy(&output.stderr)
                )
            })
    };
    let (pass, fail) = (count("Pass"), count("FAIL"));
    let failures: Vec<&str> = stdout.lines().filter(|l| l.ends_with(": FAIL")).collect();
    // The suite's summary: counts, then a line per area.
    let summary: Vec<&str> = stdout.lines().filter(|l| l.contains("....:")).collect();
    println!("{}", summary.join("\n"));
    assert_eq!(fail, 0, "conformance failures:\n{}", failures.join("\n"));
    (pass, fail)
}

#[test]
fn the_conformance_suite_passes_against_the_plain_registry() {
    let suite = or_skip!(conformance_suite());
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("registry").display().to_string();
    let registry = Regmirror::verbatim(
        dir,
        SEED_CACHE_OFF,
        addr,
        &[
            ("REGISTRY_HTTP_ADDR", &addr.to_string()),
            ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", &root),
            ("REGISTRY_STORAGE_DELETE_ENABLED", "true"),
        ],
    );
    // Everything the suite can try, optional parts included.
    let (pass, _) = run_conformance(
        &suite,
        registry.addr,
        &[
            ("OCI_API_BLOBS_UPLOAD_CANCEL", "true"),
            ("OCI_API_MANIFESTS_TAG_PARAM", "true"),
        ],
    );
    assert!(pass > 900, "{pass} passed");
}

#[test]
fn the_conformance_suite_passes_read_only_through_the_cache() {
    let suite = or_skip!(conformance_suite());
    let origin = or_skip!(Registry::start(RegistryOptions::default()));
    let upstream = Client(origin.addr);
    let repository = "conformance/repo1";
    let (v1, v1_digest) = push_image(&upstream, repository, "v1", b"first image");
    let (_, v2_digest) = push_image(&upstream, repository, "v2", b"second image");
    let (signature, signature_digest) =
        push_signature(&upstream, repository, (&v1_digest, v1.len()), "ro");
    let descriptor = json!({"mediaType": OCI_MANIFEST, "digest": signature_digest, "size": signature.len(), "artifactType": SIGNATURE});
    let referrers = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]})
        .to_string()
        .into_bytes();
    let tag = format!("sha256-{}", v1_digest.trim_start_matches("sha256:"));
    assert_eq!(
        upstream.manifest(repository, &tag, &referrers, OCI_INDEX).0,
        201
    );
    let cache = Regmirror::serve(&format!("proxy: {{remoteurl: {}}}", origin.url()), &[]);
    let manifests = [
        v1_digest.as_str(),
        v2_digest.as_str(),
        signature_digest.as_str(),
    ]
    .join(" ");
    let blobs = [
        sha256(b"first image"),
        sha256(b"second image"),
        sha256(b"ro"),
        sha256(b"{}"),
    ]
    .join(" ");
    let (pass, _) = run_conformance(
        &suite,
        cache.addr,
        &[
            ("OCI_API_PUSH", "false"),
            ("OCI_API_BLOBS_DELETE", "false"),
            ("OCI_API_MANIFESTS_DELETE", "false"),
            ("OCI_API_TAGS_DELETE", "false"),
            ("OCI_RO_DATA_TAGS", "v1 v2"),
            ("OCI_RO_DATA_MANIFESTS", &manifests),
            ("OCI_RO_DATA_BLOBS", &blobs),
            ("OCI_RO_DATA_REFERRERS", &v1_digest),
        ],
    );
    assert!(pass >= 20, "{pass} passed");
}

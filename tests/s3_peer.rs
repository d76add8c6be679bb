//! The object-storage peers themselves (`peers::MotoServer`, a real moto_server, and
//! `peers::storage::Azurite`, on 127.0.0.1): what the object-storage tests rely on them for. Few and fast: each test starts its own server.

mod peers;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use peers::storage::{AZURITE_ACCOUNT, Azurite, BUCKET, StoragePeer as _, azurite_at};
use peers::{MotoServer, moto_server_at, query_escape, xml_texts};

/// The `ETag` header of a response head.
fn etag(head: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("etag")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no ETag in {head}"))
}

#[test]
fn objects_list_and_conditional_puts() {
    let s3 = or_skip!(MotoServer::start());
    assert!(s3.endpoint().starts_with("http://127.0.0.1:"));
    s3.create_bucket("peer-objects");

    let (status, head, _) = s3.put("/peer-objects/blobs/a", &[], b"first");
    assert_eq!(status, 200, "{head}");
    let first = etag(&head);
    // moto refuses unsigned requests on an existing key, whatever the request.
    assert_eq!(http_status(&s3, "GET", "/peer-objects/blobs/a"), 403);
    let (status, _, body) = s3.s3("GET", "/peer-objects/blobs/a", &[], b"");
    assert_eq!((status, body.as_slice()), (200, &b"first"[..]));

    // Create-only: refused over an existing key, accepted for a new one.
    let if_none_match = ("If-None-Match", "*");
    let (status, _, body) = s3.put("/peer-objects/blobs/a", &[if_none_match], b"x");
    assert_eq!(status, 412, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("<Code>PreconditionFailed</Code>"));
    let (status, _, _) = s3.put("/peer-objects/blobs/b", &[if_none_match], b"b");
    assert_eq!(status, 200);

    // Compare-and-swap on the ETag: a stale one is refused, the current one replaces the object.
    let stale = ("If-Match", "\"0123456789abcdef0123456789abcdef\"");
    let (status, _, _) = s3.put("/peer-objects/blobs/a", &[stale], b"y");
    assert_eq!(status, 412);
    let current = ("If-Match", first.as_str());
    let (status, head, _) = s3.put("/peer-objects/blobs/a", &[current], b"second");
    assert_eq!(status, 200);
    assert_ne!(etag(&head), first);
    let (_, _, body) = s3.s3("GET", "/peer-objects/blobs/a", &[], b"");
    assert_eq!(body, b"second");
    let (status, _, _) = s3.put("/peer-objects/blobs/a", &[current], b"z");
    assert_eq!(status, 412, "the replaced object's old ETag is stale now");

    // A key with characters XML escapes comes back as it was written.
    let odd = "odd/a&b<c>'\"";
    let path = format!("/peer-objects/odd/{}", query_escape(&odd["odd/".len()..]));
    assert_eq!(s3.put(&path, &[], b"o").0, 200);

    assert_eq!(
        s3.list_keys("peer-objects", "blobs/"),
        ["blobs/a", "blobs/b"]
    );
    assert_eq!(
        s3.list_keys("peer-objects", ""),
        ["blobs/a", "blobs/b", odd]
    );
    assert!(s3.list_keys("peer-objects", "none/").is_empty());

    // The server's own log: every request, refusals included (werkzeug colours those).
    assert_eq!(s3.count("PUT", "/peer-objects/blobs/a"), 5);
    assert_eq!(s3.count("GET", "/peer-objects/blobs/a"), 3);
    assert_eq!(s3.count("GET", "list-type=2"), 3);
    let log = s3.request_log();
    let refused: Vec<u16> = log
        .iter()
        .filter(|r| r.target == "/peer-objects/blobs/a")
        .map(|r| r.status)
        .collect();
    assert_eq!(refused, [200, 403, 200, 412, 412, 200, 200, 412]);
    assert_eq!(log[0].method, "PUT");
    assert_eq!(log[0].target, "/peer-objects");
}

/// Status of an unsigned request without a body.
fn http_status(s3: &MotoServer, method: &str, target: &str) -> u16 {
    peers::http(method, s3.addr, target, &[]).0
}

#[test]
fn listing_follows_continuation_tokens() {
    let s3 = or_skip!(MotoServer::start());
    s3.create_bucket("peer-pages");
    let mut written: Vec<String> = (0..5).map(|i| format!("pages/{i}")).collect();
    for key in written.iter().chain([&"other/x".to_owned()]) {
        assert_eq!(s3.put(&format!("/peer-pages/{key}"), &[], b"p").0, 200);
    }
    written.sort();
    assert_eq!(s3.list_keys_paged("peer-pages", "pages/", 2), written);
    assert_eq!(s3.count("GET", "list-type=2"), 3, "three pages of two");
    assert_eq!(s3.count("GET", "continuation-token="), 2);
}

#[test]
fn multipart_uploads_are_listed_until_completed_or_aborted() {
    let s3 = or_skip!(MotoServer::start());
    s3.create_bucket("peer-multipart");
    let start = |key: &str| {
        let (status, _, body) = s3.s3("POST", &format!("/peer-multipart/{key}?uploads"), &[], b"");
        let xml = String::from_utf8(body).unwrap();
        assert_eq!(status, 200, "{xml}");
        xml_texts(&xml, "UploadId").pop().expect("an UploadId")
    };
    let kept = start("uploads/kept");
    let aborted = start("uploads/aborted");
    let mut listed = s3.list_multipart_uploads("peer-multipart");
    listed.sort();
    assert_eq!(
        listed,
        [
            ("uploads/aborted".to_owned(), aborted.clone()),
            ("uploads/kept".to_owned(), kept.clone())
        ]
    );
    let target = format!("/peer-multipart/uploads/aborted?uploadId={aborted}");
    assert_eq!(s3.s3("DELETE", &target, &[], b"").0, 204);
    assert_eq!(
        s3.list_multipart_uploads("peer-multipart"),
        [("uploads/kept".to_owned(), kept)]
    );
    assert!(
        s3.list_keys("peer-multipart", "").is_empty(),
        "no object yet"
    );
    assert_eq!(s3.count("POST", "?uploads"), 2);
    assert_eq!(s3.count("GET", "?uploads"), 2);
}

#[test]
fn pause_keeps_the_data_and_stop_loses_it() {
    let mut s3 = or_skip!(MotoServer::start());
    s3.create_bucket("peer-pause");
    assert_eq!(s3.put("/peer-pause/kept", &[], b"k").0, 200);

    s3.pause();
    assert!(!s3.responds_within(Duration::from_millis(300)));
    // A client that gives up during the pause: its request is carried out all the same on resume.
    let mut stream = TcpStream::connect(s3.addr).expect("the kernel accepts while paused");
    stream
        .write_all(b"PUT /peer-pause/late HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nl")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        stream.read(&mut [0u8; 1]).is_err(),
        "no answer while paused"
    );
    drop(stream);
    s3.resume();
    assert!(s3.responds_within(Duration::from_secs(10)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while s3.list_keys("peer-pause", "") != ["kept", "late"] {
        assert!(Instant::now() < deadline, "{}", s3.log());
        std::thread::sleep(Duration::from_millis(20));
    }

    s3.stop();
    assert!(TcpStream::connect(s3.addr).is_err(), "refused once stopped");
    s3.start_again();
    let (status, _, body) = peers::http("GET", s3.addr, "/peer-pause?list-type=2", &[]);
    assert_eq!(status, 404, "the bucket is gone after a restart");
    assert!(String::from_utf8_lossy(&body).contains("NoSuchBucket"));
    assert_eq!(s3.request_log().last().unwrap().status, 404);
    assert_eq!(
        s3.count("PUT", "/peer-pause/"),
        2,
        "the first run's log is kept"
    );
}

#[test]
#[should_panic(expected = "`bash .ci/run` creates the venv")]
fn a_missing_moto_server_says_how_to_install_it() {
    // Under REGMIRROR_REQUIRE_PEERS=1 this panics itself; without, the test reads the reason.
    if let Err(missing) = moto_server_at(PathBuf::from("/nonexistent/moto_server")) {
        panic!("{missing}");
    }
}

/// What the fleet needs of Azure, on Azurite: a create-only put (`If-None-Match: *`) refused
/// over an existing blob (409), a put with a stale `If-Match` refused (412), a listing, and SAS
/// signatures checked.
#[test]
fn azurite_honours_conditional_puts() {
    let azure = or_skip!(Azurite::start());
    let create = ("If-None-Match", "*");
    let (status, head, _) = azure.put("leases/a", &[create], b"first");
    assert_eq!(status, 201, "{head}");
    let first = etag(&head);
    let (status, _, body) = azure.put("leases/a", &[create], b"second");
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    let (status, head, _) = azure.put("leases/a", &[("If-Match", &first)], b"third");
    assert_eq!(status, 201, "{head}");
    let (status, _, _) = azure.put("leases/a", &[("If-Match", &first)], b"fourth");
    assert_eq!(status, 412, "a stale If-Match");
    assert_eq!(azure.list_keys("leases/"), ["leases/a"]);
    // Unsigned, the same read is refused.
    let (status, _, _) = peers::http(
        "GET",
        azure.addr,
        &format!("/{AZURITE_ACCOUNT}/{BUCKET}/leases/a"),
        &[],
    );
    assert!(matches!(status, 403 | 404), "unsigned: {status}");
    let (status, _, body) = azure.send(
        "GET",
        &format!("/{AZURITE_ACCOUNT}/{BUCKET}/leases/a"),
        &[],
        b"",
    );
    assert_eq!((status, body.as_slice()), (200, &b"third"[..]));
}

#[test]
#[should_panic(expected = "`bash .ci/run` installs npm azurite")]
fn a_missing_azurite_says_how_to_install_it() {
    if let Err(missing) = azurite_at(PathBuf::from("/nonexistent/azurite-blob")) {
        panic!("{missing}");
    }
}

//! The object stores a fleet runs on, as one trait the cache's storage tests are generic over:
//! moto_server (S3) and Azurite (Azure Blob Storage, npm `azurite`, from the prefix `.ci/run`
//! installs it into). Each is a real server process on 127.0.0.1, stopped on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;

use super::{
    Missing, MotoServer, Process, free_port, http_with_body, missing, query_escape,
    wait_for_http_path, xml_texts,
};

/// The bucket (S3) or container (Azure) every storage test uses.
pub const BUCKET: &str = "registry";

/// An object store a replica can run on.
pub trait StoragePeer {
    /// The `REGISTRY_STORAGE*` variables that put a replica on [`BUCKET`] of this store
    /// (driver, endpoint, credentials); redirects stay as the test sets them.
    fn env(&self) -> Vec<(String, String)>;
    /// Every key under `prefix`, as the store's own listing answers.
    fn list_keys(&self, prefix: &str) -> Vec<String>;
    /// Multipart uploads in progress, where the store can list and abort them (S3); `None` on
    /// Azure, whose uncommitted blocks no request can remove (Azure drops them after 7 days).
    fn pending_uploads(&self) -> Option<Vec<String>>;
    /// Where the store is, as replicas log it (`http://127.0.0.1:PORT`, plus the account on
    /// Azurite).
    fn endpoint(&self) -> String;
    fn addr(&self) -> SocketAddr;
    /// The query parameter a signed URL carries its signature in.
    fn signature_parameter(&self) -> &'static str;
    /// Whether the store refuses a request without a valid signature (moto checks none).
    fn checks_signatures(&self) -> bool;
}

fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl StoragePeer for MotoServer {
    fn env(&self) -> Vec<(String, String)> {
        pairs(&[
            ("REGISTRY_STORAGE", "s3"),
            ("REGISTRY_STORAGE_S3_BUCKET", BUCKET),
            ("REGISTRY_STORAGE_S3_REGION", "minio"),
            (
                "REGISTRY_STORAGE_S3_REGIONENDPOINT",
                &MotoServer::endpoint(self),
            ),
            ("REGISTRY_STORAGE_S3_ACCESSKEY", "minioadmin"),
            ("REGISTRY_STORAGE_S3_SECRETKEY", "minioadmin"),
        ])
    }

    fn list_keys(&self, prefix: &str) -> Vec<String> {
        MotoServer::list_keys(self, BUCKET, prefix)
    }

    fn pending_uploads(&self) -> Option<Vec<String>> {
        Some(
            self.list_multipart_uploads(BUCKET)
                .into_iter()
                .map(|(key, _)| key)
                .collect(),
        )
    }

    fn endpoint(&self) -> String {
        MotoServer::endpoint(self)
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn signature_parameter(&self) -> &'static str {
        "X-Amz-Signature="
    }

    fn checks_signatures(&self) -> bool {
        false
    }
}

/// Azurite's well-known development account and key (public: every Azure SDK ships them).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The azurite-blob binary: `$REGMIRROR_AZURITE` (which `.ci/run` exports), else the npm prefix
/// `.ci/run` installs into, else [`Missing`] saying how to install it.
pub fn azurite_binary() -> Result<PathBuf, Missing> {
    azurite_at(
        std::env::var_os("REGMIRROR_AZURITE")
            .filter(|p| !p.is_empty())
            .map_or_else(
                || {
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join(".ci/azurite/node_modules/.bin/azurite-blob")
                },
                PathBuf::from,
            ),
    )
}

/// `path`, or [`Missing`] saying how to install Azurite.
pub fn azurite_at(path: PathBuf) -> Result<PathBuf, Missing> {
    if path.is_file() {
        return Ok(path);
    }
    missing(format!(
        "azurite-blob not found at {}: `bash .ci/run` installs npm azurite into .ci/azurite \
         (or point REGMIRROR_AZURITE at an azurite-blob)",
        path.display()
    ))
}

/// A real Azure Blob Storage emulator: Azurite's blob service, on 127.0.0.1 at an ephemeral
/// port, its data in a temporary directory, with [`BUCKET`] created; stopped on drop.
/// Requests of the harness itself carry an account SAS signed with [`AZURITE_KEY`].
pub struct Azurite {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    process: Process,
    sas: String,
}

impl Azurite {
    pub fn start() -> Result<Self, Missing> {
        let binary = azurite_binary()?;
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut command = Command::new(binary);
        command
            .args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(addr.port().to_string())
            .arg("--location")
            .arg(dir.path().join("data"))
            .args(["--skipApiVersionCheck", "--disableTelemetry", "--silent"]);
        let mut process = Process::spawn(&mut command, dir.path().join("azurite.log"));
        wait_for_http_path(addr, "/", &mut process.child, &process.log);
        let azurite = Azurite {
            addr,
            dir,
            process,
            sas: account_sas(),
        };
        azurite.create_container(BUCKET);
        Ok(azurite)
    }

    /// Creates the container `name`.
    pub fn create_container(&self, name: &str) {
        let (status, _, body) = self.request(
            "PUT",
            &format!("/{AZURITE_ACCOUNT}/{name}?restype=container"),
        );
        assert_eq!(
            status,
            201,
            "create container {name}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// `target` (`/account/container?query`) with the harness's SAS appended.
    fn request(&self, method: &str, target: &str) -> (u16, String, Vec<u8>) {
        self.send(method, target, &[], b"")
    }

    /// [`request`](Self::request) with headers and a body.
    pub fn send(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String, Vec<u8>) {
        let separator = if target.contains('?') { '&' } else { '?' };
        let target = format!("{target}{separator}{}", self.sas);
        let mut all = vec![("x-ms-version", SAS_VERSION)];
        all.extend_from_slice(headers);
        http_with_body(method, self.addr, &target, &all, body)
    }

    /// A Put Blob of `key` in [`BUCKET`] (a block blob) with `headers`.
    pub fn put(&self, key: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, Vec<u8>) {
        let mut all = vec![("x-ms-blob-type", "BlockBlob")];
        all.extend_from_slice(headers);
        self.send(
            "PUT",
            &format!("/{AZURITE_ACCOUNT}/{BUCKET}/{key}"),
            &all,
            body,
        )
    }

    /// The service URL replicas are given: the account is a path level on an emulator.
    pub fn service_url(&self) -> String {
        format!("http://{}/{AZURITE_ACCOUNT}", self.addr)
    }

    pub fn log(&self) -> String {
        self.process.log_text()
    }
}

const SAS_VERSION: &str = "2019-02-02";

/// An account SAS for every blob operation, valid until 2099 (Azure's string to sign for
/// version 2019-02-02: account, permissions, services, resource types, start, expiry, IP,
/// protocol, version).
fn account_sas() -> String {
    let (permissions, services, types, expiry) = ("rwdlacup", "b", "sco", "2099-01-01T00:00:00Z");
    let to_sign = format!(
        "{AZURITE_ACCOUNT}\n{permissions}\n{services}\n{types}\n\n{expiry}\n\n\n{SAS_VERSION}\n"
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(AZURITE_KEY)
        .unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let signature = base64::engine::general_purpose::STANDARD
        .encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
    format!(
        "sv={SAS_VERSION}&ss={services}&srt={types}&sp={permissions}&se={}&sig={}",
        query_escape(expiry),
        query_escape(&signature)
    )
}

impl StoragePeer for Azurite {
    fn env(&self) -> Vec<(String, String)> {
        pairs(&[
            ("REGISTRY_STORAGE", "azure"),
            ("REGISTRY_STORAGE_AZURE_ACCOUNTNAME", AZURITE_ACCOUNT),
            ("REGISTRY_STORAGE_AZURE_ACCOUNTKEY", AZURITE_KEY),
            ("REGISTRY_STORAGE_AZURE_CONTAINER", BUCKET),
            ("REGISTRY_STORAGE_AZURE_SERVICEURL", &self.service_url()),
            ("REGISTRY_STORAGE_AZURE_CREDENTIALS_TYPE", "shared_key"),
        ])
    }

    /// List Blobs, following `NextMarker`.
    fn list_keys(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut marker = String::new();
        loop {
            let target = format!(
                "/{AZURITE_ACCOUNT}/{BUCKET}?restype=container&comp=list&prefix={}&marker={}",
                query_escape(prefix),
                query_escape(&marker)
            );
            let (status, _, body) = self.request("GET", &target);
            let xml = String::from_utf8_lossy(&body).into_owned();
            assert_eq!(status, 200, "list blobs: {xml}");
            keys.extend(xml_texts(&xml, "Name"));
            match xml_texts(&xml, "NextMarker")
                .pop()
                .filter(|m| !m.is_empty())
            {
                Some(next) => marker = next,
                None => return keys,
            }
        }
    }

    fn pending_uploads(&self) -> Option<Vec<String>> {
        None
    }

    fn endpoint(&self) -> String {
        self.service_url()
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn signature_parameter(&self) -> &'static str {
        "sig="
    }

    fn checks_signatures(&self) -> bool {
        true
    }
}

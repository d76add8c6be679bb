//! The shim's own certificate authority, and the leaf certificates it mints per registry host
//! (kept in [`Leaves`]: bounded, minted once per host on the blocking pool).
//!
//! Generated on first start in the state directory: `ca.key` (mode 0600), `ca.crt`, and
//! `ca.json` (the name constraints it was made with). When the configuration has no `*` rule the
//! CA is name-constrained to the configured exact and pattern domains, so its key cannot mint a
//! certificate any client would accept for another name; IP addresses are excluded unless a rule
//! names one. A CA whose constraints no longer match the configuration is replaced (and the trust
//! files must be installed again).

use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType, GeneralSubtree,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};

use super::leaves::{LeafCause, LeafError, Leaves, MintError};
use crate::config::{DomainPattern, MirrorConfig};
use crate::reference::{DOCKER_HUB, DOCKER_HUB_API_HOST, LEGACY_DOCKER_HUB, split_host_port};

const CA_COMMON_NAME: &str = "regmirror shim CA";

/// The names a CA may certify: `None` means unconstrained (a `*` rule exists).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraints {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl Constraints {
    /// What a CA for `config` may certify: the hosts of exact rules and the suffixes of pattern
    /// rules; `None` (unconstrained) when a `*` rule exists.
    pub fn for_config(config: &MirrorConfig) -> Option<Self> {
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for rule in &config.rules {
            let host = match &rule.domain {
                DomainPattern::Any => return None,
                DomainPattern::Suffix(pattern) => pattern.trim_start_matches("*."),
                DomainPattern::Exact(registry) => split_host_port(registry).0,
            };
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            match bare.parse::<IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) if bare == DOCKER_HUB => {
                    dns.extend(
                        [DOCKER_HUB, LEGACY_DOCKER_HUB, DOCKER_HUB_API_HOST].map(str::to_owned),
                    );
                }
                Err(_) => dns.push(bare.to_owned()),
            }
        }
        dns.sort();
        dns.dedup();
        ips.sort();
        ips.dedup();
        Some(Constraints { dns, ips })
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Recorded {
    constraints: Option<Constraints>,
}

pub struct CertificateAuthority {
    key: KeyPair,
    params: CertificateParams,
    cert_pem: String,
    leaves: Arc<Leaves>,
    /// Called as a leaf is signed, to observe where and how signing runs.
    #[cfg(test)]
    signing: Option<SigningHook>,
}

#[cfg(test)]
type SigningHook = Arc<dyn Fn(&str) + Send + Sync>;

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn ca_params(constraints: Option<&Constraints>) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    name.push(DnType::OrganizationName, "regmirror");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    if let Some(c) = constraints {
        let mut excluded = Vec::new();
        let mut permitted: Vec<GeneralSubtree> = c
            .dns
            .iter()
            .map(|d| GeneralSubtree::DnsName(d.clone()))
            .collect();
        permitted.extend(c.ips.iter().map(|ip| {
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(*ip, prefix))
        }));
        if c.ips.is_empty() {
            excluded.push(GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])));
            excluded.push(GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])));
        }
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: permitted,
            excluded_subtrees: excluded,
        });
    }
    params
}

impl CertificateAuthority {
    /// Loads the CA of `state_dir`, or creates it (again, if its constraints changed).
    pub fn load_or_create(
        state_dir: &Path,
        constraints: Option<Constraints>,
    ) -> Result<Self, CaError> {
        std::fs::create_dir_all(state_dir).map_err(CaError::at(state_dir, "create"))?;
        let key_path = state_dir.join("ca.key");
        let cert_path = state_dir.join("ca.crt");
        let record_path = state_dir.join("ca.json");
        let wanted = Recorded { constraints };
        let recorded: Option<Recorded> = std::fs::read(&record_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let params = ca_params(wanted.constraints.as_ref());
        if recorded.as_ref() == Some(&wanted) && key_path.exists() && cert_path.exists() {
            let key_pem = std::fs::read_to_string(&key_path)
                .map_err(CaError::at(state_dir, "read ca.key"))?;
            let key =
                KeyPair::from_pem(&key_pem).map_err(CaError::at(state_dir, "parse ca.key"))?;
            let cert_pem = std::fs::read_to_string(&cert_path)
                .map_err(CaError::at(state_dir, "read ca.crt"))?;
            return Ok(Self::new(key, params, cert_pem));
        }
        if recorded.is_some() {
            tracing::warn!(
                dir = %state_dir.display(),
                "the configured domains changed: generating a new CA; run `regmirror shim install-ca` again"
            );
        }
        let key = KeyPair::generate().map_err(CaError::at(state_dir, "generate key"))?;
        let cert = params
            .self_signed(&key)
            .map_err(CaError::at(state_dir, "self-sign"))?;
        write_private(&key_path, key.serialize_pem().as_bytes())
            .map_err(CaError::at(state_dir, "write ca.key"))?;
        std::fs::write(&cert_path, cert.pem()).map_err(CaError::at(state_dir, "write ca.crt"))?;
        let record =
            serde_json::to_vec_pretty(&wanted).map_err(CaError::at(state_dir, "record"))?;
        std::fs::write(&record_path, record).map_err(CaError::at(state_dir, "write ca.json"))?;
        Ok(Self::new(key, params, cert.pem()))
    }

    fn new(key: KeyPair, params: CertificateParams, cert_pem: String) -> Self {
        CertificateAuthority {
            key,
            params,
            cert_pem,
            leaves: Arc::new(Leaves::new(super::leaves::DEFAULT_CAPACITY)),
            #[cfg(test)]
            signing: None,
        }
    }

    /// Keeps the leaves of at most `capacity` host names (at least one) instead of the default.
    pub fn with_leaf_capacity(mut self, capacity: usize) -> Self {
        self.leaves = Arc::new(Leaves::new(capacity));
        self
    }

    /// `ca.crt` in PEM, for clients to trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_path(state_dir: &Path) -> PathBuf {
        state_dir.join("ca.crt")
    }

    /// A TLS server configuration presenting a leaf certificate for `host`: the one kept, or one
    /// minted on the blocking pool (once, however many ask at the same time).
    pub async fn server_config(
        self: &Arc<Self>,
        host: &str,
    ) -> Result<Arc<ServerConfig>, MintError> {
        let ca = self.clone();
        let name = host.to_owned();
        self.leaves.get_or_mint(host, move || ca.mint(&name)).await
    }

    fn mint(&self, host: &str) -> Result<ServerConfig, LeafError> {
        let (chain, key) = self.leaf(host)?;
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(leaf_error(host))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // No session resumption: rustls' default store preallocates 256 sessions per
        // configuration (most of a leaf's memory), and dockerd's Go client resumes nothing.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(config)
    }

    /// A leaf certificate for `host` signed by the CA, with the chain to present and its key.
    fn leaf(
        &self,
        host: &str,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), LeafError> {
        #[cfg(test)]
        if let Some(signing) = &self.signing {
            signing(host);
        }
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, host);
        params.distinguished_name = name;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        params.subject_alt_names = vec![match bare.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(bare.try_into().map_err(leaf_error(host))?),
        }];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate().map_err(leaf_error(host))?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let leaf = params
            .signed_by(&leaf_key, &issuer)
            .map_err(leaf_error(host))?;
        let ca_der = pem_to_der(&self.cert_pem).map_err(leaf_error(host))?;
        let chain = vec![leaf.der().clone(), ca_der];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        Ok((chain, key))
    }
}

fn pem_to_der(pem: &str) -> Result<CertificateDer<'static>, rustls::pki_types::pem::Error> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(pem.as_bytes())
}

/// Makes the [`LeafError`] of `host` from what failed.
fn leaf_error<E: Into<LeafCause>>(host: &str) -> impl FnOnce(E) -> LeafError + '_ {
    move |cause| LeafError {
        host: host.to_owned(),
        source: cause.into(),
    }
}

/// Why the shim's CA could not be loaded or made: its directory, the step (`read ca.key`,
/// `self-sign`, `write ca.json`) and what failed.
#[derive(Debug, thiserror::Error)]
#[error("CA in {}: {step}: {source}", dir.display())]
pub struct CaError {
    pub dir: PathBuf,
    pub step: &'static str,
    #[source]
    pub source: CaCause,
}

/// What failed in a [`CaError`]'s step.
#[derive(Debug, thiserror::Error)]
pub enum CaCause {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Reading, making or signing the key or certificate.
    #[error(transparent)]
    Certificate(#[from] rcgen::Error),
    /// Writing `ca.json`.
    #[error(transparent)]
    Record(#[from] serde_json::Error),
}

impl CaError {
    /// The error of `step` in `dir`, from what failed.
    fn at<E: Into<CaCause>>(dir: &Path, step: &'static str) -> impl FnOnce(E) -> CaError {
        let dir = dir.to_owned();
        move |cause| CaError {
            dir,
            step,
            source: cause.into(),
        }
    }
}

/// Writes a file readable by its owner only (0600), replacing any previous one atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn created_once_with_a_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let constraints = Some(Constraints {
            dns: vec!["reg.example.test".into()],
            ips: vec![],
        });
        let ca = CertificateAuthority::load_or_create(dir.path(), constraints.clone()).unwrap();
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = CertificateAuthority::load_or_create(dir.path(), constraints).unwrap();
        assert_eq!(ca.cert_pem(), again.cert_pem(), "reused, not regenerated");
        let changed = CertificateAuthority::load_or_create(dir.path(), None).unwrap();
        assert_ne!(ca.cert_pem(), changed.cert_pem(), "new constraints, new CA");
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }

    #[test]
    fn constraints_follow_the_rules() {
        let config = |text: &str| {
            MirrorConfig::from_sources(&[crate::config::ConfigSource {
                path: "m.json",
                text,
            }])
            .unwrap()
        };
        let c = Constraints::for_config(&config(
            r#"{"mirror-registries": [
                {"domain": "reg.example.test:5000", "mirrors": ["https://m"]},
                {"domain": "*.corp.test", "mirrors": ["https://m"]},
                {"domain": "10.1.2.3:5000", "mirrors": ["https://m"]},
                {"domain": "docker.io", "mirrors": ["https://m"]}]}"#,
        ))
        .unwrap();
        assert_eq!(
            c.dns,
            [
                "corp.test",
                "docker.io",
                "index.docker.io",
                "reg.example.test",
                "registry-1.docker.io"
            ]
        );
        assert_eq!(c.ips, ["10.1.2.3".parse::<IpAddr>().unwrap()]);
        let any = config(r#"{"mirror-registries": [{"domain": "*", "mirrors": ["https://m"]}]}"#);
        assert_eq!(Constraints::for_config(&any), None);
    }

    /// What a TLS client (webpki, as in rustls; Go's verifier applies the same RFC 5280 rules)
    /// says about a leaf for `host`.
    fn verify(ca: &CertificateAuthority, host: &str) -> Result<(), String> {
        crate::upstream::install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pem_to_der(ca.cert_pem()).unwrap()).unwrap();
        use rustls::client::danger::ServerCertVerifier as _;
        let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let (chain, _) = ca.leaf(host).unwrap();
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
        verifier
            .verify_server_cert(
                &chain[0],
                &[],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .map(drop)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn name_constraints_stop_certificates_for_other_names() {
        let dir = tempfile::tempdir().unwrap();
        let constraints = Constraints {
            dns: vec!["reg.example.test".into(), "corp.test".into()],
            ips: vec![],
        };
        let ca = CertificateAuthority::load_or_create(dir.path(), Some(constraints)).unwrap();
        verify(&ca, "reg.example.test").unwrap();
        verify(&ca, "build.corp.test").unwrap();
        let refused = verify(&ca, "bank.example").unwrap_err();
        assert!(refused.to_lowercase().contains("name"), "{refused}");
        assert!(
            verify(&ca, "10.0.0.1").is_err(),
            "IP addresses are excluded"
        );
        let open = CertificateAuthority::load_or_create(&dir.path().join("open"), None).unwrap();
        verify(&open, "bank.example").unwrap();
    }

    #[tokio::test]
    async fn mints_leaves_per_host() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(CertificateAuthority::load_or_create(dir.path(), None).unwrap());
        let a = ca.server_config("reg.example.test").await.unwrap();
        let b = ca.server_config("reg.example.test").await.unwrap();
        assert!(Arc::ptr_eq(&a, &b), "cached");
        assert!(!a.session_storage.can_cache() && a.send_tls13_tickets == 0);
        ca.server_config("127.0.0.1").await.unwrap();
        ca.server_config("[::1]").await.unwrap();
    }

    /// A TLS handshake in memory between a client trusting `ca` only and `config`, for `host`.
    fn handshake(
        ca: &CertificateAuthority,
        config: Arc<ServerConfig>,
        host: &str,
    ) -> Result<(), String> {
        crate::upstream::install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pem_to_der(ca.cert_pem()).unwrap()).unwrap();
        let client_config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
        let mut server = rustls::ServerConnection::new(config).unwrap();
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
            let mut bytes = Vec::new();
            client.write_tls(&mut bytes).unwrap();
            server.read_tls(&mut &bytes[..]).unwrap();
            server.process_new_packets().map_err(|e| e.to_string())?;
            bytes.clear();
            server.write_tls(&mut bytes).unwrap();
            client.read_tls(&mut &bytes[..]).unwrap();
            client.process_new_packets().map_err(|e| e.to_string())?;
        }
        Err("the handshake did not finish".to_owned())
    }

    #[tokio::test]
    async fn the_leaf_cache_is_bounded_and_an_evicted_name_is_minted_again() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(
            CertificateAuthority::load_or_create(dir.path(), None)
                .unwrap()
                .with_leaf_capacity(4),
        );
        let first = ca.server_config("h0.example.test").await.unwrap();
        let hot = ca.server_config("hot.example.test").await.unwrap();
        for i in 1..=10 {
            ca.server_config(&format!("h{i}.example.test"))
                .await
                .unwrap();
            let again = ca.server_config("hot.example.test").await.unwrap();
            assert!(Arc::ptr_eq(&hot, &again), "the one in use stays");
            assert!(ca.leaves.kept() <= 4, "{} leaves kept", ca.leaves.kept());
        }
        assert_eq!(ca.leaves.kept(), 4);
        let minted_again = ca.server_config("h0.example.test").await.unwrap();
        assert!(!Arc::ptr_eq(&first, &minted_again), "h0 was evicted");
        assert_eq!(ca.leaves.kept(), 4);
        handshake(&ca, minted_again, "h0.example.test").unwrap();
        let refused = handshake(&ca, hot, "h0.example.test").unwrap_err();
        assert!(refused.contains("not valid for name"), "{refused}");
    }

    /// A CA whose signing of `slow.example.test` waits until the test opens the gate (`open`),
    /// saying when it started (`entered`) and whether it was let through (`true`) or gave up
    /// waiting (`outcomes`).
    struct Held {
        ca: Arc<CertificateAuthority>,
        open: std::sync::mpsc::Sender<()>,
        entered: tokio::sync::mpsc::UnboundedReceiver<()>,
        outcomes: Arc<std::sync::Mutex<Vec<bool>>>,
    }

    fn held_at_signing(dir: &Path) -> Held {
        let (open, gate) = std::sync::mpsc::channel::<()>();
        let gate = std::sync::Mutex::new(gate);
        let (enter, entered) = tokio::sync::mpsc::unbounded_channel();
        let outcomes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = outcomes.clone();
        let mut ca = CertificateAuthority::load_or_create(dir, None).unwrap();
        ca.signing = Some(Arc::new(move |host: &str| {
            if host != "slow.example.test" {
                return;
            }
            let _ = enter.send(());
            // Only a broken implementation waits this long: nothing else can open the gate.
            let opened = gate
                .lock()
                .unwrap()
                .recv_timeout(std::time::Duration::from_secs(30));
            record.lock().unwrap().push(opened.is_ok());
        }));
        Held {
            ca: Arc::new(ca),
            open,
            entered,
            outcomes,
        }
    }

    /// On one async worker: while a leaf is being signed, the worker still serves a CONNECT for
    /// a host already minted, and that task opens the gate the signing waits at. Signing on the
    /// worker (the old code) blocks the only thread, so the gate is never opened and signing
    /// gives up after its wait: `[false]`.
    #[tokio::test(flavor = "current_thread")]
    async fn a_mint_does_not_hold_an_async_worker() {
        let dir = tempfile::tempdir().unwrap();
        let Held {
            ca,
            open,
            mut entered,
            outcomes,
        } = held_at_signing(dir.path());
        let kept = ca.server_config("kept.example.test").await.unwrap();
        let slow = tokio::spawn({
            let ca = ca.clone();
            async move { ca.server_config("slow.example.test").await }
        });
        entered.recv().await.unwrap();
        let again = ca.server_config("kept.example.test").await.unwrap();
        assert!(Arc::ptr_eq(&kept, &again));
        open.send(()).unwrap();
        slow.await.unwrap().unwrap();
        assert_eq!(*outcomes.lock().unwrap(), [true], "signing held the worker");
    }

    /// On several workers: while a leaf is being signed, a CONNECT for a host already minted is
    /// answered, and then opens the gate. Signing under the cache's lock (the old code) makes
    /// that CONNECT wait for the lock, so the gate is never opened in time: `[false]`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_mint_does_not_hold_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let Held {
            ca,
            open,
            mut entered,
            outcomes,
        } = held_at_signing(dir.path());
        let kept = ca.server_config("kept.example.test").await.unwrap();
        let slow = tokio::spawn({
            let ca = ca.clone();
            async move { ca.server_config("slow.example.test").await }
        });
        entered.recv().await.unwrap();
        let again = ca.server_config("kept.example.test").await.unwrap();
        assert!(Arc::ptr_eq(&kept, &again));
        open.send(()).unwrap();
        slow.await.unwrap().unwrap();
        assert_eq!(*outcomes.lock().unwrap(), [true], "signing held the lock");
    }

    /// Eight CONNECTs for one new name, all asking while its signing is held: one mint, one leaf.
    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_connects_for_a_new_name_mint_once() {
        let dir = tempfile::tempdir().unwrap();
        let Held {
            ca,
            open,
            mut entered,
            outcomes,
        } = held_at_signing(dir.path());
        let asks =
            futures_util::future::join_all((0..8).map(|_| ca.server_config("slow.example.test")));
        let (configs, ()) = tokio::join!(asks, async {
            // Every ask was polled (join! polls the first branch first) before this runs.
            entered.recv().await.unwrap();
            open.send(()).unwrap();
        });
        let configs: Vec<_> = configs.into_iter().map(Result::unwrap).collect();
        assert!(configs.iter().all(|c| Arc::ptr_eq(c, &configs[0])));
        assert_eq!(*outcomes.lock().unwrap(), [true], "minted once");
        assert_eq!(ca.leaves.kept(), 1);
    }
}

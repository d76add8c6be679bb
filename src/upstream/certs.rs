//! Per-host trust, as dockerd reads `/etc/docker/certs.d`: the CA files of `<host[:port]>/*.crt`
//! are trusted, in addition to the system's roots, for that host only — a CA installed for one
//! registry can never vouch for another. Hosts are matched by name (the port of the directory is
//! not part of a TLS server name).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_platform_verifier::Verifier;

/// The file `regmirror shim install-ca` writes into certs.d: the shim's own CA, for dockerd. It is
/// never a trust anchor for upstream connections.
pub const SHIM_CA_FILE: &str = "regmirror-ca.crt";

/// CA certificates by host name.
#[derive(Debug, Clone, Default)]
pub struct HostRoots(HashMap<String, Vec<CertificateDer<'static>>>);

impl HostRoots {
    /// Reads `<dir>/<host[:port]>/*.crt`; unreadable entries are skipped. `skip` names files that
    /// are not trust anchors for upstream connections (the shim's own CA).
    pub fn read_dir(dir: &Path, skip: &str) -> Self {
        let mut roots: HashMap<String, Vec<CertificateDer<'static>>> = HashMap::new();
        let Ok(hosts) = std::fs::read_dir(dir) else {
            return HostRoots(roots);
        };
        for host in hosts.flatten() {
            let name = host.file_name().to_string_lossy().into_owned();
            let host_name = crate::reference::split_host_port(&name)
                .0
                .trim_matches(['[', ']'])
                .to_ascii_lowercase();
            let Ok(files) = std::fs::read_dir(host.path()) else {
                continue;
            };
            for file in files.flatten() {
                let path = file.path();
                let is_ca = path.extension().is_some_and(|e| e == "crt")
                    && path.file_name().is_none_or(|n| n != skip);
                if !is_ca {
                    continue;
                }
                if let Ok(certs) = CertificateDer::pem_file_iter(&path) {
                    roots
                        .entry(host_name.clone())
                        .or_default()
                        .extend(certs.flatten());
                }
            }
        }
        HostRoots(roots)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn verifier(
        &self,
        provider: &Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<PerHostVerifier, String> {
        let default = Arc::new(Verifier::new(provider.clone()).map_err(|e| e.to_string())?);
        let mut hosts = HashMap::new();
        for (host, certs) in &self.0 {
            let verifier = Verifier::new_with_extra_roots(certs.iter().cloned(), provider.clone())
                .map_err(|e| format!("CA files for {host}: {e}"))?;
            hosts.insert(host.clone(), Arc::new(verifier));
        }
        Ok(PerHostVerifier { default, hosts })
    }

    /// A rustls client configuration verifying with the system's roots plus each host's own.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = self.verifier(&provider)?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

#[derive(Debug)]
struct PerHostVerifier {
    default: Arc<Verifier>,
    hosts: HashMap<String, Arc<Verifier>>,
}

impl PerHostVerifier {
    fn for_name(&self, name: &ServerName<'_>) -> &Verifier {
        let host = match name {
            ServerName::DnsName(dns) => dns.as_ref().to_ascii_lowercase(),
            ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
            _ => String::new(),
        };
        self.hosts.get(&host).unwrap_or(&self.default)
    }
}

impl ServerCertVerifier for PerHostVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.for_name(server_name).verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.default.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.default.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.default.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), rcgen::Issuer::new(params, key))
    }

    fn leaf(
        issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
        host: &str,
    ) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![host.to_owned()]).unwrap();
        params.signed_by(&key, issuer).unwrap().der().clone()
    }

    #[test]
    fn a_hosts_ca_vouches_for_that_host_only() {
        crate::upstream::install_crypto_provider();
        let (ca_pem, issuer) = ca();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("reg.example.test:5000")).unwrap();
        std::fs::write(dir.path().join("reg.example.test:5000/ca.crt"), &ca_pem).unwrap();
        std::fs::write(
            dir.path().join("reg.example.test:5000").join(SHIM_CA_FILE),
            "skipped",
        )
        .unwrap();
        let roots = HostRoots::read_dir(dir.path(), SHIM_CA_FILE);
        roots
            .client_config()
            .expect("a usable client configuration");
        let verifier = roots
            .verifier(&Arc::new(rustls::crypto::ring::default_provider()))
            .unwrap();
        let verify = |cert: &CertificateDer<'static>, host: &str| {
            let name = ServerName::try_from(host.to_owned()).unwrap();
            verifier.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
        };
        verify(&leaf(&issuer, "reg.example.test"), "reg.example.test")
            .expect("trusted for its own host");
        let refused = verify(&leaf(&issuer, "other.example.test"), "other.example.test");
        assert!(
            refused.is_err(),
            "the CA of reg.example.test cannot vouch for other.example.test"
        );
        assert!(HostRoots::read_dir(Path::new("/nonexistent"), "x").is_empty());
    }
}

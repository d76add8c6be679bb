//! Per-host trust, as dockerd reads `/etc/docker/certs.d`: the CA files of `<host[:port]>/*.crt`
//! are trusted, in addition to the system's roots, for that host only — a CA installed for one
//! registry can never vouch for another. Hosts are matched by name (the port of the directory is
//! not part of a TLS server name).
//!
//! One case is decided here instead of by the platform verifier: the server presents, byte for
//! byte, a `CA:TRUE` certificate that is one of that host's certs.d files — a registry certificate
//! made as Docker's docs say, which webpki refuses as `CaUsedAsEndEntity` and dockerd accepts.
//! `trusted_leaf` checks it as Go does (validity, extended key usage, name). The system's roots
//! never get this: they vouch for every host, and none of them is meant to be a server's leaf.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_platform_verifier::Verifier;

use super::trusted_leaf::TrustedLeaf;

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
    ) -> Result<PerHostVerifier, TrustError> {
        let default = Verifier::new(provider.clone())?;
        let mut hosts = HashMap::new();
        for (host, certs) in &self.0 {
            let verifier = Verifier::new_with_extra_roots(certs.iter().cloned(), provider.clone())
                .map_err(|source| TrustError::HostCas {
                    host: host.clone(),
                    source,
                })?;
            let trust = HostTrust {
                verifier,
                certs: certs.clone(),
            };
            hosts.insert(host.clone(), trust);
        }
        Ok(PerHostVerifier { default, hosts })
    }

    /// A rustls client configuration verifying with the system's roots plus each host's own.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TrustError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = self.verifier(&provider)?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Why the TLS configuration for upstream connections could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The platform verifier, or the protocol versions of the crypto provider.
    #[error(transparent)]
    Platform(#[from] rustls::Error),
    #[error("CA files for {host}: {source}")]
    HostCas {
        host: String,
        #[source]
        source: rustls::Error,
    },
}

#[derive(Debug)]
struct PerHostVerifier {
    default: Verifier,
    hosts: HashMap<String, HostTrust>,
}

/// One host's trust: the system's roots plus its certs.d files, and those files themselves.
#[derive(Debug)]
struct HostTrust {
    verifier: Verifier,
    certs: Vec<CertificateDer<'static>>,
}

impl HostTrust {
    /// `end_entity` when it is byte for byte one of this host's certs.d files and a CA
    /// certificate: the case the platform verifier refuses as `CaUsedAsEndEntity`.
    fn trusted_ca_leaf(&self, end_entity: &CertificateDer<'_>) -> Option<TrustedLeaf> {
        if !self.certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            return None;
        }
        TrustedLeaf::read(end_entity).filter(|leaf| leaf.is_ca)
    }
}

impl PerHostVerifier {
    fn for_name(&self, name: &ServerName<'_>) -> Option<&HostTrust> {
        let host = match name {
            ServerName::DnsName(dns) => dns.as_ref().to_ascii_lowercase(),
            ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
            _ => String::new(),
        };
        self.hosts.get(&host)
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
        let Some(host) = self.for_name(server_name) else {
            return self.default.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            );
        };
        if let Some(leaf) = host.trusted_ca_leaf(end_entity) {
            leaf.verify(end_entity, server_name, now)?;
            return Ok(ServerCertVerified::assertion());
        }
        host.verifier
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
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

    /// A self-signed `CA:TRUE` certificate for `localhost` and 127.0.0.1, as Docker's documented
    /// openssl command makes one; `edit` changes its parameters first.
    fn self_signed_ca(edit: impl FnOnce(&mut rcgen::CertificateParams)) -> rcgen::Certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        edit(&mut params);
        params.self_signed(&key).unwrap()
    }

    /// The verifier of a certs.d holding `files` (`host[:port]/name.crt`, PEM).
    fn verifier_for(files: &[(&str, &rcgen::Certificate)]) -> PerHostVerifier {
        crate::upstream::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        for (path, cert) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, cert.pem()).unwrap();
        }
        HostRoots::read_dir(dir.path(), SHIM_CA_FILE)
            .verifier(&Arc::new(rustls::crypto::ring::default_provider()))
            .unwrap()
    }

    fn verify(
        verifier: &PerHostVerifier,
        cert: &rcgen::Certificate,
        name: &str,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from(name.to_owned()).unwrap();
        verifier.verify_server_cert(cert.der(), &[], &name, &[], UnixTime::now())
    }

    fn refusal(result: Result<ServerCertVerified, rustls::Error>) -> String {
        match result {
            Ok(_) => panic!("accepted"),
            Err(e) => format!("{e:?}"),
        }
    }

    #[test]
    fn a_trusted_self_signed_ca_certificate_serves_as_its_own_leaf() {
        let cert = self_signed_ca(|_| {});
        let verifier = verifier_for(&[
            ("localhost:5000/ca.crt", &cert),
            ("127.0.0.1:5000/ca.crt", &cert),
        ]);
        verify(&verifier, &cert, "localhost").expect("by name");
        verify(&verifier, &cert, "127.0.0.1").expect("by IP address");
        // Stating serverAuth (or any purpose) changes nothing.
        for purpose in [
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::Any,
        ] {
            let cert = self_signed_ca(|p| p.extended_key_usages = vec![purpose]);
            let verifier = verifier_for(&[("localhost/ca.crt", &cert)]);
            verify(&verifier, &cert, "localhost").expect("a server certificate");
        }
    }

    #[test]
    fn a_self_signed_ca_certificate_not_in_that_hosts_certs_d_is_refused() {
        let cert = self_signed_ca(|_| {});
        let elsewhere = verifier_for(&[("reg.example.test/ca.crt", &cert)]);
        let refused = refusal(verify(&elsewhere, &cert, "localhost"));
        assert!(refused.contains("CaUsedAsEndEntity"), "{refused}");
        // Another CA:TRUE certificate for the same names, while certs.d holds the first.
        let other = self_signed_ca(|_| {});
        let verifier = verifier_for(&[("localhost/ca.crt", &cert)]);
        let refused = refusal(verify(&verifier, &other, "localhost"));
        assert!(refused.contains("CaUsedAsEndEntity"), "{refused}");
    }

    #[test]
    fn a_trusted_self_signed_ca_certificate_is_still_checked_as_a_leaf() {
        // A name it does not carry.
        let cert = self_signed_ca(|_| {});
        let verifier = verifier_for(&[("reg.example.test/ca.crt", &cert)]);
        let refused = refusal(verify(&verifier, &cert, "reg.example.test"));
        assert!(refused.contains("NotValidForNameContext"), "{refused}");
        // Expired, and not valid yet.
        for (not_before, not_after, error) in [
            ((2020, 1, 1), (2021, 1, 1), "ExpiredContext"),
            ((4000, 1, 1), (4001, 1, 1), "NotValidYetContext"),
        ] {
            let cert = self_signed_ca(|p| {
                p.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
                p.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
            });
            let verifier = verifier_for(&[("localhost/ca.crt", &cert)]);
            let refused = refusal(verify(&verifier, &cert, "localhost"));
            assert!(refused.contains(error), "{refused}");
        }
        // Extended key usages without serverAuth.
        let cert = self_signed_ca(|p| {
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth]
        });
        let verifier = verifier_for(&[("localhost/ca.crt", &cert)]);
        let refused = refusal(verify(&verifier, &cert, "localhost"));
        assert!(refused.contains("InvalidPurpose"), "{refused}");
    }

    #[test]
    fn a_leaf_signed_by_a_trusted_self_signed_certificate_is_chain_built_as_before() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let issuer = rcgen::Issuer::new(params, key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let verifier = verifier_for(&[("localhost/ca.crt", &ca)]);
        verify(&verifier, &leaf, "localhost").expect("signed by a trusted CA");
        verify(&verifier, &ca, "localhost").expect("the CA itself, trusted byte for byte");
    }
}

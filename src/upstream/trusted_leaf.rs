//! A trusted CA certificate presented as the server's own certificate: what a registry made with
//! Docker's documented `openssl req -x509` command serves (OpenSSL 3 marks it `CA:TRUE`), with
//! that same file in certs.d. webpki refuses any CA certificate as an end entity
//! (`CaUsedAsEndEntity`); Go's crypto/x509, and so dockerd, accepts a leaf that is itself in the
//! root pool after the checks it makes of every leaf. This module makes those checks, as Go does:
//!
//! - the certificate parses (webpki's parser: DER, v3, no unknown critical extension);
//! - `now` is within `notBefore..=notAfter` (Go: `CertificateInvalidError{Expired}`);
//! - its extended key usages, when it lists any, include serverAuth or anyExtendedKeyUsage (Go:
//!   `IncompatibleUsage`);
//! - the server name is among its subject alternative names, the common name ignored (webpki's
//!   own check; Go: `HostnameError`).
//!
//! Its signature is not checked: the certificate is trusted byte for byte, as Go trusts a root.
//! Pure: no I/O. Whether the certificate is one the operator trusts for this host is the caller's
//! decision (`certs.rs`).

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, OtherError};
use yasna::models::ObjectIdentifier;
use yasna::tags::TAG_UTCTIME;
use yasna::{ASN1Result, BERReader, BERReaderSeq, Tag};

const BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];
const EXTENDED_KEY_USAGE: &[u64] = &[2, 5, 29, 37];
const ANY_EXTENDED_KEY_USAGE: &[u64] = &[2, 5, 29, 37, 0];
const SERVER_AUTH: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 3, 1];

/// What webpki's public API does not tell of a certificate.
#[derive(Debug, PartialEq)]
pub(crate) struct TrustedLeaf {
    /// basicConstraints `cA`.
    pub is_ca: bool,
    /// Seconds since the Unix epoch.
    not_before: i64,
    not_after: i64,
    /// The extended key usages, when the certificate lists them.
    purposes: Option<Vec<ObjectIdentifier>>,
}

impl TrustedLeaf {
    /// Reads `der`; `None` when it is not a DER X.509 certificate.
    pub fn read(der: &[u8]) -> Option<Self> {
        yasna::parse_der(der, |r| {
            r.read_sequence(|r| {
                let leaf = r.next().read_sequence(read_tbs)?;
                r.next().read_der()?; // signatureAlgorithm
                r.next().read_der()?; // signatureValue
                Ok(leaf)
            })
        })
        .ok()
    }

    /// Go's checks of a leaf found in the root pool, for `name` at `now`; the error is the one
    /// rustls gives for the same failure of an ordinary chain.
    pub fn verify(
        &self,
        der: &CertificateDer<'_>,
        name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let parsed = webpki::EndEntityCert::try_from(der).map_err(refused)?;
        let seconds = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        if seconds < self.not_before {
            return Err(CertificateError::NotValidYetContext {
                time: now,
                not_before: unix_time(self.not_before),
            }
            .into());
        }
        if seconds > self.not_after {
            return Err(CertificateError::ExpiredContext {
                time: now,
                not_after: unix_time(self.not_after),
            }
            .into());
        }
        if let Some(purposes) = &self.purposes {
            let serves = purposes
                .iter()
                .any(|p| p.components() == SERVER_AUTH || p.components() == ANY_EXTENDED_KEY_USAGE);
            if !serves {
                return Err(CertificateError::InvalidPurpose.into());
            }
        }
        parsed
            .verify_is_valid_for_subject_name(name)
            .map_err(refused)
    }
}

/// TBSCertificate: version, serialNumber, signature, issuer, validity, subject,
/// subjectPublicKeyInfo, then the optional unique identifiers ([1], [2]) and extensions ([3]).
fn read_tbs(r: &mut BERReaderSeq<'_, '_>) -> ASN1Result<TrustedLeaf> {
    r.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_u8()))?;
    for _ in ["serialNumber", "signature", "issuer"] {
        r.next().read_der()?;
    }
    let (not_before, not_after) = r
        .next()
        .read_sequence(|r| Ok((read_time(r.next())?, read_time(r.next())?)))?;
    for _ in ["subject", "subjectPublicKeyInfo"] {
        r.next().read_der()?;
    }
    let mut leaf = TrustedLeaf {
        is_ca: false,
        not_before,
        not_after,
        purposes: None,
    };
    while r
        .read_optional(|r| {
            if r.lookahead_tag()? == Tag::context(3) {
                r.read_tagged(Tag::context(3), |r| {
                    r.read_sequence_of(|r| read_extension(r, &mut leaf))
                })
            } else {
                r.read_der().map(drop)
            }
        })?
        .is_some()
    {}
    Ok(leaf)
}

/// Extension: extnID, critical (default FALSE), extnValue; only basicConstraints and
/// extendedKeyUsage are read.
fn read_extension(r: BERReader<'_, '_>, leaf: &mut TrustedLeaf) -> ASN1Result<()> {
    r.read_sequence(|r| {
        let id = r.next().read_oid()?;
        r.read_optional(|r| r.read_bool())?;
        let value = r.next().read_bytes()?;
        if id.components() == BASIC_CONSTRAINTS {
            leaf.is_ca = yasna::parse_der(&value, |r| {
                r.read_sequence(|r| {
                    let ca = r.read_optional(|r| r.read_bool())?.unwrap_or(false);
                    r.read_optional(|r| r.read_u64())?; // pathLenConstraint
                    Ok(ca)
                })
            })?;
        } else if id.components() == EXTENDED_KEY_USAGE {
            leaf.purposes = Some(yasna::parse_der(&value, |r| {
                r.collect_sequence_of(|r| r.read_oid())
            })?);
        }
        Ok(())
    })
}

/// Time: UTCTime or GeneralizedTime, as seconds since the Unix epoch.
fn read_time(r: BERReader<'_, '_>) -> ASN1Result<i64> {
    Ok(if r.lookahead_tag()? == TAG_UTCTIME {
        r.read_utctime()?.datetime().unix_timestamp()
    } else {
        r.read_generalized_time()?.datetime().unix_timestamp()
    })
}

fn unix_time(seconds: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(seconds).unwrap_or(0)))
}

/// webpki's refusal as rustls reports it for an ordinary chain.
fn refused(error: webpki::Error) -> rustls::Error {
    match error {
        webpki::Error::CertNotValidForName(context) => CertificateError::NotValidForNameContext {
            expected: context.expected,
            presented: context.presented,
        }
        .into(),
        webpki::Error::BadDer | webpki::Error::BadDerTime | webpki::Error::TrailingData(_) => {
            CertificateError::BadEncoding.into()
        }
        other => CertificateError::Other(OtherError(Arc::new(other))).into(),
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject as _;

    use super::*;

    /// Made with Docker's documented command (`openssl req -newkey rsa:4096 -nodes -sha256 -keyout
    /// domain.key -x509 -days 365 -out domain.crt`) by OpenSSL 3.0, with `-subj '/CN=localhost'
    /// -addext 'subjectAltName=IP:127.0.0.1,DNS:localhost'`; valid 2026-12-06 04:08:57 UTC for 365
    /// days.
    const DOCKER_DOCUMENTED: &str =
        include_str!("../../tests/fixtures/docker-documented-domain.crt");
    const NOT_BEFORE: i64 = 1_796_530_137;

    fn at(seconds: i64) -> UnixTime {
        unix_time(seconds)
    }

    fn name(text: &str) -> ServerName<'static> {
        ServerName::try_from(text.to_owned()).unwrap()
    }

    #[test]
    fn reads_what_openssl_writes_for_dockers_documented_command() {
        let der = CertificateDer::from_pem_slice(DOCKER_DOCUMENTED.as_bytes()).unwrap();
        let leaf = TrustedLeaf::read(&der).expect("a certificate");
        assert_eq!(
            leaf,
            TrustedLeaf {
                is_ca: true,
                not_before: NOT_BEFORE,
                not_after: NOT_BEFORE + 365 * 86_400,
                purposes: None,
            }
        );
        let inside = at(NOT_BEFORE + 86_400);
        leaf.verify(&der, &name("localhost"), inside).unwrap();
        leaf.verify(&der, &name("127.0.0.1"), inside).unwrap();
        let refusals = [
            (name("reg.example.test"), inside, "NotValidForNameContext"),
            (name("127.0.0.2"), inside, "NotValidForNameContext"),
            (name("localhost"), at(NOT_BEFORE - 1), "NotValidYetContext"),
            (
                name("localhost"),
                at(NOT_BEFORE + 366 * 86_400),
                "ExpiredContext",
            ),
        ];
        for (server, now, error) in refusals {
            let refused = leaf.verify(&der, &server, now).unwrap_err();
            assert!(
                format!("{refused:?}").contains(error),
                "{server:?}: {refused:?}"
            );
        }
        // Both ends of the validity period are inside it, as in Go and webpki.
        leaf.verify(&der, &name("localhost"), at(NOT_BEFORE))
            .unwrap();
        leaf.verify(&der, &name("localhost"), at(leaf.not_after))
            .unwrap();
    }

    #[test]
    fn reads_basic_constraints_purposes_and_generalized_times() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cases = [
            (
                rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0)),
                true,
            ),
            (rcgen::IsCa::ExplicitNoCa, false),
            (rcgen::IsCa::NoCa, false),
        ];
        for (is_ca, expected) in cases {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            params.is_ca = is_ca;
            // 2060: after 2049 X.509 writes GeneralizedTime.
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2060, 1, 1);
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let cert = params.self_signed(&key).unwrap();
            let leaf = TrustedLeaf::read(cert.der()).unwrap();
            assert_eq!(leaf.is_ca, expected);
            assert_eq!(leaf.not_before, 1_577_836_800);
            assert_eq!(leaf.not_after, 2_840_140_800);
            assert_eq!(
                leaf.purposes,
                Some(vec![ObjectIdentifier::from_slice(&[
                    1, 3, 6, 1, 5, 5, 7, 3, 2
                ])])
            );
        }
    }

    #[test]
    fn anything_but_a_certificate_is_not_read() {
        let der = CertificateDer::from_pem_slice(DOCKER_DOCUMENTED.as_bytes()).unwrap();
        let cut = &der.as_ref()[..der.as_ref().len() - 1];
        let mut trailing = der.as_ref().to_vec();
        trailing.push(0);
        for bytes in [&b""[..], b"\x30\x00", b"not DER", cut, &trailing] {
            assert_eq!(TrustedLeaf::read(bytes), None, "{bytes:?}");
        }
    }
}

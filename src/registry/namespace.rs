//! The registry a client names with `?ns=` (containerd's mirror protocol), validated into a
//! [`RegistryHost`] before anything is sent: the cache and the shim both build request URLs from
//! it, so it must be a bare `host[:port]` and nothing else. Pure: no I/O.
//!
//! Refused, each with its reason: an empty value, anything but letters, digits, `.`, `-`, `:`
//! and IPv6 brackets (so no path, query, fragment, user info, scheme, percent-escape or
//! whitespace can ride along), a port outside 1-65535, labels that are not DNS labels, a
//! bracketed address that is not IPv6, and numeric hosts a URL parser reads as another address
//! (`2130706433` and `0x7f.1` are 127.0.0.1 to the WHATWG URL parser reqwest uses). Uppercase
//! is lowercased, as host names are case-insensitive; `ns` given twice is ambiguous and refused.

use std::fmt;
use std::net::Ipv6Addr;

use super::{ErrorCode, RegistryError};
use crate::reference;

/// A DNS name is at most 253 characters (RFC 1035, without the root dot).
const MAX_NAME_LEN: usize = 253;
/// A DNS label is at most 63 characters.
const MAX_LABEL_LEN: usize = 63;
/// How much of a refused value an error message repeats.
const SHOWN: usize = 128;

/// A validated registry `host[:port]`: a lowercase DNS name, a dotted IPv4 address or a
/// bracketed IPv6 address, with a port from 1 to 65535 when one is given. Its text
/// ([`fmt::Display`]) is canonical: what a URL parser makes of it is exactly this host and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegistryHost {
    /// Lowercase name, dotted IPv4, or `[ipv6]` as the URL parser writes it.
    host: String,
    port: Option<u16>,
}

/// Why a value is not a registry host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("empty")]
    Empty,
    #[error(
        "{0:?} is not allowed in a host[:port] (letters, digits, '.', '-', ':' and IPv6 brackets \
         only: no scheme, user info, path, query or spaces)"
    )]
    Character(char),
    #[error("port {0:?} is not a number from 1 to 65535")]
    Port(String),
    #[error("{0:?} is not an IPv6 address")]
    Ipv6(String),
    #[error(
        "{0:?} is not a host name (dot-separated labels of letters, digits and inner '-', at \
         most {MAX_LABEL_LEN} characters each and {MAX_NAME_LEN} in all) or an IPv4 address"
    )]
    Name(String),
    #[error("{given:?} is a numeric form of the address {means}: write it as {means}")]
    NumericForm { given: String, means: String },
}

impl RegistryHost {
    /// Validates `text` as `host[:port]`; see the module documentation for what is refused.
    pub fn parse(text: &str) -> Result<Self, HostError> {
        if text.is_empty() {
            return Err(HostError::Empty);
        }
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')))
        {
            return Err(HostError::Character(bad));
        }
        let (host, port) = reference::split_host_port(text);
        let port = port.map(parse_port).transpose()?;
        let host = match host.strip_prefix('[') {
            Some(inner) => {
                let ip: Ipv6Addr = inner
                    .strip_suffix(']')
                    .and_then(|ip| ip.parse().ok())
                    .ok_or_else(|| HostError::Ipv6(host.to_owned()))?;
                // The URL parser's own form: `[::ffff:7f00:1]` for `[::ffff:127.0.0.1]`.
                url::Host::<String>::Ipv6(ip).to_string()
            }
            None => parse_name(host)?,
        };
        Ok(RegistryHost { host, port })
    }

    /// The host: a lowercase name, a dotted IPv4 address or `[ipv6]`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, when one was given.
    pub fn port(&self) -> Option<u16> {
        self.port
    }
}

impl fmt::Display for RegistryHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

fn parse_port(text: &str) -> Result<u16, HostError> {
    text.parse::<u16>()
        .ok()
        .filter(|port| *port != 0 && text.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| HostError::Port(text.to_owned()))
}

/// A DNS name or dotted IPv4 address, lowercased; refused unless the WHATWG URL parser reads
/// it as exactly that.
fn parse_name(host: &str) -> Result<String, HostError> {
    let name = host.to_ascii_lowercase();
    let invalid = || HostError::Name(host.to_owned());
    if name.len() > MAX_NAME_LEN
        || !reference::is_valid_host(&name)
        || name.split('.').any(|label| label.len() > MAX_LABEL_LEN)
    {
        return Err(invalid());
    }
    match url::Host::parse(&name).map_err(|_| invalid())? {
        url::Host::Domain(parsed) if parsed == name => Ok(name),
        url::Host::Ipv4(ip) if ip.to_string() == name => Ok(name),
        url::Host::Ipv4(ip) => Err(HostError::NumericForm {
            given: host.to_owned(),
            means: ip.to_string(),
        }),
        url::Host::Domain(_) | url::Host::Ipv6(_) => Err(invalid()),
    }
}

/// The registry a request's query names with `ns`: `None` without one; NAME_INVALID (400) when
/// the value is not a [`RegistryHost`] or `ns` is given more than once. NAME_INVALID because
/// `ns` is the registry part of the name the client asks for (`ns/repository`), and an invalid
/// name is the client's error, never something to retry or to look up.
pub fn from_query(query: Option<&str>) -> Result<Option<RegistryHost>, RegistryError> {
    let mut values = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(key, _)| key == "ns")
        .map(|(_, value)| value);
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(RegistryError::new(
            ErrorCode::NameInvalid,
            "?ns= is given more than once: name one registry",
        ));
    }
    RegistryHost::parse(&value).map(Some).map_err(|why| {
        RegistryError::new(
            ErrorCode::NameInvalid,
            format!("invalid ?ns={:?}: {why}", shown(&value)),
        )
    })
}

/// At most [`SHOWN`] characters of a client's value, for a message.
fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_hosts_in_canonical_form() {
        for (given, canonical, port) in [
            ("ghcr.io", "ghcr.io", None),
            ("docker.io", "docker.io", None),
            (
                "Registry.Example.TEST:5000",
                "registry.example.test:5000",
                Some(5000),
            ),
            ("localhost:5000", "localhost:5000", Some(5000)),
            ("reg", "reg", None),
            ("127.0.0.1:5001", "127.0.0.1:5001", Some(5001)),
            ("10.1.2.3", "10.1.2.3", None),
            ("[::1]:5000", "[::1]:5000", Some(5000)),
            ("[2001:DB8:0:0::1]", "[2001:db8::1]", None),
            ("[::ffff:127.0.0.1]:443", "[::ffff:7f00:1]:443", Some(443)),
            ("a-b.c:65535", "a-b.c:65535", Some(65535)),
            (
                "reg.example.test:05000",
                "reg.example.test:5000",
                Some(5000),
            ),
            ("xn--bcher-kva.example", "xn--bcher-kva.example", None),
        ] {
            let host = RegistryHost::parse(given).unwrap_or_else(|e| panic!("{given}: {e}"));
            assert_eq!(host.to_string(), canonical, "{given}");
            assert_eq!(host.port(), port, "{given}");
            // What a URL parser makes of it is exactly this host and port.
            let url = url::Url::parse(&format!("https://{host}/v2/")).unwrap();
            assert_eq!(url.host_str(), Some(host.host()), "{given}");
            assert_eq!(url.port_or_known_default(), Some(port.unwrap_or(443)));
            assert_eq!(url.path(), "/v2/");
            assert_eq!(
                (url.username(), url.password(), url.query()),
                ("", None, None)
            );
        }
    }

    #[test]
    fn every_way_out_of_a_host_is_refused() {
        let long_label = format!("{}.test", "a".repeat(64));
        let long_name = format!("{}.test", vec!["a".repeat(60); 5].join("."));
        for (given, why) in [
            // the issue's attack: path and query injection
            ("127.0.0.1:8080/admin/wipe?all=1&", "'/' is not allowed"),
            ("reg.test/v2/", "'/' is not allowed"),
            ("reg.test?x=1", "'?' is not allowed"),
            ("reg.test#frag", "'#' is not allowed"),
            ("reg.test&ns=other", "'&' is not allowed"),
            ("reg.test%2Fadmin", "'%' is not allowed"),
            ("reg.test\\admin", "'\\\\' is not allowed"),
            // user info, schemes
            ("user@reg.test", "'@' is not allowed"),
            ("user:pass@reg.test:5000", "'@' is not allowed"),
            ("https://reg.test", "'/' is not allowed"),
            ("http:reg.test", "port \"reg.test\""),
            ("file:", "port \"\""),
            // whitespace and control characters
            (" reg.test", "' ' is not allowed"),
            ("reg.test ", "' ' is not allowed"),
            ("reg.test\r\nHost: evil", "'\\r' is not allowed"),
            ("reg.test\t", "'\\t' is not allowed"),
            ("", "empty"),
            // ports
            ("reg.test:", "port \"\""),
            ("reg.test:0", "port \"0\""),
            ("reg.test:65536", "port \"65536\""),
            (
                "reg.test:99999999999999999999",
                "port \"99999999999999999999\"",
            ),
            ("reg.test:+443", "'+' is not allowed"),
            ("reg.test:44a", "port \"44a\""),
            ("reg.test:443:443", "not a host name"),
            // IPv6
            ("::1", "not a host name"),
            ("[::1", "not an IPv6 address"),
            ("[::1]x", "not an IPv6 address"),
            ("[]", "not an IPv6 address"),
            ("[127.0.0.1]", "not an IPv6 address"),
            ("[fe80::1%25eth0]", "'%' is not allowed"),
            ("[::1]:", "port \"\""),
            // names
            (".", "not a host name"),
            ("reg..test", "not a host name"),
            ("reg.test.", "not a host name"),
            ("-reg.test", "not a host name"),
            ("reg-.test", "not a host name"),
            ("reg_x.test", "'_' is not allowed"),
            ("rég.test", "'é' is not allowed"),
            (&long_label, "not a host name"),
            (&long_name, "not a host name"),
            // numeric forms a URL parser reads as another address
            ("2130706433", "the address 127.0.0.1"),
            ("0x7f.1", "the address 127.0.0.1"),
            ("127.1:5000", "the address 127.0.0.1"),
            ("0177.0.0.1", "the address 127.0.0.1"),
            ("0x7f000001", "the address 127.0.0.1"),
            ("256.0.0.1", "not a host name"),
        ] {
            let error = RegistryHost::parse(given)
                .map(|h| h.to_string())
                .expect_err(given)
                .to_string();
            assert!(error.contains(why), "{given:?}: {error}");
        }
    }

    #[test]
    fn the_ns_parameter() {
        let ns = |query: &str| from_query(Some(query));
        assert_eq!(from_query(None), Ok(None));
        assert_eq!(ns("n=10&last=a"), Ok(None));
        assert_eq!(
            ns("ns=GHCR.io").unwrap().unwrap().to_string(),
            "ghcr.io",
            "uppercase is lowercased"
        );
        assert_eq!(
            ns("ns=127.0.0.1%3A5000&n=1").unwrap().unwrap().to_string(),
            "127.0.0.1:5000",
            "containerd escapes the colon"
        );
        for (query, fragment) in [
            (
                "ns=127.0.0.1:8080%2Fadmin%2Fwipe%3Fall%3D1%26",
                r#"invalid ?ns="127.0.0.1:8080/admin/wipe?all=1&": '/' is not allowed"#,
            ),
            ("ns=", r#"invalid ?ns="": empty"#),
            ("ns=reg+x", "' ' is not allowed"),
            ("ns=a.test&ns=b.test", "given more than once"),
            ("ns=a.test&ns=a.test", "given more than once"),
        ] {
            let error = ns(query).expect_err(query);
            assert_eq!(error.code, ErrorCode::NameInvalid, "{query}");
            assert_eq!(error.status(), 400);
            assert!(
                error.message.contains(fragment),
                "{query}: {}",
                error.message
            );
        }
        let long = format!("ns={}", "/".repeat(1000));
        let message = ns(&long).unwrap_err().message;
        assert!(
            message.len() < 300,
            "a long value is not repeated whole: {message}"
        );
    }
}

//! Which addresses upstream requests may reach, and name overrides instead of DNS.
//!
//! Configured upstreams and mirrors may be anywhere (a cache in front of an internal registry is
//! normal). Every other host — a dynamic upstream named by a client through `?ns=`, a `domain`
//! header or a path prefix — must be reached on public addresses only, unless the operator allows
//! private ones: otherwise the cache would be an open door into the internal network. Requests to
//! such targets use the guarded clients, where the check runs at every hop:
//! - a host name is checked inside the HTTP client's resolver, on the very addresses it connects
//!   to, so a name that resolves differently on a second lookup cannot slip past it;
//! - an IP literal never reaches a resolver, so [`AddressPolicy::check_url`] checks it: for the
//!   first request, in the redirect policy for every redirect, and for a token service's realm.
//!
//! Public means outside every block of [`special`](super::special) (the IANA special-purpose
//! registries, with the IPv4 address an IPv6 one carries judged as IPv4). A refusal is an
//! [`AddressRefused`] naming the block and its RFC, so that callers tell it from a failure (it
//! is a policy: the client gets 403 DENIED, and the endpoint does not rest as if it were down).
//!
//! `--add-host` overrides are the operator's own word and are not checked.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::special;

/// `--add-host NAME:IP` entries: names answered without DNS (like curl's `--resolve`).
#[derive(Debug, Clone, Default)]
pub struct HostOverrides(HashMap<String, IpAddr>);

impl HostOverrides {
    /// Parses `NAME:IP` values (`IP` may be IPv6, with or without brackets).
    pub fn parse(values: &[String]) -> Result<Self, AddHostError> {
        let mut map = HashMap::new();
        for value in values {
            let (name, ip) = value.split_once(':').ok_or_else(|| AddHostError::NoColon {
                value: value.clone(),
            })?;
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            let parsed: IpAddr = ip.parse().map_err(|source| AddHostError::NotAnAddress {
                value: value.clone(),
                ip: ip.to_owned(),
                source,
            })?;
            map.insert(name.to_ascii_lowercase(), parsed);
        }
        Ok(HostOverrides(map))
    }

    pub fn get(&self, name: &str) -> Option<IpAddr> {
        self.0.get(&name.to_ascii_lowercase()).copied()
    }
}

/// Why an `--add-host` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddHostError {
    #[error("--add-host {value:?}: expected NAME:IP")]
    NoColon { value: String },
    #[error("--add-host {value:?}: {ip:?} is not an IP address")]
    NotAnAddress {
        value: String,
        ip: String,
        #[source]
        source: std::net::AddrParseError,
    },
}

/// The address policy refused a target: the message names the host, the block its address is
/// in (with the RFC) and the setting that would allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddressRefused(String);

/// What addresses untrusted targets (dynamic upstreams and their redirects) may reach.
#[derive(Debug, Clone, Copy, Default)]
pub struct AddressPolicy {
    allow_private: bool,
}

impl AddressPolicy {
    /// `allow_private`: loopback, link-local and private addresses are allowed too.
    pub fn new(allow_private: bool) -> Self {
        AddressPolicy { allow_private }
    }

    /// Whether `url` may be requested as far as its host is an IP literal (names are checked when
    /// they are resolved).
    pub fn check_url(&self, url: &url::Url) -> Result<(), AddressRefused> {
        let ip: IpAddr = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.into(),
            Some(url::Host::Ipv6(ip)) => ip.into(),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err(AddressRefused(format!("refusing {url}: no host"))),
        };
        self.check(&ip.to_string(), ip)
    }

    /// Whether `host` (no port) may be reached at `ip`.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), AddressRefused> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if self.allow_private {
            return Ok(());
        }
        special::check(ip).map_err(|not_public| {
            AddressRefused(format!(
                "refusing upstream {host}: {not_public}, not a public address, and {host} is not \
                 a configured upstream (set proxy.allow_private_upstreams to allow)"
            ))
        })
    }
}

/// The HTTP client's resolver: overrides first, then the system resolver, then the policy.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub overrides: Arc<HostOverrides>,
    pub policy: Arc<AddressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let this = self.clone();
        Box::pin(async move {
            if let Some(ip) = this.overrides.get(&host) {
                let addrs: Addrs = Box::new(std::iter::once(SocketAddr::new(ip, 0)));
                return Ok(addrs);
            }
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for addr in &resolved {
                this.policy.check(&host, addr.ip())?;
            }
            let addrs: Addrs = Box::new(resolved.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy() {
        let guarded = AddressPolicy::new(false);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let err = guarded.check("evil.example", lo).unwrap_err().to_string();
        assert_eq!(
            err,
            "refusing upstream evil.example: 127.0.0.1 is in 127.0.0.0/8 (loopback, RFC 1122), \
             not a public address, and evil.example is not a configured upstream (set \
             proxy.allow_private_upstreams to allow)"
        );
        assert!(guarded.check("[::1]", "::1".parse().unwrap()).is_err());
        assert!(
            guarded
                .check("evil.example", "8.8.8.8".parse().unwrap())
                .is_ok()
        );
        assert!(AddressPolicy::new(true).check("anything", lo).is_ok());
    }

    #[test]
    fn urls_with_literal_hosts() {
        let guarded = AddressPolicy::new(false);
        let url = |s: &str| url::Url::parse(s).unwrap();
        for refused in [
            "http://169.254.169.254/latest/meta-data",
            "http://127.0.0.1:5000/v2/",
            "https://[::1]/token",
            "http://[::ffff:10.0.0.1]/",
            "http://[::10.0.0.1]/",
            "http://[64:ff9b::a9fe:a9fe]/latest/meta-data",
            "http://[2002:a00:1::1]/",
            "http://198.18.0.1/",
            "http://240.0.0.1/",
            "http://[fec0::1]/",
            "http://0x7f000001/",
        ] {
            let error = guarded.check_url(&url(refused)).unwrap_err().to_string();
            assert!(error.contains("refusing"), "{refused}: {error}");
        }
        for allowed in [
            "https://8.8.8.8/v2/",
            "https://[64:ff9b::808:808]/v2/",
            "https://auth.docker.io/token",
        ] {
            assert!(guarded.check_url(&url(allowed)).is_ok(), "{allowed}");
        }
        assert!(
            AddressPolicy::new(true)
                .check_url(&url("http://127.0.0.1/"))
                .is_ok()
        );
    }

    #[test]
    fn overrides() {
        let o =
            HostOverrides::parse(&["Reg.Example.test:127.0.0.2".into(), "v6.test:[::1]".into()])
                .unwrap();
        assert_eq!(
            o.get("reg.example.test"),
            Some("127.0.0.2".parse().unwrap())
        );
        assert_eq!(o.get("v6.test"), Some("::1".parse().unwrap()));
        assert!(HostOverrides::parse(&["nocolon".into()]).is_err());
        assert!(HostOverrides::parse(&["a:notanip".into()]).is_err());
    }
}

//! Who may use the shim, and which ports its tunnels reach: decided once at start-up from
//! `--listen` and `--allow-clients`, then asked per connection. Pure: no I/O, no logging.
//!
//! On loopback only local processes reach the shim, and they could reach any host themselves, so
//! nothing is restricted (unless `--allow-clients` is given). Beyond loopback the shim would be a
//! proxy into whatever network it sits in for anyone who can reach its port: it refuses to start
//! unless `--allow-clients` names the client networks, and CONNECT tunnels and plain-http
//! forwards for hosts without a mirror rule may reach only the registry ports 443 and 5000.
//! Hosts with a rule (every host under a `*` rule) are registries the operator named; they are
//! not restricted by port.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// The ports a shim listening beyond loopback reaches for hosts without a rule.
pub const SHARED_PORTS: [u16; 2] = [443, 5000];

/// The shim's access rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// Empty: any peer (allowed on loopback only).
    clients: Vec<IpNet>,
    beyond_loopback: bool,
}

impl Access {
    /// `clients` are `--allow-clients` entries: CIDRs or single addresses.
    pub fn new(listen: SocketAddr, clients: &[String]) -> Result<Self, AccessError> {
        let clients = clients
            .iter()
            .map(|text| parse_client(text))
            .collect::<Result<Vec<_>, _>>()?;
        let beyond_loopback = !listen.ip().to_canonical().is_loopback();
        if beyond_loopback && clients.is_empty() {
            return Err(AccessError::NoClientsNamed { listen });
        }
        Ok(Access {
            clients,
            beyond_loopback,
        })
    }

    pub fn beyond_loopback(&self) -> bool {
        self.beyond_loopback
    }

    /// The `--allow-clients` networks, comma-separated (empty when anyone may connect).
    pub fn clients(&self) -> String {
        let clients: Vec<String> = self.clients.iter().map(IpNet::to_string).collect();
        clients.join(",")
    }

    /// Whether `peer` may use the shim.
    pub fn admits(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.clients.is_empty() || self.clients.iter().any(|net| net.contains(&peer))
    }

    /// Whether a tunnel or forward to a host without a rule may go to `port`.
    pub fn reaches_port(&self, port: u16) -> bool {
        !self.beyond_loopback || SHARED_PORTS.contains(&port)
    }
}

/// Why the access rules were refused at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("--allow-clients {text:?}: not a CIDR (10.1.0.0/16) or an IP address")]
    NotANetwork { text: String },
    #[error(
        "--listen {listen} is beyond loopback: anyone who can reach it could use the shim to \
         reach other hosts. Name the clients that may use it with --allow-clients \
         CIDR[,CIDR...] (for example --allow-clients 10.1.0.0/16), or listen on 127.0.0.1"
    )]
    NoClientsNamed { listen: SocketAddr },
}

fn parse_client(text: &str) -> Result<IpNet, AccessError> {
    let text = text.trim();
    text.parse::<IpNet>()
        .map(|net| net.trunc())
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| AccessError::NotANetwork {
            text: text.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(listen: &str, clients: &[&str]) -> Result<Access, String> {
        let clients: Vec<String> = clients.iter().map(|c| c.to_string()).collect();
        Access::new(listen.parse().unwrap(), &clients).map_err(|e| e.to_string())
    }

    #[test]
    fn beyond_loopback_needs_allowed_clients() {
        for listen in [
            "0.0.0.0:3128",
            "10.1.2.3:3128",
            "[::]:3128",
            "[fe80::1]:3128",
        ] {
            let error = access(listen, &[]).unwrap_err();
            assert!(error.contains("--allow-clients"), "{listen}: {error}");
            assert!(access(listen, &["10.0.0.0/8"]).unwrap().beyond_loopback());
        }
        for listen in [
            "127.0.0.1:3128",
            "127.0.0.2:3128",
            "[::1]:3128",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(!access(listen, &[]).unwrap().beyond_loopback(), "{listen}");
        }
    }

    #[test]
    fn client_entries() {
        let a = access(
            "0.0.0.0:3128",
            &["10.1.0.0/16", "192.0.2.7", "2001:db8::/32"],
        )
        .unwrap();
        for (peer, admitted) in [
            ("10.1.255.3", true),
            ("10.2.0.1", false),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
            ("::ffff:10.1.0.9", true),
            ("2001:db8::1", true),
            ("2001:db9::1", false),
            ("127.0.0.1", false),
        ] {
            assert_eq!(a.admits(peer.parse().unwrap()), admitted, "{peer}");
        }
        assert_eq!(a.clients(), "10.1.0.0/16,192.0.2.7/32,2001:db8::/32");
        assert_eq!(
            access("0.0.0.0:3128", &["10.1.2.3/16"]).unwrap().clients(),
            "10.1.0.0/16"
        );
        let error = access("127.0.0.1:3128", &["10.1.0.0/33"]).unwrap_err();
        assert!(error.contains("--allow-clients \"10.1.0.0/33\""), "{error}");
        assert!(access("127.0.0.1:3128", &["corp.example"]).is_err());
    }

    #[test]
    fn loopback_admits_everyone_unless_told_otherwise() {
        let open = access("127.0.0.1:3128", &[]).unwrap();
        assert!(open.admits("127.0.0.1".parse().unwrap()));
        let listed = access("127.0.0.1:3128", &["127.0.0.2"]).unwrap();
        assert!(listed.admits("127.0.0.2".parse().unwrap()));
        assert!(!listed.admits("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn ports_for_hosts_without_rules() {
        let local = access("127.0.0.1:3128", &[]).unwrap();
        let shared = access("0.0.0.0:3128", &["10.0.0.0/8"]).unwrap();
        for port in [22, 80, 443, 5000, 8443] {
            assert!(local.reaches_port(port), "{port}");
            assert_eq!(shared.reaches_port(port), SHARED_PORTS.contains(&port));
        }
        assert!(shared.reaches_port(443) && shared.reaches_port(5000));
    }
}

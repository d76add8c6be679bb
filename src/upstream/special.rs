//! Which IP addresses are public: the blocks of the IANA IPv4 and IPv6 Special-Purpose Address
//! Registries (RFC 6890 as updated by RFC 8190; the registries as of October 2025) that are not
//! globally reachable, plus multicast and the IPv6 blocks deprecated since, each entry once with
//! its RFC. Pure: tables and lookups, no I/O.
//!
//! An IPv6 address that carries an IPv4 one leads to that IPv4 host, so it is judged by it:
//! IPv4-mapped `::ffff:0:0/96` and IPv4-compatible `::/96` (RFC 4291), NAT64's `64:ff9b::/96`
//! (RFC 6052), 6to4's `2002::/16` (RFC 3056: bits 16-47), and Teredo's `2001::/32` (RFC 4380:
//! the server in bits 32-63 and the client, stored inverted, in the last 32; both must be
//! public). A NAT64 address carrying 8.8.8.8 is public; one carrying 10.0.0.1 is not.
//!
//! Where a registry marks a smaller block inside a refused one as globally reachable (the PCP
//! and TURN anycast addresses in 192.0.0.0/24; anycast, AMT, AS112, ORCHIDv2 and DRIP inside
//! 2001::/23), it is refused with its parent: those are anycast services and identifiers, never
//! a registry. Blocks the registries mark globally reachable on their own (AS112 and AMT:
//! 192.31.196.0/24, 192.52.193.0/24, 192.175.48.0/24, 2620:4f:8000::/48) are public.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A block of addresses that is not public, as its registry names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub net: IpNet,
    pub name: &'static str,
    pub rfc: &'static str,
    /// The IPv4 addresses its (IPv6) addresses carry, which decide instead of the block.
    pub carries: Option<Carried>,
}

/// Where an IPv6 block's addresses carry an IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    /// The last 32 bits (IPv4-mapped, IPv4-compatible, NAT64's well-known prefix).
    Last32,
    /// Bits 16-47 (6to4).
    SixToFour,
    /// The server in bits 32-63, the client inverted in the last 32 (Teredo).
    Teredo,
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, {})", self.net, self.name, self.rfc)
    }
}

const fn v4(octets: [u8; 4], prefix: u8, name: &'static str, rfc: &'static str) -> Block {
    let [a, b, c, d] = octets;
    Block {
        net: IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix)),
        name,
        rfc,
        carries: None,
    }
}

const fn v6(segments: [u16; 8], prefix: u8, name: &'static str, rfc: &'static str) -> Block {
    let [a, b, c, d, e, f, g, h] = segments;
    Block {
        net: IpNet::V6(Ipv6Net::new_assert(
            Ipv6Addr::new(a, b, c, d, e, f, g, h),
            prefix,
        )),
        name,
        rfc,
        carries: None,
    }
}

const fn carrying(block: Block, carried: Carried) -> Block {
    Block {
        carries: Some(carried),
        ..block
    }
}

/// IPv4 blocks that are not public; the first that holds an address names it.
pub static IPV4: [Block; 16] = [
    v4([0, 0, 0, 0], 8, "this network", "RFC 791"),
    v4([10, 0, 0, 0], 8, "private use", "RFC 1918"),
    v4([100, 64, 0, 0], 10, "shared address space", "RFC 6598"),
    v4([127, 0, 0, 0], 8, "loopback", "RFC 1122"),
    v4([169, 254, 0, 0], 16, "link local", "RFC 3927"),
    v4([172, 16, 0, 0], 12, "private use", "RFC 1918"),
    v4([192, 0, 0, 0], 24, "IETF protocol assignments", "RFC 6890"),
    v4([192, 0, 2, 0], 24, "documentation (TEST-NET-1)", "RFC 5737"),
    v4(
        [192, 88, 99, 0],
        24,
        "6to4 relay anycast, deprecated",
        "RFC 7526",
    ),
    v4([192, 168, 0, 0], 16, "private use", "RFC 1918"),
    v4([198, 18, 0, 0], 15, "benchmarking", "RFC 2544"),
    v4(
        [198, 51, 100, 0],
        24,
        "documentation (TEST-NET-2)",
        "RFC 5737",
    ),
    v4(
        [203, 0, 113, 0],
        24,
        "documentation (TEST-NET-3)",
        "RFC 5737",
    ),
    // In the multicast registry rather than the special-purpose one.
    v4([224, 0, 0, 0], 4, "multicast", "RFC 5771"),
    v4([255, 255, 255, 255], 32, "limited broadcast", "RFC 8190"),
    v4([240, 0, 0, 0], 4, "reserved", "RFC 1112"),
];

/// IPv6 blocks that are not public, or that carry an IPv4 address; the first that holds an
/// address decides (`::/128` and `::1/128` before `::/96`, Teredo before `2001::/23`).
pub static IPV6: [Block; 18] = [
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128, "unspecified", "RFC 4291"),
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, "loopback", "RFC 4291"),
    carrying(
        v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96, "IPv4-mapped", "RFC 4291"),
        Carried::Last32,
    ),
    carrying(
        v6(
            [0, 0, 0, 0, 0, 0, 0, 0],
            96,
            "IPv4-compatible, deprecated",
            "RFC 4291",
        ),
        Carried::Last32,
    ),
    carrying(
        v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96, "NAT64", "RFC 6052"),
        Carried::Last32,
    ),
    v6(
        [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
        48,
        "local-use IPv4/IPv6 translation",
        "RFC 8215",
    ),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "discard-only", "RFC 6666"),
    v6([0x100, 0, 0, 1, 0, 0, 0, 0], 64, "dummy prefix", "RFC 9780"),
    carrying(
        v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "Teredo", "RFC 4380"),
        Carried::Teredo,
    ),
    v6(
        [0x2001, 0, 0, 0, 0, 0, 0, 0],
        23,
        "IETF protocol assignments",
        "RFC 2928",
    ),
    v6(
        [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
        32,
        "documentation",
        "RFC 3849",
    ),
    carrying(
        v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "6to4", "RFC 3056"),
        Carried::SixToFour,
    ),
    v6(
        [0x3fff, 0, 0, 0, 0, 0, 0, 0],
        20,
        "documentation",
        "RFC 9637",
    ),
    v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16, "SRv6 SIDs", "RFC 9602"),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "unique local", "RFC 4193"),
    v6(
        [0xfe80, 0, 0, 0, 0, 0, 0, 0],
        10,
        "link-local unicast",
        "RFC 4291",
    ),
    v6(
        [0xfec0, 0, 0, 0, 0, 0, 0, 0],
        10,
        "site-local, deprecated",
        "RFC 3879",
    ),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast", "RFC 4291"),
];

/// Why an address is not public.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotPublic {
    pub ip: IpAddr,
    /// The block that holds `ip`, or that holds the IPv4 address `ip` carries.
    pub block: &'static Block,
    /// The IPv4 address `ip` carries and the IPv6 block that says so.
    pub carried: Option<(Ipv4Addr, &'static Block)>,
}

impl fmt::Display for NotPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.carried {
            None => write!(f, "{} is in {}", self.ip, self.block),
            Some((v4, carrier)) => write!(
                f,
                "{} carries {v4} ({} {}, {}), which is in {}",
                self.ip, carrier.name, carrier.net, carrier.rfc, self.block
            ),
        }
    }
}

/// `Ok` for a public address, else the block that keeps it out.
pub fn check(ip: IpAddr) -> Result<(), NotPublic> {
    match ip {
        IpAddr::V4(v4) => match ipv4_block(v4) {
            Some(block) => Err(NotPublic {
                ip,
                block,
                carried: None,
            }),
            None => Ok(()),
        },
        IpAddr::V6(v6) => {
            let Some(block) = IPV6.iter().find(|b| b.net.contains(&IpAddr::V6(v6))) else {
                return Ok(());
            };
            let Some(carried) = block.carries else {
                return Err(NotPublic {
                    ip,
                    block,
                    carried: None,
                });
            };
            for v4 in carried_ipv4(v6, carried) {
                if let Some(inner) = ipv4_block(v4) {
                    return Err(NotPublic {
                        ip,
                        block: inner,
                        carried: Some((v4, block)),
                    });
                }
            }
            Ok(())
        }
    }
}

fn ipv4_block(ip: Ipv4Addr) -> Option<&'static Block> {
    IPV4.iter().find(|b| b.net.contains(&IpAddr::V4(ip)))
}

/// The IPv4 addresses an IPv6 address of a carrying block leads to.
fn carried_ipv4(ip: Ipv6Addr, carried: Carried) -> Vec<Ipv4Addr> {
    let bits = u128::from(ip);
    // The 32 bits that end `shift` bits from the right (`as` keeps the low 32).
    let at = |shift: u32| Ipv4Addr::from((bits >> shift) as u32);
    match carried {
        Carried::Last32 => vec![at(0)],
        Carried::SixToFour => vec![at(80)],
        Carried::Teredo => vec![at(64), Ipv4Addr::from(!(bits as u32))],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused_by(ip: &str) -> Option<(String, Option<String>)> {
        check(ip.parse().unwrap()).err().map(|e| {
            (
                e.block.net.to_string(),
                e.carried.map(|(v4, _)| v4.to_string()),
            )
        })
    }

    #[test]
    fn every_ipv4_block_is_refused_and_its_neighbours_are_not() {
        for block in &IPV4 {
            let IpNet::V4(net) = block.net else {
                unreachable!()
            };
            for inside in [net.network(), net.broadcast()] {
                let refused = check(inside.into()).unwrap_err();
                assert!(
                    refused.block.net.contains(&IpAddr::V4(inside)),
                    "{inside}: {refused}"
                );
            }
        }
        for (ip, public) in [
            ("8.8.8.8", true),
            ("1.1.1.1", true),
            ("140.82.112.3", true),
            ("9.255.255.255", true),
            ("11.0.0.0", true),
            ("100.63.255.255", true),
            ("100.128.0.0", true),
            ("172.15.255.255", true),
            ("172.32.0.0", true),
            ("192.0.1.255", true),
            ("192.31.196.1", true),
            ("192.52.193.1", true),
            ("192.175.48.1", true),
            ("198.17.255.255", true),
            ("198.20.0.0", true),
            ("223.255.255.255", true),
            ("198.18.0.1", false),
            ("198.19.255.254", false),
            ("240.0.0.1", false),
            ("255.255.255.255", false),
            ("192.0.0.9", false),
            ("192.88.99.1", false),
        ] {
            assert_eq!(check(ip.parse().unwrap()).is_ok(), public, "{ip}");
        }
    }

    #[test]
    fn every_ipv6_block_is_refused_unless_what_it_carries_is_public() {
        for (ip, refused) in [
            ("::", Some(("::/128", None))),
            ("::1", Some(("::1/128", None))),
            ("::ffff:127.0.0.1", Some(("127.0.0.0/8", Some("127.0.0.1")))),
            ("::ffff:8.8.8.8", None),
            ("::10.0.0.1", Some(("10.0.0.0/8", Some("10.0.0.1")))),
            ("::127.0.0.1", Some(("127.0.0.0/8", Some("127.0.0.1")))),
            ("::8.8.8.8", None),
            ("64:ff9b::10.0.0.1", Some(("10.0.0.0/8", Some("10.0.0.1")))),
            (
                "64:ff9b::169.254.169.254",
                Some(("169.254.0.0/16", Some("169.254.169.254"))),
            ),
            ("64:ff9b::8.8.8.8", None),
            ("64:ff9b:1::1", Some(("64:ff9b:1::/48", None))),
            ("100::1", Some(("100::/64", None))),
            ("100:0:0:1::1", Some(("100:0:0:1::/64", None))),
            ("2002:0a00:0001::1", Some(("10.0.0.0/8", Some("10.0.0.1")))),
            (
                "2002:c0a8:0101::1",
                Some(("192.168.0.0/16", Some("192.168.1.1"))),
            ),
            ("2002:0808:0808::1", None),
            // Teredo: server 65.54.227.120, client 10.0.0.1 stored inverted (f5ff:fffe).
            (
                "2001:0:4136:e378:8000:63bf:f5ff:fffe",
                Some(("10.0.0.0/8", Some("10.0.0.1"))),
            ),
            // Server 127.0.0.1, client 8.8.8.8 (f7f7:f7f7).
            (
                "2001:0:7f00:1:8000:63bf:f7f7:f7f7",
                Some(("127.0.0.0/8", Some("127.0.0.1"))),
            ),
            ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", None),
            ("2001:2::1", Some(("2001::/23", None))),
            ("2001:1::1", Some(("2001::/23", None))),
            ("2001:db8::1", Some(("2001:db8::/32", None))),
            ("3fff::1", Some(("3fff::/20", None))),
            ("5f00::1", Some(("5f00::/16", None))),
            ("fc00::1", Some(("fc00::/7", None))),
            ("fd12:3456::1", Some(("fc00::/7", None))),
            ("fe80::1", Some(("fe80::/10", None))),
            ("febf::1", Some(("fe80::/10", None))),
            ("fec0::1", Some(("fec0::/10", None))),
            ("ff02::1", Some(("ff00::/8", None))),
            ("2606:4700::1111", None),
            ("2620:4f:8000::1", None),
            ("2001:200::1", None),
        ] {
            let expected = refused.map(|(net, v4)| (net.to_owned(), v4.map(str::to_owned)));
            assert_eq!(refused_by(ip), expected, "{ip}");
        }
    }

    #[test]
    fn a_refusal_names_the_block_and_its_rfc() {
        let refused = check("10.1.2.3".parse().unwrap()).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "10.1.2.3 is in 10.0.0.0/8 (private use, RFC 1918)"
        );
        let refused = check("64:ff9b::a00:1".parse().unwrap()).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "64:ff9b::a00:1 carries 10.0.0.1 (NAT64 64:ff9b::/96, RFC 6052), which is in \
             10.0.0.0/8 (private use, RFC 1918)"
        );
    }
}

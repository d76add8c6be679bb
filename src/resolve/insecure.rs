//! `insecure-registries` matching, as dockerd decides it, minus DNS.
//!
//! A registry is insecure when its `host[:port]` is listed exactly (port-sensitive), when its host
//! is an IP literal inside a listed CIDR, or when it is loopback (`127.0.0.0/8`, `::1`,
//! `localhost`), which dockerd always treats as insecure. dockerd also resolves hostnames to match
//! CIDRs; regmirror never uses DNS, so a hostname matches only exact entries.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::config::InsecureRegistries;
use crate::reference::split_host_port;

const LOOPBACK: &str = "insecure: loopback";

/// Compiled `insecure-registries`.
#[derive(Debug, Default)]
pub struct InsecureMatcher {
    hosts: HashMap<String, Arc<str>>,
    cidrs: Vec<(IpNet, Arc<str>)>,
}

impl InsecureMatcher {
    pub fn new(config: &InsecureRegistries) -> Self {
        let why = |location: &crate::config::Location| -> Arc<str> {
            Arc::from(format!("insecure: {location} {}", location.field))
        };
        InsecureMatcher {
            hosts: config
                .hosts
                .iter()
                .map(|(host, location)| (host.clone(), why(location)))
                .collect(),
            cidrs: config
                .cidrs
                .iter()
                .map(|(cidr, location)| (*cidr, why(location)))
                .collect(),
        }
    }

    pub fn is_insecure(&self, authority: &str) -> bool {
        self.why_insecure(authority).is_some()
    }

    /// Why `authority` (`host[:port]`, lowercase) is insecure, or `None` when it is not.
    pub fn why_insecure(&self, authority: &str) -> Option<&str> {
        if let Some(why) = self.hosts.get(authority) {
            return Some(why);
        }
        let (host, _port) = split_host_port(authority);
        if host == "localhost" {
            return Some(LOOPBACK);
        }
        let ip: IpAddr = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?;
        if ip.is_loopback() {
            return Some(LOOPBACK);
        }
        self.cidrs
            .iter()
            .find(|(cidr, _)| cidr.contains(&ip))
            .map(|(_, why)| &**why)
    }
}

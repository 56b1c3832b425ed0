//! What pods may never reach ([`podnet_common::maps::POD_DENY`]): `[isolation]
//! pods_never_reach`, and, unless `pods_reach_control_plane`, the node's control endpoints: the
//! agent's metrics address (every address of the node when it listens on all of them) and the
//! etcd client URLs of `[cluster]` (on every address of the node when etcd runs on it). Pods that
//! reach etcd can rewrite the cluster, and the metrics name every pod of the node.
//!
//! The map is an LPM trie, which answers with the longest prefix only: so each entry carries
//! what every shorter entry covering it denies too.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
};

use ipnet::Ipv4Net;
use podnet_common::{DENIED_PORTS_MAX, DeniedPorts};

use super::Observed;
use crate::model::{Config, Destination};

/// The entries of the deny map for `config` on the node `found` describes, by network.
pub fn pod_deny(config: &Config, found: &Observed) -> Vec<(Ipv4Net, DeniedPorts)> {
    let mut destinations = config.isolation.pods_never_reach.clone();
    if !config.isolation.pods_reach_control_plane {
        destinations.extend(
            control_endpoints(config, found)
                .into_iter()
                .map(|a| Destination { net: Ipv4Net::from(*a.ip()), port: Some(a.port()) }),
        );
    }
    // Per network: denied whole, or these ports.
    let mut by_net: BTreeMap<Ipv4Net, Option<BTreeSet<u16>>> = BTreeMap::new();
    for d in destinations {
        let ports = by_net.entry(d.net).or_insert_with(|| Some(BTreeSet::new()));
        match (ports.as_mut(), d.port) {
            (Some(ports), Some(port)) => drop(ports.insert(port)),
            (_, None) => *ports = None,
            (None, Some(_)) => {}
        }
    }
    // Longest prefix wins in the trie: fold what covers each network into it.
    let folded: Vec<(Ipv4Net, Option<BTreeSet<u16>>)> = by_net
        .iter()
        .map(|(net, ports)| {
            let covering = by_net
                .iter()
                .filter(|(other, _)| other.prefix_len() < net.prefix_len() && other.contains(&net.network()));
            let ports = covering.fold(ports.clone(), |mine, (_, theirs)| match (mine, theirs) {
                (Some(mut mine), Some(theirs)) => {
                    mine.extend(theirs);
                    Some(mine)
                }
                _ => None,
            });
            (*net, ports)
        })
        .collect();
    folded
        .into_iter()
        .map(|(net, ports)| {
            let mut denied = DeniedPorts::default();
            match ports.filter(|p| p.len() <= DENIED_PORTS_MAX) {
                Some(ports) => ports.iter().zip(&mut denied.ports).for_each(|(p, slot)| *slot = p.to_be()),
                // More ports of one address than an entry holds (the node's own endpoints only:
                // the config is checked): all of it.
                None => denied.all = 1,
            }
            (net, denied)
        })
        .collect()
}

/// The node's control endpoints: where its agent serves metrics, and etcd.
fn control_endpoints(config: &Config, found: &Observed) -> Vec<SocketAddrV4> {
    // Every address of the node: found now, and the ones `up` is about to make.
    let mut node: Vec<Ipv4Addr> = found.node_addresses.clone();
    node.extend([config.node.gateway].into_iter().chain(config.uplink.as_ref().map(|u| u.ip)));
    node.retain(|ip| !ip.is_loopback());
    node.sort_unstable();
    node.dedup();
    let on_node = |port: u16| node.iter().map(move |&ip| SocketAddrV4::new(ip, port));
    let mut endpoints = Vec::new();
    if let Some(metrics) = config.agent.metrics {
        let ip = match metrics.ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(ip) if ip.is_unspecified() => Some(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(ip) => ip.to_ipv4_mapped(),
        };
        match ip {
            // A socket on all addresses answers on each of them.
            Some(ip) if ip.is_unspecified() => endpoints.extend(on_node(metrics.port())),
            Some(ip) => endpoints.push(SocketAddrV4::new(ip, metrics.port())),
            // An IPv6 address: pods have no IPv6.
            None => {}
        }
    }
    for etcd in &found.etcd {
        // etcd on this node may listen on more of its addresses than its URL names.
        if etcd.ip().is_loopback() || node.contains(etcd.ip()) {
            endpoints.extend(on_node(etcd.port()));
        } else {
            endpoints.push(*etcd);
        }
    }
    endpoints
}

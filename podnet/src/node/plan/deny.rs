//! What pods may never reach ([`podnet_common::maps::POD_DENY`]): `[isolation]
//! pods_never_reach`, and, unless `pods_reach_control_plane`, the node's control endpoints: the
//! agent's metrics address (every address of the node when it listens on all of them) and the
//! etcd client URLs of `[cluster]`. Pods that reach etcd can rewrite the cluster, and the
//! metrics name every pod of the node.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddrV4},
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
    by_net
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
    let mut endpoints = found.etcd.clone();
    if let Some(metrics) = config.agent.metrics
        && let IpAddr::V4(ip) = metrics.ip()
    {
        if ip.is_unspecified() {
            let node = [config.node.gateway].into_iter().chain(config.uplink.as_ref().map(|u| u.ip));
            let found = found.uplink.iter().flat_map(|u| u.addresses.iter().copied());
            endpoints.extend(node.chain(found).map(|ip| SocketAddrV4::new(ip, metrics.port())));
        } else {
            endpoints.push(SocketAddrV4::new(ip, metrics.port()));
        }
    }
    endpoints
}

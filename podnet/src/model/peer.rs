//! Other nodes: where their pods live, how to reach them, and where podnet learned of them.

use std::{fmt, net::Ipv4Addr};

use ipnet::Ipv4Net;

use super::{Node, Uplink, names::check_name};

/// Another node: where its pods live and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNode {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
}

/// Where podnet learned of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerOrigin {
    /// A `[[peer]]` of the config.
    Config,
    /// The cluster's store (etcd).
    Cluster,
    /// `podnet node add`, at runtime.
    Cli,
}

impl PeerOrigin {
    pub const ALL: [PeerOrigin; 3] = [PeerOrigin::Config, PeerOrigin::Cluster, PeerOrigin::Cli];

    /// Stable name (`podnet status`, metrics labels).
    pub fn name(self) -> &'static str {
        match self {
            PeerOrigin::Config => "config",
            PeerOrigin::Cluster => "cluster",
            PeerOrigin::Cli => "cli",
        }
    }
}

impl fmt::Display for PeerOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Longest peer name kept in the peer map.
const PEER_NAME_MAX: usize = podnet_common::PEER_NAME_MAX;

/// Checks `peer` against this node and the peers already known; on failure returns the field
/// (`name`, `ip`, `pod_cidr`) and the problem. Used for the config, `podnet node add` and the
/// cluster's views.
pub fn check_peer(
    node: &Node,
    uplink: Option<&Uplink>,
    known: &[PeerNode],
    peer: &PeerNode,
) -> Result<(), (&'static str, String)> {
    let Some(uplink) = uplink else {
        return Err(("name", "peers need an [uplink] section (interface and node IP)".to_owned()));
    };
    check_name(&peer.name, PEER_NAME_MAX).map_err(|p| ("name", p))?;
    if peer.name == node.name || known.iter().any(|k| k.name == peer.name) {
        return Err(("name", format!("node name {:?} is already in use", peer.name)));
    }
    if peer.ip == uplink.ip || known.iter().any(|k| k.ip == peer.ip) {
        return Err(("ip", format!("{} is already another node's address", peer.ip)));
    }
    if node.pod_cidr.contains(&peer.ip) {
        return Err(("ip", format!("{} lies in this node's pod_cidr {}", peer.ip, node.pod_cidr)));
    }
    if peer.pod_cidr.contains(&peer.ip) {
        return Err((
            "pod_cidr",
            format!(
                "{} holds the peer's own address {}: it would be routed via itself",
                peer.pod_cidr, peer.ip
            ),
        ));
    }
    if peer.pod_cidr.contains(&uplink.ip) {
        return Err((
            "pod_cidr",
            format!("{} holds this node's uplink address {}", peer.pod_cidr, uplink.ip),
        ));
    }
    if overlaps(peer.pod_cidr, node.pod_cidr) {
        return Err((
            "pod_cidr",
            format!("{} overlaps this node's pod_cidr {}", peer.pod_cidr, node.pod_cidr),
        ));
    }
    if let Some(k) = known.iter().find(|k| overlaps(k.pod_cidr, peer.pod_cidr)) {
        return Err(("pod_cidr", format!("{} overlaps {} of node {:?}", peer.pod_cidr, k.pod_cidr, k.name)));
    }
    Ok(())
}

/// Whether two networks share an address.
pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Sources that can only be forged when they arrive on the uplink: this node's pod CIDR and
/// address, "this network", loopback, multicast and reserved. They never reach pods, even when
/// `allow_from` covers them, and `allow_from` may not lie inside them.
pub fn refused_sources(pod_cidr: Ipv4Net, node_ip: Ipv4Addr) -> Vec<Ipv4Net> {
    let net = |a, b, c, d, len| Ipv4Net::new(Ipv4Addr::new(a, b, c, d), len).expect("valid prefix");
    vec![
        pod_cidr,
        Ipv4Net::from(node_ip),
        net(0, 0, 0, 0, 8),
        net(127, 0, 0, 0, 8),
        net(224, 0, 0, 0, 4),
        net(240, 0, 0, 0, 4),
    ]
}

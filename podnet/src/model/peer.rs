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

/// Networks no node address or pod CIDR may touch: "this network", loopback, multicast and
/// the reserved block with the broadcast address.
const NOT_UNICAST: [(&str, Ipv4Net); 4] = [
    ("0.0.0.0/8 (\"this network\")", net([0, 0, 0, 0], 8)),
    ("loopback (127.0.0.0/8)", net([127, 0, 0, 0], 8)),
    ("multicast (224.0.0.0/4)", net([224, 0, 0, 0], 4)),
    ("reserved or broadcast (240.0.0.0/4)", net([240, 0, 0, 0], 4)),
];

const fn net(octets: [u8; 4], prefix: u8) -> Ipv4Net {
    match Ipv4Net::new(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]), prefix) {
        Ok(n) => n,
        Err(_) => panic!("a valid prefix"),
    }
}

/// Checks `peer` against this node, the peers already `known` and the networks of the uplink
/// (`networks`, empty when not known yet); on failure returns the field (`name`, `ip`,
/// `pod_cidr`) and the problem. Used for the config, `podnet node add` and the cluster's views:
/// a peer that passes takes no address or route from anyone.
pub fn check_peer(
    node: &Node,
    uplink: Option<&Uplink>,
    known: &[PeerNode],
    networks: &[Ipv4Net],
    peer: &PeerNode,
) -> Result<(), (&'static str, String)> {
    let Some(uplink) = uplink else {
        return Err(("name", "peers need an [uplink] section (interface and node IP)".to_owned()));
    };
    check_name(&peer.name, PEER_NAME_MAX).map_err(|p| ("name", p))?;
    if peer.name == node.name || known.iter().any(|k| k.name == peer.name) {
        return Err(("name", format!("node name {:?} is already in use", peer.name)));
    }
    if let Some((what, _)) = NOT_UNICAST.iter().find(|(_, n)| n.contains(&peer.ip)) {
        return Err(("ip", format!("{} is {what}, not a node's unicast address", peer.ip)));
    }
    if peer.ip == uplink.ip || known.iter().any(|k| k.ip == peer.ip) {
        return Err(("ip", format!("{} is already another node's address", peer.ip)));
    }
    if node.pod_cidr.contains(&peer.ip) {
        return Err(("ip", format!("{} lies in this node's pod_cidr {}", peer.ip, node.pod_cidr)));
    }
    if let Some(k) = known.iter().find(|k| k.pod_cidr.contains(&peer.ip)) {
        return Err((
            "ip",
            format!("{} lies in {} of node {:?}: it is a pod's address", peer.ip, k.pod_cidr, k.name),
        ));
    }
    if let Some((what, n)) = NOT_UNICAST.iter().find(|(_, n)| overlaps(*n, peer.pod_cidr)) {
        return Err(("pod_cidr", format!("{} overlaps {n}, {what}", peer.pod_cidr)));
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
    if let Some(k) =
        known.iter().find(|k| overlaps(k.pod_cidr, peer.pod_cidr) || peer.pod_cidr.contains(&k.ip))
    {
        return Err((
            "pod_cidr",
            format!(
                "{} overlaps {} of node {:?} or holds its address {}",
                peer.pod_cidr, k.pod_cidr, k.name, k.ip
            ),
        ));
    }
    if let Some(n) = networks.iter().find(|n| overlaps(**n, peer.pod_cidr)) {
        return Err(("pod_cidr", format!("{} overlaps {n}, a network of the uplink", peer.pod_cidr)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::XdpMode;

    fn peer(ip: &str, cidr: &str) -> PeerNode {
        PeerNode { name: "new".into(), ip: ip.parse().unwrap(), pod_cidr: cidr.parse().unwrap() }
    }

    /// Why `peer` is refused by node1 (10.1.1.0/24, uplink 192.168.50.1 on 192.168.50.0/24) that
    /// knows node2 (10.1.2.0/24 via 192.168.50.2).
    fn refused(peer: &PeerNode) -> Option<String> {
        let node = Node {
            name: "node1".into(),
            pod_cidr: "10.1.1.0/24".parse().unwrap(),
            bridge: "br0".into(),
            gateway: Ipv4Addr::new(10, 1, 1, 1),
            mtu: None,
            state_dir: "/nonexistent".into(),
        };
        let uplink = Uplink {
            interface: "eth0".into(),
            ip: Ipv4Addr::new(192, 168, 50, 1),
            xdp: XdpMode::Off,
            xdp_deliver: false,
            allow_from: Vec::new(),
        };
        let known = [PeerNode {
            name: "node2".into(),
            ip: Ipv4Addr::new(192, 168, 50, 2),
            pod_cidr: "10.1.2.0/24".parse().unwrap(),
        }];
        let networks = ["192.168.50.0/24".parse().unwrap()];
        check_peer(&node, Some(&uplink), &known, &networks, peer)
            .err()
            .map(|(field, problem)| format!("{field}: {problem}"))
    }

    #[test]
    fn a_peer_takes_no_address_or_route_from_anyone() {
        assert_eq!(refused(&peer("192.168.50.3", "10.1.3.0/24")), None);
        for (ip, cidr, why) in [
            ("0.0.0.0", "10.1.3.0/24", "ip: 0.0.0.0 is 0.0.0.0/8"),
            ("127.0.0.1", "10.1.3.0/24", "ip: 127.0.0.1 is loopback"),
            ("224.0.0.5", "10.1.3.0/24", "ip: 224.0.0.5 is multicast"),
            ("255.255.255.255", "10.1.3.0/24", "ip: 255.255.255.255 is reserved or broadcast"),
            ("192.168.50.1", "10.1.3.0/24", "ip: 192.168.50.1 is already another node's address"),
            ("192.168.50.2", "10.1.3.0/24", "ip: 192.168.50.2 is already another node's address"),
            ("10.1.1.5", "10.1.3.0/24", "ip: 10.1.1.5 lies in this node's pod_cidr"),
            ("10.1.2.5", "10.1.3.0/24", "ip: 10.1.2.5 lies in 10.1.2.0/24 of node \"node2\""),
            ("192.168.50.3", "0.0.0.0/0", "pod_cidr: 0.0.0.0/0 overlaps 0.0.0.0/8"),
            ("192.168.50.3", "127.0.0.0/16", "pod_cidr: 127.0.0.0/16 overlaps 127.0.0.0/8"),
            ("192.168.50.3", "10.1.0.0/16", "pod_cidr: 10.1.0.0/16 overlaps this node's pod_cidr"),
            (
                "192.168.50.3",
                "10.1.2.128/25",
                "pod_cidr: 10.1.2.128/25 overlaps 10.1.2.0/24 of node \"node2\"",
            ),
            (
                "192.168.50.3",
                "192.168.50.2/32",
                "pod_cidr: 192.168.50.2/32 overlaps 10.1.2.0/24 of node \"node2\" or holds its address",
            ),
            (
                "192.168.50.3",
                "192.168.50.128/25",
                "pod_cidr: 192.168.50.128/25 overlaps 192.168.50.0/24, a network of the uplink",
            ),
        ] {
            let problem = refused(&peer(ip, cidr)).unwrap_or_else(|| panic!("{ip} {cidr} accepted"));
            assert!(problem.starts_with(why), "{ip} {cidr}: {problem}");
        }
    }
}

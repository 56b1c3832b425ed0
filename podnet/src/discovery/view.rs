//! How the cluster's subnet keys become this node's peers. Every key and value is input from
//! anyone who can write to etcd, so each is checked on its own: a key that is not a node of this
//! cluster is left out (the caller warns once), and never takes a route from anyone.

use std::{
    collections::{BTreeMap, HashSet},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::model::{Cluster, PeerNode, names::check_name};

/// Longest part of a key or problem a warning quotes (keys are anyone's input).
pub(super) const QUOTED_MAX: usize = 100;

/// `text` cut to at most [`QUOTED_MAX`] bytes, at a character boundary.
pub(super) fn cut(text: &str) -> &str {
    let end = (0..=text.len().min(QUOTED_MAX)).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    &text[..end]
}

/// A node as etcd holds it: the value of its subnet and node keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node: String,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
}

impl Member {
    pub(super) fn parse(value: &[u8]) -> Option<Self> {
        serde_json::from_slice(value).ok()
    }
}

/// Who this node is, to tell its own key from the others and from forgeries.
#[derive(Debug, Clone)]
pub(super) struct Me<'a> {
    pub cluster: &'a Cluster,
    pub name: &'a str,
    pub node_ip: Ipv4Addr,
    /// The pod CIDR this node holds, if any.
    pub pod_cidr: Option<Ipv4Net>,
    /// `<prefix>/subnets/`.
    pub subnets_prefix: &'a str,
}

/// A subnet key left out of a view, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LeftOut {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub problem: String,
}

/// The other nodes `members` (subnet keys and their values) hold, in key order, and the keys
/// left out; `held_over`, the peers of an earlier view kept for a while after a listing (see
/// [`super::etcd`]), come first and are not repeated.
pub(super) fn view(
    me: &Me<'_>,
    members: &BTreeMap<Vec<u8>, Vec<u8>>,
    held_over: &[PeerNode],
) -> (Vec<PeerNode>, Vec<LeftOut>) {
    let mut peers: Vec<PeerNode> = held_over.to_vec();
    let mut names: HashSet<String> = peers.iter().map(|p| p.name.clone()).collect();
    let mut ips: HashSet<Ipv4Addr> = peers.iter().map(|p| p.ip).collect();
    let mut left_out = Vec::new();
    for (key, value) in members {
        let peer = member(me, key, value).and_then(|peer| match peer {
            Some(p) if peers.contains(&p) => Ok(None),
            Some(p) if names.contains(&p.name) || ips.contains(&p.ip) => {
                Err(format!("node {} ({}) clashes with a node listed before it", p.name, p.ip))
            }
            peer => Ok(peer),
        });
        match peer {
            Ok(Some(peer)) => {
                names.insert(peer.name.clone());
                ips.insert(peer.ip);
                peers.push(peer);
            }
            Ok(None) => {}
            Err(problem) => left_out.push(LeftOut { key: key.clone(), value: value.clone(), problem }),
        }
    }
    (peers, left_out)
}

/// The peer a subnet key names; `None` for this node's own.
fn member(me: &Me<'_>, key: &[u8], value: &[u8]) -> Result<Option<PeerNode>, String> {
    let key_cidr = std::str::from_utf8(key)
        .ok()
        .and_then(|k| k.strip_prefix(me.subnets_prefix))
        .and_then(|k| k.replacen('-', "/", 1).parse::<Ipv4Net>().ok())
        .ok_or("the key is not <prefix>/subnets/<network>-<len>")?;
    let member = Member::parse(value)
        .ok_or("the value is not {\"node\": NAME, \"node_ip\": IPv4, \"pod_cidr\": CIDR}")?;
    if member.pod_cidr != key_cidr || !me.cluster.leases(member.pod_cidr) {
        return Err(format!(
            "pod_cidr {} is not the key's, or not a /{} of cluster_cidr {}",
            member.pod_cidr, me.cluster.node_prefix, me.cluster.cluster_cidr
        ));
    }
    if member.node == me.name || member.node_ip == me.node_ip {
        return match me.pod_cidr {
            Some(own) if member.node == me.name && member.pod_cidr == own => Ok(None),
            _ => Err(format!("{} ({}) poses as this node", member.node, member.node_ip)),
        };
    }
    if let Err(problem) = check_name(&member.node, podnet_common::PEER_NAME_MAX) {
        return Err(format!("not a node name: {}", cut(&problem)));
    }
    let ip = member.node_ip;
    if ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_broadcast()
        || me.cluster.cluster_cidr.contains(&ip)
    {
        return Err(format!("{ip} cannot be a node's address"));
    }
    Ok(Some(PeerNode { name: member.node, ip, pod_cidr: member.pod_cidr }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cluster() -> Cluster {
        Cluster {
            etcd: vec!["http://192.168.50.250:2379".into()],
            tls: None,
            cluster_cidr: "10.1.0.0/16".parse().unwrap(),
            node_prefix: 24,
            lease_ttl: Duration::from_secs(30),
            prefix: "/podnet".into(),
            pod_cidr_configured: false,
        }
    }

    fn key(cidr: &str) -> Vec<u8> {
        format!("/podnet/subnets/{}", cidr.replace('/', "-")).into_bytes()
    }

    fn value(node: &str, ip: &str, cidr: &str) -> Vec<u8> {
        format!("{{\"node\":\"{node}\",\"node_ip\":\"{ip}\",\"pod_cidr\":\"{cidr}\"}}").into_bytes()
    }

    fn peer(name: &str, ip: &str, cidr: &str) -> PeerNode {
        PeerNode { name: name.into(), ip: ip.parse().unwrap(), pod_cidr: cidr.parse().unwrap() }
    }

    fn view_of(entries: &[(Vec<u8>, Vec<u8>)], held_over: &[PeerNode]) -> (Vec<PeerNode>, Vec<String>) {
        let cluster = cluster();
        let me = Me {
            cluster: &cluster,
            name: "node1",
            node_ip: "192.168.50.1".parse().unwrap(),
            pod_cidr: Some("10.1.1.0/24".parse().unwrap()),
            subnets_prefix: "/podnet/subnets/",
        };
        let members: BTreeMap<Vec<u8>, Vec<u8>> = entries.iter().cloned().collect();
        let (peers, left_out) = view(&me, &members, held_over);
        (peers, left_out.into_iter().map(|l| l.problem).collect())
    }

    #[test]
    fn honest_nodes_become_peers_and_this_node_is_not_one() {
        let (peers, left_out) = view_of(
            &[
                (key("10.1.1.0/24"), value("node1", "192.168.50.1", "10.1.1.0/24")),
                (key("10.1.2.0/24"), value("node2", "192.168.50.2", "10.1.2.0/24")),
                (key("10.1.3.0/24"), value("node3", "192.168.60.3", "10.1.3.0/24")),
            ],
            &[],
        );
        assert_eq!(
            peers,
            [peer("node2", "192.168.50.2", "10.1.2.0/24"), peer("node3", "192.168.60.3", "10.1.3.0/24")]
        );
        assert!(left_out.is_empty(), "{left_out:?}");
    }

    #[test]
    fn forged_and_broken_keys_are_left_out_each_with_its_reason() {
        let (peers, left_out) = view_of(
            &[
                (key("10.1.2.0/24"), b"not json".to_vec()),
                (key("10.1.3.0/24"), value("node3", "192.168.50.3", "10.1.9.0/24")),
                (key("10.1.4.0/24"), value("node1", "192.168.50.66", "10.1.4.0/24")),
                (key("10.1.5.0/24"), value("evil", "192.168.50.1", "10.1.5.0/24")),
                (key("10.1.6.0/24"), value("../x", "192.168.50.6", "10.1.6.0/24")),
                (key("10.1.7.0/24"), value("node7", "127.0.0.1", "10.1.7.0/24")),
                (key("10.1.8.0/24"), value("node8", "10.1.200.1", "10.1.8.0/24")),
                (key("10.2.0.0/24"), value("node9", "192.168.50.9", "10.2.0.0/24")),
                (b"/podnet/subnets/garbage".to_vec(), value("node10", "192.168.50.10", "10.1.10.0/24")),
            ],
            &[],
        );
        assert!(peers.is_empty(), "{peers:?}");
        assert_eq!(left_out.len(), 9, "{left_out:#?}");
        assert!(left_out[0].starts_with("the value is not"));
        assert!(left_out[1].starts_with("pod_cidr 10.1.9.0/24 is not the key's"));
        assert_eq!(left_out[2], "node1 (192.168.50.66) poses as this node");
        assert_eq!(left_out[3], "evil (192.168.50.1) poses as this node");
        assert!(left_out[4].starts_with("not a node name"));
        assert_eq!(left_out[5], "127.0.0.1 cannot be a node's address");
        assert_eq!(left_out[6], "10.1.200.1 cannot be a node's address");
        assert!(left_out[7].starts_with("pod_cidr 10.2.0.0/24 is not the key's, or not a /24"));
        assert!(left_out[8].starts_with("the key is not"));
    }

    #[test]
    fn a_second_claim_on_a_name_or_address_is_left_out() {
        let (peers, left_out) = view_of(
            &[
                (key("10.1.2.0/24"), value("node2", "192.168.50.2", "10.1.2.0/24")),
                (key("10.1.3.0/24"), value("node2", "192.168.50.3", "10.1.3.0/24")),
                (key("10.1.4.0/24"), value("node4", "192.168.50.2", "10.1.4.0/24")),
            ],
            &[],
        );
        assert_eq!(peers, [peer("node2", "192.168.50.2", "10.1.2.0/24")]);
        assert_eq!(left_out.len(), 2);
        assert!(left_out.iter().all(|p| p.contains("clashes with a node listed before it")), "{left_out:?}");
    }

    #[test]
    fn held_over_peers_stay_and_are_not_repeated() {
        let node2 = peer("node2", "192.168.50.2", "10.1.2.0/24");
        let node3 = peer("node3", "192.168.50.3", "10.1.3.0/24");
        let (peers, left_out) = view_of(
            &[(key("10.1.2.0/24"), value("node2", "192.168.50.2", "10.1.2.0/24"))],
            &[node2.clone(), node3.clone()],
        );
        assert_eq!(peers, [node2, node3]);
        assert!(left_out.is_empty());
    }
}

//! How the cluster's keys become this node's peers: the trust model for etcd.
//!
//! Every key and value is input from anyone who can write to etcd, so each is checked on its
//! own (a key that is not a node of this cluster is left out, and the caller warns once), and a
//! node is believed only from what its own agent writes:
//!
//! 1. **A claim is a pair.** Node N holds pod CIDR C when `subnets/C` and `nodes/N` are attached
//!    to the same live lease (non-zero) and hold the same value `{N, address, C}`. An agent
//!    writes both in one transaction; a key overwritten or written by anyone else breaks the
//!    pair, so a lone subnet key (a forged one, or one overwritten with another name or next
//!    hop) is no claim.
//! 2. **A believed node stays while its lease lives.** Once believed, a node keeps its place
//!    while its subnet key or its name key still holds its lease and value, and, when neither
//!    does, while its lease lives (the caller asks etcd): keys overwritten or deleted, even both
//!    at once (their owner writes them back within a watch round trip), move nothing. A node
//!    that leaves revokes its lease, and a stopped node's lease runs out.
//! 3. **Conflicts go to the node believed first.** A claim whose name, address or CIDR another
//!    believed node has is left out (and logged); among new claims the older subnet key
//!    (etcd's create revision) is believed first, then the smaller lease. Never key order. A
//!    CIDR that the name keys of two nodes name (under live leases) is no new claim at all: one
//!    of them is lying, and the subnet key, which anyone may write, cannot tell which.
//! 4. **This node is never a peer.** A claim of this node's name, address or pod CIDR is left
//!    out: its own CIDR is never routed to another next hop here.

use std::{
    collections::{BTreeMap, HashMap},
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

    fn of(peer: &PeerNode) -> Self {
        Self { node: peer.name.clone(), node_ip: peer.ip, pod_cidr: peer.pod_cidr }
    }
}

/// A key under the cluster's prefix, as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stored {
    pub value: Vec<u8>,
    /// The lease it is attached to (0: none).
    pub lease: i64,
    /// etcd's revision of its creation.
    pub created: i64,
}

impl Stored {
    /// Whether this key holds `member` under `lease`.
    fn holds(&self, member: &Member, lease: i64) -> bool {
        self.lease == lease && Member::parse(&self.value).as_ref() == Some(member)
    }
}

/// A peer this node believes, and the lease its keys are attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Believed {
    pub peer: PeerNode,
    pub lease: i64,
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
    /// `<prefix>/nodes/`.
    pub nodes_prefix: &'a str,
}

/// A subnet key left out of a view, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LeftOut {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub problem: String,
}

/// The other nodes the cluster's `keys` (subnet and name keys) hold by the rules above, given
/// the nodes `believed` before and the leases known `alive` (see [`unheld`]), sorted by name;
/// and the subnet keys left out. `held_over`, the peers of an earlier view kept for a while
/// after a listing (see [`super::etcd`]), stay whatever the keys say.
pub(super) fn view(
    me: &Me<'_>,
    keys: &BTreeMap<Vec<u8>, Stored>,
    believed: &[Believed],
    alive: &[i64],
    held_over: &[Believed],
) -> (Vec<Believed>, Vec<LeftOut>) {
    let mut peers: Vec<Believed> = held_over.to_vec();
    for old in believed {
        if !peers.iter().any(|p| p.peer == old.peer)
            && (still_held(me, keys, old) || alive.contains(&old.lease))
        {
            peers.push(old.clone());
        }
    }
    // Which nodes' name keys name each CIDR.
    let mut named: HashMap<Ipv4Net, Vec<String>> = HashMap::new();
    let nodes = keys.range(me.nodes_prefix.as_bytes().to_vec()..);
    for (_, stored) in nodes.take_while(|(k, _)| k.starts_with(me.nodes_prefix.as_bytes())) {
        if let Some(member) = Member::parse(&stored.value).filter(|_| stored.lease != 0) {
            named.entry(member.pod_cidr).or_default().push(member.node);
        }
    }
    let mut claims = Vec::new();
    let mut left_out = Vec::new();
    let subnets = keys.range(me.subnets_prefix.as_bytes().to_vec()..);
    for (key, stored) in subnets.take_while(|(k, _)| k.starts_with(me.subnets_prefix.as_bytes())) {
        match claim(me, keys, &named, key, stored) {
            Ok(Some(claim)) => claims.push((stored.created, claim)),
            Ok(None) => {}
            Err(problem) => left_out.push(LeftOut { key: key.clone(), value: stored.value.clone(), problem }),
        }
    }
    claims.sort_by(|(a_created, a), (b_created, b)| (a_created, a.lease).cmp(&(b_created, b.lease)));
    for (_, claim) in claims {
        if let Some(same) = peers.iter_mut().find(|p| p.peer == claim.peer) {
            // Held over from before a listing, or leased anew: the claim's lease is the one now.
            same.lease = claim.lease;
            continue;
        }
        let clash = peers.iter().find(|p| {
            p.peer.name == claim.peer.name
                || p.peer.ip == claim.peer.ip
                || p.peer.pod_cidr == claim.peer.pod_cidr
        });
        if let Some(first) = clash {
            let (p, f) = (&claim.peer, &first.peer);
            let key = format!("{}{}-{}", me.subnets_prefix, p.pod_cidr.network(), p.pod_cidr.prefix_len());
            let value = keys.get(key.as_bytes()).map(|s| s.value.clone()).unwrap_or_default();
            left_out.push(LeftOut {
                key: key.into_bytes(),
                value,
                problem: format!(
                    "node {} ({}, {}) clashes with node {} ({}, {}), believed first",
                    p.name, p.ip, p.pod_cidr, f.name, f.ip, f.pod_cidr
                ),
            });
            continue;
        }
        peers.push(claim);
    }
    peers.sort_by(|a, b| a.peer.name.cmp(&b.peer.name));
    (peers, left_out)
}

/// The leases of the nodes `believed` whose keys no longer hold them: whether each lives decides
/// whether they stay (rule 2).
pub(super) fn unheld(me: &Me<'_>, keys: &BTreeMap<Vec<u8>, Stored>, believed: &[Believed]) -> Vec<i64> {
    believed.iter().filter(|b| !still_held(me, keys, b)).map(|b| b.lease).collect()
}

/// Whether a node believed before still holds its subnet key or its name key (rule 2).
fn still_held(me: &Me<'_>, keys: &BTreeMap<Vec<u8>, Stored>, old: &Believed) -> bool {
    let member = Member::of(&old.peer);
    let cidr = old.peer.pod_cidr;
    let subnet = format!("{}{}-{}", me.subnets_prefix, cidr.network(), cidr.prefix_len());
    let name = format!("{}{}", me.nodes_prefix, old.peer.name);
    [subnet, name].iter().any(|k| keys.get(k.as_bytes()).is_some_and(|s| s.holds(&member, old.lease)))
}

/// The node the subnet key `key` claims (rule 1); `None` for this node's own.
fn claim(
    me: &Me<'_>,
    keys: &BTreeMap<Vec<u8>, Stored>,
    named: &HashMap<Ipv4Net, Vec<String>>,
    key: &[u8],
    stored: &Stored,
) -> Result<Option<Believed>, String> {
    let Some(peer) = member(me, key, &stored.value)? else {
        return Ok(None);
    };
    if stored.lease == 0 {
        return Err("it has no lease: a node's agent always attaches its keys to its lease".to_owned());
    }
    let name_key = format!("{}{}", me.nodes_prefix, peer.name);
    if !keys.get(name_key.as_bytes()).is_some_and(|s| s.holds(&Member::of(&peer), stored.lease)) {
        return Err(format!(
            "{name_key} does not hold the same lease and value: not node {}'s claim (a key overwritten or \
             forged)",
            peer.name
        ));
    }
    if let Some(other) = named.get(&peer.pod_cidr).into_iter().flatten().find(|n| **n != peer.name) {
        return Err(format!(
            "{} is named by the name keys of node {} and of node {:?}: believed for neither",
            peer.pod_cidr,
            peer.name,
            cut(other)
        ));
    }
    Ok(Some(Believed { peer, lease: stored.lease }))
}

/// The peer a subnet key names, checked on its own; `None` for this node's own.
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
    if member.node == me.name || member.node_ip == me.node_ip || me.pod_cidr == Some(member.pod_cidr) {
        return match me.pod_cidr {
            Some(own) if member.node == me.name && member.node_ip == me.node_ip && member.pod_cidr == own => {
                Ok(None)
            }
            _ => Err(format!(
                "{:?} ({}, {}) poses as this node (its name, address or pod CIDR)",
                cut(&member.node),
                member.node_ip,
                member.pod_cidr
            )),
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

    fn subnet(cidr: &str) -> Vec<u8> {
        format!("/podnet/subnets/{}", cidr.replace('/', "-")).into_bytes()
    }

    fn name(node: &str) -> Vec<u8> {
        format!("/podnet/nodes/{node}").into_bytes()
    }

    fn value(node: &str, ip: &str, cidr: &str) -> Vec<u8> {
        format!("{{\"node\":\"{node}\",\"node_ip\":\"{ip}\",\"pod_cidr\":\"{cidr}\"}}").into_bytes()
    }

    fn stored(value: Vec<u8>, lease: i64, created: i64) -> Stored {
        Stored { value, lease, created }
    }

    fn peer(name: &str, ip: &str, cidr: &str) -> PeerNode {
        PeerNode { name: name.into(), ip: ip.parse().unwrap(), pod_cidr: cidr.parse().unwrap() }
    }

    /// The cluster's keys, to which nodes and attackers write.
    #[derive(Default)]
    struct Keys(BTreeMap<Vec<u8>, Stored>);

    impl Keys {
        /// What a node's agent writes: both keys, one lease, one value, one revision.
        fn node(mut self, node: &str, ip: &str, cidr: &str, lease: i64, created: i64) -> Self {
            self.0.insert(subnet(cidr), stored(value(node, ip, cidr), lease, created));
            self.0.insert(name(node), stored(value(node, ip, cidr), lease, created));
            self
        }

        fn put(mut self, key: Vec<u8>, value: Vec<u8>, lease: i64, created: i64) -> Self {
            self.0.insert(key, stored(value, lease, created));
            self
        }

        fn del(mut self, key: Vec<u8>) -> Self {
            self.0.remove(&key);
            self
        }
    }

    /// The view of node1 (10.1.1.0/24 at 192.168.50.1): peers and the problems left out.
    fn view_of(keys: &Keys, believed: &[Believed], held_over: &[Believed]) -> (Vec<Believed>, Vec<String>) {
        view_alive(keys, believed, &[], held_over)
    }

    /// [`view_of`] with the leases known `alive`.
    fn view_alive(
        keys: &Keys,
        believed: &[Believed],
        alive: &[i64],
        held_over: &[Believed],
    ) -> (Vec<Believed>, Vec<String>) {
        let cluster = cluster();
        let me = Me {
            cluster: &cluster,
            name: "node1",
            node_ip: "192.168.50.1".parse().unwrap(),
            pod_cidr: Some("10.1.1.0/24".parse().unwrap()),
            subnets_prefix: "/podnet/subnets/",
            nodes_prefix: "/podnet/nodes/",
        };
        let (peers, left_out) = view(&me, &keys.0, believed, alive, held_over);
        (peers, left_out.into_iter().map(|l| l.problem).collect())
    }

    fn believed(name: &str, ip: &str, cidr: &str, lease: i64) -> Believed {
        Believed { peer: peer(name, ip, cidr), lease }
    }

    fn node2() -> Believed {
        believed("node2", "192.168.50.2", "10.1.2.0/24", 2)
    }

    /// node1 (this node), node2 and node3, as their agents wrote them.
    fn honest() -> Keys {
        Keys::default()
            .node("node1", "192.168.50.1", "10.1.1.0/24", 1, 10)
            .node("node2", "192.168.50.2", "10.1.2.0/24", 2, 20)
            .node("node3", "192.168.60.3", "10.1.3.0/24", 3, 30)
    }

    #[test]
    fn honest_nodes_become_peers_and_this_node_is_not_one() {
        let (peers, left_out) = view_of(&honest(), &[], &[]);
        assert_eq!(peers, [node2(), believed("node3", "192.168.60.3", "10.1.3.0/24", 3)]);
        assert!(left_out.is_empty(), "{left_out:?}");
    }

    #[test]
    fn forged_and_broken_keys_are_left_out_each_with_its_reason() {
        let entries = [
            (subnet("10.1.2.0/24"), b"not json".to_vec()),
            (subnet("10.1.3.0/24"), value("node3", "192.168.50.3", "10.1.9.0/24")),
            (subnet("10.1.4.0/24"), value("node1", "192.168.50.66", "10.1.4.0/24")),
            (subnet("10.1.5.0/24"), value("evil", "192.168.50.1", "10.1.5.0/24")),
            (subnet("10.1.6.0/24"), value("../x", "192.168.50.6", "10.1.6.0/24")),
            (subnet("10.1.7.0/24"), value("node7", "127.0.0.1", "10.1.7.0/24")),
            (subnet("10.1.8.0/24"), value("node8", "10.1.200.1", "10.1.8.0/24")),
            (subnet("10.2.0.0/24"), value("node9", "192.168.50.9", "10.2.0.0/24")),
            (b"/podnet/subnets/garbage".to_vec(), value("node10", "192.168.50.10", "10.1.10.0/24")),
        ];
        let mut keys = Keys::default().node("node1", "192.168.50.1", "10.1.1.0/24", 1, 10);
        for (key, value) in entries {
            keys = keys.put(key, value, 5, 50);
        }
        // Someone else's value in this node's own subnet key.
        keys = keys.put(subnet("10.1.1.0/24"), value("evil", "192.168.50.66", "10.1.1.0/24"), 5, 10);
        let (peers, left_out) = view_of(&keys, &[], &[]);
        assert!(peers.is_empty(), "{peers:?}");
        assert_eq!(left_out.len(), 10, "{left_out:#?}");
        assert!(left_out[0].starts_with("\"evil\" (192.168.50.66, 10.1.1.0/24)"), "{}", left_out[0]);
        assert!(left_out[1].starts_with("the value is not"));
        assert!(left_out[2].starts_with("pod_cidr 10.1.9.0/24 is not the key's"));
        assert!(left_out[3].starts_with("\"node1\" (192.168.50.66, 10.1.4.0/24) poses as this node"));
        assert!(left_out[4].starts_with("\"evil\" (192.168.50.1, 10.1.5.0/24) poses as this node"));
        assert!(left_out[5].starts_with("not a node name"));
        assert_eq!(left_out[6], "127.0.0.1 cannot be a node's address");
        assert_eq!(left_out[7], "10.1.200.1 cannot be a node's address");
        assert!(left_out[8].starts_with("pod_cidr 10.2.0.0/24 is not the key's, or not a /24"));
        assert!(left_out[9].starts_with("the key is not"));
    }

    #[test]
    fn a_subnet_key_without_its_name_key_is_no_claim() {
        let two = value("node2", "192.168.50.2", "10.1.2.0/24");
        for (keys, why) in [
            (Keys::default().put(subnet("10.1.2.0/24"), two.clone(), 0, 20), "it has no lease"),
            (
                Keys::default().put(subnet("10.1.2.0/24"), two.clone(), 2, 20),
                "/podnet/nodes/node2 does not hold",
            ),
            (
                Keys::default().put(subnet("10.1.2.0/24"), two.clone(), 2, 20).put(
                    name("node2"),
                    two.clone(),
                    9,
                    20,
                ),
                "/podnet/nodes/node2 does not hold",
            ),
            (
                Keys::default().put(subnet("10.1.2.0/24"), two.clone(), 2, 20).put(
                    name("node2"),
                    value("node2", "192.168.50.9", "10.1.2.0/24"),
                    2,
                    20,
                ),
                "/podnet/nodes/node2 does not hold",
            ),
        ] {
            let (peers, left_out) = view_of(&keys, &[], &[]);
            assert!(peers.is_empty(), "{peers:?}");
            assert!(left_out[0].starts_with(why), "{left_out:?}");
        }
    }

    #[test]
    fn a_believed_node_stays_while_either_of_its_keys_holds_it() {
        let before = [node2()];
        let evil = value("evil", "192.168.50.66", "10.1.2.0/24");
        for (attack, keys) in [
            ("subnet key overwritten", honest().put(subnet("10.1.2.0/24"), evil.clone(), 0, 20)),
            ("subnet key overwritten under a lease", honest().put(subnet("10.1.2.0/24"), evil, 66, 20)),
            ("subnet key deleted", honest().del(subnet("10.1.2.0/24"))),
            ("name key deleted", honest().del(name("node2"))),
        ] {
            let (peers, _) = view_of(&keys, &before, &[]);
            assert_eq!(peers[0], node2(), "{attack}");
        }
        // Both keys gone: its lease decides.
        let gone = honest().del(subnet("10.1.2.0/24")).del(name("node2"));
        assert_eq!(unheld_of(&gone, &before), [2]);
        let (peers, _) = view_alive(&gone, &before, &[2], &[]);
        assert_eq!(peers[0], node2(), "deleted, but its lease lives: it stays");
        let (peers, _) = view_of(&gone, &before, &[]);
        assert!(!peers.contains(&node2()), "its lease ended: it left");
    }

    fn unheld_of(keys: &Keys, believed: &[Believed]) -> Vec<i64> {
        let cluster = cluster();
        let me = Me {
            cluster: &cluster,
            name: "node1",
            node_ip: "192.168.50.1".parse().unwrap(),
            pod_cidr: Some("10.1.1.0/24".parse().unwrap()),
            subnets_prefix: "/podnet/subnets/",
            nodes_prefix: "/podnet/nodes/",
        };
        unheld(&me, &keys.0, believed)
    }

    #[test]
    fn a_whole_claim_written_over_a_believed_node_in_one_go_moves_nothing() {
        // One transaction: node2's subnet key overwritten with evil under evil's lease, node2's
        // name key deleted, evil's name key made to match. node2's lease lives.
        let evil = value("evil", "192.168.50.66", "10.1.2.0/24");
        let keys = honest().put(subnet("10.1.2.0/24"), evil.clone(), 66, 20).del(name("node2")).put(
            name("evil"),
            evil,
            66,
            90,
        );
        let before = [node2()];
        let (peers, left_out) = view_alive(&keys, &before, &unheld_of(&keys, &before), &[]);
        assert_eq!(peers[0], node2(), "node2 keeps its CIDR");
        assert!(!peers.iter().any(|p| p.peer.name == "evil"), "{peers:?}");
        assert!(
            left_out
                .iter()
                .any(|l| l.starts_with("node evil (192.168.50.66, 10.1.2.0/24) clashes with node node2")),
            "{left_out:?}"
        );
    }

    #[test]
    fn a_forged_claim_of_a_believed_nodes_name_is_left_out_whatever_its_key_order() {
        // A subnet key sorting before node2's, with node2's name, address and even lease, and
        // node2's name key overwritten to match it: a whole pair, but node2 was believed first.
        let forged = value("node2", "192.168.50.2", "10.1.0.0/24");
        let keys =
            honest().put(subnet("10.1.0.0/24"), forged.clone(), 2, 90).put(name("node2"), forged, 2, 20);
        let (peers, left_out) = view_of(&keys, &[node2()], &[]);
        assert_eq!(peers[0], node2());
        assert!(!peers.iter().any(|p| p.peer.pod_cidr == "10.1.0.0/24".parse().unwrap()));
        // node2's real subnet key is no pair now either (its name key was overwritten) but
        // still holds node2 (rule 2), until node2 writes its name key back.
        assert_eq!(
            left_out,
            [
                "/podnet/nodes/node2 does not hold the same lease and value: not node node2's claim (a key \
                 overwritten or forged)",
                "node node2 (192.168.50.2, 10.1.0.0/24) clashes with node node2 (192.168.50.2, 10.1.2.0/24), \
                 believed first",
            ]
        );
    }

    #[test]
    fn between_new_claims_the_older_subnet_key_is_believed_never_the_first_key() {
        // Two whole pairs for one address: the one created first wins though its key sorts last.
        let keys = Keys::default().node("late", "192.168.50.7", "10.1.7.0/24", 7, 70).node(
            "early",
            "192.168.50.7",
            "10.1.9.0/24",
            9,
            40,
        );
        let (peers, left_out) = view_of(&keys, &[], &[]);
        assert_eq!(peers, [believed("early", "192.168.50.7", "10.1.9.0/24", 9)]);
        assert!(left_out[0].starts_with("node late (192.168.50.7, 10.1.7.0/24) clashes with node early"));
    }

    #[test]
    fn a_cidr_two_name_keys_name_is_no_new_claim() {
        // node2's credentials (allowed to write subnet keys and its own name key) make a whole
        // pair for node3's CIDR; node3's name key still names it. A node that starts now, and
        // believed nobody before, believes neither; one that believed node3 keeps it.
        let forged = value("node2", "192.168.50.2", "10.1.3.0/24");
        let keys =
            honest().put(subnet("10.1.3.0/24"), forged.clone(), 2, 30).put(name("node2"), forged, 2, 20);
        let (peers, left_out) = view_of(&keys, &[], &[]);
        assert!(peers.iter().all(|p| p.peer.pod_cidr != "10.1.3.0/24".parse().unwrap()), "{peers:?}");
        assert!(left_out.iter().any(|l| l.contains("believed for neither")), "{left_out:?}");
        let node3 = believed("node3", "192.168.60.3", "10.1.3.0/24", 3);
        let (peers, _) = view_alive(&keys, std::slice::from_ref(&node3), &[3], &[]);
        assert!(peers.contains(&node3), "{peers:?}");
    }

    #[test]
    fn held_over_peers_stay_and_are_not_repeated() {
        let node3 = believed("node3", "192.168.50.3", "10.1.3.0/24", 3);
        let keys = Keys::default().node("node2", "192.168.50.2", "10.1.2.0/24", 22, 20);
        let (peers, left_out) = view_of(&keys, &[], &[node2(), node3.clone()]);
        assert_eq!(peers, [Believed { lease: 22, ..node2() }, node3], "node2 leased anew");
        assert!(left_out.is_empty());
    }
}

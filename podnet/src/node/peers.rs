//! Peers at runtime: one added or removed by hand (`podnet node add|del`), and the cluster's
//! complete views ([`crate::discovery`]) made into the peer map and routes. How a view becomes
//! peers is planned by [`cluster_changes`] (pure, unit-tested with a fake peer source).

use ipnet::Ipv4Net;
use tracing::{info, warn};

use super::{NodeError, pins_of_running_node, record::RecordFile};
use crate::{
    datapath::maps::Peers,
    error_chain,
    host::netlink::{Iface, Netlink},
    model::{Config, PeerNode, check_peer},
};

/// The node's uplink, which every peer route goes through.
pub(super) async fn uplink(config: &Config, nl: &Netlink) -> Result<Iface, NodeError> {
    let settings = config.uplink.as_ref().ok_or(NodeError::NoUplinkConfigured)?;
    nl.link(&settings.interface).await?.ok_or_else(|| NodeError::NotAsConfigured {
        source_name: config.source.clone(),
        field: "uplink.interface".to_owned(),
        problem: format!(
            "{} does not exist in the node's network namespace; create and address it first",
            settings.interface
        ),
    })
}

/// Routes `peer` via `uplink`, then puts it in the peer map: a peer the kernel cannot route to
/// never gets into the map, and a peer the map refuses loses the route it was given. A route
/// to its pod CIDR that is not podnet's is left alone, and the peer refused.
pub(super) async fn install(
    nl: &Netlink,
    peers: &mut Peers,
    uplink: &Iface,
    peer: &PeerNode,
) -> Result<(), NodeError> {
    let added = match nl.route_to(peer.pod_cidr).await? {
        // An earlier run's.
        Some(route) if route == (Some(peer.ip), Some(uplink.index)) => false,
        Some((gateway, _)) => {
            return Err(NodeError::InvalidPeer {
                field: "pod_cidr",
                problem: format!(
                    "a route to {} exists already ({}): podnet replaces no route it did not make; remove it first",
                    peer.pod_cidr,
                    gateway.map_or_else(|| "without a gateway".to_owned(), |g| format!("via {g}"))
                ),
            });
        }
        None => {
            nl.add_peer_route(peer.pod_cidr, peer.ip, uplink).await?;
            true
        }
    };
    if let Err(e) = peers.insert(peer) {
        if added {
            nl.del_peer_route(peer.pod_cidr, peer.ip, uplink).await?;
        }
        return Err(e.into());
    }
    Ok(())
}

/// Adds a peer node at runtime: its pod CIDR goes into the kernel route table and the peer map,
/// after every check (a refused peer changes nothing). Nothing restarts; flows to other nodes
/// are not touched.
pub async fn add_peer(config: &Config, peer: PeerNode) -> Result<(), NodeError> {
    let pins = pins_of_running_node(&config.node.name)?;
    let nl = Netlink::current()?;
    let uplink = uplink(config, &nl).await?;
    let mut peers = Peers::open(&pins)?;
    let networks = nl.ipv4_networks(&uplink).await?;
    check_peer(&config.node, config.uplink.as_ref(), &peers.list(), &networks, &peer)
        .map_err(|(field, problem)| NodeError::InvalidPeer { field, problem })?;
    install(&nl, &mut peers, &uplink, &peer).await?;
    info!("peer {} added: {} via {}", peer.name, peer.pod_cidr, peer.ip);
    Ok(())
}

/// Removes a peer node at runtime: map entry and kernel route.
pub async fn del_peer(config: &Config, name: &str) -> Result<(), NodeError> {
    let pins = pins_of_running_node(&config.node.name)?;
    let nl = Netlink::current()?;
    let uplink = uplink(config, &nl).await?;
    let mut peers = Peers::open(&pins)?;
    let peer = peers
        .list()
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| NodeError::UnknownPeer { name: name.to_owned() })?;
    peers.remove(&peer)?;
    nl.del_peer_route(peer.pod_cidr, peer.ip, &uplink).await?;
    info!("peer {} removed ({} via {})", peer.name, peer.pod_cidr, peer.ip);
    Ok(())
}

/// How a view of the cluster changes the node's cluster peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterChanges {
    /// Cluster peers no longer in the view, and whether each is in the peer map.
    pub gone: Vec<(PeerNode, bool)>,
    /// Cluster peers that stay.
    pub kept: Vec<PeerNode>,
    /// Peers that join, and whether each is in the peer map already (an agent killed between the
    /// map and the record: it is the cluster's).
    pub joined: Vec<(PeerNode, bool)>,
    /// Peers of the view left out, and why.
    pub refused: Vec<(PeerNode, String)>,
}

/// What `view` (every other node of the cluster) does to a node of `config` whose record names
/// `recorded` as cluster peers, whose peer map holds `in_map`, and whose uplink is on
/// `networks`. A peer that clashes with this node, the config's peers, peers added at runtime,
/// peers of the view before it or the uplink's networks is refused: a store's value never takes
/// a route away from anyone.
pub fn cluster_changes(
    config: &Config,
    view: &[PeerNode],
    recorded: &[PeerNode],
    in_map: &[PeerNode],
    networks: &[Ipv4Net],
) -> ClusterChanges {
    let mut changes = ClusterChanges::default();
    for peer in recorded {
        if view.contains(peer) {
            changes.kept.push(peer.clone());
        } else {
            changes.gone.push((peer.clone(), in_map.contains(peer)));
        }
    }
    // The peer map as it will be: without the gone, with each peer that joins.
    let mut known: Vec<PeerNode> =
        in_map.iter().filter(|p| !changes.gone.iter().any(|(g, _)| g == *p)).cloned().collect();
    for peer in view.iter().filter(|p| !changes.kept.contains(p)) {
        if known.contains(peer) && !config.peers.contains(peer) {
            changes.joined.push((peer.clone(), true));
            continue;
        }
        match check_peer(&config.node, config.uplink.as_ref(), &known, networks, peer) {
            Ok(()) => {
                known.push(peer.clone());
                changes.joined.push((peer.clone(), false));
            }
            Err((field, problem)) => changes.refused.push((peer.clone(), format!("{field}: {problem}"))),
        }
    }
    changes
}

/// Where the changes a view makes are carried out: the peer map with the kernel routes, and the
/// node's record. The system's in production ([`SystemPeers`]), one in memory in the unit tests.
pub trait PeerTable {
    /// The peers in the peer map.
    fn in_map(&self) -> Vec<PeerNode>;
    /// The cluster peers the node's record names.
    fn recorded(&self) -> Result<Vec<PeerNode>, NodeError>;
    /// Records `peers` as the node's cluster peers.
    fn record(&mut self, peers: &[PeerNode]) -> Result<(), NodeError>;
    /// Routes `peer` and puts it in the peer map, or neither.
    fn add(&mut self, peer: &PeerNode) -> impl Future<Output = Result<(), NodeError>>;
    /// Takes `peer` out of the peer map (if `in_map`) and its route away.
    fn remove(&mut self, peer: &PeerNode, in_map: bool) -> impl Future<Output = Result<(), NodeError>>;
}

/// The node's own peer map, routes via its uplink, and record.
struct SystemPeers {
    nl: Netlink,
    uplink: Iface,
    peers: Peers,
    records: RecordFile,
}

impl PeerTable for SystemPeers {
    fn in_map(&self) -> Vec<PeerNode> {
        self.peers.list()
    }

    fn recorded(&self) -> Result<Vec<PeerNode>, NodeError> {
        Ok(self.records.load()?.cluster_peers())
    }

    fn record(&mut self, peers: &[PeerNode]) -> Result<(), NodeError> {
        Ok(self.records.update(|r| r.cluster_peers = peers.iter().map(Into::into).collect())?)
    }

    async fn add(&mut self, peer: &PeerNode) -> Result<(), NodeError> {
        install(&self.nl, &mut self.peers, &self.uplink, peer).await
    }

    async fn remove(&mut self, peer: &PeerNode, in_map: bool) -> Result<(), NodeError> {
        if in_map {
            self.peers.remove(peer)?;
        }
        Ok(self.nl.del_peer_route(peer.pod_cidr, peer.ip, &self.uplink).await?)
    }
}

/// Makes the peers the cluster gave those of `view` (a complete view from a
/// [`crate::discovery::PeerSource`]): adds the new ones, removes the ones gone, and touches
/// nothing else (see [`cluster_changes`]). A peer whose route or map entry cannot be made is
/// left out for now; returns whether any was, so the caller tries the view again later.
pub async fn set_cluster_peers(config: &Config, view: &[PeerNode]) -> Result<bool, NodeError> {
    let pins = pins_of_running_node(&config.node.name)?;
    let nl = Netlink::current()?;
    let uplink = uplink(config, &nl).await?;
    let networks = nl.ipv4_networks(&uplink).await?;
    let mut table =
        SystemPeers { nl, uplink, peers: Peers::open(&pins)?, records: RecordFile::of(&config.node.state()) };
    apply_view(config, view, &networks, &mut table).await
}

/// [`set_cluster_peers`] on `table`, the uplink being on `networks`. The record follows each
/// change as it is made, so a failure part-way leaves it true to the map.
pub async fn apply_view(
    config: &Config,
    view: &[PeerNode],
    networks: &[Ipv4Net],
    table: &mut impl PeerTable,
) -> Result<bool, NodeError> {
    let changes = cluster_changes(config, view, &table.recorded()?, &table.in_map(), networks);
    let mut kept = changes.kept;
    for (gone, in_map) in &changes.gone {
        info!("peer {} ({} via {}) left the cluster", gone.name, gone.pod_cidr, gone.ip);
        table.remove(gone, *in_map).await?;
    }
    table.record(&kept)?;
    for (peer, problem) in &changes.refused {
        warn!("cluster peer {} ({} via {}) left out: {problem}", peer.name, peer.pod_cidr, peer.ip);
    }
    let mut retry = false;
    for (peer, in_map) in &changes.joined {
        if !in_map && let Err(e) = table.add(peer).await {
            warn!(
                "cluster peer {} ({} via {}) left out for now: {}",
                peer.name,
                peer.pod_cidr,
                peer.ip,
                error_chain(&e)
            );
            retry = true;
            continue;
        }
        info!("peer {} ({} via {}) joined the cluster", peer.name, peer.pod_cidr, peer.ip);
        kept.push(peer.clone());
        table.record(&kept)?;
    }
    Ok(retry)
}

#[cfg(test)]
mod tests {
    use ipnet::Ipv4Net;
    use tokio::sync::mpsc;

    use super::*;
    use crate::{
        config::Draft,
        discovery::{DiscoveryError, Joined, PeerSource, Update},
        model::Source,
    };

    fn peer(name: &str, ip: &str, cidr: &str) -> PeerNode {
        PeerNode { name: name.into(), ip: ip.parse().unwrap(), pod_cidr: cidr.parse().unwrap() }
    }

    fn config() -> Config {
        let text = "[node]\nname = \"node1\"\npod_cidr = \"10.1.1.0/24\"\n\
                    [uplink]\ninterface = \"eth0\"\nip = \"192.168.50.1\"\n\
                    [[peer]]\nname = \"static\"\nip = \"192.168.50.9\"\npod_cidr = \"10.9.0.0/24\"\n";
        Draft::parse(text.to_owned(), Source::BuiltIn).unwrap().resolve(None).unwrap()
    }

    /// A cluster that gives the node a CIDR and then a scripted series of views.
    struct FakeSource {
        views: Vec<Vec<PeerNode>>,
    }

    impl PeerSource for FakeSource {
        async fn join(&mut self) -> Result<Joined, DiscoveryError> {
            Ok(Joined { pod_cidr: "10.1.1.0/24".parse().unwrap(), fresh: true })
        }

        async fn follow(self, updates: mpsc::Sender<Update>) {
            for view in self.views {
                if updates.send(Update::Peers(view)).await.is_err() {
                    return;
                }
            }
        }

        async fn leave(&mut self) -> Result<(), DiscoveryError> {
            Ok(())
        }
    }

    /// A peer table in memory; adding a peer named in `unroutable` fails.
    #[derive(Default)]
    struct Memory {
        map: Vec<PeerNode>,
        recorded: Vec<PeerNode>,
        unroutable: Vec<String>,
    }

    impl PeerTable for Memory {
        fn in_map(&self) -> Vec<PeerNode> {
            self.map.clone()
        }

        fn recorded(&self) -> Result<Vec<PeerNode>, NodeError> {
            Ok(self.recorded.clone())
        }

        fn record(&mut self, peers: &[PeerNode]) -> Result<(), NodeError> {
            self.recorded = peers.to_vec();
            Ok(())
        }

        async fn add(&mut self, peer: &PeerNode) -> Result<(), NodeError> {
            if self.unroutable.contains(&peer.name) {
                return Err(NodeError::Refused { message: "Network is unreachable".into() });
            }
            self.map.push(peer.clone());
            Ok(())
        }

        async fn remove(&mut self, peer: &PeerNode, in_map: bool) -> Result<(), NodeError> {
            assert_eq!(in_map, self.map.contains(peer), "{} is in the map: {in_map}", peer.name);
            self.map.retain(|p| p != peer);
            Ok(())
        }
    }

    /// What a view left: the map, the record, and whether it is to be tried again.
    type After = (Vec<PeerNode>, Vec<PeerNode>, bool);

    /// Runs `source` and makes each view it sends into peers through [`apply_view`] on `table`
    /// (which starts with the config's peers in its map); returns what each view left.
    fn follow_with(source: FakeSource, networks: &[Ipv4Net], mut table: Memory) -> Vec<After> {
        let config = config();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        table.map.extend(config.peers.clone());
        let mut after = Vec::new();
        runtime.block_on(async {
            let mut source = source;
            assert_eq!(source.join().await.unwrap().pod_cidr.to_string(), "10.1.1.0/24");
            source.follow(tx).await;
            while let Some(Update::Peers(view)) = rx.recv().await {
                let retry = apply_view(&config, &view, networks, &mut table).await.unwrap();
                after.push((table.map.clone(), table.recorded.clone(), retry));
            }
        });
        after
    }

    fn follow(source: FakeSource, networks: &[Ipv4Net]) -> Vec<After> {
        follow_with(source, networks, Memory::default())
    }

    #[test]
    fn views_become_peers_and_peers_that_leave_go() {
        let node2 = peer("node2", "192.168.60.2", "10.1.2.0/24");
        let node3 = peer("node3", "192.168.60.3", "10.1.3.0/24");
        let after = follow(
            FakeSource {
                views: vec![vec![node2.clone()], vec![node2.clone(), node3.clone()], vec![node3.clone()]],
            },
            &[],
        );
        let statics = config().peers;
        assert_eq!(after[0].0, [statics.clone(), vec![node2.clone()]].concat());
        assert_eq!(after[1].1, [node2.clone(), node3.clone()]);
        assert_eq!(after[2].0, [statics, vec![node3.clone()]].concat(), "node2 left");
        assert_eq!(after[2].1, [node3]);
        assert!(after.iter().all(|(.., retry)| !retry));
    }

    #[test]
    fn a_peer_that_cannot_be_routed_is_left_out_and_tried_again() {
        let node2 = peer("node2", "192.168.60.2", "10.1.2.0/24");
        let far = peer("far", "203.0.113.9", "10.1.3.0/24");
        let view = vec![node2.clone(), far.clone()];
        let table = Memory { unroutable: vec!["far".into()], ..Memory::default() };
        let after = follow_with(FakeSource { views: vec![view.clone(), view] }, &[], table);
        let statics = config().peers;
        for (map, recorded, retry) in &after {
            assert_eq!(map, &[statics.clone(), vec![node2.clone()]].concat(), "far is not in the map");
            assert_eq!(recorded, std::slice::from_ref(&node2), "nor in the record");
            assert!(retry, "the view is to be tried again");
        }
    }

    #[test]
    fn a_view_never_takes_a_route_from_anyone() {
        let networks: Vec<Ipv4Net> = vec!["192.168.50.0/24".parse().unwrap()];
        let node2 = peer("node2", "192.168.60.2", "10.1.2.0/24");
        let view = vec![
            node2.clone(),
            // Over a config peer, this node, the uplink's network, a peer before it.
            peer("evil1", "192.168.60.3", "10.9.0.0/25"),
            peer("evil2", "192.168.60.4", "10.1.1.0/24"),
            peer("evil3", "192.168.60.5", "192.168.50.128/25"),
            peer("evil4", "192.168.60.6", "10.1.2.128/25"),
            peer("static", "192.168.60.7", "10.1.7.0/24"),
        ];
        let after = follow(FakeSource { views: vec![view.clone()] }, &networks);
        let (map, recorded, retry) = &after[0];
        assert_eq!(recorded, std::slice::from_ref(&node2));
        assert_eq!(map, &[config().peers, vec![node2]].concat(), "the config's peer and node2");
        assert!(!retry, "what is refused is not tried again");
        let config = config();
        let changes = cluster_changes(&config, &view, &[], &config.peers, &networks);
        let refused: Vec<String> =
            changes.refused.iter().map(|(p, why)| format!("{}: {why}", p.name)).collect();
        assert_eq!(refused.len(), 5, "{refused:#?}");
        assert!(
            refused[0].starts_with("evil1: pod_cidr: 10.9.0.0/25 overlaps 10.9.0.0/24 of node \"static\"")
        );
        assert!(refused[1].starts_with("evil2: pod_cidr: 10.1.1.0/24 overlaps this node's pod_cidr"));
        assert!(refused[2].contains("a network of the uplink"), "{}", refused[2]);
        assert!(
            refused[3].starts_with("evil4: pod_cidr: 10.1.2.128/25 overlaps 10.1.2.0/24 of node \"node2\"")
        );
        assert_eq!(refused[4], "static: name: node name \"static\" is already in use");
    }

    #[test]
    fn a_peer_in_the_map_but_in_no_record_is_adopted() {
        let config = config();
        let node2 = peer("node2", "192.168.60.2", "10.1.2.0/24");
        let in_map = [config.peers.clone(), vec![node2.clone()]].concat();
        let changes = cluster_changes(&config, std::slice::from_ref(&node2), &[], &in_map, &[]);
        assert_eq!(changes.joined, [(node2, true)]);
        assert!(changes.refused.is_empty());
    }
}

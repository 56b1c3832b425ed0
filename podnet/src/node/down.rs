//! `podnet down`: removes everything `up` and the CNI plugin made on the node, and only that
//! (see [`super::record`]). It needs the node's name and state, not a config that resolves: a
//! node whose lease record is gone, or whose config has changed since, still comes down.

use std::{path::PathBuf, time::Duration};

use tracing::{info, warn};

use super::{
    NodeError,
    ipam::Records,
    pod,
    record::{NodeRecord, RecordFile},
};
use crate::{
    config::Draft,
    datapath::{PinDir, maps::Peers},
    discovery::{LeaseRecord, PeerSource as _, etcd::Etcd},
    error_chain,
    host::{netlink::Netlink, sysctl},
    model::Membership,
};

/// What taking a node down needs to know.
#[derive(Debug, Clone)]
pub struct Teardown {
    /// The node's name: its pins, lock and socket.
    pub node: String,
    /// Its state directory, `<state_dir>/<name>`.
    pub state: PathBuf,
    /// The uplink its config names, for peer routes when the record names none (an older
    /// podnet's record).
    pub uplink: Option<String>,
    /// Its cluster, to give its lease back.
    pub membership: Option<Membership>,
}

impl Teardown {
    /// The node `draft` describes.
    pub fn of(draft: &Draft) -> Self {
        Self {
            node: draft.node_name().to_owned(),
            state: draft.state(),
            uplink: draft.uplink_interface().map(str::to_owned),
            membership: draft.membership(),
        }
    }

    /// A node known only by its name and state directory (`<state_dir>/<name>`): its record
    /// says what to remove; its etcd lease, if it holds one, runs out by itself.
    pub fn named(node: &str, state: PathBuf) -> Self {
        Self { node: node.to_owned(), state, uplink: None, membership: None }
    }
}

/// How long `down` waits for etcd to take the node's lease back.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Removes every pod's veth and endpoint (and the namespaces podnet made), pinned links
/// (detaching the programs) and maps, peer routes, the bridge or the gateway address, the NAT
/// port reservation, IPv4 forwarding if podnet turned it on, and the node's state. Missing
/// pieces are skipped, so it is safe to run twice, after a failed `up`, or on a node never up.
pub async fn down(node: &Teardown) -> Result<(), NodeError> {
    let nl = Netlink::current()?;
    let pins = PinDir::for_node(&node.node);
    let records = Records::of(&node.state);
    let record_file = RecordFile::of(&node.state);
    // A record without pins predates a reboot: what it says podnet did is not proven now.
    let record = if pins.path().exists() { record_file.load()? } else { NodeRecord::default() };
    for held in records.held()? {
        pod::detach(&nl, &pins, &records, &held.pod).await?;
    }
    let uplink = match record.uplink.as_ref().or(node.uplink.as_ref()) {
        Some(name) => nl.link(name).await.ok().flatten(),
        None => None,
    };
    if let (Ok(peers), Some(uplink)) = (Peers::open(&pins), &uplink) {
        for peer in peers.list() {
            nl.del_peer_route(peer.pod_cidr, peer.ip, uplink).await?;
        }
    }
    pins.remove()?;
    if let Some((min, max)) = record.reserved_ports {
        sysctl::release_ports(min, max)?;
    }
    if record.ip_forward {
        sysctl::restore_ip_forward()?;
    }
    if let Some((bridge, gateway)) = record.gateway.filter(|(b, _)| Some(b) != record.bridge.as_ref())
        && let Some(link) = nl.link(&bridge).await?
    {
        nl.del_addresses_except(&link, |a| a != gateway).await?;
    }
    if let Some(bridge) = &record.bridge {
        nl.del_link(bridge).await?;
    }
    records.remove_all()?;
    leave_cluster(node).await?;
    record_file.remove()?;
    // The node's state directory, if nothing else is in it.
    let _ = std::fs::remove_dir(&node.state);
    info!("node {} is down", node.node);
    Ok(())
}

/// Gives the node's lease back to its cluster, if it holds one. With etcd out of reach the
/// lease runs out by itself after its TTL; the node forgets it either way.
async fn leave_cluster(node: &Teardown) -> Result<(), NodeError> {
    let Some(member) = node.membership.clone() else {
        // Taken down from its state alone: its cluster is not known here.
        if let Some(held) = LeaseRecord::load(&node.state)? {
            warn!(
                "node {} held pod CIDR {} under etcd lease {:x}: without its [cluster], the lease runs out by itself",
                node.node, held.pod_cidr, held.lease
            );
        }
        return Ok(LeaseRecord::remove(&node.state)?);
    };
    let ttl = member.cluster.lease_ttl;
    let mut etcd = match Etcd::of(member) {
        Ok(etcd) => etcd,
        Err(e) => {
            warn!("{}; the lease it names (if any) runs out within {} s", error_chain(&e), ttl.as_secs());
            return Ok(LeaseRecord::remove(&node.state)?);
        }
    };
    match tokio::time::timeout(LEAVE_TIMEOUT, etcd.leave()).await {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => warn!("could not give the node's lease back: {}", error_chain(&e)),
        Err(_) => warn!("etcd did not answer within {LEAVE_TIMEOUT:?}"),
    }
    warn!("the node's lease (and its pod CIDR) runs out within {} s", ttl.as_secs());
    Ok(LeaseRecord::remove(&node.state)?)
}

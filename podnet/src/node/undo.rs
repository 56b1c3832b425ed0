//! What a run of `up` made, so that a run that fails part-way removes it again: a namespace, the
//! bridge, the gateway address, IPv4 forwarding, the port reservation, the pin directory, a
//! route, a pod. Each knows how the node's record changes once it is undone.

use std::net::Ipv4Addr;

use super::record::NodeRecord;
use crate::model::{PeerNode, Pod};

/// Something `up` created, undone in reverse order if a later step fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Made {
    /// A pod's namespace, made for a pod whose attachment then failed.
    Netns(String),
    /// The node bridge, and the bridge the record named before.
    Bridge(String, Option<String>),
    /// The gateway address added to a bridge, and the bridge and gateway the record named before.
    GatewayAddress(String, Ipv4Addr, Option<(String, Ipv4Addr)>),
    /// IPv4 forwarding turned on.
    IpForward,
    /// NAT ports reserved from the node's sockets.
    ReservedPorts(u16, u16),
    /// The node's pin directory (a first `up`).
    PinDir,
    /// A peer's route via the uplink `uplink`.
    Route { peer: PeerNode, uplink: String },
    /// A pod this run attached: undone by detaching it, as any pod is.
    Pod(Pod),
}

impl Made {
    /// How the node's record reads once this is undone.
    pub fn forget(&self, record: &mut NodeRecord) {
        match self {
            Made::Bridge(_, before) => record.bridge.clone_from(before),
            Made::GatewayAddress(_, _, before) => record.gateway.clone_from(before),
            Made::IpForward => record.ip_forward = false,
            Made::ReservedPorts(..) => record.reserved_ports = None,
            // The programs' links (the uplink's among them) go with the pins.
            Made::PinDir => record.uplink = None,
            Made::Route { peer, .. } => record.config_peers.retain(|p| PeerNode::from(p) != *peer),
            Made::Netns(_) | Made::Pod(_) => {}
        }
    }
}

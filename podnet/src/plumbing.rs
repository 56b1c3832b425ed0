//! The classic pod recipe, over netlink: a node bridge with the gateway address, and per pod a
//! namespace, a veth pair (host end in the bridge), the pod address, `lo` up and a default route;
//! GRO on the pod end only when native XDP delivers to pods (see [`gro`]).
//! Every step is "ensure": it leaves what already exists alone.

use std::io;

use crate::{
    config::{Node, Pod},
    netlink::{Iface, Netlink, NetlinkError, gro, netns},
};

/// A pod whose plumbing is in place.
#[derive(Debug, Clone)]
pub struct PodPlumbing {
    /// The host end of the pod's veth, in the node namespace.
    pub host: Iface,
    /// The pod end of the veth, inside the pod namespace.
    pub pod_if: Iface,
}

/// Makes sure the node bridge exists, is up and holds the gateway address.
pub async fn ensure_bridge(nl: &Netlink, node: &Node) -> Result<Iface, NetlinkError> {
    if nl.link(&node.bridge).await?.is_none() {
        nl.add_bridge(&node.bridge).await?;
    }
    let bridge = nl.existing_link(&node.bridge).await?;
    nl.set_up(&bridge).await?;
    nl.add_address(&bridge, node.gateway, node.pod_cidr.prefix_len()).await?;
    Ok(bridge)
}

/// Makes sure `pod` has its namespace, veth pair, address and default route, and GRO on its
/// end of the veth exactly when `xdp_frames` (native XDP redirects to the pod).
pub async fn ensure_pod(
    nl: &Netlink,
    bridge: &Iface,
    node: &Node,
    pod: &Pod,
    xdp_frames: bool,
) -> Result<PodPlumbing, NetlinkError> {
    netns::create(&pod.netns)?;
    let host_name = pod.host_ifname();
    if nl.link(&host_name).await?.is_none() {
        nl.add_veth(&host_name, &pod.pod_ifname(), &pod.netns).await?;
    }
    let host = nl.existing_link(&host_name).await?;
    nl.set_controller(&host, bridge).await?;
    nl.set_up(&host).await?;

    let inside = Netlink::in_netns(&pod.netns)?;
    let lo = inside.existing_link("lo").await?;
    inside.set_up(&lo).await?;
    let pod_if = inside.existing_link(&pod.pod_ifname()).await?;
    inside.add_address(&pod_if, pod.ip, node.pod_cidr.prefix_len()).await?;
    inside.set_up(&pod_if).await?;
    gro::set(&pod.netns, &pod.pod_ifname(), xdp_frames)?;
    inside.add_default_route(node.gateway).await?;
    Ok(PodPlumbing { host, pod_if })
}

/// Turns on IPv4 forwarding in the current (node) namespace, as the recipe does: packets the
/// datapath hands to the stack (to the gateway, other nodes, the outside) are routed by it.
pub fn enable_ip_forward() -> io::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
}

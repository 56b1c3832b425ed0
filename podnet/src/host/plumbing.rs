//! The classic pod recipe, over netlink: a node bridge with the gateway address, and per pod a
//! namespace without IPv6, a veth pair (host end in the bridge) with the pods' MTU, the pod
//! address, `lo` up and a default route; GRO on the pod end only when native XDP delivers to
//! pods (see [`gro`]). Every step is "ensure": it leaves what already exists alone.

use std::net::Ipv4Addr;

use crate::{
    host::{
        gro,
        netlink::{Iface, Netlink, NetlinkError},
        sysctl::{self, SysctlError},
    },
    model::Node,
};

#[derive(Debug, thiserror::Error)]
pub enum PlumbingError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error(
        "{ifname} in {netns} is not the other end of {host}: podnet configures only the veths it \
         made (remove the pod, or the interface, and try again)"
    )]
    NotOurVeth { ifname: String, netns: String, host: String },
}

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

/// What a pod's veth pair is set to besides addresses.
#[derive(Debug, Clone, Copy)]
pub struct VethSettings {
    /// MTU of both ends.
    pub mtu: u32,
    /// GRO on the pod end: native XDP redirects frames to the pod (see [`gro`]).
    pub xdp_frames: bool,
}

/// Where a pod's veth goes and what it is called at either end.
#[derive(Debug, Clone, Copy)]
pub struct PodLink<'a> {
    /// The pod's network namespace (a name under /run/netns or a path); it must exist.
    pub netns: &'a str,
    /// The interface inside the pod.
    pub ifname: &'a str,
    /// The host end, in the node namespace and the bridge.
    pub host_ifname: &'a str,
}

/// Makes sure the pod behind `pod` has IPv6 off, its veth pair (with `veth` settings), address
/// `ip` (and no other) and a default route via the node's gateway. The host end stays out of the bridge and
/// down until [`connect_host`]: nothing the pod sends gets anywhere before its program is on.
pub async fn ensure_pod(
    nl: &Netlink,
    node: &Node,
    pod: PodLink<'_>,
    ip: Ipv4Addr,
    veth: VethSettings,
) -> Result<PodPlumbing, PlumbingError> {
    // Before the veth arrives, so the pod end never gets an IPv6 link-local address.
    sysctl::disable_ipv6_in(pod.netns)?;
    if nl.link(pod.host_ifname).await?.is_none() {
        nl.add_veth(pod.host_ifname, pod.ifname, pod.netns).await?;
    }
    let host = nl.existing_link(pod.host_ifname).await?;
    nl.set_mtu(&host, veth.mtu).await?;

    let inside = Netlink::in_netns(pod.netns)?;
    let pod_if = inside.existing_link(pod.ifname).await?;
    // An interface of that name that is not our veth's other end (a re-used name, another
    // namespace than the veth went to) is not podnet's to configure.
    if pod_if.peer != Some(host.index) || host.peer != Some(pod_if.index) {
        return Err(PlumbingError::NotOurVeth {
            ifname: pod.ifname.to_owned(),
            netns: pod.netns.to_owned(),
            host: pod.host_ifname.to_owned(),
        });
    }
    let lo = inside.existing_link("lo").await?;
    inside.set_up(&lo).await?;
    inside.set_mtu(&pod_if, veth.mtu).await?;
    // An address the pod had before (its `ip` changed) would stay its primary one. It goes
    // first: removing a primary address takes the secondaries with it.
    inside.del_addresses_except(&pod_if, |a| a == ip).await?;
    inside.add_address(&pod_if, ip, node.pod_cidr.prefix_len()).await?;
    inside.set_up(&pod_if).await?;
    gro::set(pod.netns, pod.ifname, veth.xdp_frames).map_err(NetlinkError::from)?;
    inside.add_default_route(node.gateway).await?;
    Ok(PodPlumbing { host, pod_if })
}

/// Puts a pod's host veth into the node bridge and up: the pod is on the network.
pub async fn connect_host(nl: &Netlink, bridge: &Iface, host: &Iface) -> Result<(), NetlinkError> {
    nl.set_controller(host, bridge).await?;
    nl.set_up(host).await
}

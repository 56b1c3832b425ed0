//! One pod's network, however the pod came: a `[[pod]]` of the config (`up`) or a container a
//! runtime attached (the CNI plugin). Attaching reserves the pod's address ([`Ipam`]), builds its
//! veth pair, address and default route, registers its endpoint in the datapath and attaches
//! `from_pod` to its host veth. Detaching undoes all of it; every step tolerates what is already
//! gone, so it can run twice, after a failed attach, or after the namespace vanished.

use std::net::Ipv4Addr;

use podnet_common::Endpoint;
use tracing::info;

use super::{
    NodeError,
    ipam::{Held, Ipam, Records, Reservation},
};
use crate::{
    datapath::{PinDir, PodProgram, maps::Endpoints, nat},
    host::{
        netlink::{Iface, Netlink},
        netns,
        plumbing::{self, PodLink, VethSettings},
    },
    model::{Node, Pod},
};

/// What pods of a running node attach to.
pub struct NodeNet {
    pub nl: Netlink,
    pub node: Node,
    pub bridge: Iface,
    pub veth: VethSettings,
    pub pins: PinDir,
    pub ipam: Ipam,
}

/// A pod attached to the node.
#[derive(Debug, Clone)]
pub struct Attached {
    pub ip: Ipv4Addr,
    pub host: Iface,
    pub pod_if: Iface,
}

fn link(pod: &Pod) -> PodLink<'_> {
    PodLink { netns: &pod.netns, ifname: &pod.ifname, host_ifname: &pod.host_ifname }
}

/// Refuses a container whose namespace is not a network namespace (a FIFO, a device, ...) or is
/// the node's own or the host's: podnet would configure the node as a pod. (What is wrong with
/// its names, [`Pod::check_container`] says.)
pub fn check_container(pod: &Pod) -> Result<(), NodeError> {
    let invalid =
        |what: &str, problem: String| NodeError::InvalidContainer { what: what.to_owned(), problem };
    pod.check_container().map_err(|(what, problem)| invalid(what, problem))?;
    match netns::is_node_or_host(&pod.netns) {
        Ok(false) => Ok(()),
        Ok(true) => Err(invalid(
            "CNI_NETNS",
            format!("{} is the node's own network namespace (or the host's)", pod.netns),
        )),
        Err(e @ netns::NetnsError::Missing { .. }) => Err(e.into()),
        // Not a network namespace, or not one podnet may look at: the runtime's to fix.
        Err(e) => Err(invalid("CNI_NETNS", crate::error_chain(&e))),
    }
}

/// Attaches `pod` with the address it asks for (or one from IPAM); `owns_netns`: podnet made its
/// namespace. The host veth joins the bridge only once its endpoint and `from_pod` are in place.
/// If a step fails, what this call made (the address, the veth) is undone.
pub async fn attach(
    net: &NodeNet,
    program: &mut PodProgram,
    pod: &Pod,
    owns_netns: bool,
) -> Result<Attached, NodeError> {
    let held = net.ipam.held()?;
    if let Some(other) = held.iter().find(|h| h.pod.same_attachment(pod) && h.pod.netns != pod.netns) {
        return Err(NodeError::InvalidContainer {
            what: "CNI_NETNS".to_owned(),
            problem: format!("{pod} is attached in {} already: DEL it first", other.pod.netns),
        });
    }
    let had_address = held.iter().any(|h| h.pod.same_attachment(pod));
    let new_veth = net.nl.link(&pod.host_ifname).await?.is_none();
    let Reservation { ip, moved_from } = net.ipam.reserve(pod, owns_netns)?;
    if let Some(old) = moved_from {
        // The pod's address changed: what the datapath knew of the old one goes with it.
        Endpoints::open(&net.pins)?.remove(old)?;
        let forgotten = nat::forget_pod(&net.pins, old)?;
        info!("{pod}: moved from {old} to {ip} ({forgotten} translation(s) of {old} removed)");
    }
    let attached = async {
        let plumbed = plumbing::ensure_pod(&net.nl, &net.node, link(pod), ip, net.veth).await?;
        let (host, pod_if) = (plumbed.host, plumbed.pod_if);
        let endpoint = Endpoint::new(host.index, pod_if.mac, host.mac);
        Endpoints::open(&net.pins)?.insert(ip, &endpoint)?;
        if new_veth {
            // A link pinned for an earlier interface of the same name is dead; start afresh.
            net.pins.unpin_link(&pod.host_ifname)?;
        }
        program.attach(&host.name, host.index)?;
        plumbing::connect_host(&net.nl, &net.bridge, &host).await?;
        Ok::<_, NodeError>(Attached { ip, host, pod_if })
    }
    .await;
    if attached.is_err() {
        if new_veth {
            net.pins.unpin_link(&pod.host_ifname)?;
            net.nl.del_link(&pod.host_ifname).await?;
        }
        if !had_address {
            if let Ok(mut endpoints) = Endpoints::open(&net.pins) {
                endpoints.remove(ip)?;
            }
            net.ipam.release(pod)?;
        }
    }
    attached
}

/// Brings an attached container up to date with the node (a new podnet's `up`): its endpoint
/// and the `from_pod` in its link. Nothing inside the container changes (its addresses, MTU and
/// settings are the runtime's and the container's business once attached).
pub async fn refresh(net: &NodeNet, program: &mut PodProgram, held: &Held) -> Result<(), NodeError> {
    let pod = &held.pod;
    let gone = |what: String| NodeError::InvalidContainer {
        what: pod.to_string(),
        problem: format!("{what} is gone"),
    };
    let host =
        net.nl.link(&pod.host_ifname).await?.ok_or_else(|| gone(format!("host veth {}", pod.host_ifname)))?;
    let pod_if = Netlink::in_netns(&pod.netns)?
        .link(&pod.ifname)
        .await?
        .ok_or_else(|| gone(format!("{} in {}", pod.ifname, pod.netns)))?;
    let endpoint = Endpoint::new(host.index, pod_if.mac, host.mac);
    Endpoints::open(&net.pins)?.insert(held.ip, &endpoint)?;
    program.attach(&host.name, host.index)?;
    Ok(())
}

/// Detaches `pod`: program, endpoint, veth, address, and its namespace if podnet made it.
/// Only what the node's record of the pod says podnet made is removed: a pod it holds no record
/// of (never attached, or detached already) changes nothing.
pub async fn detach(nl: &Netlink, pins: &PinDir, records: &Records, pod: &Pod) -> Result<(), NodeError> {
    let Some(held) = records.of_pod(pod)? else {
        return Ok(());
    };
    let made = &held.pod;
    pins.unpin_link(&made.host_ifname)?;
    if let Ok(mut endpoints) = Endpoints::open(pins) {
        endpoints.remove(held.ip)?;
    }
    // A pod that comes to hold this address later inherits none of its connections.
    nat::forget_pod(pins, held.ip)?;
    nl.del_link(&made.host_ifname).await?;
    if held.owns_netns {
        netns::delete(&made.netns)?;
    }
    records.release(made)?;
    Ok(())
}

/// What is wrong with attached `pod`, if anything: the CNI CHECK.
pub async fn check(net: &NodeNet, pod: &Pod) -> Result<Vec<String>, NodeError> {
    let mut problems = Vec::new();
    let Some(Held { ip, .. }) = net.ipam.of_pod(pod)? else {
        return Ok(vec![format!("{pod} holds no address")]);
    };
    let Some(host) = net.nl.link(&pod.host_ifname).await? else {
        return Ok(vec![format!("host veth {} is missing", pod.host_ifname)]);
    };
    let inside = Netlink::in_netns(&pod.netns)?;
    match inside.link(&pod.ifname).await? {
        None => problems.push(format!("{} is missing in {}", pod.ifname, pod.netns)),
        Some(pod_if) => {
            if !inside.ipv4_addresses(&pod_if).await?.contains(&ip) {
                problems.push(format!("{} does not hold {ip}", pod.ifname));
            }
            if !inside.has_default_route_via(net.node.gateway).await? {
                problems.push(format!("no default route via {} in {}", net.node.gateway, pod.netns));
            }
            match Endpoints::open(&net.pins)?.get(ip) {
                Some(ep) if ep.host_ifindex == host.index && ep.pod_mac == pod_if.mac => {}
                Some(_) => problems.push(format!("the endpoint of {ip} points at another interface")),
                None => problems.push(format!("{ip} has no endpoint in the datapath")),
            }
        }
    }
    if !net.pins.link(&pod.host_ifname).exists() {
        problems.push(format!("from_pod is not attached to {}", pod.host_ifname));
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_in_the_nodes_own_namespace_is_refused() {
        let pod = Pod::container("podnet", "c1", "/proc/self/ns/net", "eth0", None);
        assert!(matches!(check_container(&pod), Err(NodeError::InvalidContainer { .. })));
    }
}

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
    ipam::{Ipam, PodKind, PodRecord, Reservation},
};
use crate::{
    config::{self, Config},
    datapath::{PinDir, PodProgram, maps::Endpoints, nat},
    host::{
        netlink::{Iface, Netlink},
        netns,
        plumbing::{self, PodLink, VethSettings},
    },
};

impl PodRecord {
    /// The record of `[[pod]]` `pod` of the config; `owns_netns`: podnet creates its namespace.
    pub fn config_pod(pod: &config::Pod, owns_netns: bool) -> Self {
        Self {
            kind: PodKind::Config,
            id: pod.name.clone(),
            netns: pod.netns.clone(),
            ifname: pod.pod_ifname(),
            host_ifname: pod.host_ifname(),
            network: None,
            owns_netns,
        }
    }

    /// The record of a runtime's container `id` with interface `ifname` in namespace `netns`
    /// (a path) on CNI network `network`. Its host veth is `pn` and 12 hex digits of a hash of id
    /// and interface: unique per attachment and within the 15 bytes of an interface name.
    pub fn container(network: &str, id: &str, netns: &str, ifname: &str) -> Self {
        // FNV-1a, 64 bits: stable across builds, unlike std's hasher.
        let hash = format!("{id}/{ifname}")
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        Self {
            kind: PodKind::Cni,
            id: id.to_owned(),
            netns: netns.to_owned(),
            ifname: ifname.to_owned(),
            host_ifname: format!("pn{:012x}", hash >> 16),
            network: Some(network.to_owned()),
            owns_netns: false,
        }
    }

    /// Refuses what a runtime (or anyone who can run the plugin) must not make podnet do: an
    /// interface name the kernel would reject or misread, a container id that is no id, a
    /// namespace that is not an absolute path, or that is the node's own namespace (podnet would
    /// configure the node as a pod).
    pub fn check_container(&self) -> Result<(), NodeError> {
        let invalid =
            |what: &str, problem: String| NodeError::InvalidContainer { what: what.to_owned(), problem };
        let bad_byte = |b: u8| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control();
        if self.ifname.is_empty()
            || self.ifname.len() > 15
            || [".", ".."].contains(&self.ifname.as_str())
            || self.ifname.bytes().any(bad_byte)
        {
            let problem =
                format!("{:?} is not an interface name (1-15 bytes, no '/', ':' or spaces)", self.ifname);
            return Err(invalid("CNI_IFNAME", problem));
        }
        if self.id.is_empty()
            || self.id.len() > 256
            || !self.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            let problem = format!("{:?} is not a container id (1-256 of a-z A-Z 0-9 _ . -)", self.id);
            return Err(invalid("CNI_CONTAINERID", problem));
        }
        if !self.netns.starts_with('/') || self.netns.split('/').any(|part| part == "..") {
            return Err(invalid(
                "CNI_NETNS",
                format!("{:?} is not an absolute path to a network namespace", self.netns),
            ));
        }
        if netns::is_current(&self.netns)? {
            return Err(invalid("CNI_NETNS", format!("{} is the node's own network namespace", self.netns)));
        }
        Ok(())
    }

    fn link(&self) -> PodLink<'_> {
        PodLink { netns: &self.netns, ifname: &self.ifname, host_ifname: &self.host_ifname }
    }
}

/// What pods of a running node attach to.
pub struct NodeNet {
    pub nl: Netlink,
    pub node: config::Node,
    pub bridge: Iface,
    pub veth: VethSettings,
    pub pins: PinDir,
    pub ipam: Ipam,
}

impl NodeNet {
    /// The node `config` describes, with `veth` settings for its pods; its bridge must exist.
    pub async fn new(config: &Config, nl: Netlink, veth: VethSettings) -> Result<Self, NodeError> {
        let node = &config.node;
        let pins = super::pins_of_running_node(config)?;
        let bridge = nl.link(&node.bridge).await?.ok_or_else(|| NodeError::NotUp {
            node: node.name.clone(),
            path: format!("bridge {}", node.bridge),
        })?;
        Ok(Self { nl, node: node.clone(), bridge, veth, pins, ipam: Ipam::of(config) })
    }
}

/// A pod attached to the node.
#[derive(Debug, Clone)]
pub struct Attached {
    pub ip: Ipv4Addr,
    pub host: Iface,
    pub pod_if: Iface,
}

/// Attaches `pod` with address `requested` (or one from IPAM). The host veth joins the bridge
/// only once its endpoint and `from_pod` are in place. If a step fails, what this call made (the
/// address, the veth) is undone.
pub async fn attach(
    net: &NodeNet,
    program: &mut PodProgram,
    pod: &PodRecord,
    requested: Option<Ipv4Addr>,
) -> Result<Attached, NodeError> {
    let held = net.ipam.held()?;
    if let Some((_, other)) = held.iter().find(|(_, r)| r.same_attachment(pod) && r.netns != pod.netns) {
        return Err(NodeError::InvalidContainer {
            what: "CNI_NETNS".to_owned(),
            problem: format!("{} is attached in {} already: DEL it first", pod.display_name(), other.netns),
        });
    }
    let had_address = held.iter().any(|(_, r)| r.same_attachment(pod));
    let new_veth = net.nl.link(&pod.host_ifname).await?.is_none();
    let Reservation { ip, moved_from } = net.ipam.reserve(pod, requested)?;
    if let Some(old) = moved_from {
        // The pod's address changed: what the datapath knew of the old one goes with it.
        Endpoints::open(&net.pins)?.remove(old)?;
        let forgotten = nat::forget_pod(&net.pins, old)?;
        info!(
            "{}: moved from {old} to {ip} ({forgotten} translation(s) of {old} removed)",
            pod.display_name()
        );
    }
    let attached = async {
        let plumbed = plumbing::ensure_pod(&net.nl, &net.node, pod.link(), ip, net.veth).await?;
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
pub async fn refresh(
    net: &NodeNet,
    program: &mut PodProgram,
    pod: &PodRecord,
    ip: Ipv4Addr,
) -> Result<(), NodeError> {
    let gone = |what: String| NodeError::InvalidContainer {
        what: pod.display_name(),
        problem: format!("{what} is gone"),
    };
    let host =
        net.nl.link(&pod.host_ifname).await?.ok_or_else(|| gone(format!("host veth {}", pod.host_ifname)))?;
    let pod_if = Netlink::in_netns(&pod.netns)?
        .link(&pod.ifname)
        .await?
        .ok_or_else(|| gone(format!("{} in {}", pod.ifname, pod.netns)))?;
    let endpoint = Endpoint::new(host.index, pod_if.mac, host.mac);
    Endpoints::open(&net.pins)?.insert(ip, &endpoint)?;
    program.attach(&host.name, host.index)?;
    Ok(())
}

/// Detaches `pod`: program, endpoint, veth, address, and its namespace if podnet made it.
/// Only what the node's record of the pod says podnet made is removed: a pod it holds no record
/// of (never attached, or detached already) changes nothing.
pub async fn detach(nl: &Netlink, pins: &PinDir, ipam: &Ipam, pod: &PodRecord) -> Result<(), NodeError> {
    let Some((ip, made)) = ipam.held()?.into_iter().find(|(_, r)| r.same_attachment(pod)) else {
        return Ok(());
    };
    pins.unpin_link(&made.host_ifname)?;
    if let Ok(mut endpoints) = Endpoints::open(pins) {
        endpoints.remove(ip)?;
    }
    // A pod that comes to hold this address later inherits none of its connections.
    nat::forget_pod(pins, ip)?;
    nl.del_link(&made.host_ifname).await?;
    if made.owns_netns {
        netns::delete(&made.netns)?;
    }
    ipam.release(&made)?;
    Ok(())
}

/// What is wrong with attached `pod`, if anything: the CNI CHECK.
pub async fn check(net: &NodeNet, pod: &PodRecord) -> Result<Vec<String>, NodeError> {
    let mut problems = Vec::new();
    let Some((ip, _)) = net.ipam.held()?.into_iter().find(|(_, r)| r.same_attachment(pod)) else {
        return Ok(vec![format!("{} holds no address", pod.display_name())]);
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
    fn container_host_names_are_unique_and_short() {
        let a = PodRecord::container("podnet", "8653d84b4e7512ce293ef1e1222be529", "/run/netns/x", "eth0");
        let b = PodRecord::container("podnet", "8653d84b4e7512ce293ef1e1222be529", "/run/netns/x", "eth1");
        let c = PodRecord::container("podnet", "8653d84b4e7512ce293ef1e1222be52a", "/run/netns/x", "eth0");
        assert_eq!(a.host_ifname.len(), 14);
        assert!(a.host_ifname.starts_with("pn"));
        assert_ne!(a.host_ifname, b.host_ifname);
        assert_ne!(a.host_ifname, c.host_ifname);
        assert_eq!(
            a,
            PodRecord::container("podnet", "8653d84b4e7512ce293ef1e1222be529", "/run/netns/x", "eth0")
        );
    }

    #[test]
    fn hostile_container_names_are_refused() {
        for (id, netns, ifname) in [
            ("c1", "/run/netns/x", ""),
            ("c1", "/run/netns/x", "a-very-long-ifname"),
            ("c1", "/run/netns/x", "a/b"),
            ("c1", "/run/netns/x", ".."),
            ("c1", "/run/netns/x", "eth 0"),
            ("", "/run/netns/x", "eth0"),
            ("../x", "/run/netns/x", "eth0"),
            ("c1", "netns-x", "eth0"),
            ("c1", "/run/netns/../../proc/1/ns/net", "eth0"),
            ("c1", "/proc/self/ns/net", "eth0"),
        ] {
            let err = PodRecord::container("podnet", id, netns, ifname).check_container();
            assert!(
                matches!(err, Err(NodeError::InvalidContainer { .. })),
                "{id:?} {netns:?} {ifname:?}: {err:?}"
            );
        }
    }
}

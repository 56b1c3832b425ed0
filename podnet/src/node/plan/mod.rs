//! What `up` must do: from the config (what the node should be) and what [`Observed`] found,
//! the [`Step`]s that make the node so, in order. Pure: no system call, so every case of
//! convergence (config edits, a pod CIDR that moves, pods added, removed or re-addressed, peers
//! from config, cluster and CLI, a new bridge or uplink) is a unit test ([`tests`]).
//! [`super::apply`] carries the steps out and undoes what a failed run made.

mod deny;
#[cfg(test)]
mod tests;

use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::Ipv4Net;
use podnet_common::{
    DeniedPorts, NatConfig,
    programs::{UPLINK_DELIVER, UPLINK_FILTER},
};

use super::{NodeError, ipam::Held, record::NodeRecord};
use crate::{
    datapath::{EbpfLog, TableSizes, parse_link_name},
    host::{netlink::Iface, plumbing::VethSettings},
    model::{Config, PeerNode, Pod, XdpMode, is_pod_veth_name, overlaps, refused_sources},
};

/// What `up` found on the node before changing anything.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The node's pin directory exists: an earlier `up` ran (else this is a first `up`).
    pub up_before: bool,
    /// A record of an earlier `up` lies in the state directory while the pins are gone (the
    /// node rebooted): nothing in it is proven now, so it goes.
    pub stale_record: bool,
    /// What earlier `up`s made (empty on a first `up`).
    pub record: NodeRecord,
    /// The configured uplink, if the device exists.
    pub uplink: Option<FoundUplink>,
    /// The configured bridge, if a device of that name exists.
    pub bridge: Option<FoundBridge>,
    /// IPv4 forwarding is on.
    pub ip_forward: bool,
    /// The config's NAT port range is reserved from the node's sockets already.
    pub ports_reserved: bool,
    /// The addresses pods hold (IPAM).
    pub held: Vec<Held>,
    /// The pinned links: interface names (tcx), `<ifname>@xdp-<mode>` (XDP).
    pub links: Vec<String>,
    /// The network namespaces of the config's pods that exist.
    pub pod_namespaces: Vec<String>,
    /// The addresses of `[cluster] etcd`'s client URLs.
    pub etcd: Vec<SocketAddrV4>,
    /// Every IPv4 address of the node, on any link.
    pub node_addresses: Vec<Ipv4Addr>,
}

/// The uplink device as found.
#[derive(Debug, Clone)]
pub struct FoundUplink {
    pub iface: Iface,
    /// Its IPv4 addresses, and the networks they are on.
    pub addresses: Vec<Ipv4Addr>,
    pub networks: Vec<Ipv4Net>,
}

/// The device named as the node bridge, as found.
#[derive(Debug, Clone, Copy)]
pub struct FoundBridge {
    pub is_bridge: bool,
    /// It holds the gateway address already.
    pub has_gateway: bool,
}

/// One change `up` makes. Each is an "ensure": carried out on a node where it is done already,
/// it changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Forget the record of an `up` before a reboot.
    DiscardStaleRecord,
    /// The bridge up with the gateway address; `create`: it does not exist yet; `add_gateway`:
    /// the gateway address is not on it yet.
    EnsureBridge {
        bridge: String,
        gateway: Ipv4Addr,
        create: bool,
        add_gateway: bool,
    },
    EnableIpForward,
    /// Give back ports an earlier `up` reserved that the config no longer names.
    ReleasePorts {
        min: u16,
        max: u16,
    },
    ReservePorts {
        min: u16,
        max: u16,
    },
    /// Load the programs (migrating older pinned maps) and pin `from_pod`; `first_up`: nothing
    /// is pinned yet.
    LoadDatapath {
        tables: TableSizes,
        log: EbpfLog,
        first_up: bool,
    },
    SetNat(NatConfig),
    /// What pods may never reach (see [`deny`]).
    SetPodDeny(Vec<(Ipv4Net, DeniedPorts)>),
    /// Who may reach pods from the uplink: admitted and refused source CIDRs.
    SetUplinkAllow {
        admit: Vec<Ipv4Net>,
        refuse: Vec<Ipv4Net>,
    },
    AttachUplink {
        iface: Iface,
    },
    AttachUplinkXdp {
        program: &'static str,
        iface: Iface,
        mode: XdpMode,
    },
    DetachUplinkXdp {
        ifname: String,
    },
    /// A `[[peer]]` gone from the config: out of the peer map (if it is there as it was
    /// configured) and its route off the uplink (if there is one).
    ForgetConfigPeer {
        peer: PeerNode,
        uplink: Option<Iface>,
    },
    /// A `[[peer]]` in the peer map and routed via the uplink; `undo_route`: a first `up` made
    /// it (a failed run removes it again).
    AddConfigPeer {
        peer: PeerNode,
        uplink: Iface,
        undo_route: bool,
    },
    /// A `[[pod]]` gone from the config, detached.
    DetachPod(Held),
    /// Every endpoint but these (the addresses pods hold or the config gives them): what a pod
    /// gone in a crash left. Read from the map when the step runs, after any migration.
    RemoveStrayEndpoints {
        keep: Vec<Ipv4Addr>,
    },
    /// A pod's namespace, made if missing (a pod podnet made it for owns it).
    CreateNetns(String),
    /// A pod veth no pod owns: its link unpinned and the veth deleted.
    RemovePodVeth(String),
    /// A pinned link of a device that is not podnet's (an old uplink): unpinned, the device
    /// left alone.
    DetachLink(String),
    /// A `[[pod]]` attached in its namespace (made by [`Step::CreateNetns`] if it was missing);
    /// `new`: it holds no address yet.
    AttachPod {
        pod: Pod,
        new: bool,
    },
    /// A container the CNI plugin attached, brought up to date (its endpoint, the new
    /// `from_pod` in its link).
    RefreshContainer(Held),
    /// Local pods are looked up only inside the pod CIDR.
    NarrowToPodCidr(Ipv4Net),
    /// The gateway address an earlier `up` put on a bridge, removed.
    RetireGateway {
        bridge: String,
        gateway: Ipv4Addr,
    },
    /// A bridge an earlier `up` made, deleted.
    RetireBridge(String),
    /// Carry what the old programs wrote into migrated maps, and unpin the old maps.
    FinishMigration,
    /// Remove translations the NAT settings no longer allow, and those of pods that are gone.
    ForgetStaleTranslations(NatConfig),
}

/// The steps `up` takes, and what it warns about without changing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub warnings: Vec<String>,
}

/// The steps that make the node `config` describes out of what `found` says is there, its
/// programs logging up to `log`; an error when the config cannot hold on this node.
pub fn plan(config: &Config, found: &Observed, log: EbpfLog) -> Result<Plan, NodeError> {
    let node = &config.node;
    let mut plan = Plan::default();
    let steps = &mut plan.steps;
    if found.stale_record {
        steps.push(Step::DiscardStaleRecord);
    }
    let uplink = checked_uplink(config, found)?;
    let record = &found.record;

    match found.bridge {
        Some(b) if !b.is_bridge => {
            return Err(not_as_configured(
                config,
                "node.bridge",
                format!(
                    "{} exists and is not a bridge; name a bridge, or a device that does not exist",
                    node.bridge
                ),
            ));
        }
        found_bridge => steps.push(Step::EnsureBridge {
            bridge: node.bridge.clone(),
            gateway: node.gateway,
            create: found_bridge.is_none(),
            add_gateway: !found_bridge.is_some_and(|b| b.has_gateway),
        }),
    }
    if !found.ip_forward {
        steps.push(Step::EnableIpForward);
    }
    let wanted = config.nat.enabled.then_some((config.nat.port_min, config.nat.port_max));
    let released = record.reserved_ports.filter(|&r| Some(r) != wanted);
    if let Some((min, max)) = released {
        steps.push(Step::ReleasePorts { min, max });
    }
    if let Some((min, max)) = wanted
        && (!found.ports_reserved || released.is_some())
    {
        steps.push(Step::ReservePorts { min, max });
    }

    let tables = TableSizes { tcp: config.nat.tcp_table, udp_icmp: config.nat.udp_icmp_table };
    steps.push(Step::LoadDatapath { tables, log, first_up: !found.up_before });
    let nat = nat_settings(config, uplink);
    steps.push(Step::SetNat(nat));
    steps.push(Step::SetPodDeny(deny::pod_deny(config, found)));
    if let Some(settings) = &config.uplink {
        let refuse = refused_sources(node.pod_cidr, settings.ip);
        steps.push(Step::SetUplinkAllow { admit: settings.allow_from.clone(), refuse });
    }
    if let (Some(settings), Some(iface)) = (&config.uplink, uplink) {
        steps.push(Step::AttachUplink { iface: iface.clone() });
        steps.push(match settings.xdp {
            XdpMode::Off => Step::DetachUplinkXdp { ifname: iface.name.clone() },
            mode => Step::AttachUplinkXdp {
                program: if settings.xdp_deliver { UPLINK_DELIVER } else { UPLINK_FILTER },
                iface: iface.clone(),
                mode,
            },
        });
    }

    for gone in record.config_peers().into_iter().filter(|p| !config.peers.contains(p)) {
        steps.push(Step::ForgetConfigPeer { peer: gone, uplink: uplink.cloned() });
    }
    if let Some(uplink) = uplink {
        for peer in &config.peers {
            steps.push(Step::AddConfigPeer {
                peer: peer.clone(),
                uplink: uplink.clone(),
                undo_route: !found.up_before,
            });
        }
    }

    // Pods the config no longer has, and what no pod owns any more.
    let in_config = |held: &Held| config.pods.iter().any(|p| p.same_attachment(&held.pod));
    let (gone, held): (Vec<&Held>, Vec<&Held>) =
        found.held.iter().partition(|h| !h.pod.is_container() && !in_config(h));
    steps.extend(gone.iter().map(|h| Step::DetachPod((*h).clone())));
    // What a detached pod leaves goes with it; the rest that no pod holds goes on its own.
    let mut keep: Vec<Ipv4Addr> =
        held.iter().chain(&gone).map(|h| h.ip).chain(config.pods.iter().filter_map(|p| p.ip)).collect();
    keep.sort_unstable();
    keep.dedup();
    if found.up_before {
        steps.push(Step::RemoveStrayEndpoints { keep });
    }
    let owned = |name: &str| {
        held.iter().chain(&gone).any(|h| h.pod.host_ifname == name)
            || config.pods.iter().any(|p| p.host_ifname == name)
    };
    let uplink_name = config.uplink.as_ref().map(|u| u.interface.as_str());
    for link in &found.links {
        let (name, hook) = parse_link_name(link);
        if is_pod_veth_name(name) {
            if hook.is_tcx() && !owned(name) {
                steps.push(Step::RemovePodVeth(name.to_owned()));
            }
        } else if Some(name) != uplink_name {
            steps.push(Step::DetachLink(link.clone()));
        }
    }

    for pod in &config.pods {
        if !found.pod_namespaces.contains(&pod.netns) {
            steps.push(Step::CreateNetns(pod.netns.clone()));
        }
        steps.push(Step::AttachPod {
            pod: pod.clone(),
            new: !held.iter().any(|h| h.pod.same_attachment(pod)),
        });
    }
    let containers: Vec<&Held> = held.iter().copied().filter(|h| h.pod.is_container()).collect();
    steps.extend(containers.iter().map(|h| Step::RefreshContainer((*h).clone())));
    let outside: Vec<String> =
        containers.iter().filter(|h| !node.pod_cidr.contains(&h.ip)).map(|h| h.ip.to_string()).collect();
    if outside.is_empty() {
        steps.push(Step::NarrowToPodCidr(node.pod_cidr));
    } else {
        plan.warnings.push(format!(
            "pod(s) {} are outside node.pod_cidr {}: pods' packets look for a local pod at every \
             destination (a little slower) until they are recreated in it",
            outside.join(", "),
            node.pod_cidr
        ));
    }

    let steps = &mut plan.steps;
    if let Some((bridge, gateway)) = &record.gateway
        && (*bridge != node.bridge || *gateway != node.gateway)
    {
        steps.push(Step::RetireGateway { bridge: bridge.clone(), gateway: *gateway });
    }
    if let Some(bridge) = record.bridge.as_ref().filter(|b| **b != node.bridge) {
        steps.push(Step::RetireBridge(bridge.clone()));
    }
    steps.push(Step::FinishMigration);
    steps.push(Step::ForgetStaleTranslations(nat));
    Ok(plan)
}

/// The configured uplink as found, checked: it exists, holds the node IP, can take native
/// delivery, and no peer's pod CIDR overlaps its networks. `None` without one.
fn checked_uplink<'a>(config: &Config, found: &'a Observed) -> Result<Option<&'a Iface>, NodeError> {
    let Some(settings) = &config.uplink else {
        return Ok(None);
    };
    let Some(uplink) = &found.uplink else {
        return Err(not_as_configured(
            config,
            "uplink.interface",
            format!(
                "{} does not exist in the node's network namespace; create and address it first",
                settings.interface
            ),
        ));
    };
    if !uplink.addresses.contains(&settings.ip) {
        return Err(not_as_configured(
            config,
            "uplink.ip",
            format!(
                "{} is not an address of {}; podnet does not address the uplink, configure it first \
                 (ip addr add {}/PREFIX dev {})",
                settings.ip, settings.interface, settings.ip, settings.interface
            ),
        ));
    }
    if settings.native_delivery() && uplink.iface.is_veth {
        return Err(not_as_configured(
            config,
            "uplink.xdp_deliver",
            format!(
                "{} is a veth: native XDP cannot deliver to pods from it, because a frame \
                 redirected at native XDP loses the checksum-offload state the veth carries and pods \
                 drop its TCP and UDP as bad checksums. Set uplink.xdp = \"generic\", or \
                 xdp_deliver = false",
                uplink.iface.name
            ),
        ));
    }
    // A peer route over one of the uplink's networks would take that network (other nodes, the
    // node's own neighbours) away from the uplink.
    for (i, peer) in config.peers.iter().enumerate() {
        if let Some(network) = uplink.networks.iter().find(|n| overlaps(**n, peer.pod_cidr)) {
            return Err(not_as_configured(
                config,
                &format!("peer[{i}].pod_cidr"),
                format!(
                    "{} overlaps {network}, a network of the uplink {}",
                    peer.pod_cidr, uplink.iface.name
                ),
            ));
        }
    }
    Ok(Some(&uplink.iface))
}

fn not_as_configured(config: &Config, field: &str, problem: String) -> NodeError {
    NodeError::NotAsConfigured { source_name: config.source.clone(), field: field.to_owned(), problem }
}

/// The pods' veth settings: the uplink's MTU unless `[node] mtu` says otherwise (1500 without
/// an uplink), GRO when native XDP delivers to pods.
pub fn veth_settings(config: &Config, uplink: Option<&Iface>) -> VethSettings {
    VethSettings {
        mtu: config.node.mtu.or(uplink.map(|u| u.mtu)).unwrap_or(1500),
        xdp_frames: config.uplink.as_ref().is_some_and(|u| u.native_delivery()),
    }
}

/// The datapath's NAT settings for `config`: out of the uplink, as the uplink IP, when NAT is
/// on. Local pods may be at any address until [`Step::NarrowToPodCidr`] says otherwise.
pub fn nat_settings(config: &Config, uplink: Option<&Iface>) -> NatConfig {
    let on = config.uplink.as_ref().zip(uplink).filter(|_| config.nat.enabled);
    NatConfig {
        node_ip: on.map(|(u, _)| u.ip.octets()).unwrap_or_default(),
        enabled: u32::from(on.is_some()),
        uplink_ifindex: on.map_or(0, |(_, iface)| iface.index),
        port_min: config.nat.port_min,
        port_max: config.nat.port_max,
        timeouts_s: config.nat.timeouts.seconds(),
        pod_net: [0; 4],
        pod_mask: [0; 4],
    }
}

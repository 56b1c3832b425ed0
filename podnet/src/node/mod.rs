//! What a node does: `up` (build or complete it from the config, rolling back what a failed
//! run made), `down`, `status`, peers at runtime; its pods ([`pod`]), their addresses
//! ([`ipam`]), the per-node lock ([`lock`]) and the operations the CLI, the CNI plugin and the
//! agent share ([`op`]).

pub mod ipam;
pub mod lock;
pub mod op;
pub mod pod;
pub mod record;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use podnet_common::{
    NatConfig, Reason,
    programs::{FROM_UPLINK, UPLINK_DELIVER, UPLINK_FILTER},
};
use serde::Serialize;
use tracing::{info, warn};

use self::{
    ipam::{Ipam, IpamError, PodKind, PodRecord},
    lock::LockError,
    pod::NodeNet,
    record::{NodeRecord, RecordError, RecordFile},
};
use crate::{
    config::{self, Config, HOST_IF_PREFIX, PeerNode, Pod, XdpMode},
    datapath::{
        self, Datapath, DatapathError, EbpfLog, PinDir, PodProgram, TableSizes,
        maps::{Counters, Endpoints, MapsError, NatSettings, Peers, TableUse, UplinkAllow},
        migrate,
    },
    discovery::{DiscoveryError, LeaseRecord, PeerSource as _, etcd::Etcd},
    host::{
        netlink::{Iface, Netlink, NetlinkError, fmt_mac},
        netns,
        plumbing::{self, PlumbingError, VethSettings},
        sysctl::{self, SysctlError},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error(transparent)]
    Plumbing(#[from] PlumbingError),
    #[error("podnet is not up on node {node:?}: {path} does not exist (run `podnet up`)")]
    NotUp { node: String, path: String },
    #[error("pod {pod}")]
    Pod {
        pod: String,
        #[source]
        source: Box<NodeError>,
    },
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("{what}: {problem}")]
    InvalidContainer { what: String, problem: String },
    #[error("the node's agent: {message}")]
    Agent { message: String },
    #[error(transparent)]
    AgentSocket(#[from] crate::agent::api::ApiError),
    #[error("{cidr} is not on the deny list (see `podnet deny list`)")]
    NotDenied { cidr: Ipv4Net },
    #[error("{}", problems.join("; "))]
    Check { problems: Vec<String> },
    #[error(
        "the agent is running on this node ({socket} answers): stop it first, or it would keep \
         serving a node that is gone"
    )]
    AgentRunning { socket: String },
    /// What the config says does not hold on this node (checked when `up` runs): the file,
    /// the field and what is wrong, as config errors read.
    #[error("{source_name}: {field}: {problem}")]
    NotAsConfigured { source_name: config::Source, field: String, problem: String },
    #[error("this node has no [uplink] in its config; peers need one")]
    NoUplinkConfigured,
    #[error("peer {field}: {problem}")]
    InvalidPeer { field: &'static str, problem: String },
    #[error("no peer node called {name:?} (see `podnet status`)")]
    UnknownPeer { name: String },
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
}

/// Something `up` created, undone in reverse order if a later step fails.
#[derive(Debug)]
enum Made {
    Netns(String),
    /// The node bridge, and the bridge the record named before.
    Bridge(String, Option<String>),
    /// The gateway address added to a bridge, and the one the record named before.
    GatewayAddress(Iface, Ipv4Addr, Option<(String, Ipv4Addr)>),
    /// IPv4 forwarding turned on.
    IpForward,
    /// NAT ports reserved from the node's sockets.
    ReservedPorts(u16, u16),
    PinDir(PinDir),
    Route {
        cidr: Ipv4Net,
        via: Ipv4Addr,
        link: Iface,
    },
    /// A pod this run attached: undone by detaching it, as any pod is.
    Pod {
        pins: PinDir,
        ipam: Ipam,
        record: PodRecord,
    },
}

async fn undo(nl: &Netlink, records: &RecordFile, made: Vec<Made>) {
    for m in made.into_iter().rev() {
        let result = match &m {
            Made::Netns(name) => netns::delete(name).map_err(NodeError::from),
            Made::Bridge(name, before) => {
                undo_recorded(nl.del_link(name).await, records, |r| r.bridge.clone_from(before))
            }
            Made::GatewayAddress(bridge, gateway, before) => {
                let removed = nl.del_addresses_except(bridge, |a| a != *gateway).await.map(drop);
                undo_recorded(removed, records, |r| r.gateway.clone_from(before))
            }
            Made::IpForward => undo_recorded(sysctl::restore_ip_forward(), records, |r| r.ip_forward = false),
            Made::ReservedPorts(min, max) => {
                undo_recorded(sysctl::release_ports(*min, *max), records, |r| r.reserved_ports = None)
            }
            Made::PinDir(pins) => pins.remove().map_err(NodeError::from),
            Made::Route { cidr, via, link } => {
                nl.del_peer_route(*cidr, *via, link).await.map_err(NodeError::from)
            }
            Made::Pod { pins, ipam, record } => pod::detach(nl, pins, ipam, record).await,
        };
        if let Err(e) = result {
            warn!("rollback: could not undo {m:?}: {e}");
        }
    }
}

/// Undoes one recorded change: if `undone`, the record forgets it too.
fn undo_recorded<E: Into<NodeError>>(
    undone: Result<(), E>,
    records: &RecordFile,
    forget: impl FnOnce(&mut NodeRecord),
) -> Result<(), NodeError> {
    undone.map_err(Into::into)?;
    Ok(records.update(forget)?)
}

/// Builds (or completes) the node described by `config` and attaches the datapath, its programs
/// writing log lines up to `log`. Running it again with the same config changes nothing; running
/// it with a changed config makes the node what the new config says.
pub async fn up(config: &Config, log: EbpfLog) -> Result<(), NodeError> {
    let nl = Netlink::current()?;
    let records = RecordFile::of(config);
    let mut made = Vec::new();
    match up_steps(config, &nl, &records, log, &mut made).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let first_up = made.iter().any(|m| matches!(m, Made::PinDir(_)));
            if !made.is_empty() {
                warn!("`up` failed; undoing the {} change(s) it made", made.len());
                undo(&nl, &records, made).await;
            }
            if first_up && records.load().is_ok_and(|r| r == NodeRecord::default()) {
                let _ = records.remove();
            }
            Err(e)
        }
    }
}

async fn up_steps(
    config: &Config,
    nl: &Netlink,
    records: &RecordFile,
    log: EbpfLog,
    made: &mut Vec<Made>,
) -> Result<(), NodeError> {
    let node = &config.node;
    let pins = pin_dir(config);
    let first_up = !pins.path().exists();
    if first_up {
        // A record without pins predates a reboot (or lost pins): nothing in it is proven now.
        records.remove()?;
    }
    let before = records.load()?;
    let uplink = uplink_iface(config, nl).await?;
    check_native_delivery(config, uplink.as_ref())?;
    if let Some(uplink) = &uplink {
        check_peers_off_the_uplink(config, nl, uplink).await?;
    }
    let veth = veth_settings(config, uplink.as_ref());
    let bridge = ensure_bridge(config, nl, records, made).await?;
    if sysctl::enable_ip_forward()? {
        records.update(|r| r.ip_forward = true)?;
        made.push(Made::IpForward);
    }
    reserve_nat_ports(config, records, made)?;

    if first_up {
        made.push(Made::PinDir(pins.clone()));
    }
    let tables = TableSizes { tcp: config.nat.tcp_table, udp_icmp: config.nat.udp_icmp_table };
    let mut datapath = Datapath::load(&pins, tables, log)?;
    datapath.pin_pod_program()?;
    NatSettings::open(&pins)?.set(&nat_settings(config, uplink.as_ref()))?;
    if let Some(settings) = &config.uplink {
        let refused = config::refused_sources(node.pod_cidr, settings.ip);
        UplinkAllow::open(&pins)?.set(&settings.allow_from, &refused)?;
    }
    if let Some(uplink) = &uplink {
        datapath.attach(FROM_UPLINK, &uplink.name, uplink.index)?;
        attach_uplink_xdp(config, &mut datapath, &pins, uplink)?;
    }
    set_config_peers(config, nl, &pins, records, uplink.as_ref(), first_up, made).await?;
    let net = NodeNet {
        nl: nl.clone(),
        node: node.clone(),
        bridge,
        veth,
        pins: pins.clone(),
        ipam: Ipam::of(config),
    };
    forget_removed_pods(config, &net).await?;
    let mut program = PodProgram::open(&pins)?;
    for pod in &config.pods {
        attach_config_pod(&net, &mut program, pod, made)
            .await
            .map_err(|e| NodeError::Pod { pod: pod.name.clone(), source: Box::new(e) })?;
    }
    reattach_containers(&net, &mut program).await?;
    narrow_to_pod_cidr(config, &pins)?;
    retire_old_bridge(config, nl, records, &before).await?;
    migrate::finish(&pins)?;
    forget_stale_translations(config, &pins, uplink.as_ref())?;
    info!(
        "node {} is up: {} pod(s), {} peer(s), NAT {}, pins in {}",
        node.name,
        config.pods.len(),
        Peers::open(&pins)?.list().len(),
        if config.nat.enabled { "on" } else { "off" },
        pins.path().display()
    );
    Ok(())
}

/// Reserves the NAT port range from the node's sockets, giving back a range an earlier `up`
/// reserved that the config no longer names.
fn reserve_nat_ports(config: &Config, records: &RecordFile, made: &mut Vec<Made>) -> Result<(), NodeError> {
    let wanted = config.nat.enabled.then_some((config.nat.port_min, config.nat.port_max));
    let reserved = records.load()?.reserved_ports;
    if let Some((min, max)) = reserved.filter(|&r| Some(r) != wanted) {
        sysctl::release_ports(min, max)?;
        records.update(|r| r.reserved_ports = None)?;
    }
    let Some((min, max)) = wanted else {
        return Ok(());
    };
    let (taken, ephemeral) = sysctl::ephemeral_ports_taken(min, max)?;
    if taken > 0 {
        warn!(
            "nat.ports {min}-{max} takes {taken} of the node's {ephemeral} ephemeral ports \
             (net.ipv4.ip_local_port_range): the node's own connections get only the rest"
        );
    }
    if sysctl::reserve_ports(min, max)? {
        records.update(|r| r.reserved_ports = Some((min, max)))?;
        made.push(Made::ReservedPorts(min, max));
    }
    Ok(())
}

/// Removes the translations `up` leaves without a use: made under other NAT settings (another
/// node address, a port outside the range, NAT off; their replies would never match again), or
/// of a pod address no pod holds now (a new pod there inherits none of them).
fn forget_stale_translations(
    config: &Config,
    pins: &PinDir,
    uplink: Option<&Iface>,
) -> Result<(), NodeError> {
    let settings = nat_settings(config, uplink);
    let endpoints = Endpoints::open(pins)?;
    let removed = datapath::nat::forget_unlike(pins, &settings, |pod| endpoints.get(pod).is_some())?;
    if removed > 0 {
        info!("{removed} translation(s) removed: made under other NAT settings, or for a pod that is gone");
    }
    Ok(())
}

/// Makes the peer map and routes hold the config's `[[peer]]`s: adds them, and removes the
/// ones an earlier `up` added that the config no longer has (peers added at runtime stay).
async fn set_config_peers(
    config: &Config,
    nl: &Netlink,
    pins: &PinDir,
    records: &RecordFile,
    uplink: Option<&Iface>,
    first_up: bool,
    made: &mut Vec<Made>,
) -> Result<(), NodeError> {
    let mut peers = Peers::open(pins)?;
    let known = peers.list();
    for gone in records.load()?.config_peers.iter().filter(|p| !config.peers.contains(p)) {
        if known.contains(gone) {
            info!("removing peer {} ({} via {}): no longer in the config", gone.name, gone.pod_cidr, gone.ip);
            peers.remove(gone)?;
        }
        if let Some(uplink) = uplink {
            nl.del_peer_route(gone.pod_cidr, gone.ip, uplink).await?;
        }
    }
    records.update(|r| r.config_peers.retain(|p| config.peers.contains(p)))?;
    let Some(uplink) = uplink else {
        return Ok(());
    };
    for peer in &config.peers {
        peers.insert(peer)?;
        nl.add_peer_route(peer.pod_cidr, peer.ip, uplink).await?;
        if first_up {
            made.push(Made::Route { cidr: peer.pod_cidr, via: peer.ip, link: uplink.clone() });
        }
    }
    records.update(|r| r.config_peers = config.peers.clone())?;
    Ok(())
}

/// Swaps the new `from_pod` into the links of the containers the CNI plugin attached and
/// rewrites their endpoints. A container whose namespace is gone is left to the runtime's `DEL`
/// or `GC`, with a warning.
async fn reattach_containers(net: &NodeNet, program: &mut PodProgram) -> Result<(), NodeError> {
    for (ip, record) in net.ipam.held()? {
        if record.kind != PodKind::Cni {
            continue;
        }
        if let Err(e) = pod::refresh(net, program, &record, ip).await {
            warn!(
                "container {} ({ip}) could not be re-attached: {}",
                record.display_name(),
                crate::error_chain(&e)
            );
        }
    }
    Ok(())
}

/// The pods' veth settings: the uplink's MTU unless `[node] mtu` says otherwise (1500 without
/// an uplink), GRO when native XDP delivers to pods.
fn veth_settings(config: &Config, uplink: Option<&Iface>) -> VethSettings {
    VethSettings {
        mtu: config.node.mtu.or(uplink.map(|u| u.mtu)).unwrap_or(1500),
        xdp_frames: config.uplink.as_ref().is_some_and(|u| u.native_delivery()),
    }
}

/// The pods of a running node `config` describes, attached from outside `up` (the CNI plugin).
pub async fn node_net(config: &Config, nl: Netlink) -> Result<NodeNet, NodeError> {
    let uplink = uplink_iface(config, &nl).await?;
    let veth = veth_settings(config, uplink.as_ref());
    NodeNet::new(config, nl, veth).await
}

/// `[[pod]]` `pod`, recording in `made` what this run added (a failed attach undoes itself; its
/// namespace, made here, is recorded).
async fn attach_config_pod(
    net: &NodeNet,
    program: &mut PodProgram,
    pod: &Pod,
    made: &mut Vec<Made>,
) -> Result<(), NodeError> {
    let had_netns = netns::exists(&pod.netns);
    let record = PodRecord::config_pod(pod, !had_netns);
    let new = !net.ipam.held()?.iter().any(|(_, r)| r.same_attachment(&record));
    netns::create(&pod.netns)?;
    match pod::attach(net, program, &record, pod.ip).await {
        Ok(attached) => {
            if new {
                info!(
                    "pod {}: {} in namespace {} via {}",
                    pod.name, attached.ip, pod.netns, record.host_ifname
                );
                made.push(Made::Pod { pins: net.pins.clone(), ipam: net.ipam.clone(), record });
            }
            Ok(())
        }
        Err(e) => {
            if !had_netns {
                made.push(Made::Netns(pod.netns.clone()));
            }
            Err(e)
        }
    }
}

/// Makes sure the node bridge is there with the gateway address, recording what this run
/// created: the bridge, the address.
async fn ensure_bridge(
    config: &Config,
    nl: &Netlink,
    records: &RecordFile,
    made: &mut Vec<Made>,
) -> Result<Iface, NodeError> {
    let node = &config.node;
    let existing = nl.link(&node.bridge).await?;
    let had_gateway = match &existing {
        Some(found) if !found.is_bridge => {
            return Err(not_as_configured(
                config,
                "node.bridge",
                format!(
                    "{} exists and is not a bridge; name a bridge, or a device that does not exist",
                    node.bridge
                ),
            ));
        }
        Some(found) => nl.ipv4_addresses(found).await?.contains(&node.gateway),
        None => false,
    };
    let bridge = match plumbing::ensure_bridge(nl, node).await {
        Ok(bridge) => bridge,
        Err(e) => {
            if existing.is_none() {
                // Made by this call and not recorded yet.
                nl.del_link(&node.bridge).await?;
            }
            return Err(e.into());
        }
    };
    let before = records.load()?;
    if existing.is_none() {
        records.update(|r| r.bridge = Some(node.bridge.clone()))?;
        made.push(Made::Bridge(node.bridge.clone(), before.bridge.clone()));
        info!("created bridge {} with gateway {}/{}", node.bridge, node.gateway, node.pod_cidr.prefix_len());
    }
    if !had_gateway {
        records.update(|r| r.gateway = Some((node.bridge.clone(), node.gateway)))?;
        made.push(Made::GatewayAddress(bridge.clone(), node.gateway, before.gateway));
        if existing.is_some() {
            info!("bridge {} existed: added the gateway {} to it", node.bridge, node.gateway);
        }
    }
    Ok(bridge)
}

/// Once the pods hang on the configured bridge: removes the bridge podnet made and the gateway
/// address it added under an earlier config (`before`), if the config names others now.
async fn retire_old_bridge(
    config: &Config,
    nl: &Netlink,
    records: &RecordFile,
    before: &NodeRecord,
) -> Result<(), NodeError> {
    let node = &config.node;
    if let Some((bridge, gateway)) = &before.gateway
        && (bridge != &node.bridge || *gateway != node.gateway)
    {
        if let Some(link) = nl.link(bridge).await? {
            info!("removing the old gateway {gateway} from {bridge}");
            nl.del_addresses_except(&link, |a| a != *gateway).await?;
        }
        records.update(|r| {
            if r.gateway == before.gateway {
                r.gateway = None;
            }
        })?;
    }
    if let Some(bridge) = before.bridge.as_ref().filter(|b| **b != node.bridge) {
        info!("removing bridge {bridge}: the config names {} now", node.bridge);
        nl.del_link(bridge).await?;
        records.update(|r| r.bridge = r.bridge.take().filter(|b| *b == node.bridge))?;
    }
    Ok(())
}

/// Refuses native XDP delivery from a veth uplink (before anything is loaded or changed).
fn check_native_delivery(config: &Config, uplink: Option<&Iface>) -> Result<(), NodeError> {
    let (Some(settings), Some(uplink)) = (&config.uplink, uplink) else {
        return Ok(());
    };
    if settings.native_delivery() && uplink.is_veth {
        return Err(not_as_configured(
            config,
            "uplink.xdp_deliver",
            format!(
                "{} is a veth: native XDP cannot deliver to pods from it, because a frame \
                 redirected at native XDP loses the checksum-offload state the veth carries and pods \
                 drop its TCP and UDP as bad checksums. Set uplink.xdp = \"generic\", or \
                 xdp_deliver = false",
                uplink.name
            ),
        ));
    }
    Ok(())
}

/// The uplink's XDP program as `[uplink]` asks: none, the prefilter, or the prefilter with
/// delivery to local pods.
fn attach_uplink_xdp(
    config: &Config,
    datapath: &mut Datapath,
    pins: &PinDir,
    uplink: &Iface,
) -> Result<(), NodeError> {
    let Some(settings) = config.uplink.as_ref().filter(|u| u.xdp != XdpMode::Off) else {
        return Ok(pins.unpin_xdp(&uplink.name)?);
    };
    let program = if settings.xdp_deliver { UPLINK_DELIVER } else { UPLINK_FILTER };
    Ok(datapath.attach_xdp(program, &uplink.name, uplink.index, settings.xdp)?)
}

/// The datapath's NAT settings for `config`: out of the uplink, as the uplink IP, when NAT is on.
fn nat_settings(config: &Config, uplink: Option<&Iface>) -> NatConfig {
    let on = config.uplink.as_ref().zip(uplink).filter(|_| config.nat.enabled);
    NatConfig {
        node_ip: on.map(|(u, _)| u.ip.octets()).unwrap_or_default(),
        enabled: u32::from(on.is_some()),
        uplink_ifindex: on.map_or(0, |(_, iface)| iface.index),
        port_min: config.nat.port_min,
        port_max: config.nat.port_max,
        timeouts_s: config.nat.timeouts.seconds(),
        // Every address may be a local pod's until `narrow_to_pod_cidr` says otherwise.
        pod_net: [0; 4],
        pod_mask: [0; 4],
    }
}

/// Lets the programs look for local pods only inside `node.pod_cidr` (see `NatConfig::pod_net`),
/// once every pod the datapath knows is there: after a pod CIDR change, containers keep their
/// addresses in the old one until the runtime recreates them, and while any does, every address
/// is looked up (the settings keep the mask 0 that `nat_settings` gave them).
fn narrow_to_pod_cidr(config: &Config, pins: &PinDir) -> Result<(), NodeError> {
    let cidr = config.node.pod_cidr;
    let outside: Vec<String> = Endpoints::open(pins)?
        .list()
        .into_iter()
        .filter(|(ip, _)| !cidr.contains(ip))
        .map(|(ip, _)| ip.to_string())
        .collect();
    if !outside.is_empty() {
        warn!(
            "pod(s) {} are outside node.pod_cidr {cidr}: pods' packets look for a local pod at every \
             destination (a little slower) until they are recreated in it",
            outside.join(", ")
        );
        return Ok(());
    }
    // The rest of the settings as `up` wrote them before it attached the pods.
    let mut nat = NatSettings::open(pins)?;
    let mut settings = nat.get()?;
    settings.pod_net = cidr.network().octets();
    settings.pod_mask = cidr.netmask().octets();
    Ok(nat.set(&settings)?)
}

/// Detaches `[[pod]]`s that are no longer in the config, and removes what no pod owns any more:
/// endpoints and pinned links of pods gone in a crash or left by an older podnet.
async fn forget_removed_pods(config: &Config, net: &NodeNet) -> Result<(), NodeError> {
    let held = net.ipam.held()?;
    for (ip, record) in &held {
        if record.kind == PodKind::Config && !config.pods.iter().any(|p| p.name == record.id) {
            info!("removing pod {} ({ip}): no longer in the config", record.id);
            pod::detach(&net.nl, &net.pins, &net.ipam, record).await?;
        }
    }
    let held = net.ipam.held()?;
    let mut endpoints = Endpoints::open(&net.pins)?;
    for (ip, _) in endpoints.list() {
        if !held.iter().any(|(h, _)| *h == ip) && !config.pods.iter().any(|p| p.ip == Some(ip)) {
            info!("removing endpoint {ip}: no pod holds it");
            endpoints.remove(ip)?;
        }
    }
    let owned = |name: &str| {
        held.iter().any(|(_, r)| r.host_ifname == name) || config.pods.iter().any(|p| p.host_ifname() == name)
    };
    let uplink = config.uplink.as_ref().map(|u| u.interface.as_str());
    for link in net.pins.linked_interfaces() {
        let (name, hook) = datapath::parse_link_name(&link);
        if is_pod_veth_name(name) {
            if hook.starts_with("tcx") && !owned(name) {
                info!("removing {name}: no pod owns it");
                net.pins.unpin_link(name)?;
                net.nl.del_link(name).await?;
            }
        } else if Some(name) != uplink {
            // An uplink the config no longer names: detach, and leave the device alone.
            info!("detaching {hook} from {name}: it is no longer the uplink");
            net.pins.unpin_link(&link)?;
        }
    }
    Ok(())
}

/// Whether `ifname` is a name podnet gives host veths (`brveth_<pod>`, `pn<hash>`): podnet
/// deletes no interface it did not name.
fn is_pod_veth_name(ifname: &str) -> bool {
    ifname.starts_with(HOST_IF_PREFIX) || (ifname.len() == 14 && ifname.starts_with("pn"))
}

/// Removes everything `up` and the CNI plugin made on the node, and only that (see
/// [`record`]): every pod's veth and endpoint (and the namespaces podnet made), pinned links
/// (detaching the programs) and maps, peer routes, the bridge or the gateway address, the NAT
/// port reservation, IPv4 forwarding if podnet turned it on, and the node's state. Missing
/// pieces are skipped, so it is safe to run twice, after a failed `up`, or on a node never up.
pub async fn down(config: &Config) -> Result<(), NodeError> {
    let nl = Netlink::current()?;
    let pins = pin_dir(config);
    let ipam = Ipam::of(config);
    let records = RecordFile::of(config);
    // A record without pins predates a reboot: what it says podnet did is not proven now.
    let record = if pins.path().exists() { records.load()? } else { NodeRecord::default() };
    for (_, pod) in ipam.held()? {
        pod::detach(&nl, &pins, &ipam, &pod).await?;
    }
    if let (Ok(peers), Some(uplink)) = (Peers::open(&pins), uplink_iface(config, &nl).await.ok().flatten()) {
        for peer in peers.list() {
            nl.del_peer_route(peer.pod_cidr, peer.ip, &uplink).await?;
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
    ipam.remove_all()?;
    leave_cluster(config).await?;
    records.remove()?;
    // The node's state directory, if nothing else is in it.
    let _ = std::fs::remove_dir(config.node.state());
    info!("node {} is down", config.node.name);
    Ok(())
}

/// Gives the node's lease back to its cluster, if it holds one. With etcd out of reach the
/// lease runs out by itself after its TTL; the node forgets it either way.
async fn leave_cluster(config: &Config) -> Result<(), NodeError> {
    let Some(member) = config.membership() else {
        return Ok(());
    };
    let (state, ttl) = (member.state.clone(), member.cluster.lease_ttl);
    let mut etcd = match Etcd::of(member) {
        Ok(etcd) => etcd,
        Err(e) => {
            warn!(
                "{}; the lease it names (if any) runs out within {} s",
                crate::error_chain(&e),
                ttl.as_secs()
            );
            return Ok(LeaseRecord::remove(&state)?);
        }
    };
    match tokio::time::timeout(LEAVE_TIMEOUT, etcd.leave()).await {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => warn!("could not give the node's lease back: {}", crate::error_chain(&e)),
        Err(_) => warn!("etcd did not answer within {LEAVE_TIMEOUT:?}"),
    }
    warn!("the node's lease (and its pod CIDR) runs out within {} s", ttl.as_secs());
    Ok(LeaseRecord::remove(&state)?)
}

/// How long `down` waits for etcd to take the node's lease back.
const LEAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The configured uplink, checked to exist and to hold the node IP; `None` without one.
async fn uplink_iface(config: &Config, nl: &Netlink) -> Result<Option<Iface>, NodeError> {
    let Some(uplink) = &config.uplink else {
        return Ok(None);
    };
    let Some(iface) = nl.link(&uplink.interface).await? else {
        return Err(not_as_configured(
            config,
            "uplink.interface",
            format!(
                "{} does not exist in the node's network namespace; create and address it first",
                uplink.interface
            ),
        ));
    };
    if !nl.ipv4_addresses(&iface).await?.contains(&uplink.ip) {
        return Err(not_as_configured(
            config,
            "uplink.ip",
            format!(
                "{} is not an address of {}; podnet does not address the uplink, configure it first \
                 (ip addr add {}/PREFIX dev {})",
                uplink.ip, uplink.interface, uplink.ip, uplink.interface
            ),
        ));
    }
    Ok(Some(iface))
}

/// Refuses peers whose pod CIDR overlaps a network of the uplink: their route would take that
/// network (other nodes, the node's own neighbours) away from the uplink.
async fn check_peers_off_the_uplink(config: &Config, nl: &Netlink, uplink: &Iface) -> Result<(), NodeError> {
    let networks = nl.ipv4_networks(uplink).await?;
    for (i, peer) in config.peers.iter().enumerate() {
        let overlaps =
            |n: &Ipv4Net| n.contains(&peer.pod_cidr.network()) || peer.pod_cidr.contains(&n.network());
        if let Some(network) = networks.iter().find(|n| overlaps(n)) {
            return Err(not_as_configured(
                config,
                &format!("peer[{i}].pod_cidr"),
                format!("{} overlaps {network}, a network of the uplink {}", peer.pod_cidr, uplink.name),
            ));
        }
    }
    Ok(())
}

fn not_as_configured(config: &Config, field: &str, problem: String) -> NodeError {
    NodeError::NotAsConfigured { source_name: config.source.clone(), field: field.to_owned(), problem }
}

/// The pin directory of the node `config` describes, up or not.
pub fn pin_dir(config: &Config) -> PinDir {
    PinDir::for_node(&config.node.name)
}

/// The pin directory of the node `config` describes, which must be up.
pub fn pins_of_running_node(config: &Config) -> Result<PinDir, NodeError> {
    let pins = pin_dir(config);
    if !pins.path().exists() {
        // Under `ip netns exec` the host's bpffs is out of sight: say so, not "not up".
        datapath::bpffs_mounted()?;
        return Err(NodeError::NotUp {
            node: config.node.name.clone(),
            path: pins.path().display().to_string(),
        });
    }
    Ok(pins)
}

/// Adds a peer node at runtime: its pod CIDR goes into the peer map and the kernel route table.
/// Nothing restarts; flows to other nodes are not touched.
pub async fn add_peer(config: &Config, peer: PeerNode) -> Result<(), NodeError> {
    let pins = pins_of_running_node(config)?;
    let nl = Netlink::current()?;
    let uplink = uplink_iface(config, &nl).await?.ok_or(NodeError::NoUplinkConfigured)?;
    let mut peers = Peers::open(&pins)?;
    let known = peers.list();
    config::check_peer(&config.node, config.uplink.as_ref(), &known, &peer)
        .map_err(|(field, problem)| NodeError::InvalidPeer { field, problem })?;
    peers.insert(&peer)?;
    nl.add_peer_route(peer.pod_cidr, peer.ip, &uplink).await?;
    info!("peer {} added: {} via {}", peer.name, peer.pod_cidr, peer.ip);
    Ok(())
}

/// Makes the peers the cluster gave those of `view` (a complete view from a
/// [`crate::discovery::PeerSource`]): adds the new ones, removes the ones gone, and touches
/// nothing else. One peer's trouble is that peer's alone: a peer that clashes with this node,
/// the config's peers, peers added at runtime or the uplink's networks is left out with a
/// warning (a store's value never takes a route away from anyone), and one whose route or map
/// entry cannot be made is left out too; returns whether any was left out for such a passing
/// reason, so the caller tries the view again later.
pub async fn set_cluster_peers(config: &Config, view: &[PeerNode]) -> Result<bool, NodeError> {
    let pins = pins_of_running_node(config)?;
    let nl = Netlink::current()?;
    let uplink = uplink_iface(config, &nl).await?.ok_or(NodeError::NoUplinkConfigured)?;
    let records = RecordFile::of(config);
    let mut peers = Peers::open(&pins)?;
    let before = records.load()?.cluster_peers;
    for gone in before.iter().filter(|p| !view.contains(p)) {
        info!("peer {} ({} via {}) left the cluster", gone.name, gone.pod_cidr, gone.ip);
        if peers.list().contains(gone) {
            peers.remove(gone)?;
        }
        nl.del_peer_route(gone.pod_cidr, gone.ip, &uplink).await?;
    }
    let mut kept: Vec<PeerNode> = before.into_iter().filter(|p| view.contains(p)).collect();
    records.update(|r| r.cluster_peers.clone_from(&kept))?;
    let networks = nl.ipv4_networks(&uplink).await?;
    let mut retry = false;
    let joined: Vec<PeerNode> = view.iter().filter(|p| !kept.contains(p)).cloned().collect();
    for peer in &joined {
        let known = peers.list();
        // Exactly this peer in the map but in no record: an agent killed between the map and
        // the record. It is the cluster's.
        if !known.contains(peer) || config.peers.contains(peer) {
            let checked =
                config::check_peer(&config.node, config.uplink.as_ref(), &known, peer).and_then(|()| {
                    match networks.iter().find(|n| config::overlaps(**n, peer.pod_cidr)) {
                        Some(n) => Err((
                            "pod_cidr",
                            format!("{} overlaps {n}, a network of the uplink", peer.pod_cidr),
                        )),
                        None => Ok(()),
                    }
                });
            if let Err((field, problem)) = checked {
                warn!(
                    "cluster peer {} ({} via {}) left out: {field}: {problem}",
                    peer.name, peer.pod_cidr, peer.ip
                );
                continue;
            }
            // The route first: a peer the kernel cannot route to never gets into the map.
            let added = async {
                nl.add_peer_route(peer.pod_cidr, peer.ip, &uplink).await?;
                if let Err(e) = peers.insert(peer) {
                    nl.del_peer_route(peer.pod_cidr, peer.ip, &uplink).await?;
                    return Err(NodeError::from(e));
                }
                Ok::<_, NodeError>(())
            };
            if let Err(e) = added.await {
                warn!(
                    "cluster peer {} ({} via {}) left out for now: {}",
                    peer.name,
                    peer.pod_cidr,
                    peer.ip,
                    crate::error_chain(&e)
                );
                retry = true;
                continue;
            }
        }
        info!("peer {} ({} via {}) joined the cluster", peer.name, peer.pod_cidr, peer.ip);
        kept.push(peer.clone());
        records.update(|r| r.cluster_peers.clone_from(&kept))?;
    }
    Ok(retry)
}

/// Removes a peer node at runtime: map entry and kernel route.
pub async fn del_peer(config: &Config, name: &str) -> Result<(), NodeError> {
    let pins = pins_of_running_node(config)?;
    let nl = Netlink::current()?;
    let mut peers = Peers::open(&pins)?;
    let peer = peers
        .list()
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| NodeError::UnknownPeer { name: name.to_owned() })?;
    peers.remove(&peer)?;
    if let Some(uplink) = uplink_iface(config, &nl).await? {
        nl.del_peer_route(peer.pod_cidr, peer.ip, &uplink).await?;
    }
    info!("peer {} removed ({} via {})", peer.name, peer.pod_cidr, peer.ip);
    Ok(())
}

/// What `podnet status` reports.
#[derive(Debug, Serialize)]
pub struct Status {
    pub node: String,
    pub pin_dir: String,
    pub endpoints: Vec<EndpointStatus>,
    pub peers: Vec<PeerStatus>,
    pub programs: Vec<ProgramStatus>,
    pub counters: Vec<CounterStatus>,
    /// How full the NAT translation tables are (claims against capacity).
    pub nat_tables: Vec<TableUse>,
    /// The node's place in its cluster, with `[cluster]`.
    pub cluster: Option<ClusterStatus>,
}

#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub pod_cidr: String,
    /// The etcd lease holding it, as the node recorded it (`None`: none recorded).
    pub lease: Option<i64>,
    /// Whether an agent runs to renew it (without one it runs out after the lease TTL).
    pub renewed: bool,
    pub etcd: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct PeerStatus {
    pub name: String,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: String,
    /// Where the peer came from: "config" (`[[peer]]`), "cluster" (etcd) or "cli"
    /// (`podnet node add`).
    pub source: &'static str,
}

#[derive(Debug, Serialize)]
pub struct EndpointStatus {
    pub pod: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub host_ifname: String,
    pub host_ifindex: u32,
    /// Its traffic through the datapath (see [`podnet_common::PodStats`]).
    pub traffic: Traffic,
}

/// A pod's traffic through the datapath: delivered into it, and sent by it past its source
/// check; bytes are IPv4 bytes, headers included.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Traffic {
    pub to_pod_packets: u64,
    pub to_pod_bytes: u64,
    pub from_pod_packets: u64,
    pub from_pod_bytes: u64,
}

impl From<podnet_common::PodStats> for Traffic {
    fn from(s: podnet_common::PodStats) -> Self {
        Self {
            to_pod_packets: s.to_pod_packets,
            to_pod_bytes: s.to_pod_bytes,
            from_pod_packets: s.from_pod_packets,
            from_pod_bytes: s.from_pod_bytes,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ProgramStatus {
    pub program: String,
    pub hook: String,
    pub ifname: String,
    pub link_id: u32,
    pub prog_id: u32,
}

#[derive(Debug, Serialize)]
pub struct CounterStatus {
    pub reason: &'static str,
    pub packets: u64,
}

/// Reads the node's pinned state.
pub fn status(config: &Config) -> Result<Status, NodeError> {
    let pins = pins_of_running_node(config)?;
    let held = Ipam::of(config).held()?;
    let endpoints = Endpoints::open(&pins)?;
    let endpoints = endpoints
        .list()
        .into_iter()
        .map(|(ip, ep)| {
            let pod = held.iter().find(|(h, _)| *h == ip).map(|(_, r)| r);
            // Slot 0 counts for no pod (an endpoint an older podnet wrote, until the next `up`).
            let traffic = if ep.slot == 0 { Traffic::default() } else { endpoints.stats(ep.slot)?.into() };
            Ok(EndpointStatus {
                pod: pod.map_or_else(|| "?".to_owned(), PodRecord::display_name),
                ip,
                mac: fmt_mac(&ep.pod_mac),
                host_ifname: pod.map_or_else(|| "?".to_owned(), |r| r.host_ifname.clone()),
                host_ifindex: ep.host_ifindex,
                traffic,
            })
        })
        .collect::<Result<_, MapsError>>()?;
    let programs = pins
        .linked_interfaces()
        .into_iter()
        .map(|link| {
            let info = datapath::link_info(&pins, &link)?;
            let (ifname, hook) = datapath::parse_link_name(&link);
            Ok(ProgramStatus {
                program: datapath::program_name(info.program_id()).unwrap_or_else(|| "?".to_owned()),
                hook,
                ifname: ifname.to_owned(),
                link_id: info.id(),
                prog_id: info.program_id(),
            })
        })
        .collect::<Result<_, DatapathError>>()?;
    let record = RecordFile::of(config).load()?;
    let peers = Peers::open(&pins)?
        .list()
        .into_iter()
        .map(|p| {
            let source = if record.config_peers.contains(&p) {
                "config"
            } else if record.cluster_peers.contains(&p) {
                "cluster"
            } else {
                "cli"
            };
            PeerStatus { name: p.name, node_ip: p.ip, pod_cidr: p.pod_cidr.to_string(), source }
        })
        .collect();
    let counters = Counters::open(&pins)?
        .totals()?
        .into_iter()
        .map(|(reason, packets): (Reason, u64)| CounterStatus { reason: reason.name(), packets })
        .collect();
    Ok(Status {
        node: config.node.name.clone(),
        pin_dir: pins.path().display().to_string(),
        endpoints,
        peers,
        programs,
        counters,
        nat_tables: datapath::nat::usage(&pins)?.to_vec(),
        cluster: match &config.cluster {
            None => None,
            Some(cluster) => Some(ClusterStatus {
                pod_cidr: config.node.pod_cidr.to_string(),
                lease: LeaseRecord::load(&config.node.state())?.map(|r| r.lease),
                renewed: std::os::unix::net::UnixStream::connect(crate::agent::api::socket_path(
                    &config.node.name,
                ))
                .is_ok(),
                etcd: cluster.etcd.clone(),
            }),
        },
    })
}

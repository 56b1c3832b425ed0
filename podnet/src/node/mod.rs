//! What a node does: `up` (build or complete it from the config, rolling back what a failed
//! run made), `down`, `status`, peers at runtime; its pods ([`pod`]), their addresses
//! ([`ipam`]), the per-node lock ([`lock`]) and the operations the CLI, the CNI plugin and the
//! agent share ([`op`]).

pub mod ipam;
pub mod lock;
pub mod op;
pub mod pod;

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
};
use crate::{
    config::{self, Config, HOST_IF_PREFIX, PeerNode, Pod, XdpMode},
    datapath::{
        self, Datapath, DatapathError, PinDir, PodProgram,
        maps::{Counters, Endpoints, MapsError, NatSettings, Peers, UplinkAllow},
    },
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
    #[error("uplink {interface} does not exist in the node's namespace; create and address it first")]
    NoUplink { interface: String },
    #[error(
        "uplink {interface} does not hold the node IP {ip}; podnet does not address the uplink, configure it first"
    )]
    UplinkAddress { interface: String, ip: Ipv4Addr },
    #[error("this node has no [uplink] in its config; peers need one")]
    NoUplinkConfigured,
    #[error("peer {field}: {problem}")]
    InvalidPeer { field: &'static str, problem: String },
    #[error("no peer node called {name:?} (see `podnet status`)")]
    UnknownPeer { name: String },
    #[error(
        "uplink {ifname} is a veth: native XDP cannot deliver to pods from it, because a frame \
         redirected at native XDP loses the checksum-offload state the veth carries and pods drop \
         its TCP and UDP as bad checksums. Set [uplink] xdp = \"generic\", or xdp_deliver = false"
    )]
    NativeDeliverOnVeth { ifname: String },
}

/// Something `up` created, undone in reverse order if a later step fails.
#[derive(Debug)]
enum Made {
    Netns(String),
    Link(String),
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

async fn undo(nl: &Netlink, made: Vec<Made>) {
    for m in made.into_iter().rev() {
        let result = match &m {
            Made::Netns(name) => netns::delete(name).map_err(NodeError::from),
            Made::Link(name) => nl.del_link(name).await.map_err(NodeError::from),
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

/// Builds (or completes) the node described by `config` and attaches the datapath. Running it
/// again with the same config changes nothing.
pub async fn up(config: &Config) -> Result<(), NodeError> {
    let nl = Netlink::current()?;
    let mut made = Vec::new();
    match up_steps(config, &nl, &mut made).await {
        Ok(()) => Ok(()),
        Err(e) => {
            if !made.is_empty() {
                warn!("`up` failed; removing the {} object(s) it created", made.len());
                undo(&nl, made).await;
            }
            Err(e)
        }
    }
}

async fn up_steps(config: &Config, nl: &Netlink, made: &mut Vec<Made>) -> Result<(), NodeError> {
    let node = &config.node;
    let pins = pin_dir(config);
    let first_up = !pins.path().exists();
    let uplink = uplink_iface(config, nl).await?;
    let veth = veth_settings(config, uplink.as_ref());
    let bridge = ensure_bridge(config, nl, made).await?;
    sysctl::enable_ip_forward()?;
    if config.nat.enabled {
        let (min, max) = (config.nat.port_min, config.nat.port_max);
        let (taken, ephemeral) = sysctl::ephemeral_ports_taken(min, max)?;
        if taken > 0 {
            warn!(
                "nat.ports {min}-{max} takes {taken} of the node's {ephemeral} ephemeral ports \
                 (net.ipv4.ip_local_port_range): the node's own connections get only the rest"
            );
        }
        sysctl::reserve_ports(min, max)?;
    }

    if first_up {
        made.push(Made::PinDir(pins.clone()));
    }
    let mut datapath = Datapath::load(&pins)?;
    datapath.pin_pod_program()?;
    NatSettings::open(&pins)?.set(&nat_settings(config, uplink.as_ref()))?;
    if let Some(settings) = &config.uplink {
        let refused = config::refused_sources(node.pod_cidr, settings.ip);
        UplinkAllow::open(&pins)?.set(&settings.allow_from, &refused)?;
    }
    if let Some(uplink) = uplink {
        datapath.attach(FROM_UPLINK, &uplink.name, uplink.index)?;
        attach_uplink_xdp(config, &mut datapath, &pins, &uplink)?;
        let mut peers = Peers::open(&pins)?;
        for peer in &config.peers {
            peers.insert(peer)?;
            nl.add_peer_route(peer.pod_cidr, peer.ip, &uplink).await?;
            if first_up {
                made.push(Made::Route { cidr: peer.pod_cidr, via: peer.ip, link: uplink.clone() });
            }
        }
    }
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
    info!(
        "node {} is up: {} pod(s), {} peer(s), NAT {}, pins in {}",
        node.name,
        config.pods.len(),
        config.peers.len(),
        if config.nat.enabled { "on" } else { "off" },
        pins.path().display()
    );
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

/// Makes sure the node bridge is there, recording it in `made` if this run created it.
async fn ensure_bridge(config: &Config, nl: &Netlink, made: &mut Vec<Made>) -> Result<Iface, NodeError> {
    let node = &config.node;
    let had_bridge = nl.link(&node.bridge).await?.is_some();
    let bridge = plumbing::ensure_bridge(nl, node).await;
    if !had_bridge && nl.link(&node.bridge).await?.is_some() {
        made.push(Made::Link(node.bridge.clone()));
        info!("created bridge {} with gateway {}/{}", node.bridge, node.gateway, node.pod_cidr.prefix_len());
    }
    Ok(bridge?)
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
    if settings.native_delivery() && uplink.is_veth {
        return Err(NodeError::NativeDeliverOnVeth { ifname: uplink.name.clone() });
    }
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
    }
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

/// Removes everything `up` and the CNI plugin made on the node: every pod's veth and endpoint
/// (and the namespaces of `[[pod]]`s), pinned links (detaching the programs) and maps, peer
/// routes, the bridge, the IPAM state; and gives the NAT port range back. Missing pieces are
/// skipped, so it is safe to run twice or after a failed `up`. IPv4 forwarding is left as it is.
pub async fn down(config: &Config) -> Result<(), NodeError> {
    let nl = Netlink::current()?;
    let pins = pin_dir(config);
    let ipam = Ipam::of(config);
    for (_, record) in ipam.held()? {
        pod::detach(&nl, &pins, &ipam, &record).await?;
    }
    if let (Ok(peers), Some(uplink)) = (Peers::open(&pins), uplink_iface(config, &nl).await.ok().flatten()) {
        for peer in peers.list() {
            nl.del_peer_route(peer.pod_cidr, peer.ip, &uplink).await?;
        }
    }
    pins.remove()?;
    if config.nat.enabled {
        sysctl::release_ports(config.nat.port_min, config.nat.port_max)?;
    }
    // Veths of `[[pod]]`s no record holds (a failed `up`); their namespaces only go with a
    // record that says podnet made them.
    for pod in &config.pods {
        nl.del_link(&pod.host_ifname()).await?;
    }
    nl.del_link(&config.node.bridge).await?;
    ipam.remove_all()?;
    // The node's state directory, if nothing else is in it.
    let _ = std::fs::remove_dir(config.node.state());
    info!("node {} is down", config.node.name);
    Ok(())
}

/// The configured uplink, checked to exist and to hold the node IP; `None` without one.
async fn uplink_iface(config: &Config, nl: &Netlink) -> Result<Option<Iface>, NodeError> {
    let Some(uplink) = &config.uplink else {
        return Ok(None);
    };
    let iface = nl
        .link(&uplink.interface)
        .await?
        .ok_or_else(|| NodeError::NoUplink { interface: uplink.interface.clone() })?;
    if !nl.ipv4_addresses(&iface).await?.contains(&uplink.ip) {
        return Err(NodeError::UplinkAddress { interface: uplink.interface.clone(), ip: uplink.ip });
    }
    Ok(Some(iface))
}

/// The pin directory of the node `config` describes, up or not.
pub fn pin_dir(config: &Config) -> PinDir {
    PinDir::for_node(&config.node.name)
}

/// The pin directory of the node `config` describes, which must be up.
pub fn pins_of_running_node(config: &Config) -> Result<PinDir, NodeError> {
    let pins = pin_dir(config);
    if !pins.path().exists() {
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
}

#[derive(Debug, Serialize)]
pub struct PeerStatus {
    pub name: String,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: String,
}

#[derive(Debug, Serialize)]
pub struct EndpointStatus {
    pub pod: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub host_ifname: String,
    pub host_ifindex: u32,
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
    let endpoints = Endpoints::open(&pins)?
        .list()
        .into_iter()
        .map(|(ip, ep)| {
            let pod = held.iter().find(|(h, _)| *h == ip).map(|(_, r)| r);
            EndpointStatus {
                pod: pod.map_or_else(|| "?".to_owned(), PodRecord::display_name),
                ip,
                mac: fmt_mac(&ep.pod_mac),
                host_ifname: pod.map_or_else(|| "?".to_owned(), |r| r.host_ifname.clone()),
                host_ifindex: ep.host_ifindex,
            }
        })
        .collect();
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
    let peers = Peers::open(&pins)?
        .list()
        .into_iter()
        .map(|p| PeerStatus { name: p.name, node_ip: p.ip, pod_cidr: p.pod_cidr.to_string() })
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
    })
}

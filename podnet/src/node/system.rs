//! The node's real [`Host`]: netlink, sysctls, namespaces, IPAM and the datapath, one step at a
//! time; and `up`, which observes, plans and applies with it.

use podnet_common::programs::FROM_UPLINK;
use tracing::{info, warn};

use super::{
    NodeError,
    apply::{Done, Host, apply},
    ipam::Ipam,
    observe::observe,
    plan::{Observed, Step, plan, veth_settings},
    pod::{self, NodeNet},
    record::{NodeRecord, RecordFile},
    undo::Made,
};
use crate::{
    datapath::{
        self, Datapath, EbpfLog, PinDir, PodProgram,
        maps::{Endpoints, NatSettings, Peers, PodDeny, UplinkAllow},
        migrate,
    },
    error_chain,
    host::{
        netlink::Netlink,
        netns,
        plumbing::{self, VethSettings},
        sysctl,
    },
    model::{Config, PeerNode},
};

/// Builds (or completes) the node described by `config` and attaches the datapath, its programs
/// writing log lines up to `log`. Running it again with the same config changes nothing; running
/// it with a changed config makes the node what the new config says.
pub async fn up(config: &Config, log: EbpfLog) -> Result<(), NodeError> {
    let nl = Netlink::current()?;
    let found = observe(config, &nl).await?;
    let plan = plan(config, &found, log)?;
    for warning in &plan.warnings {
        warn!("{warning}");
    }
    let mut system = System::new(config, nl, &found);
    apply(&mut system, &plan, found.record.clone(), found.up_before).await?;
    info!(
        "node {} is up: {} pod(s), {} peer(s), NAT {}, pins in {}",
        config.node.name,
        config.pods.len(),
        Peers::open(&system.pins)?.list().len(),
        if config.nat.enabled { "on" } else { "off" },
        system.pins.path().display()
    );
    Ok(())
}

/// The pods of a running node `config` describes, attached from outside `up` (the CNI plugin).
pub async fn node_net(config: &Config, nl: Netlink) -> Result<NodeNet, NodeError> {
    let node = &config.node;
    let uplink = match &config.uplink {
        Some(_) => Some(super::peers::uplink(config, &nl).await?),
        None => None,
    };
    let pins = super::pins_of_running_node(&node.name)?;
    let bridge = nl.link(&node.bridge).await?.ok_or_else(|| NodeError::NotUp {
        node: node.name.clone(),
        path: format!("bridge {}", node.bridge),
    })?;
    let veth = veth_settings(config, uplink.as_ref());
    Ok(NodeNet { nl, node: node.clone(), bridge, veth, pins, ipam: Ipam::of(config) })
}

/// The system as `up` changes it.
struct System {
    nl: Netlink,
    config: Config,
    pins: PinDir,
    records: RecordFile,
    ipam: Ipam,
    veth: VethSettings,
    /// The programs, once loaded.
    datapath: Option<Datapath>,
    /// `from_pod` as pinned, once there.
    program: Option<PodProgram>,
    /// The pod namespaces this run made.
    made_netns: Vec<String>,
}

impl System {
    fn new(config: &Config, nl: Netlink, found: &Observed) -> Self {
        Self {
            veth: veth_settings(config, found.uplink.as_ref().map(|u| &u.iface)),
            nl,
            pins: PinDir::for_node(&config.node.name),
            records: RecordFile::of(&config.node.state()),
            ipam: Ipam::of(config),
            config: config.clone(),
            datapath: None,
            program: None,
            made_netns: Vec::new(),
        }
    }

    fn datapath(&mut self) -> Result<&mut Datapath, NodeError> {
        self.datapath.as_mut().ok_or_else(|| NodeError::NotUp {
            node: self.config.node.name.clone(),
            path: "the loaded programs".to_owned(),
        })
    }

    /// What pods attach to now, and `from_pod`.
    async fn pods(&mut self) -> Result<(NodeNet, &mut PodProgram), NodeError> {
        let node = &self.config.node;
        let bridge = self.nl.existing_link(&node.bridge).await?;
        let net = NodeNet {
            nl: self.nl.clone(),
            node: node.clone(),
            bridge,
            veth: self.veth,
            pins: self.pins.clone(),
            ipam: self.ipam.clone(),
        };
        let program = match &mut self.program {
            Some(program) => program,
            slot => slot.insert(PodProgram::open(&self.pins)?),
        };
        Ok((net, program))
    }

    async fn ensure_bridge(&mut self, create: bool, add_gateway: bool) -> Result<(), NodeError> {
        let node = &self.config.node;
        if let Err(e) = plumbing::ensure_bridge(&self.nl, node).await {
            if create {
                // Made by this call and not recorded yet.
                self.nl.del_link(&node.bridge).await?;
            }
            return Err(e.into());
        }
        if create {
            info!(
                "created bridge {} with gateway {}/{}",
                node.bridge,
                node.gateway,
                node.pod_cidr.prefix_len()
            );
        } else if add_gateway {
            info!("bridge {} existed: added the gateway {} to it", node.bridge, node.gateway);
        }
        Ok(())
    }

    async fn del_route(&self, peer: &PeerNode, uplink: &str) -> Result<(), NodeError> {
        if let Some(link) = self.nl.link(uplink).await? {
            self.nl.del_peer_route(peer.pod_cidr, peer.ip, &link).await?;
        }
        Ok(())
    }

    async fn del_gateway(&self, bridge: &str, gateway: std::net::Ipv4Addr) -> Result<(), NodeError> {
        if let Some(link) = self.nl.link(bridge).await? {
            self.nl.del_addresses_except(&link, |a| a != gateway).await?;
        }
        Ok(())
    }
}

impl Host for System {
    async fn perform(&mut self, step: &Step) -> Result<Done, NodeError> {
        let pins = self.pins.clone();
        match step {
            Step::DiscardStaleRecord => self.records.remove()?,
            Step::EnsureBridge { create, add_gateway, .. } => {
                self.ensure_bridge(*create, *add_gateway).await?
            }
            Step::EnableIpForward => drop(sysctl::enable_ip_forward()?),
            Step::ReleasePorts { min, max } => sysctl::release_ports(*min, *max)?,
            Step::ReservePorts { min, max } => {
                let (taken, ephemeral) = sysctl::ephemeral_ports_taken(*min, *max)?;
                if taken > 0 {
                    warn!(
                        "nat.ports {min}-{max} takes {taken} of the node's {ephemeral} ephemeral ports \
                         (net.ipv4.ip_local_port_range): the node's own connections get only the rest"
                    );
                }
                if !sysctl::reserve_ports(*min, *max)? {
                    return Ok(Done::Unchanged);
                }
            }
            Step::LoadDatapath { tables, log, .. } => {
                let mut datapath = Datapath::load(&pins, *tables, *log)?;
                datapath.pin_pod_program()?;
                self.datapath = Some(datapath);
            }
            Step::SetNat(settings) => NatSettings::open(&pins)?.set(settings)?,
            Step::SetPodDeny(entries) => PodDeny::open(&pins)?.set(entries)?,
            Step::SetUplinkAllow { admit, refuse } => UplinkAllow::open(&pins)?.set(admit, refuse)?,
            Step::AttachUplink { iface } => self.datapath()?.attach(FROM_UPLINK, &iface.name, iface.index)?,
            Step::AttachUplinkXdp { program, iface, mode } => {
                self.datapath()?.attach_xdp(program, &iface.name, iface.index, *mode)?
            }
            Step::DetachUplinkXdp { ifname } => pins.unpin_xdp(ifname)?,
            Step::ForgetConfigPeer { peer, uplink } => {
                info!(
                    "removing peer {} ({} via {}): no longer in the config",
                    peer.name, peer.pod_cidr, peer.ip
                );
                let mut peers = Peers::open(&pins)?;
                if peers.list().contains(peer) {
                    peers.remove(peer)?;
                }
                if let Some(uplink) = uplink {
                    self.nl.del_peer_route(peer.pod_cidr, peer.ip, uplink).await?;
                }
            }
            Step::AddConfigPeer { peer, uplink, .. } => {
                super::peers::install(&self.nl, &mut Peers::open(&pins)?, uplink, peer).await?;
            }
            Step::DetachPod(held) => {
                info!("removing pod {} ({}): no longer in the config", held.pod, held.ip);
                pod::detach(&self.nl, &pins, &self.ipam, &held.pod).await?;
            }
            Step::RemoveStrayEndpoints { keep } => {
                let mut endpoints = Endpoints::open(&pins)?;
                for (ip, _) in endpoints.list() {
                    if keep.binary_search(&ip).is_err() {
                        info!("removing endpoint {ip}: no pod holds it");
                        endpoints.remove(ip)?;
                    }
                }
            }
            Step::CreateNetns(name) => {
                if !netns::create(name)? {
                    return Ok(Done::Unchanged);
                }
                self.made_netns.push(name.clone());
            }
            Step::RemovePodVeth(name) => {
                info!("removing {name}: no pod owns it");
                pins.unpin_link(name)?;
                self.nl.del_link(name).await?;
            }
            Step::DetachLink(link) => {
                let (name, hook) = datapath::parse_link_name(link);
                info!("detaching {hook} from {name}: it is no longer the uplink");
                pins.unpin_link(link)?;
            }
            Step::AttachPod { pod, new } => {
                let owns_netns = self.made_netns.contains(&pod.netns);
                let (net, program) = self.pods().await?;
                let attached = pod::attach(&net, program, pod, owns_netns).await?;
                if *new {
                    info!("pod {pod}: {} in namespace {} via {}", attached.ip, pod.netns, pod.host_ifname);
                }
            }
            Step::RefreshContainer(held) => {
                let (net, program) = self.pods().await?;
                if let Err(e) = pod::refresh(&net, program, held).await {
                    // Its runtime's DEL or GC removes it.
                    warn!(
                        "container {} ({}) could not be re-attached: {}",
                        held.pod,
                        held.ip,
                        error_chain(&e)
                    );
                }
            }
            Step::NarrowToPodCidr(cidr) => {
                let mut nat = NatSettings::open(&pins)?;
                let mut settings = nat.get()?;
                settings.pod_net = cidr.network().octets();
                settings.pod_mask = cidr.netmask().octets();
                nat.set(&settings)?;
            }
            Step::RetireGateway { bridge, gateway } => {
                info!("removing the old gateway {gateway} from {bridge}");
                self.del_gateway(bridge, *gateway).await?;
            }
            Step::RetireBridge(bridge) => {
                info!("removing bridge {bridge}: the config names {} now", self.config.node.bridge);
                self.nl.del_link(bridge).await?;
            }
            Step::FinishMigration => migrate::finish(&pins)?,
            Step::ForgetStaleTranslations(settings) => {
                let endpoints = Endpoints::open(&pins)?;
                let removed =
                    datapath::nat::forget_unlike(&pins, settings, |pod| endpoints.get(pod).is_some())?;
                if removed > 0 {
                    info!(
                        "{removed} translation(s) removed: made under other NAT settings, or for a pod that is gone"
                    );
                }
            }
        }
        Ok(Done::Changed)
    }

    async fn undo(&mut self, made: &Made) -> Result<(), NodeError> {
        match made {
            Made::Netns(name) => netns::delete(name)?,
            Made::Bridge(name, _) => self.nl.del_link(name).await?,
            Made::GatewayAddress(bridge, gateway, _) => self.del_gateway(bridge, *gateway).await?,
            Made::IpForward => sysctl::restore_ip_forward()?,
            Made::ReservedPorts(min, max) => sysctl::release_ports(*min, *max)?,
            Made::PinDir => self.pins.remove()?,
            Made::Route { peer, uplink } => self.del_route(peer, uplink).await?,
            Made::Pod(pod) => pod::detach(&self.nl, &self.pins, &self.ipam, pod).await?,
        }
        Ok(())
    }

    fn save_record(&mut self, record: &NodeRecord) -> Result<(), NodeError> {
        Ok(self.records.save(record)?)
    }

    fn remove_record(&mut self) -> Result<(), NodeError> {
        Ok(self.records.remove()?)
    }
}

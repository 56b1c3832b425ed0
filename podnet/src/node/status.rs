//! `podnet status`: the node's pinned state, read without changing anything.

use std::net::Ipv4Addr;

use podnet_common::Reason;
use serde::Serialize;

use super::{NodeError, ipam::Records, pins_of_running_node, record::RecordFile};
use crate::{
    api::client::socket_path,
    datapath::{
        self, DatapathError, Hook,
        maps::{Counters, Endpoints, MapsError, Peers, TableUse},
    },
    discovery::LeaseRecord,
    host::netlink::fmt_mac,
    model::{Config, PeerOrigin},
};

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
    /// Where the peer came from: `config` (`[[peer]]`), `cluster` (etcd) or `cli` (`podnet node
    /// add`).
    #[serde(serialize_with = "origin_name")]
    pub source: PeerOrigin,
}

fn origin_name<S: serde::Serializer>(origin: &PeerOrigin, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(origin.name())
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
    pub hook: Hook,
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
    let node = &config.node;
    let pins = pins_of_running_node(&node.name)?;
    let held = Records::of(&node.state()).held()?;
    let endpoints = Endpoints::open(&pins)?;
    let endpoints = endpoints
        .list()
        .into_iter()
        .map(|(ip, ep)| {
            let pod = held.iter().find(|h| h.ip == ip).map(|h| &h.pod);
            // Slot 0 counts for no pod (an endpoint an older podnet wrote, until the next `up`).
            let traffic = if ep.slot == 0 { Traffic::default() } else { endpoints.stats(ep.slot)?.into() };
            Ok(EndpointStatus {
                pod: pod.map_or_else(|| "?".to_owned(), ToString::to_string),
                ip,
                mac: fmt_mac(&ep.pod_mac),
                host_ifname: pod.map_or_else(|| "?".to_owned(), |p| p.host_ifname.clone()),
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
    let record = RecordFile::of(&node.state()).load()?;
    let (from_config, from_cluster) = (record.config_peers(), record.cluster_peers());
    let peers = Peers::open(&pins)?
        .list()
        .into_iter()
        .map(|p| {
            let source = if from_config.contains(&p) {
                PeerOrigin::Config
            } else if from_cluster.contains(&p) {
                PeerOrigin::Cluster
            } else {
                PeerOrigin::Cli
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
        node: node.name.clone(),
        pin_dir: pins.path().display().to_string(),
        endpoints,
        peers,
        programs,
        counters,
        nat_tables: datapath::nat::usage(&pins)?.to_vec(),
        cluster: match &config.cluster {
            None => None,
            Some(cluster) => Some(ClusterStatus {
                pod_cidr: node.pod_cidr.to_string(),
                lease: LeaseRecord::load(&node.state())?.map(|r| r.lease),
                renewed: std::os::unix::net::UnixStream::connect(socket_path(&node.name)).is_ok(),
                etcd: cluster.etcd.clone(),
            }),
        },
    })
}

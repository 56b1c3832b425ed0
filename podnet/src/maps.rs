//! Typed views of a node's pinned maps, usable without loading the programs.

use std::net::Ipv4Addr;

use aya::maps::{HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key};
use ipnet::Ipv4Net;
use podnet_common::{
    Endpoint, EndpointKey, PEER_NAME_MAX, Peer, PeerKey, Reason,
    maps::{COUNTERS, ENDPOINTS, PEERS},
};

use crate::datapath::PinDir;

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("could not open pinned map {path}; is podnet up on this node (`podnet up`)?")]
    Open {
        path: String,
        #[source]
        source: Box<MapError>,
    },
    #[error("could not {op} {key} in map {map}")]
    Access {
        op: &'static str,
        map: &'static str,
        key: String,
        #[source]
        source: Box<MapError>,
    },
}

fn access_err(op: &'static str, map: &'static str, key: String) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Access { op, map, key, source: source.into() }
}

/// Opens pinned map `name` and converts it to its typed view `T`.
fn open<T: TryFrom<Map, Error = MapError>>(
    pins: &PinDir,
    name: &'static str,
    kind: fn(MapData) -> Map,
) -> Result<T, MapsError> {
    let path = pins.map(name);
    MapData::from_pin(&path)
        .and_then(|data| T::try_from(kind(data)))
        .map_err(|source| MapsError::Open { path: path.display().to_string(), source: source.into() })
}

/// The local pods the datapath delivers to, by IPv4 address.
pub struct Endpoints(HashMap<MapData, EndpointKey, Endpoint>);

impl Endpoints {
    pub fn open(pins: &PinDir) -> Result<Self, MapsError> {
        open(pins, ENDPOINTS, Map::HashMap).map(Self)
    }

    pub fn insert(&mut self, ip: Ipv4Addr, endpoint: &Endpoint) -> Result<(), MapsError> {
        self.0.insert(&EndpointKey { ip: ip.octets() }, endpoint, 0).map_err(access_err(
            "insert",
            ENDPOINTS,
            ip.to_string(),
        ))
    }

    pub fn remove(&mut self, ip: Ipv4Addr) -> Result<(), MapsError> {
        self.0.remove(&EndpointKey { ip: ip.octets() }).map_err(access_err(
            "remove",
            ENDPOINTS,
            ip.to_string(),
        ))
    }

    /// Every endpoint, sorted by address.
    pub fn list(&self) -> Vec<(Ipv4Addr, Endpoint)> {
        let mut all: Vec<_> = self.0.iter().flatten().map(|(k, v)| (Ipv4Addr::from(k.ip), v)).collect();
        all.sort_by_key(|(ip, _)| *ip);
        all
    }
}

/// Other nodes' pod CIDRs and the node that owns each.
pub struct Peers(LpmTrie<MapData, PeerKey, Peer>);

/// A peer as stored in the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
}

fn key(cidr: Ipv4Net) -> Key<PeerKey> {
    Key::new(u32::from(cidr.prefix_len()), cidr.network().octets())
}

impl Peers {
    pub fn open(pins: &PinDir) -> Result<Self, MapsError> {
        open(pins, PEERS, Map::LpmTrie).map(Self)
    }

    /// Adds or replaces the peer owning `entry.pod_cidr`. Names longer than the map's field
    /// are refused by config validation before they get here.
    pub fn insert(&mut self, entry: &PeerEntry) -> Result<(), MapsError> {
        let mut name = [0u8; PEER_NAME_MAX];
        name[..entry.name.len()].copy_from_slice(entry.name.as_bytes());
        let peer = Peer { node_ip: entry.ip.octets(), name };
        self.0.insert(&key(entry.pod_cidr), &peer, 0).map_err(access_err(
            "insert",
            PEERS,
            entry.pod_cidr.to_string(),
        ))
    }

    pub fn remove(&mut self, pod_cidr: Ipv4Net) -> Result<(), MapsError> {
        self.0.remove(&key(pod_cidr)).map_err(access_err("remove", PEERS, pod_cidr.to_string()))
    }

    /// Every peer, sorted by name.
    pub fn list(&self) -> Vec<PeerEntry> {
        let mut all: Vec<PeerEntry> = self
            .0
            .iter()
            .flatten()
            .map(|(k, v)| {
                let name = v.name.split(|&b| b == 0).next().unwrap_or_default();
                PeerEntry {
                    name: String::from_utf8_lossy(name).into_owned(),
                    ip: Ipv4Addr::from(v.node_ip),
                    pod_cidr: Ipv4Net::new(Ipv4Addr::from(k.data()), k.prefix_len() as u8)
                        .expect("the kernel keeps prefix lengths <= 32"),
                }
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

/// The datapath's per-reason packet counters.
pub struct Counters(PerCpuArray<MapData, u64>);

impl Counters {
    pub fn open(pins: &PinDir) -> Result<Self, MapsError> {
        open(pins, COUNTERS, Map::PerCpuArray).map(Self)
    }

    /// Packets per reason, summed over CPUs, in [`Reason::ALL`] order.
    pub fn totals(&self) -> Result<Vec<(Reason, u64)>, MapsError> {
        Reason::ALL
            .iter()
            .map(|&reason| {
                let per_cpu = self.0.get(&(reason as u32), 0).map_err(access_err(
                    "read",
                    COUNTERS,
                    reason.name().to_owned(),
                ))?;
                Ok((reason, per_cpu.iter().sum()))
            })
            .collect()
    }
}

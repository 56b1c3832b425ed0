//! Typed views of a node's pinned maps, usable without loading the programs.

use std::net::Ipv4Addr;

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray};
use podnet_common::{
    Endpoint, EndpointKey, Reason,
    maps::{COUNTERS, ENDPOINTS},
};

use crate::datapath::PinDir;

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("could not open pinned map {path}; is podnet up on this node (`podnet up`)?")]
    Open {
        path: String,
        #[source]
        source: MapError,
    },
    #[error("could not {op} {key} in map {map}")]
    Update {
        op: &'static str,
        map: &'static str,
        key: String,
        #[source]
        source: MapError,
    },
}

fn open(pins: &PinDir, name: &'static str, wrap: fn(MapData) -> Map) -> Result<Map, MapsError> {
    let path = pins.map(name);
    MapData::from_pin(&path)
        .map(wrap)
        .map_err(|source| MapsError::Open { path: path.display().to_string(), source })
}

/// The local pods the datapath delivers to, by IPv4 address.
pub struct Endpoints(HashMap<MapData, EndpointKey, Endpoint>);

impl Endpoints {
    pub fn open(pins: &PinDir) -> Result<Self, MapsError> {
        let map = open(pins, ENDPOINTS, Map::HashMap)?;
        let path = pins.map(ENDPOINTS).display().to_string();
        HashMap::try_from(map).map(Self).map_err(|source| MapsError::Open { path, source })
    }

    pub fn insert(&mut self, ip: Ipv4Addr, endpoint: &Endpoint) -> Result<(), MapsError> {
        self.0
            .insert(&EndpointKey { ip: ip.octets() }, endpoint, 0)
            .map_err(|source| MapsError::Update { op: "insert", map: ENDPOINTS, key: ip.to_string(), source })
    }

    pub fn remove(&mut self, ip: Ipv4Addr) -> Result<(), MapsError> {
        self.0
            .remove(&EndpointKey { ip: ip.octets() })
            .map_err(|source| MapsError::Update { op: "remove", map: ENDPOINTS, key: ip.to_string(), source })
    }

    /// Every endpoint, sorted by address.
    pub fn list(&self) -> Vec<(Ipv4Addr, Endpoint)> {
        let mut all: Vec<_> = self.0.iter().flatten().map(|(k, v)| (Ipv4Addr::from(k.ip), v)).collect();
        all.sort_by_key(|(ip, _)| *ip);
        all
    }
}

/// The datapath's per-reason packet counters.
pub struct Counters(PerCpuArray<MapData, u64>);

impl Counters {
    pub fn open(pins: &PinDir) -> Result<Self, MapsError> {
        let map = open(pins, COUNTERS, Map::PerCpuArray)?;
        let path = pins.map(COUNTERS).display().to_string();
        PerCpuArray::try_from(map).map(Self).map_err(|source| MapsError::Open { path, source })
    }

    /// Packets per reason, summed over CPUs, in [`Reason::ALL`] order.
    pub fn totals(&self) -> Result<Vec<(Reason, u64)>, MapsError> {
        Reason::ALL
            .iter()
            .map(|&reason| {
                let per_cpu = self.0.get(&(reason as u32), 0).map_err(|source| MapsError::Update {
                    op: "read",
                    map: COUNTERS,
                    key: reason.name().to_owned(),
                    source,
                })?;
                Ok((reason, per_cpu.iter().sum()))
            })
            .collect()
    }
}

//! Typed views of a node's pinned maps, usable without loading the programs; the translation
//! tables' in [`conntrack`].

mod conntrack;

use std::net::Ipv4Addr;

use aya::maps::{
    Array, DevMapHash, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie::Key,
    xdp::XdpMapError,
};
use ipnet::Ipv4Net;
use podnet_common::{
    DeniedPorts, Endpoint, EndpointKey, Ipv4LpmData, NatConfig, PEER_NAME_MAX, Peer, PodSource, PodStats,
    Reason, admission, events,
    maps::{
        COUNTERS, DENY, ENDPOINTS, EVENT_STATS, MONITOR, NAT_CONFIG, PEERS, POD_DENY, POD_DENY_COUNT,
        POD_DEVS, POD_SOURCES, POD_SOURCES_MAX, POD_STATS, POD_STATS_SLOTS, ROUTE_GENERATION, UPLINK_ALLOW,
    },
};

pub use self::conntrack::{Conntrack, CtPair, NatPressure, TableUse};
use crate::{datapath::PinDir, model::PeerNode};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("could not open pinned map {path}; is podnet up on this node (`podnet up`)?")]
    Open {
        path: String,
        #[source]
        source: Box<MapError>,
    },
    #[error("map {map} is full ({capacity} entries): remove pods first")]
    Full { map: &'static str, capacity: usize },
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

/// The local pods the datapath delivers to, by IPv4 address; their host veths as XDP redirect
/// targets; who sends on each host veth (the source check); and each pod's counters. The maps
/// always change together.
pub struct Endpoints {
    by_ip: HashMap<MapData, EndpointKey, Endpoint>,
    devs: DevMapHash<MapData>,
    sources: Array<MapData, PodSource>,
    stats: PerCpuArray<MapData, PodStats>,
}

/// The `POD_SOURCES` slot of host veth `ifindex`.
fn source_slot(ifindex: u32) -> u32 {
    ifindex % POD_SOURCES_MAX as u32
}

impl Endpoints {
    pub fn open(pins: &PinDir) -> Result<Self, MapsError> {
        Ok(Self {
            by_ip: open(pins, ENDPOINTS, Map::HashMap)?,
            devs: open(pins, POD_DEVS, Map::DevMapHash)?,
            sources: open(pins, POD_SOURCES, Map::Array)?,
            stats: open(pins, POD_STATS, Map::PerCpuArray)?,
        })
    }

    /// Adds or replaces a pod. Call it in the node's network namespace: the kernel resolves
    /// the devmap's ifindex there. The pod keeps its counter slot (and its counts) while it keeps
    /// its veth; a new pod gets a free slot, zeroed.
    pub fn insert(&mut self, ip: Ipv4Addr, endpoint: &Endpoint) -> Result<(), MapsError> {
        let ifindex = endpoint.host_ifindex;
        let old = self.get(ip);
        if old.is_some_and(|old| old.host_ifindex != ifindex) {
            // The pod got a new veth: the old one's device and source slot go.
            self.remove(ip)?;
        }
        let slot = match old.filter(|old| old.host_ifindex == ifindex && old.slot != 0) {
            Some(old) => old.slot,
            None => self.new_slot()?,
        };
        let endpoint = Endpoint { slot, ..*endpoint };
        self.devs.insert(ifindex, ifindex, None, 0).map_err(|e| match e {
            XdpMapError::MapError(e) => access_err("insert", POD_DEVS, ifindex.to_string())(e),
            XdpMapError::ChainedProgramNotSupported => unreachable!("no chained program is passed"),
        })?;
        self.by_ip.insert(&EndpointKey { ip: ip.octets() }, &endpoint, 0).map_err(access_err(
            "insert",
            ENDPOINTS,
            ip.to_string(),
        ))?;
        let source = PodSource { ifindex, ip: ip.octets(), mac: endpoint.pod_mac, slot };
        self.set_source(ifindex, &source)
    }

    /// The lowest counter slot no endpoint holds, its counts zeroed.
    fn new_slot(&mut self) -> Result<u16, MapsError> {
        let taken: std::collections::HashSet<u16> = self.list().iter().map(|(_, ep)| ep.slot).collect();
        // One slot per endpoint the map holds: none free means the map is full.
        let slot = (1..POD_STATS_SLOTS as u16)
            .find(|s| !taken.contains(s))
            .ok_or(MapsError::Full { map: ENDPOINTS, capacity: POD_STATS_SLOTS - 1 })?;
        let zero = access_err("zero", POD_STATS, slot.to_string());
        let cpus = aya::util::nr_cpus().map_err(|(call, io_error)| {
            zero(MapError::SyscallError(aya::sys::SyscallError { call, io_error }))
        })?;
        let zeros = PerCpuValues::try_from(vec![PodStats::default(); cpus.get() as usize])
            .expect("one value per possible CPU");
        self.stats.set(u32::from(slot), zeros, 0).map_err(access_err("zero", POD_STATS, slot.to_string()))?;
        Ok(slot)
    }

    /// The traffic of the pod with counter slot `slot`, summed over the CPUs.
    pub fn stats(&self, slot: u16) -> Result<PodStats, MapsError> {
        let per_cpu =
            self.stats.get(&u32::from(slot), 0).map_err(access_err("read", POD_STATS, slot.to_string()))?;
        Ok(per_cpu.iter().fold(PodStats::default(), |sum, cpu| PodStats {
            to_pod_packets: sum.to_pod_packets + cpu.to_pod_packets,
            to_pod_bytes: sum.to_pod_bytes + cpu.to_pod_bytes,
            from_pod_packets: sum.from_pod_packets + cpu.from_pod_packets,
            from_pod_bytes: sum.from_pod_bytes + cpu.from_pod_bytes,
        }))
    }

    /// Writes the `POD_SOURCES` slot of `ifindex` (a slot another veth shares is taken over: that
    /// veth's frames are then checked against `ENDPOINTS`).
    pub fn set_source(&mut self, ifindex: u32, source: &PodSource) -> Result<(), MapsError> {
        let slot = source_slot(ifindex);
        self.sources.set(slot, source, 0).map_err(access_err("write", POD_SOURCES, slot.to_string()))
    }

    /// Removes a pod; one that is not there is fine.
    pub fn remove(&mut self, ip: Ipv4Addr) -> Result<(), MapsError> {
        let Some(endpoint) = self.get(ip) else {
            return Ok(());
        };
        self.by_ip.remove(&EndpointKey { ip: ip.octets() }).map_err(access_err(
            "remove",
            ENDPOINTS,
            ip.to_string(),
        ))?;
        let slot = source_slot(endpoint.host_ifindex);
        if self.sources.get(&slot, 0).is_ok_and(|s| s.ifindex == endpoint.host_ifindex) {
            self.set_source(endpoint.host_ifindex, &PodSource::default())?;
        }
        match self.devs.remove(endpoint.host_ifindex) {
            // The kernel drops a device's entry itself when the device goes.
            Err(MapError::KeyNotFound) | Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(access_err("remove", POD_DEVS, endpoint.host_ifindex.to_string())(e)),
        }
    }

    /// The pod with address `ip`, if there is one.
    pub fn get(&self, ip: Ipv4Addr) -> Option<Endpoint> {
        self.by_ip.get(&EndpointKey { ip: ip.octets() }, 0).ok()
    }

    /// Every endpoint, sorted by address.
    pub fn list(&self) -> Vec<(Ipv4Addr, Endpoint)> {
        let mut all: Vec<_> = self.by_ip.iter().flatten().map(|(k, v)| (Ipv4Addr::from(k.ip), v)).collect();
        all.sort_by_key(|(ip, _)| *ip);
        all
    }
}

/// Other nodes' pod CIDRs and the node that owns each.
pub struct Peers {
    trie: LpmTrie<MapData, Ipv4LpmData, Peer>,
    /// The generation of the programs' cached routing answers (`ROUTES`), which name peers:
    /// raised whenever the peers change, so a change reaches established traffic at once, not
    /// within the cache's second. `None` on maps from before the cache (until the next `up`).
    generation: Option<Array<MapData, u32>>,
}

fn key(cidr: Ipv4Net) -> Key<Ipv4LpmData> {
    Key::new(u32::from(cidr.prefix_len()), cidr.network().octets())
}

impl Peers {
    pub fn open(pins: &PinDir) -> Result<Self, MapsError> {
        Ok(Self {
            trie: open(pins, PEERS, Map::LpmTrie)?,
            generation: open(pins, ROUTE_GENERATION, Map::Array).ok(),
        })
    }

    /// Retires every cached routing answer: the programs ask the peers and the FIB again.
    fn forget_routes(&mut self) -> Result<(), MapsError> {
        if let Some(generation) = &mut self.generation {
            let next = generation.get(&0, 0).unwrap_or(0).wrapping_add(1);
            generation.set(0, &next, 0).map_err(access_err("write", ROUTE_GENERATION, "0".to_owned()))?;
        }
        Ok(())
    }

    /// Adds or replaces the peer owning `entry.pod_cidr`, and the peer's own address as a /32,
    /// so that pod-to-node traffic is routed too (and never masqueraded). Names longer than the
    /// map's field are refused by config validation before they get here.
    pub fn insert(&mut self, entry: &PeerNode) -> Result<(), MapsError> {
        let mut name = [0u8; PEER_NAME_MAX];
        name[..entry.name.len()].copy_from_slice(entry.name.as_bytes());
        let peer = Peer { node_ip: entry.ip.octets(), name };
        for cidr in [entry.pod_cidr, Ipv4Net::from(entry.ip)] {
            self.trie.insert(&key(cidr), &peer, 0).map_err(access_err("insert", PEERS, cidr.to_string()))?;
        }
        self.forget_routes()
    }

    /// Removes a peer (both of its entries).
    pub fn remove(&mut self, entry: &PeerNode) -> Result<(), MapsError> {
        for cidr in [entry.pod_cidr, Ipv4Net::from(entry.ip)] {
            self.trie.remove(&key(cidr)).map_err(access_err("remove", PEERS, cidr.to_string()))?;
        }
        self.forget_routes()
    }

    /// Every peer, sorted by name (its /32 node-address entry is implied).
    pub fn list(&self) -> Vec<PeerNode> {
        let mut all: Vec<PeerNode> = self
            .trie
            .iter()
            .flatten()
            .filter(|(k, v)| !(k.prefix_len() == 32 && k.data() == v.node_ip))
            .map(|(k, v)| {
                let name = v.name.split(|&b| b == 0).next().unwrap_or_default();
                PeerNode {
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

/// An LPM trie of IPv4 CIDRs, each with a value: the deny list, the uplink's admissions, the
/// destinations pods may never reach.
struct CidrMap<V: aya::Pod> {
    trie: LpmTrie<MapData, Ipv4LpmData, V>,
    name: &'static str,
}

impl<V: aya::Pod + PartialEq> CidrMap<V> {
    fn open(pins: &PinDir, name: &'static str) -> Result<Self, MapsError> {
        Ok(Self { trie: open(pins, name, Map::LpmTrie)?, name })
    }

    fn insert(&mut self, cidr: Ipv4Net, value: V) -> Result<(), MapsError> {
        self.trie.insert(&key(cidr), &value, 0).map_err(access_err("insert", self.name, cidr.to_string()))
    }

    fn remove(&mut self, cidr: Ipv4Net) -> Result<(), MapsError> {
        self.trie.remove(&key(cidr)).map_err(access_err("remove", self.name, cidr.to_string()))
    }

    /// Every entry, sorted by CIDR.
    fn list(&self) -> Vec<(Ipv4Net, V)> {
        let mut all: Vec<(Ipv4Net, V)> = self
            .trie
            .iter()
            .flatten()
            .filter_map(|(k, v)| {
                Some((Ipv4Net::new(Ipv4Addr::from(k.data()), k.prefix_len() as u8).ok()?, v))
            })
            .collect();
        all.sort_by_key(|(cidr, _)| *cidr);
        all
    }

    /// Makes the map hold exactly `wanted` (new values first, then what is not wanted goes).
    fn set(&mut self, wanted: &[(Ipv4Net, V)]) -> Result<(), MapsError> {
        for &(cidr, value) in wanted {
            self.insert(cidr, value)?;
        }
        for (cidr, _) in self.list() {
            if !wanted.iter().any(|(c, _)| *c == cidr) {
                self.remove(cidr)?;
            }
        }
        Ok(())
    }
}

/// Source CIDRs the uplink's XDP prefilter drops.
pub struct Deny(CidrMap<u32>);

impl Deny {
    pub fn open(pins: &PinDir) -> Result<Self, MapsError> {
        CidrMap::open(pins, DENY).map(Self)
    }

    pub fn insert(&mut self, cidr: Ipv4Net) -> Result<(), MapsError> {
        self.0.insert(cidr, 0)
    }

    pub fn remove(&mut self, cidr: Ipv4Net) -> Result<(), MapsError> {
        self.0.remove(cidr)
    }

    /// Every denied CIDR, sorted.
    pub fn list(&self) -> Vec<Ipv4Net> {
        self.0.list().into_iter().map(|(cidr, _)| cidr).collect()
    }
}

/// Who besides peers may reach pods from the uplink: admitted CIDRs (`[uplink] allow_from`)
/// and refused ones (sources that can only be forged), longest prefix wins.
pub struct UplinkAllow(CidrMap<u32>);

impl UplinkAllow {
    pub fn open(pins: &PinDir) -> Result<Self, MapsError> {
        CidrMap::open(pins, UPLINK_ALLOW).map(Self)
    }

    /// Makes the map hold exactly `admit` and `refuse` (a CIDR in both is refused).
    pub fn set(&mut self, admit: &[Ipv4Net], refuse: &[Ipv4Net]) -> Result<(), MapsError> {
        let wanted: Vec<(Ipv4Net, u32)> = admit
            .iter()
            .filter(|c| !refuse.contains(c))
            .map(|&c| (c, admission::ADMIT))
            .chain(refuse.iter().map(|&c| (c, admission::REFUSE)))
            .collect();
        self.0.set(&wanted)
    }

    /// The admitted CIDRs, sorted.
    pub fn admitted(&self) -> Vec<Ipv4Net> {
        self.0.list().into_iter().filter(|&(_, v)| v == admission::ADMIT).map(|(c, _)| c).collect()
    }
}

/// Destinations pods may never reach: networks, whole or some of their TCP and UDP ports, and
/// how many there are at most (the programs skip the trie when none).
pub struct PodDeny {
    trie: CidrMap<DeniedPorts>,
    count: Array<MapData, u32>,
}

impl PodDeny {
    pub fn open(pins: &PinDir) -> Result<Self, MapsError> {
        Ok(Self { trie: CidrMap::open(pins, POD_DENY)?, count: open(pins, POD_DENY_COUNT, Map::Array)? })
    }

    /// Makes the map hold exactly `wanted`. The count covers every entry at every moment: it
    /// rises before new entries go in, and falls only once old ones are out.
    pub fn set(&mut self, wanted: &[(Ipv4Net, DeniedPorts)]) -> Result<(), MapsError> {
        let before = self.trie.list().len();
        self.set_count(before + wanted.len())?;
        self.trie.set(wanted)?;
        self.set_count(wanted.len())
    }

    fn set_count(&mut self, n: usize) -> Result<(), MapsError> {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.count.set(0, &n, 0).map_err(access_err("write", POD_DENY_COUNT, "0".to_owned()))
    }

    /// Every entry, sorted by network.
    pub fn list(&self) -> Vec<(Ipv4Net, DeniedPorts)> {
        self.trie.list()
    }
}

/// The datapath's per-reason packet counters.
pub struct Counters(PerCpuArray<MapData, u64>);

impl Counters {
    pub fn open(pins: &PinDir) -> Result<Self, MapsError> {
        open(pins, COUNTERS, Map::PerCpuArray).map(Self)
    }

    /// Packets per reason, summed over CPUs, in [`Reason::ALL`] order; only the reasons the map
    /// has slots for (an older podnet's map, before `up` migrates it, has fewer).
    pub fn totals(&self) -> Result<Vec<(Reason, u64)>, MapsError> {
        Reason::ALL
            .iter()
            .filter(|&&reason| (reason as u32) < self.0.len())
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

/// The events' side of the datapath: whether a monitor listens, and what became of events.
pub struct EventMaps {
    monitor: Array<MapData, u64>,
    stats: PerCpuArray<MapData, u64>,
}

/// Events since the node came up, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EventTotals {
    /// Written to the ring buffer.
    pub sent: u64,
    /// Not written: the CPU was over its budget.
    pub rate_limited: u64,
    /// Not written: the ring buffer was full (its reader fell behind).
    pub ring_full: u64,
}

impl EventMaps {
    pub fn open(pins: &PinDir) -> Result<Self, MapsError> {
        Ok(Self {
            monitor: open(pins, MONITOR, Map::Array)?,
            stats: open(pins, EVENT_STATS, Map::PerCpuArray)?,
        })
    }

    /// Tells the programs that a monitor listens as of `now_ns` (`CLOCK_MONOTONIC`), or with 0
    /// that none does.
    pub fn set_listening(&mut self, now_ns: u64) -> Result<(), MapsError> {
        self.monitor.set(0, &now_ns, 0).map_err(access_err("write", MONITOR, "0".to_owned()))
    }

    pub fn totals(&self) -> Result<EventTotals, MapsError> {
        let slot = |n: u32| -> Result<u64, MapsError> {
            Ok(self.stats.get(&n, 0).map_err(access_err("read", EVENT_STATS, n.to_string()))?.iter().sum())
        };
        Ok(EventTotals {
            sent: slot(events::SENT)?,
            rate_limited: slot(events::RATE_LIMITED)?,
            ring_full: slot(events::RING_FULL)?,
        })
    }
}

/// The datapath's NAT settings.
pub struct NatSettings(Array<MapData, NatConfig>);

impl NatSettings {
    pub fn open(pins: &PinDir) -> Result<Self, MapsError> {
        open(pins, NAT_CONFIG, Map::Array).map(Self)
    }

    pub fn get(&self) -> Result<NatConfig, MapsError> {
        self.0.get(&0, 0).map_err(access_err("read", NAT_CONFIG, "0".to_owned()))
    }

    pub fn set(&mut self, config: &NatConfig) -> Result<(), MapsError> {
        self.0.set(0, config, 0).map_err(access_err("write", NAT_CONFIG, "0".to_owned()))
    }
}

//! The translation tables (TCP, and UDP with ICMP), their locks and their pressure signal.

use aya::maps::{Array, HashMap, Map, MapData};
use podnet_common::{
    CtEntry, CtKey,
    maps::{CT_IN, CT_OUT, CT_TCP_IN, CT_TCP_OUT, NAT_LOCKS, NAT_PRESSURE},
    proto,
};

use super::{MapsError, open};
use crate::datapath::PinDir;

/// One protocol family's translation tables (TCP, or UDP and ICMP).
struct CtTables {
    out: HashMap<MapData, CtKey, CtEntry>,
    inbound: HashMap<MapData, CtKey, CtEntry>,
    /// Node ports the table can claim (the reply side's size).
    capacity: u32,
    /// Pod-side entries it has room for.
    pod_side_capacity: u32,
}

impl CtTables {
    fn open(pins: &PinDir, out: &'static str, inbound: &'static str) -> Result<Self, MapsError> {
        Ok(Self {
            out: open(pins, out, Map::HashMap)?,
            inbound: open(pins, inbound, Map::HashMap)?,
            capacity: max_entries(pins, inbound)?,
            pod_side_capacity: max_entries(pins, out)?,
        })
    }
}

/// The number of entries pinned map `name` was made for.
fn max_entries(pins: &PinDir, name: &str) -> Result<u32, MapsError> {
    let path = pins.map(name);
    MapData::from_pin(&path)
        .and_then(|data| data.info())
        .map(|info| info.max_entries())
        .map_err(|source| MapsError::Open { path: path.display().to_string(), source: source.into() })
}

/// The translation tables: TCP, and UDP with ICMP.
pub struct Conntrack {
    tcp: CtTables,
    other: CtTables,
    /// Claims being taken over or removed (see [`podnet_common::maps::NAT_LOCKS`]), with when.
    locks: HashMap<MapData, CtKey, u64>,
}

/// One translation: the pod-side key and entry, and the reply-side key and entry (the latter
/// `None` if it is gone).
pub type CtPair = (CtKey, CtEntry, CtKey, Option<CtEntry>);

/// `BPF_NOEXIST`.
const NOEXIST: u64 = 1;

/// How full one translation table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TableUse {
    pub table: &'static str,
    /// Reply-side entries: node ports claimed.
    pub entries: usize,
    pub capacity: u32,
    /// Pod-side entries: one per claim, and those that outlived theirs until the agent collects
    /// them. New connections are refused when either side is full.
    pub pod_sides: usize,
    pub pod_side_capacity: u32,
}

impl Conntrack {
    pub fn open(pins: &PinDir) -> Result<Self, MapsError> {
        Ok(Self {
            tcp: CtTables::open(pins, CT_TCP_OUT, CT_TCP_IN)?,
            other: CtTables::open(pins, CT_OUT, CT_IN)?,
            locks: open(pins, NAT_LOCKS, Map::HashMap)?,
        })
    }

    /// Every translation, from the pod side.
    pub fn pairs(&self) -> Vec<CtPair> {
        [&self.tcp, &self.other]
            .into_iter()
            .flat_map(|t| {
                t.out.iter().flatten().map(|(key, entry)| {
                    let reply = key.reply(entry.addr, entry.port);
                    (key, entry, reply, t.inbound.get(&reply, 0).ok().filter(|r| r.holds(&key)))
                })
            })
            .collect()
    }

    /// Reply sides whose pod side is gone (deleted by hand, or not carried over), with the
    /// pod-side key they belong to.
    pub fn orphans(&self) -> Vec<(CtKey, CtEntry, CtKey)> {
        [&self.tcp, &self.other]
            .into_iter()
            .flat_map(|t| {
                t.inbound.iter().flatten().filter_map(|(reply, entry)| {
                    let pod = reply.pod_side(entry.addr, entry.port);
                    t.out.get(&pod, 0).is_err().then_some((reply, entry, pod))
                })
            })
            .collect()
    }

    /// Removes one translation (both directions; either may already be gone). A reply side
    /// that another connection holds now is not this translation's and stays.
    pub fn remove(&mut self, out: &CtKey, reply: &CtKey) {
        self.remove_if(out, reply, |_, _| true);
    }

    /// Removes translation `out`/`reply` if `unchanged` says both sides (as they are now, the
    /// reply side only if it is still this translation's) are as they were read; whether it did.
    /// Under the reply key's lock, so the datapath cannot take the claim over meanwhile; a claim
    /// being taken over is left for the next round.
    pub fn remove_if(
        &mut self,
        out: &CtKey,
        reply: &CtKey,
        unchanged: impl Fn(Option<CtEntry>, Option<CtEntry>) -> bool,
    ) -> bool {
        if self.locks.insert(reply, &crate::datapath::nat::now_ns(), NOEXIST).is_err() {
            return false;
        }
        let t = if out.proto == proto::TCP { &mut self.tcp } else { &mut self.other };
        let now_out = t.out.get(out, 0).ok();
        let now_reply = t.inbound.get(reply, 0).ok().filter(|r| r.holds(out));
        let removed = unchanged(now_out, now_reply);
        if removed {
            // The claim first: a connection that comes back in between makes a new one.
            if now_reply.is_some() {
                let _ = t.inbound.remove(reply);
            }
            let _ = t.out.remove(out);
        }
        let _ = self.locks.remove(reply);
        removed
    }

    /// Removes locks held longer than `stale_ns` (by a process that died holding one: the
    /// datapath and the agent hold theirs for microseconds); returns how many.
    pub fn clear_stale_locks(&mut self, stale_ns: u64) -> usize {
        let now = crate::datapath::nat::now_ns();
        let stale: Vec<CtKey> = self
            .locks
            .iter()
            .flatten()
            .filter(|(_, since)| now.saturating_sub(*since) > stale_ns)
            .map(|(key, _)| key)
            .collect();
        stale.iter().filter(|key| self.locks.remove(key).is_ok()).count()
    }

    /// Removes the translations whose pod side `out` matches (both directions), and reply
    /// entries `reply` matches whose pod side is gone; returns how many translations went.
    pub fn remove_where(
        &mut self,
        out: impl Fn(&CtKey, &CtEntry) -> bool,
        reply: impl Fn(&CtKey, &CtEntry) -> bool,
    ) -> usize {
        let pairs: Vec<CtPair> = self.pairs().into_iter().filter(|(k, e, _, _)| out(k, e)).collect();
        for (out, _, reply, _) in &pairs {
            self.remove(out, reply);
        }
        for (key, entry, pod) in self.orphans() {
            if reply(&key, &entry) {
                self.remove(&pod, &key);
            }
        }
        pairs.len()
    }

    /// Removes every entry of the tables; returns how many translations there were.
    pub fn flush(&mut self) -> usize {
        self.remove_where(|_, _| true, |_, _| true)
    }

    /// How full each table is.
    pub fn usage(&self) -> [TableUse; 2] {
        let of = |table, t: &CtTables| TableUse {
            table,
            entries: t.inbound.keys().flatten().count(),
            capacity: t.capacity,
            pod_sides: t.out.keys().flatten().count(),
            pod_side_capacity: t.pod_side_capacity,
        };
        [of("tcp", &self.tcp), of("udp_icmp", &self.other)]
    }
}

/// When a new connection last found each translation table full (see
/// [`podnet_common::maps::NAT_PRESSURE`]).
pub struct NatPressure(Array<MapData, u64>);

impl NatPressure {
    pub fn open(pins: &PinDir) -> Result<Self, MapsError> {
        open(pins, NAT_PRESSURE, Map::Array).map(Self)
    }

    /// The latest time (`bpf_ktime_get_ns`) a table was found full; 0 when never.
    pub fn latest(&self) -> u64 {
        self.0.iter().flatten().max().unwrap_or(0)
    }
}

//! Upgrading a node's pinned maps in place, while the old programs keep forwarding.
//!
//! Every map carries a layout stamp ([`podnet_common::maps::LAYOUTS`], see
//! [`PinDir::stamped_version`]). Before the object is loaded, a pinned map stamped with another
//! version, or one the loader finds incompatible (type, key or value size, capacity, flags), is
//! set aside under `old/` instead of making `up` fail: the programs attached now keep using it,
//! and the loader pins a fresh map in its place. Its entries are carried into the new map before
//! any new program is attached ([`carry`]); once every program is swapped, [`finish`] carries what
//! the old programs added meanwhile (translations, counts) and unpins the old map. When the new
//! programs cannot be loaded, the old maps go back ([`restore`]); an `up` that fails later leaves
//! `old/` where it is, and the next one carries from it again. Carrying never overwrites: an entry
//! the new map holds already stays.

use std::path::Path;

use aya::maps::{Array, DevMapHash, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use podnet_common::{
    CtEntry, CtKey, Endpoint, EndpointKey, Ipv4LpmData, Peer, PodSource, Reason,
    maps::{
        COUNTERS, CT_IN, CT_OUT, CT_TCP_IN, CT_TCP_OUT, DENY, ENDPOINTS, LAYOUTS, NAT_CONFIG, NAT_PRESSURE,
        PEERS, POD_DEVS, POD_SOURCES, UPLINK_ALLOW,
    },
    proto,
};
use tracing::{info, warn};

use super::{DatapathError, PinDir};

/// `BPF_NOEXIST`: insert only where the key is absent.
const NOEXIST: u64 = 1;

/// Counter slots whose meaning changed, with the `COUNTERS` layout version that changed it: a
/// count made under the old meaning is not carried into the new one.
const COUNTER_SLOTS_CHANGED: [(u32, u32); 1] = [(2, Reason::DropNotNatable as u32)];

/// Sets aside every pinned map whose stamp is not the layout this podnet expects (a map without
/// a stamp is podnet 0.1's, version 1).
pub(super) fn set_aside_stale(pins: &PinDir) -> Result<(), DatapathError> {
    for layout in LAYOUTS {
        let (name, version) = (layout.name, layout.version);
        if !pins.map(name).exists() {
            continue;
        }
        let found = pins.stamped_version(name).unwrap_or(1);
        if found != version {
            info!("map {name}: layout v{found} is set aside for migration to v{version}");
            pins.set_aside(name, found)?;
        }
    }
    Ok(())
}

/// Sets aside pinned map `name`, which the loader cannot reuse (`why`).
pub(super) fn set_aside_incompatible(pins: &PinDir, name: &str, why: &str) -> Result<(), DatapathError> {
    let version = pins.stamped_version(name).unwrap_or(1);
    info!("map {name}: {why}; set aside for migration");
    pins.set_aside(name, version)
}

/// Undoes [`set_aside_stale`] and [`set_aside_incompatible`] when the new programs cannot be
/// loaded: each map this load set aside (not those in `unfinished`, set aside by an earlier `up`)
/// goes back to its name and stamp; the map pinned in its place, which no program uses, goes.
pub(super) fn restore(pins: &PinDir, unfinished: &[(String, u32)]) -> Result<(), DatapathError> {
    for (name, version) in pins.maps_set_aside().into_iter().filter(|m| !unfinished.contains(m)) {
        super::pins::remove_file(&pins.map(&name))?;
        let from = pins.set_aside_map(&name, version);
        std::fs::rename(&from, pins.map(&name)).map_err(super::pins::fs_err("rename", &from))?;
        pins.stamp(&name, version)?;
        warn!("map {name}: migration abandoned, layout v{version} restored");
    }
    Ok(())
}

/// Stamps every map with the layout version it now has.
pub(super) fn stamp_all(pins: &PinDir) -> Result<(), DatapathError> {
    LAYOUTS.into_iter().try_for_each(|layout| pins.stamp(layout.name, layout.version))
}

/// Carries the set-aside maps' entries into the new ones, before any new program runs.
/// Counters wait for [`finish`]: the old programs still count until then.
pub(super) fn carry(pins: &PinDir) -> Result<(), DatapathError> {
    for (name, version) in pins.maps_set_aside() {
        if name != COUNTERS {
            copy(pins, &name, version);
        }
        if !WRITTEN_BY_PROGRAMS.contains(&name.as_str()) {
            // Only userspace writes it, and only through the new map from now on: unpinned, so a
            // later carry cannot bring back what is deleted meanwhile (the old programs keep
            // their own reference until they are swapped).
            super::pins::remove_file(&pins.set_aside_map(&name, version))?;
        }
    }
    Ok(())
}

/// The maps the programs write (translations, counts): carried once more by [`finish`].
const WRITTEN_BY_PROGRAMS: [&str; 5] = [CT_OUT, CT_IN, CT_TCP_OUT, CT_TCP_IN, COUNTERS];

/// Completes a migration once every program is the new one: carries the translations the old
/// programs made since [`carry`] and the counts, then unpins the old maps. (The caller removes
/// translations the new settings no longer allow afterwards.)
pub fn finish(pins: &PinDir) -> Result<(), DatapathError> {
    for (name, version) in pins.maps_set_aside() {
        if WRITTEN_BY_PROGRAMS.contains(&name.as_str()) {
            copy(pins, &name, version);
        }
        super::pins::remove_file(&pins.set_aside_map(&name, version))?;
        info!("map {name}: migrated from layout v{version}");
    }
    Ok(())
}

/// Copies what fits of set-aside map `name` (layout `version`) into the pinned one, logging how
/// much. A layout it cannot read (other key or value sizes) starts empty, with a warning.
fn copy(pins: &PinDir, name: &str, version: u32) {
    let (old, new) = (pins.set_aside_map(name, version), pins.map(name));
    let copied = match name {
        ENDPOINTS => copy_hash::<EndpointKey, Endpoint>(&old, &new),
        // Up to v1, one pair of tables held every protocol: TCP goes to its own now.
        CT_OUT | CT_IN => {
            let tcp = if name == CT_OUT { CT_TCP_OUT } else { CT_TCP_IN };
            copy_translations(&old, &new, &pins.map(tcp))
        }
        CT_TCP_OUT | CT_TCP_IN => copy_hash::<CtKey, CtEntry>(&old, &new),
        // Written by `up` before any program runs.
        NAT_CONFIG | NAT_PRESSURE => Ok(Copied::default()),
        PEERS => copy_trie::<Peer>(&old, &new),
        DENY | UPLINK_ALLOW => copy_trie::<u32>(&old, &new),
        POD_SOURCES => copy_array::<PodSource>(&old, &new),
        POD_DEVS => copy_devs(&old, &new),
        COUNTERS => add_counters(&old, &new, version),
        _ => Ok(Copied::default()),
    };
    match copied {
        Ok(Copied { entries, refused: 0 }) => {
            info!("map {name}: {entries} entries carried over from v{version}")
        }
        Ok(Copied { entries, refused }) => {
            warn!("map {name}: {entries} entries carried over from v{version}, {refused} did not fit")
        }
        Err(e) => warn!("map {name}: layout v{version} cannot be carried over ({e}); it starts empty"),
    }
}

#[derive(Debug, Default)]
struct Copied {
    entries: usize,
    /// Entries the new map refused (full, or the key is no longer valid).
    refused: usize,
}

impl Copied {
    fn count(&mut self, result: Result<(), MapError>) {
        match result {
            Ok(()) => self.entries += 1,
            // Present already: the new map's entry is newer.
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(_) => self.refused += 1,
        }
    }
}

fn open<T: TryFrom<Map, Error = MapError>>(path: &Path, kind: fn(MapData) -> Map) -> Result<T, MapError> {
    T::try_from(kind(MapData::from_pin(path)?))
}

fn copy_hash<K: aya::Pod, V: aya::Pod>(old: &Path, new: &Path) -> Result<Copied, MapError> {
    copy_hash_by::<K, V>(old, &[new], |_| 0)
}

/// Translations of an old table into the new one of their protocol family.
fn copy_translations(old: &Path, other: &Path, tcp: &Path) -> Result<Copied, MapError> {
    copy_hash_by::<CtKey, CtEntry>(old, &[other, tcp], |k| usize::from(k.proto == proto::TCP))
}

/// Copies hash `old` into `targets`, each entry into the one `pick` names.
fn copy_hash_by<K: aya::Pod, V: aya::Pod>(
    old: &Path,
    targets: &[&Path],
    pick: impl Fn(&K) -> usize,
) -> Result<Copied, MapError> {
    let from: HashMap<MapData, K, V> = open(old, Map::HashMap)?;
    let mut to: Vec<HashMap<MapData, K, V>> =
        targets.iter().map(|path| open(path, Map::HashMap)).collect::<Result<_, _>>()?;
    let mut copied = Copied::default();
    for (k, v) in from.iter().flatten() {
        copied.count(to[pick(&k)].insert(&k, &v, NOEXIST));
    }
    Ok(copied)
}

fn copy_trie<V: aya::Pod>(old: &Path, new: &Path) -> Result<Copied, MapError> {
    let from: LpmTrie<MapData, Ipv4LpmData, V> = open(old, Map::LpmTrie)?;
    let mut to: LpmTrie<MapData, Ipv4LpmData, V> = open(new, Map::LpmTrie)?;
    let mut copied = Copied::default();
    for (k, v) in from.iter().flatten() {
        copied.count(to.insert(&k, &v, NOEXIST));
    }
    Ok(copied)
}

/// Arrays have every slot: a slot is "absent" while it holds the default value.
fn copy_array<V: aya::Pod + Default + PartialEq>(old: &Path, new: &Path) -> Result<Copied, MapError> {
    let from: Array<MapData, V> = open(old, Map::Array)?;
    let mut to: Array<MapData, V> = open(new, Map::Array)?;
    let mut copied = Copied::default();
    for (slot, v) in (0..from.len().min(to.len())).zip(from.iter().flatten()) {
        if v != V::default() && to.get(&slot, 0)? == V::default() {
            copied.count(to.set(slot, &v, 0));
        }
    }
    Ok(copied)
}

fn copy_devs(old: &Path, new: &Path) -> Result<Copied, MapError> {
    let from: DevMapHash<MapData> = open(old, Map::DevMapHash)?;
    let mut to: DevMapHash<MapData> = open(new, Map::DevMapHash)?;
    let mut copied = Copied::default();
    for (ifindex, dev) in from.iter().flatten() {
        copied.count(to.insert(ifindex, dev.if_index, None, NOEXIST).map_err(|e| match e {
            aya::maps::xdp::XdpMapError::MapError(e) => e,
            aya::maps::xdp::XdpMapError::ChainedProgramNotSupported => {
                unreachable!("no chained program is passed")
            }
        }));
    }
    Ok(copied)
}

/// Adds the old counts to the new map's, slot by slot and CPU by CPU, except slots whose meaning
/// changed since layout `version`.
fn add_counters(old: &Path, new: &Path, version: u32) -> Result<Copied, MapError> {
    let from: PerCpuArray<MapData, u64> = open(old, Map::PerCpuArray)?;
    let mut to: PerCpuArray<MapData, u64> = open(new, Map::PerCpuArray)?;
    let mut copied = Copied::default();
    for slot in 0..from.len().min(to.len()) {
        if COUNTER_SLOTS_CHANGED.iter().any(|&(changed_in, s)| s == slot && changed_in > version) {
            continue;
        }
        let (was, now) = (from.get(&slot, 0)?, to.get(&slot, 0)?);
        let sum: Vec<u64> = was.iter().zip(now.iter()).map(|(a, b)| a + b).collect();
        copied.count(PerCpuValues::try_from(sum).map_err(MapError::from).and_then(|v| to.set(slot, v, 0)));
    }
    Ok(copied)
}

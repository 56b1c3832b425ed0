//! Map names (as the kernel and bpftool show them, at most 15 bytes), capacities and layouts:
//! the one place both sides take them from.

use crate::{
    CachedRoute, CtEntry, CtKey, DeniedPorts, Endpoint, EndpointKey, Event, EventBudget, FragEntry, FragKey,
    Ipv4LpmData, NatConfig, Peer, Pending, PodSource, PodStats, Reason,
    maps::MapKind::{Array, DevMapHash, Hash, LpmTrie, LruHash, PerCpuArray, ProgArray, RingBuf},
};

/// Local pods by IPv4 address: [`crate::EndpointKey`] -> [`crate::Endpoint`].
pub const ENDPOINTS: &str = "ENDPOINTS";
/// Capacity of [`ENDPOINTS`]: pods one node can hold.
pub const ENDPOINTS_MAX: usize = 1024;
/// Host-side veths of local pods (devmap hash): ifindex -> the same ifindex; the targets of
/// XDP redirects from the uplink (`uplink_deliver`).
pub const POD_DEVS: &str = "POD_DEVS";
/// Who sends on each pod's host veth (array): slot `ifindex % POD_SOURCES_MAX` ->
/// [`crate::PodSource`]. The source check of every pod frame reads it: an array lookup is an
/// offset, where a hash lookup costs tens of nanoseconds.
pub const POD_SOURCES: &str = "POD_SOURCES";
/// Slots of [`POD_SOURCES`]; veths whose ifindex shares a slot fall back to [`ENDPOINTS`].
pub const POD_SOURCES_MAX: usize = 65536;
/// Per-CPU packet counters indexed by [`crate::Reason`].
pub const COUNTERS: &str = "COUNTERS";
/// Other nodes' pod CIDRs (LPM trie): [`crate::Ipv4LpmData`] -> [`crate::Peer`].
pub const PEERS: &str = "PEERS";
/// Capacity of [`PEERS`]: nodes in one cluster.
pub const PEERS_MAX: usize = 1024;
/// What the kernel FIB said about pods' packets (a cache the programs fill and refresh once
/// a second): a per-CPU array of [`crate::CachedRoute`], each (pod, destination) in slot
/// [`crate::route_slot`] of its [`crate::RouteKey`] (direct-mapped: a newer pair takes the
/// slot over).
pub const ROUTES: &str = "ROUTES";
/// Bits of a [`ROUTES`] slot number.
pub const ROUTES_SLOT_BITS: u32 = 12;
/// Slots of [`ROUTES`] per CPU: (pod, destination) pairs routed without asking the FIB
/// again, as far as their slots do not collide.
pub const ROUTES_SLOTS: usize = 1 << ROUTES_SLOT_BITS;
/// The peers' generation (array, one `u32`): userspace raises it after changing [`PEERS`],
/// and cached routes of another generation are not used.
pub const ROUTE_GENERATION: &str = "ROUTE_GENERATION";
/// NAT settings, one [`crate::NatConfig`] at index 0.
pub const NAT_CONFIG: &str = "NAT_CONFIG";
/// UDP and ICMP translations, pod side (hash, twice the size of [`CT_IN`]):
/// [`crate::CtKey`] of the pod's packet -> [`crate::CtEntry`] holding the node's address and
/// port.
pub const CT_OUT: &str = "CT_OUT";
/// UDP and ICMP translations, reply side (hash, never evicted: an entry is the claim on a
/// node port toward one remote, given up only when the translation expires):
/// [`crate::CtKey`] of a reply as it arrives at the node -> [`crate::CtEntry`] holding the
/// pod's address and port.
pub const CT_IN: &str = "CT_IN";
/// TCP translations, pod side, as [`CT_OUT`]; TCP has tables of its own, so a flood of
/// other protocols cannot crowd out established connections.
pub const CT_TCP_OUT: &str = "CT_TCP_OUT";
/// TCP translations, reply side, as [`CT_IN`].
pub const CT_TCP_IN: &str = "CT_TCP_IN";
/// Default capacity of each translation table (`[nat] tcp_table`, `udp_icmp_table`).
pub const CT_MAX: usize = 65536;
/// When a new connection last found a translation table full (array, CLOCK_MONOTONIC ns):
/// slot [`PRESSURE_OTHER`] for UDP and ICMP, [`PRESSURE_TCP`] for TCP. The agent watches it
/// and collects at once.
pub const NAT_PRESSURE: &str = "NAT_PRESSURE";
pub const PRESSURE_OTHER: u32 = 0;
pub const PRESSURE_TCP: u32 = 1;
/// Fragmented datagrams being translated (LRU hash): [`crate::FragKey`] of a datagram as
/// it arrives -> [`crate::FragEntry`], the address its later fragments get. The first
/// fragment (the one with the ports) is translated as any packet and records it.
pub const NAT_FRAGS: &str = "NAT_FRAGS";
/// Capacity of [`NAT_FRAGS`]: datagrams in flight at once.
pub const FRAGS_MAX: usize = 8192;
/// Reply-side keys being taken over or removed (hash): [`crate::CtKey`] -> 0. Whoever inserts
/// a key first (`BPF_NOEXIST`: the datapath taking over an expired claim, the agent removing
/// one) acts on that claim; the others leave it alone until the key is gone again.
pub const NAT_LOCKS: &str = "NAT_LOCKS";
pub const LOCKS_MAX: usize = 1024;
/// Denied source CIDRs (LPM trie): [`crate::Ipv4LpmData`] key -> `u32` (reserved, 0).
pub const DENY: &str = "DENY";
/// Capacity of [`DENY`].
pub const DENY_MAX: usize = 4096;
/// Who may reach pods from the uplink besides peers (LPM trie): [`crate::Ipv4LpmData`] key
/// -> [`crate::Admission`]. `[uplink] allow_from` CIDRs are admitted; the node's own pod
/// CIDR is refused (nothing from the outside may pose as a local pod).
pub const UPLINK_ALLOW: &str = "UPLINK_ALLOW";
/// Capacity of [`UPLINK_ALLOW`].
pub const UPLINK_ALLOW_MAX: usize = 1024;
/// Destinations pods may never reach (LPM trie): [`crate::Ipv4LpmData`] key ->
/// [`crate::DeniedPorts`]. The node's control endpoints (its metrics, etcd) and `[isolation]
/// pods_never_reach`; `from_pod` drops what matches before it routes or translates.
pub const POD_DENY: &str = "POD_DENY";
/// Capacity of [`POD_DENY`].
pub const POD_DENY_MAX: usize = 1024;
/// How many entries [`POD_DENY`] holds, at most (array, one `u32`): 0 lets the programs skip
/// the trie (a lookup in an empty trie still costs a helper call on every packet).
pub const POD_DENY_COUNT: &str = "POD_DENY_COUNT";
/// Per-pod traffic (per-CPU array): the [`crate::Endpoint`]'s slot -> [`crate::PodStats`].
/// Slot 0 belongs to no pod.
pub const POD_STATS: &str = "POD_STATS";
pub const POD_STATS_SLOTS: usize = ENDPOINTS_MAX + 1;
/// Drop and new-translation events for `podnet monitor` (ring buffer of [`crate::Event`]).
pub const EVENTS: &str = "EVENTS";
/// Bytes of [`EVENTS`]: about 5000 events.
pub const EVENTS_BYTES: usize = 256 * 1024;
/// When `podnet monitor` last said it listens (array, one `bpf_ktime_get_ns` value): the
/// programs write events only within [`crate::events::LISTENER_TTL_NS`] of it.
pub const MONITOR: &str = "MONITOR";
/// What became of events (per-CPU array, [`crate::events`] slots).
pub const EVENT_STATS: &str = "EVENT_STATS";
/// The per-CPU token bucket that rate-limits events (per-CPU array, one [`crate::EventBudget`]).
pub const EVENT_BUDGET: &str = "EVENT_BUDGET";
/// The event a program hands its logger, with the packet's action (per-CPU array of
/// [`crate::Pending`]).
pub const PENDING: &str = "PENDING";

/// Where podnet pins its objects on bpffs; each node gets a directory named after it.
pub const PIN_ROOT: &str = "/sys/fs/bpf/podnet";

/// A kind of BPF map, by its `bpf_map_type` number.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Hash = 1,
    Array = 2,
    ProgArray = 3,
    PerCpuArray = 6,
    LruHash = 9,
    LpmTrie = 11,
    DevMapHash = 25,
    RingBuf = 27,
}

/// A pinned map as podnet means it: its name, the version of its layout, and the kind, key and
/// value sizes and capacity the kernel object declares (checked against the built object by
/// `cargo xtask lint`, with a fingerprint of the key and value types in `podnet-common/abi.txt`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub name: &'static str,
    /// What its keys and values mean: goes up whenever that meaning changes, even when its sizes
    /// do not (a counter slot that now counts something else), so `podnet up` can tell an old
    /// map from a current one and migrate it. Version 1 is the layout of podnet 0.1, whose maps
    /// carry no version.
    pub version: u32,
    pub kind: MapKind,
    /// Bytes of a key and of a value as the object declares them (a per-CPU map's value is one
    /// CPU's; a ring buffer's value is its record).
    pub key_size: usize,
    pub value_size: usize,
    /// Capacity in the object (the loader may size translation tables otherwise).
    pub max_entries: u32,
}

const fn layout<K, V>(name: &'static str, version: u32, kind: MapKind, max_entries: usize) -> Layout {
    Layout {
        name,
        version,
        kind,
        key_size: size_of::<K>(),
        value_size: size_of::<V>(),
        max_entries: max_entries as u32,
    }
}

/// An LPM-trie key: the prefix length in bits, then the data.
type LpmKey = (u32, Ipv4LpmData);
/// A devmap's value: the device's ifindex and an XDP program id (0: none).
type DevMapValue = (u32, u32);

/// Every pinned map, with its layout (see [`Layout`]).
pub const LAYOUTS: [Layout; 26] = [
    layout::<EndpointKey, Endpoint>(ENDPOINTS, 1, Hash, ENDPOINTS_MAX),
    layout::<u32, DevMapValue>(POD_DEVS, 1, DevMapHash, ENDPOINTS_MAX),
    layout::<u32, PodSource>(POD_SOURCES, 1, Array, POD_SOURCES_MAX),
    // 2: 64 slots (was one per reason, 20); slot 15 counts drop_not_natable (was
    // pass_not_natable).
    layout::<u32, u64>(COUNTERS, 2, PerCpuArray, Reason::SLOTS),
    layout::<LpmKey, Peer>(PEERS, 1, LpmTrie, PEERS_MAX),
    // 2: idle timeouts added. 3: the node's pod CIDR added.
    layout::<u32, NatConfig>(NAT_CONFIG, 3, Array, 1),
    // 2: UDP and ICMP only (TCP moved to CT_TCP_OUT / CT_TCP_IN); CT_IN is no longer LRU.
    layout::<CtKey, CtEntry>(CT_OUT, 2, Hash, CT_MAX),
    layout::<CtKey, CtEntry>(CT_IN, 2, Hash, CT_MAX),
    layout::<CtKey, CtEntry>(CT_TCP_OUT, 1, Hash, CT_MAX),
    layout::<CtKey, CtEntry>(CT_TCP_IN, 1, Hash, CT_MAX),
    layout::<u32, u64>(NAT_PRESSURE, 1, Array, 2),
    layout::<FragKey, FragEntry>(NAT_FRAGS, 1, LruHash, FRAGS_MAX),
    layout::<CtKey, u64>(NAT_LOCKS, 1, Hash, LOCKS_MAX),
    layout::<LpmKey, u32>(DENY, 1, LpmTrie, DENY_MAX),
    layout::<LpmKey, u32>(UPLINK_ALLOW, 1, LpmTrie, UPLINK_ALLOW_MAX),
    layout::<LpmKey, DeniedPorts>(POD_DENY, 1, LpmTrie, POD_DENY_MAX),
    layout::<u32, u32>(POD_DENY_COUNT, 1, Array, 1),
    layout::<u32, PodStats>(POD_STATS, 1, PerCpuArray, POD_STATS_SLOTS),
    layout::<u32, u64>(MONITOR, 1, Array, 1),
    layout::<u32, u64>(EVENT_STATS, 1, PerCpuArray, crate::events::STATS),
    layout::<u32, EventBudget>(EVENT_BUDGET, 1, PerCpuArray, 1),
    layout::<u32, u32>(crate::programs::LOGGERS, 1, ProgArray, 1),
    layout::<u32, Pending>(PENDING, 1, PerCpuArray, 1),
    // 2: a per-CPU array, direct-mapped (was an LRU hash keyed by `RouteKey`).
    layout::<u32, CachedRoute>(ROUTES, 2, PerCpuArray, ROUTES_SLOTS),
    layout::<u32, u32>(ROUTE_GENERATION, 1, Array, 1),
    // A ring buffer declares no key; its capacity is in bytes.
    layout::<(), Event>(EVENTS, 1, RingBuf, EVENTS_BYTES),
];

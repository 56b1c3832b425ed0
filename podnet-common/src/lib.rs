//! Types and constants shared by podnet's kernel programs (`podnet-ebpf`) and its loader
//! (`podnet`). Everything here is `no_std`, `#[repr(C)]`, `Copy` and free of implicit padding, so
//! both sides agree on the bytes and `bpftool` can print the maps with field names from BTF.
#![cfg_attr(not(test), no_std)]

/// Names of the kernel programs in the eBPF object.
pub mod programs {
    /// tc (tcx) ingress on the host side of every pod veth: packets leaving a pod.
    pub const FROM_POD: &str = "from_pod";
    /// tc (tcx) ingress on the node's uplink: packets from other nodes and the outside.
    pub const FROM_UPLINK: &str = "from_uplink";
    /// XDP on the node's uplink: drops deny-listed sources and malformed frames first.
    pub const UPLINK_FILTER: &str = "uplink_filter";
    /// XDP on the node's uplink, `[uplink] xdp_deliver = true`: the prefilter, then frames for
    /// local pods are redirected to the pod's veth at XDP instead of going on to tc.
    pub const UPLINK_DELIVER: &str = "uplink_deliver";
    /// Tail-called by the tc programs to write a log line (loaded only with a log level).
    pub const LOG_TC: &str = "log_tc";
    /// The program array the logger is put in.
    pub const LOGGERS: &str = "LOGGERS";
}

/// Map names (as the kernel and bpftool show them, at most 15 bytes) and sizes.
pub mod maps {
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
    /// The event a program hands its logger, with the packet's action (per-CPU array; the
    /// kernel side's own type).
    pub const PENDING: &str = "PENDING";

    /// Every pinned map with the version of its layout: what its keys and values mean. A map's
    /// version goes up whenever that meaning changes, even when its sizes do not (a counter slot
    /// that now counts something else), so `podnet up` can tell an old map from a current one and
    /// migrate it. Version 1 is the layout of podnet 0.1, whose maps carry no version.
    pub const LAYOUTS: [(&str, u32); 23] = [
        (ENDPOINTS, 1),
        (POD_DEVS, 1),
        (POD_SOURCES, 1),
        // 2: 64 slots (was one per reason, 20); slot 15 counts drop_not_natable (was
        // pass_not_natable).
        (COUNTERS, 2),
        (PEERS, 1),
        // 2: idle timeouts added. 3: the node's pod CIDR added.
        (NAT_CONFIG, 3),
        // 2: UDP and ICMP only (TCP moved to CT_TCP_OUT / CT_TCP_IN); CT_IN is no longer LRU.
        (CT_OUT, 2),
        (CT_IN, 2),
        (CT_TCP_OUT, 1),
        (CT_TCP_IN, 1),
        (NAT_PRESSURE, 1),
        (NAT_FRAGS, 1),
        (NAT_LOCKS, 1),
        (DENY, 1),
        (UPLINK_ALLOW, 1),
        (POD_STATS, 1),
        (MONITOR, 1),
        (EVENT_STATS, 1),
        (EVENT_BUDGET, 1),
        (crate::programs::LOGGERS, 1),
        (PENDING, 1),
        // 2: a per-CPU array, direct-mapped (was an LRU hash keyed by `RouteKey`).
        (ROUTES, 2),
        (ROUTE_GENERATION, 1),
    ];
}

/// Events from the datapath to `podnet monitor`.
pub mod events {
    /// [`crate::Event::kind`]: a packet was dropped, for [`crate::Event::reason`].
    pub const DROP: u8 = 1;
    /// [`crate::Event::kind`]: the first packet of a new NAT translation.
    pub const NAT_NEW: u8 = 2;
    /// A listener that has not said so for this long is gone (`podnet monitor` says so every
    /// second).
    pub const LISTENER_TTL_NS: u64 = 3_000_000_000;
    /// Events each CPU may write per second, on average...
    pub const PER_SECOND: u64 = 1000;
    /// ... and at once, after a quiet time.
    pub const BURST: u64 = 200;
    /// [`crate::maps::EVENT_STATS`] slots: events written, events not written because the CPU
    /// was over its budget, and events lost because the ring buffer was full.
    pub const SENT: u32 = 0;
    pub const RATE_LIMITED: u32 = 1;
    pub const RING_FULL: u32 = 2;
    pub const STATS: usize = 3;
}

/// One event in the [`maps::EVENTS`] ring buffer.
///
/// Layout: 8 + 4 * 4 + 2 * 3 + 1 * 3 + 7 = 40 bytes, 8-byte aligned, explicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub time_ns: u64,
    /// The interface the packet arrived on.
    pub ifindex: u32,
    /// The packet's addresses, network byte order (0 when it carried no IPv4).
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    /// [`events::NAT_NEW`]: the node address the connection leaves as.
    pub nat_addr: [u8; 4],
    /// TCP and UDP ports, ICMP echo identifier (as `sport`), host byte order; 0 when none.
    pub sport: u16,
    pub dport: u16,
    /// [`events::NAT_NEW`]: the node port the connection leaves from.
    pub nat_port: u16,
    /// [`events::DROP`] or [`events::NAT_NEW`].
    pub kind: u8,
    /// The [`Reason`] counted for the packet.
    pub reason: u8,
    /// IP protocol.
    pub protocol: u8,
    pub _pad: [u8; 7],
}

/// A CPU's token bucket for events.
///
/// Layout: 8 + 8 = 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    pub tokens: u64,
    /// When the bucket was last topped up (`bpf_ktime_get_ns`).
    pub filled_ns: u64,
}

/// One pod's traffic through the datapath, per CPU.
///
/// Layout: 4 * 8 = 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodStats {
    /// Packets the datapath delivered into the pod, and their IPv4 bytes (headers included).
    pub to_pod_packets: u64,
    pub to_pod_bytes: u64,
    /// IPv4 packets the pod sent that passed its source check, and their bytes.
    pub from_pod_packets: u64,
    pub from_pod_bytes: u64,
}

/// Values of the [`maps::UPLINK_ALLOW`] trie.
pub mod admission {
    /// Sources in this CIDR may not reach pods from the uplink.
    pub const REFUSE: u32 = 0;
    /// Sources in this CIDR may reach pods from the uplink.
    pub const ADMIT: u32 = 1;
}

/// IP protocol numbers podnet translates.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// NAT settings written by `podnet up`, and the node's pod CIDR.
///
/// Layout: 4 + 4 + 4 + 2 + 2 + 6 * 4 + 4 + 4 = 48 bytes, 4-byte aligned, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatConfig {
    /// The node's address: the source of masqueraded packets.
    pub node_ip: [u8; 4],
    /// 1 when masquerading is on, 0 when off.
    pub enabled: u32,
    /// Only packets the FIB routes out of this interface (the uplink) are masqueraded.
    pub uplink_ifindex: u32,
    /// First and last source port (host byte order) for translations.
    pub port_min: u16,
    pub port_max: u16,
    /// Idle seconds after which a translation is expired, by [`CtState`] (indexed by its
    /// value): the agent removes it then, and a new connection may take over its node port.
    pub timeouts_s: [u32; CtState::COUNT],
    /// The node's pod CIDR, network and mask (network byte order; all zero: not set, every
    /// address may be a local pod's). Not for NAT: `from_pod` looks up local pods only inside
    /// it. `up` sets it once every pod the datapath knows is inside it (the config and the
    /// address allocator put new pods there; after a CIDR change, containers keep their old
    /// addresses until they are recreated).
    pub pod_net: [u8; 4],
    pub pod_mask: [u8; 4],
}

impl NatConfig {
    /// Whether `addr` is inside the node's pod CIDR (any address while it is not set).
    #[inline(always)]
    pub const fn in_pod_cidr(&self, addr: [u8; 4]) -> bool {
        let mask = u32::from_ne_bytes(self.pod_mask);
        u32::from_ne_bytes(addr) & mask == u32::from_ne_bytes(self.pod_net) & mask
    }
}

/// The state of a translation, from the flags both of its directions saw.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtState {
    /// TCP without a reply yet.
    TcpSynSent = 0,
    /// TCP with replies; a FIN in one direction only (a half-close) is still established.
    TcpEstablished = 1,
    /// TCP after a FIN in both directions: held (TIME_WAIT) so the node port is not reused
    /// toward the same remote at once.
    TcpTimeWait = 2,
    /// TCP after an RST in either direction: held briefly (resets' sequence numbers are not
    /// checked, and a flood of them must not pin ports for long).
    TcpReset = 3,
    Udp = 4,
    Icmp = 5,
}

impl CtState {
    pub const COUNT: usize = 6;
    /// Every state, in index order.
    pub const ALL: [CtState; Self::COUNT] = [
        CtState::TcpSynSent,
        CtState::TcpEstablished,
        CtState::TcpTimeWait,
        CtState::TcpReset,
        CtState::Udp,
        CtState::Icmp,
    ];

    /// Stable name (`podnet nat list`).
    pub const fn name(self) -> &'static str {
        match self {
            CtState::TcpSynSent => "syn_sent",
            CtState::TcpEstablished => "established",
            CtState::TcpTimeWait => "time_wait",
            CtState::TcpReset => "reset",
            CtState::Udp => "udp",
            CtState::Icmp => "icmp",
        }
    }

    /// The state of a translation of `protocol` whose pod side saw `out_flags` and whose reply
    /// side saw `reply_flags` ([`ct_flags`]).
    pub const fn of(protocol: u8, out_flags: u8, reply_flags: u8) -> Self {
        match protocol {
            proto::TCP if (out_flags | reply_flags) & ct_flags::RST != 0 => CtState::TcpReset,
            proto::TCP if out_flags & reply_flags & ct_flags::FIN != 0 => CtState::TcpTimeWait,
            proto::TCP if reply_flags & ct_flags::SEEN != 0 => CtState::TcpEstablished,
            proto::TCP => CtState::TcpSynSent,
            proto::UDP => CtState::Udp,
            _ => CtState::Icmp,
        }
    }
}

/// Where a new connection's search for a node port starts: its own source port when that is in
/// the range (as Linux's MASQUERADE and Cilium keep it), else a hash of the connection, so a
/// connection that lost its translation comes back on the same port where it can.
pub const fn port_search_start(key: &CtKey, port_min: u16, port_max: u16) -> u32 {
    // Never 0 (a division by zero would be a panic path the verifier rejects).
    let range = (port_max as u32).saturating_sub(port_min as u32) + 1;
    let sport = u16::from_be(key.sport);
    if sport >= port_min && sport <= port_max {
        return (sport - port_min) as u32;
    }
    mix(flow_hash(key)) % range
}

/// The offset into the range (of `range` ports) of the `i`th node port a connection's search
/// tries, `tries` at most: first where it starts ([`port_search_start`]); then, in a range larger
/// than `tries`, offsets scattered by a hash of the connection and `i`, since consecutive ports
/// pile up behind each other's claims (linear probing) and a busy range would want many more
/// tries; in a smaller range, every port in turn. Deterministic: a connection searching again
/// finds its own claim.
pub const fn port_search_offset(key: &CtKey, start: u32, i: u32, range: u32, tries: u32) -> u32 {
    if i == 0 || range <= tries {
        return (start + i) % range;
    }
    mix(flow_hash(key) ^ i.wrapping_mul(0x9e37_79b9)) % range
}

/// A hash of a connection's addresses, ports and protocol.
const fn flow_hash(key: &CtKey) -> u32 {
    u32::from_ne_bytes(key.saddr).wrapping_mul(0x9e37_79b1)
        ^ u32::from_ne_bytes(key.daddr).rotate_left(13).wrapping_mul(0x85eb_ca77)
        ^ (((key.sport as u32) << 16) | key.dport as u32).wrapping_mul(0xc2b2_ae3d)
        ^ key.proto as u32
}

/// Scrambles `h` (the murmur3 finaliser's first rounds), so nearby inputs land far apart.
const fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h
}

/// A connection as one packet shows it: addresses and ports (ICMP echo: the identifier as one
/// port, 0 as the other) in network byte order, and the protocol.
///
/// Layout: 4 + 4 + 2 + 2 + 1 + 1 + 2 = 16 bytes, 4-byte aligned, explicit padding (two
/// scalars, not a `[u8; 3]`: zeroing a 3-byte array is a `memset` call in BPF).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: u8,
    pub _pad2: u16,
}

impl CtKey {
    /// The key under which a reply to this (pod-side) connection arrives at the node, once it
    /// is masqueraded as `node_ip`:`port` (network byte order). For ICMP echo the identifier
    /// travels in `sport` outbound and comes back in `dport`.
    pub const fn reply(&self, node_ip: [u8; 4], port: u16) -> CtKey {
        CtKey {
            saddr: self.daddr,
            daddr: node_ip,
            sport: self.dport,
            dport: port,
            proto: self.proto,
            _pad: 0,
            _pad2: 0,
        }
    }

    /// The inverse of [`CtKey::reply`]: the pod-side key of the connection whose reply key this
    /// is, the pod being `pod_ip`:`pod_port` (what its reply-side entry holds).
    pub const fn pod_side(&self, pod_ip: [u8; 4], pod_port: u16) -> CtKey {
        CtKey {
            saddr: pod_ip,
            daddr: self.saddr,
            sport: pod_port,
            dport: self.sport,
            proto: self.proto,
            _pad: 0,
            _pad2: 0,
        }
    }
}

/// A fragmented datagram: its addresses (network byte order), IP identification (as in the
/// packet) and protocol.
///
/// Layout: 4 + 4 + 2 + 1 + 1 = 12 bytes, 4-byte aligned, explicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// What the later fragments of a translated datagram get: the address written over their
/// source (out of the node) or destination (into a pod); and when its first fragment passed.
///
/// Layout: 8 + 4 + 4 = 16 bytes, 8-byte aligned, explicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragEntry {
    /// `bpf_ktime_get_coarse_ns` of the first fragment.
    pub created_ns: u64,
    pub addr: [u8; 4],
    pub _pad: u32,
}

/// One direction of a translated connection: what to rewrite to, and what was seen.
///
/// Layout: 8 + 8 + 4 + 2 + 1 + 1 = 24 bytes, 8-byte aligned, explicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntry {
    /// CLOCK_MONOTONIC (`bpf_ktime_get_coarse_ns`: as of the last tick) when the translation
    /// was made.
    pub created_ns: u64,
    /// The same clock at the last packet in this direction (refreshed at most once a second).
    pub seen_ns: u64,
    /// Address to write: the node's (CT_OUT) or the pod's (CT_IN).
    pub addr: [u8; 4],
    /// Port (or ICMP identifier) to write, network byte order.
    pub port: u16,
    /// [`ct_flags`] seen in this direction.
    pub flags: u8,
    pub _pad: u8,
}

/// What a conntrack entry has seen in its direction.
pub mod ct_flags {
    /// At least one packet.
    pub const SEEN: u8 = 1;
    /// A TCP FIN.
    pub const FIN: u8 = 2;
    /// A TCP RST.
    pub const RST: u8 = 4;
    /// A TCP SYN without ACK: a connection starting (or restarting).
    pub const SYN: u8 = 8;
}

/// Where podnet pins its objects on bpffs; each node gets a directory named after it.
pub const PIN_ROOT: &str = "/sys/fs/bpf/podnet";

/// Key of the endpoint map: a pod's IPv4 address in network byte order, as bytes so that
/// `bpftool map dump` prints it as `[10, 1, 1, 2]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub ip: [u8; 4],
}

/// A pod on this node, as the datapath needs it to deliver a packet into the pod.
///
/// Layout: 4 + 2 + 2 + 6 + 6 = 20 bytes, 4-byte aligned, explicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Index of the host-side veth (in the node namespace); `bpf_redirect_peer` to it lands the
    /// packet on the pod-side veth's ingress, inside the pod namespace.
    pub host_ifindex: u32,
    /// The pod's counters in [`maps::POD_STATS`]; 0: none (a pod attached by podnet 0.2 or
    /// older, until the next `up`).
    pub slot: u16,
    pub _pad: [u8; 2],
    /// MAC of the pod-side veth: the destination MAC of delivered frames.
    pub pod_mac: [u8; 6],
    /// MAC of the host-side veth: the source MAC of delivered frames.
    pub host_mac: [u8; 6],
}

impl Endpoint {
    /// A pod's endpoint, without its counter slot (the loader gives it one when it inserts it).
    pub const fn new(host_ifindex: u32, pod_mac: [u8; 6], host_mac: [u8; 6]) -> Self {
        Self { host_ifindex, slot: 0, _pad: [0; 2], pod_mac, host_mac }
    }
}

/// The pod behind a host veth, as its frames must show it.
///
/// Layout: 4 + 4 + 6 + 2 = 16 bytes, 4-byte aligned, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PodSource {
    /// The host veth this slot describes (0: free); slots are shared modulo their count.
    pub ifindex: u32,
    /// The pod's IPv4 address (network byte order).
    pub ip: [u8; 4],
    /// The pod's MAC.
    pub mac: [u8; 6],
    /// The pod's counters in [`maps::POD_STATS`], as in its [`Endpoint`].
    pub slot: u16,
}

/// The data of an IPv4 LPM-trie key (peer and deny maps): a network address in network byte
/// order. The key wraps it with the prefix length in bits (`{prefix_len, data}`, 8 bytes).
pub type Ipv4LpmData = [u8; 4];

/// Longest peer name kept in the map (longer names are rejected by the loader).
pub const PEER_NAME_MAX: usize = 32;

/// The FIB's inputs for a pod's packet: its source (the pod) and destination address, network
/// byte order. The pod's own veth, the FIB's other input, follows from its source.
///
/// Layout: 4 + 4 = 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RouteKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

impl RouteKey {
    /// Whether both addresses are the same (compared as words: an array comparison could become
    /// a `memcmp` call in BPF).
    #[inline(always)]
    pub const fn same(&self, other: &Self) -> bool {
        u32::from_ne_bytes(self.saddr) == u32::from_ne_bytes(other.saddr)
            && u32::from_ne_bytes(self.daddr) == u32::from_ne_bytes(other.daddr)
    }
}

/// The slot of [`maps::ROUTES`] that caches `key`'s answer: the source scrambled, the
/// destination folded in and scrambled again ([`mix`], as the port search does), so the pods of
/// one node and the destinations of one pod spread over the slots even when their addresses
/// correlate.
#[inline(always)]
pub const fn route_slot(key: &RouteKey) -> u32 {
    let source = mix(u32::from_ne_bytes(key.saddr).wrapping_mul(0x9e37_79b1));
    mix(source ^ u32::from_ne_bytes(key.daddr)) & (maps::ROUTES_SLOTS as u32 - 1)
}

/// What the FIB said about `key` when it last was asked: the packet leaves by `ifindex` with
/// these MACs, and fits if it is at most `mtu` bytes (IPv4 total length).
///
/// Layout: 8 + 8 + 4 + 2 + 1 + 1 + 6 + 6 + 4 = 40 bytes, 8-byte aligned, explicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedRoute {
    /// CLOCK_MONOTONIC (`bpf_ktime_get_coarse_ns`) when the FIB was asked.
    pub checked_ns: u64,
    /// Whose answer this is: the slot may hold another pair's.
    pub key: RouteKey,
    pub ifindex: u32,
    /// The route's MTU (route metrics and learned path MTU included), which the stack checks
    /// forwarded packets against.
    pub mtu: u16,
    /// 1 when the destination is another node's (its pod CIDR or address), 0 when outside.
    pub peer: u8,
    pub _pad: u8,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// [`maps::ROUTE_GENERATION`] when the answer was given.
    pub generation: u32,
}

/// Another node, the next hop for its pod CIDR.
///
/// Layout: 4 + 32 = 36 bytes, 1-byte aligned, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The node's IPv4 address on the shared network (network byte order).
    pub node_ip: [u8; 4],
    /// The node's name, NUL-padded (for `podnet status` and `node del`).
    pub name: [u8; PEER_NAME_MAX],
}

/// Why the datapath did what it did with a packet; the index into the counters map.
///
/// Every program run counts exactly one reason, so each program's counters add up to the packets
/// it saw (a frame that XDP passes on the uplink is counted again by `from_uplink`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// IPv4 to a pod on this node: delivered straight into the pod with `bpf_redirect_peer`.
    RedirectLocal = 0,
    /// From the uplink: not untagged IPv4 (ARP, IPv6, VLAN-tagged, ...): left to the kernel stack.
    PassNotIpv4 = 1,
    /// IPv4 whose destination is not a local pod: left to the kernel stack.
    PassNotLocal = 2,
    /// Frame or IPv4 header truncated, an IPv4 header that contradicts itself or the frame (IHL
    /// below 5, total length beyond the frame or below the header), or (from a pod) a truncated
    /// TCP, UDP or ICMP header: dropped.
    DropMalformed = 3,
    /// IPv4 to a pod on another node: routed in eBPF straight out of the uplink (`bpf_redirect`).
    RedirectRemote = 4,
    /// IPv4 from the uplink to a pod on this node: delivered with `bpf_redirect_peer`.
    RedirectFromUplink = 5,
    /// Routed packet whose TTL would expire: left to the stack, which sends ICMP time exceeded.
    PassTtlExpiring = 6,
    /// IPv4 to a pod on another node whose next-hop MAC is not cached yet: routed with
    /// `bpf_redirect_neigh`, which resolves it (the stack would drop it on a FORWARD-DROP node).
    RedirectRemoteResolve = 7,
    /// Larger than the uplink MTU: left to the stack (fragmentation or ICMP frag-needed).
    PassFragNeeded = 8,
    /// No usable route to the peer node (FIB lookup failed): left to the stack.
    PassNoRoute = 9,
    /// Uplink traffic that is not for a local pod (for the node itself, say): left to the stack.
    PassUplinkNotLocal = 10,
    /// First packet of a pod's connection to the outside: a node port was allocated, the packet
    /// masqueraded and routed out of the uplink.
    RedirectNatNew = 11,
    /// Later packet of a masqueraded connection: translated and routed out of the uplink.
    RedirectNat = 12,
    /// Reply to a masqueraded connection: translated back and delivered into the pod.
    RedirectNatReply = 13,
    /// No free node port for a new connection: dropped (existing translations are untouched).
    DropNatPortsExhausted = 14,
    /// From a pod to the outside (out of the uplink, NAT on) but not translatable: a fragment, a
    /// protocol other than TCP, UDP and ICMP echo, or too big without DF. Dropped, so nothing
    /// leaves with a pod's address.
    DropNotNatable = 15,
    /// XDP on the uplink let the frame through to tc and the stack.
    XdpPass = 16,
    /// XDP on the uplink dropped a frame from a deny-listed source.
    XdpDropDenied = 17,
    /// XDP on the uplink dropped a truncated or malformed frame.
    XdpDropMalformed = 18,
    /// XDP on the uplink (`uplink_deliver`) sent a frame for a local pod straight to its veth.
    XdpRedirectLocal = 19,
    /// From a pod: its source IPv4 address or MAC (or its ARP sender) is not the pod's own, or
    /// it came in on another pod's veth. Dropped, whatever the destination.
    DropSpoofed = 20,
    /// A VLAN-tagged (802.1Q/802.1ad) frame from a pod, or from the uplink for a local pod (the
    /// stack would untag a priority-tagged one and route it to the pod past every check).
    /// Dropped.
    DropVlanTagged = 21,
    /// From a pod: neither IPv4 nor ARP (IPv6 included: pods get no IPv6). Dropped.
    DropNotIpv4 = 22,
    /// From a pod: to 0.0.0.0/8, 127.0.0.0/8, multicast 224.0.0.0/4 or 240.0.0.0/4 (255.255.255.255
    /// included), never routed or translated. Dropped.
    DropMartian = 23,
    /// From the uplink to a pod: the source is neither a peer node or its pods, nor in `[uplink]
    /// allow_from`, nor a reply to a pod's masqueraded connection. Dropped.
    DropNotAllowed = 24,
    /// From a pod: ARP with the pod's own addresses, on to the bridge.
    PassArp = 25,
    /// From a pod to a network in `[uplink] allow_from`: not masqueraded (that network routes
    /// pod addresses back to this node); left to the stack to route.
    PassNoNat = 26,
    /// From a pod to the outside: a TCP FIN or RST of no translated connection. Dropped: it would
    /// leave with the pod's address, and it creates no translation.
    DropNatNoFlow = 27,
    /// A new connection to the outside found its translation table full (see `[nat]`
    /// `tcp_table` / `udp_icmp_table`): dropped, and the agent is told to collect at once.
    DropNatTableFull = 28,
    /// A reply to a masqueraded connection whose TTL would expire on its hop into the pod:
    /// dropped untranslated (the stack's "time exceeded" would quote the pod's address to the
    /// outside).
    DropNatReplyTtlExpired = 29,
    /// A reply to a masqueraded connection (or a later fragment of one, or an ICMP error about
    /// one) translated back to a pod that is no longer on this node: dropped (the stack would
    /// route it, and its errors would quote the pod's address to the outside).
    DropNatReplyNoPod = 30,
}

impl Reason {
    /// Every reason, in counter-index order.
    pub const ALL: [Reason; 31] = [
        Reason::RedirectLocal,
        Reason::PassNotIpv4,
        Reason::PassNotLocal,
        Reason::DropMalformed,
        Reason::RedirectRemote,
        Reason::RedirectFromUplink,
        Reason::PassTtlExpiring,
        Reason::RedirectRemoteResolve,
        Reason::PassFragNeeded,
        Reason::PassNoRoute,
        Reason::PassUplinkNotLocal,
        Reason::RedirectNatNew,
        Reason::RedirectNat,
        Reason::RedirectNatReply,
        Reason::DropNatPortsExhausted,
        Reason::DropNotNatable,
        Reason::XdpPass,
        Reason::XdpDropDenied,
        Reason::XdpDropMalformed,
        Reason::XdpRedirectLocal,
        Reason::DropSpoofed,
        Reason::DropVlanTagged,
        Reason::DropNotIpv4,
        Reason::DropMartian,
        Reason::DropNotAllowed,
        Reason::PassArp,
        Reason::PassNoNat,
        Reason::DropNatNoFlow,
        Reason::DropNatTableFull,
        Reason::DropNatReplyTtlExpired,
        Reason::DropNatReplyNoPod,
    ];
    /// Number of reasons in use.
    pub const COUNT: usize = Self::ALL.len();
    /// Slots in the counters map: room for reasons to come, so adding one does not change the
    /// pinned map's size.
    pub const SLOTS: usize = 64;

    /// Whether packets counted for this reason are dropped.
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Reason::DropMalformed
                | Reason::DropNatPortsExhausted
                | Reason::DropNotNatable
                | Reason::XdpDropDenied
                | Reason::XdpDropMalformed
                | Reason::DropSpoofed
                | Reason::DropVlanTagged
                | Reason::DropNotIpv4
                | Reason::DropMartian
                | Reason::DropNotAllowed
                | Reason::DropNatNoFlow
                | Reason::DropNatTableFull
                | Reason::DropNatReplyTtlExpired
                | Reason::DropNatReplyNoPod
        )
    }

    /// Stable, human-readable name (used by `podnet status` and its JSON). Always inlined: the
    /// programs' log lines use it, and a BPF function cannot return a two-word `&str`.
    #[inline(always)]
    pub const fn name(self) -> &'static str {
        match self {
            Reason::RedirectLocal => "redirect_local",
            Reason::PassNotIpv4 => "pass_not_ipv4",
            Reason::PassNotLocal => "pass_not_local",
            Reason::DropMalformed => "drop_malformed",
            Reason::RedirectRemote => "redirect_remote",
            Reason::RedirectFromUplink => "redirect_from_uplink",
            Reason::PassTtlExpiring => "pass_ttl_expiring",
            Reason::RedirectRemoteResolve => "redirect_remote_resolve",
            Reason::PassFragNeeded => "pass_frag_needed",
            Reason::PassNoRoute => "pass_no_route",
            Reason::PassUplinkNotLocal => "pass_uplink_not_local",
            Reason::RedirectNatNew => "redirect_nat_new",
            Reason::RedirectNat => "redirect_nat",
            Reason::RedirectNatReply => "redirect_nat_reply",
            Reason::DropNatPortsExhausted => "drop_nat_ports_exhausted",
            Reason::DropNotNatable => "drop_not_natable",
            Reason::XdpPass => "xdp_pass",
            Reason::XdpDropDenied => "xdp_drop_denied",
            Reason::XdpDropMalformed => "xdp_drop_malformed",
            Reason::XdpRedirectLocal => "xdp_redirect_local",
            Reason::DropSpoofed => "drop_spoofed",
            Reason::DropVlanTagged => "drop_vlan_tagged",
            Reason::DropNotIpv4 => "drop_not_ipv4",
            Reason::DropMartian => "drop_martian",
            Reason::DropNotAllowed => "drop_not_allowed",
            Reason::PassArp => "pass_arp",
            Reason::PassNoNat => "pass_no_nat",
            Reason::DropNatNoFlow => "drop_nat_no_flow",
            Reason::DropNatTableFull => "drop_nat_table_full",
            Reason::DropNatReplyTtlExpired => "drop_nat_reply_ttl_expired",
            Reason::DropNatReplyNoPod => "drop_nat_reply_no_pod",
        }
    }
}

// Checked when this crate compiles: every reason has a counter slot.
const _: () = assert!(Reason::COUNT <= Reason::SLOTS, "more reasons than counter slots");

/// The IPv4 header checksum after decrementing TTL by one, updated incrementally as the kernel's
/// `ip_decrease_ttl` does. `check` is the checksum field exactly as it sits in the packet, read
/// as a little-endian `u16` (what a BPF program on a little-endian machine sees).
pub const fn checksum_after_ttl_decrement(check: u16) -> u16 {
    // TTL is the high byte of its 16-bit word: the word drops by 0x0100, so the one's-complement
    // checksum rises by 0x0100 (network order), which is 0x0001 in the little-endian view.
    let sum = check as u32 + 0x0001;
    (sum + (sum >= 0xffff) as u32) as u16
}

/// An Internet checksum after one of the 4-byte fields it covers changed from `from` to `to`
/// (RFC 1624: HC' = ~(~HC + ~m + m'), word by word). `check` is the checksum as a big-endian
/// number (`u16::from_be_bytes` of the field); so is the result.
pub const fn checksum_after_replace(check: u16, from: [u8; 4], to: [u8; 4]) -> u16 {
    let mut sum = !check as u32 & 0xffff;
    sum += !word(from, 0) & 0xffff;
    sum += !word(from, 2) & 0xffff;
    sum += word(to, 0);
    sum += word(to, 2);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The 16-bit word at byte `i` of `b`, big-endian.
const fn word(b: [u8; 4], i: usize) -> u32 {
    ((b[i] as u32) << 8) | b[i + 1] as u32
}

/// Whether a pod may never send to `daddr`: "this network" 0.0.0.0/8, loopback 127.0.0.0/8,
/// multicast 224.0.0.0/4 and reserved 240.0.0.0/4 (which holds the limited broadcast
/// 255.255.255.255). Such packets are neither routed nor translated.
pub const fn is_martian_destination(daddr: [u8; 4]) -> bool {
    daddr[0] == 0 || daddr[0] == 127 || daddr[0] >= 224
}

/// Whether an IPv4 header's lengths agree with each other and with the frame: the header
/// (`ihl` words of 4 bytes, at least 5) fits in the total length, and the total length fits in
/// the `l3_len` bytes the frame carries after its Ethernet header (Ethernet padding may follow).
pub const fn ipv4_lengths_consistent(ihl: u8, tot_len: u16, l3_len: usize) -> bool {
    let header = ihl as usize * 4;
    ihl >= 5 && header <= tot_len as usize && tot_len as usize <= l3_len
}

/// The smallest L4 header a packet of `protocol` must carry in full (TCP without options, UDP,
/// ICMP); 0 for protocols podnet does not look into.
pub const fn l4_min_len(protocol: u8) -> usize {
    match protocol {
        proto::TCP => 20,
        proto::UDP | proto::ICMP => 8,
        _ => 0,
    }
}

/// The Internet checksum (RFC 1071) of `data`, computed from scratch: the reference that
/// incremental updates are tested against.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for word in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([word[0], if word.len() == 2 { word[1] } else { 0 }]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `EndpointKey` is `#[repr(C)]`, `Copy`, made only of `u8`s: every bit pattern is
    // valid and there is no padding.
    unsafe impl aya::Pod for super::EndpointKey {}
    // SAFETY: `Endpoint` is `#[repr(C)]`, `Copy`, made of integers and byte arrays laid out
    // without padding (see its layout note): every bit pattern is valid.
    unsafe impl aya::Pod for super::Endpoint {}
    // SAFETY: `PodSource` is `#[repr(C)]`, `Copy`, integers and bytes without padding.
    unsafe impl aya::Pod for super::PodSource {}
    // SAFETY: `PodStats` is `#[repr(C)]`, `Copy`, four `u64`s.
    unsafe impl aya::Pod for super::PodStats {}
    // SAFETY: `Event` is `#[repr(C)]`, `Copy`, integers and bytes with explicit padding.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: `EventBudget` is `#[repr(C)]`, `Copy`, two `u64`s.
    unsafe impl aya::Pod for super::EventBudget {}
    // SAFETY: `Peer` is `#[repr(C)]`, `Copy`, made only of byte arrays: no padding, every bit
    // pattern valid.
    unsafe impl aya::Pod for super::Peer {}
    // SAFETY: `NatConfig` is `#[repr(C)]`, `Copy`, integers and bytes without padding.
    unsafe impl aya::Pod for super::NatConfig {}
    // SAFETY: `CtKey` is `#[repr(C)]`, `Copy`, integers and bytes with explicit padding.
    unsafe impl aya::Pod for super::CtKey {}
    // SAFETY: `CtEntry` is `#[repr(C)]`, `Copy`, integers and bytes with explicit padding.
    unsafe impl aya::Pod for super::CtEntry {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_the_reasons_named_drop() {
        for reason in Reason::ALL {
            let named = reason.name().starts_with("drop_") || reason.name().starts_with("xdp_drop_");
            assert_eq!(reason.is_drop(), named, "{}", reason.name());
        }
    }

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(core::mem::size_of::<EndpointKey>(), 4);
        assert_eq!(core::mem::size_of::<Endpoint>(), 20);
        assert_eq!(core::mem::size_of::<PodSource>(), 16);
        assert_eq!(core::mem::size_of::<Event>(), 40);
        assert_eq!(core::mem::align_of::<Event>(), 8);
        assert_eq!(core::mem::size_of::<PodStats>(), 32);
        assert_eq!(core::mem::align_of::<Endpoint>(), 4);
        assert_eq!(core::mem::size_of::<Peer>(), 36);
        assert_eq!(core::mem::size_of::<PodSource>(), 16);
        assert_eq!(core::mem::size_of::<NatConfig>(), 48);
        assert_eq!(core::mem::size_of::<FragKey>(), 12);
        assert_eq!(core::mem::size_of::<CtKey>(), 16);
        assert_eq!(core::mem::size_of::<CtEntry>(), 24);
        assert_eq!(core::mem::size_of::<RouteKey>(), 8);
        assert_eq!(core::mem::size_of::<CachedRoute>(), 40);
    }

    use inet_checksum as full_checksum;

    #[test]
    fn ttl_decrement_checksum_matches_a_full_recomputation() {
        for ttl in [2u8, 64, 65, 128, 255] {
            for id in [0u16, 0x1234, 0xfeff, 0xffff] {
                let mut h = [
                    0x45,
                    0,
                    0,
                    84,
                    (id >> 8) as u8,
                    id as u8,
                    0x40,
                    0,
                    ttl,
                    1,
                    0,
                    0,
                    10,
                    1,
                    1,
                    2,
                    10,
                    1,
                    2,
                    2,
                ];
                let c = full_checksum(&h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                let in_packet = u16::from_le_bytes([h[10], h[11]]);
                h[8] -= 1;
                let updated = checksum_after_ttl_decrement(in_packet).to_le_bytes();
                h[10..12].copy_from_slice(&updated);
                assert_eq!(full_checksum(&h), 0, "ttl {ttl} id {id:#x}: header must verify");
            }
        }
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is 0xddf2, so the checksum is !0xddf2.
        assert_eq!(inet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
    }

    #[test]
    fn tcp_closes_on_both_fins_or_a_reset() {
        use ct_flags::{FIN, RST, SEEN};
        assert_eq!(CtState::of(proto::TCP, SEEN, 0), CtState::TcpSynSent);
        assert_eq!(CtState::of(proto::TCP, SEEN, SEEN), CtState::TcpEstablished);
        assert_eq!(CtState::of(proto::TCP, SEEN | FIN, SEEN), CtState::TcpEstablished, "a half-close");
        assert_eq!(CtState::of(proto::TCP, SEEN | FIN, SEEN | FIN), CtState::TcpTimeWait);
        assert_eq!(CtState::of(proto::TCP, SEEN, SEEN | RST), CtState::TcpReset);
        assert_eq!(CtState::of(proto::TCP, SEEN | FIN | RST, SEEN | FIN), CtState::TcpReset);
        assert_eq!(CtState::of(proto::UDP, SEEN | FIN, 0), CtState::Udp);
        assert_eq!(CtState::of(proto::ICMP, SEEN, 0), CtState::Icmp);
        for (i, state) in CtState::ALL.iter().enumerate() {
            assert_eq!(*state as usize, i);
        }
    }

    /// A pod's TCP connection from `sport` to an outside web server.
    fn key(sport: u16) -> CtKey {
        CtKey {
            saddr: [10, 1, 1, 2],
            daddr: [192, 168, 50, 100],
            sport: sport.to_be(),
            dport: 80u16.to_be(),
            proto: proto::TCP,
            _pad: 0,
            _pad2: 0,
        }
    }

    #[test]
    fn port_search_keeps_the_pods_port_or_hashes() {
        assert_eq!(port_search_start(&key(61234), 61000, 65535), 234, "the pod's own port");
        let a = port_search_start(&key(40000), 61000, 65535);
        assert_eq!(a, port_search_start(&key(40000), 61000, 65535), "deterministic");
        assert!(a < 4536);
        let spread: std::collections::HashSet<u32> =
            (40000..40100).map(|p| port_search_start(&key(p), 61000, 65535)).collect();
        assert!(spread.len() > 90, "flows spread over the range: {}", spread.len());
        assert_eq!(port_search_start(&key(40000), 61000, 61000), 0);
    }

    #[test]
    fn port_search_scatters_in_large_ranges_and_walks_small_ones() {
        let flow = key(40000);
        let offsets =
            |range: u32| (0..16.min(range)).map(move |i| port_search_offset(&flow, 7 % range, i, range, 16));
        assert_eq!(offsets(4).collect::<Vec<_>>(), [3, 0, 1, 2], "a small range: every port");
        let large: Vec<u32> = offsets(4536).collect();
        assert_eq!(large[0], 7, "starts where it starts");
        assert!(large.iter().all(|&o| o < 4536));
        let distinct: std::collections::HashSet<u32> = large.iter().copied().collect();
        assert!(distinct.len() >= 15, "scattered, not a run of neighbours: {large:?}");
        assert!(large.windows(2).filter(|w| w[1] == w[0] + 1).count() <= 1, "{large:?}");
        // A busy range: 90% of the ports taken, in runs as claims pile up. Scattered tries still
        // find a free port for about 1 - 0.9^16 of new connections.
        let taken = |o: u32| !o.is_multiple_of(10);
        let found = (0..1000u16)
            .filter(|&p| {
                let k = key(20000 + p);
                let start = port_search_start(&k, 61000, 65535);
                (0..16).any(|i| !taken(port_search_offset(&k, start, i, 4536, 16)))
            })
            .count();
        assert!(found > 750, "{found} of 1000 found a free port");
    }

    #[test]
    fn pod_cidr_bounds_local_pods_once_set() {
        let unset = NatConfig {
            node_ip: [0; 4],
            enabled: 0,
            uplink_ifindex: 0,
            port_min: 0,
            port_max: 0,
            timeouts_s: [0; CtState::COUNT],
            pod_net: [0; 4],
            pod_mask: [0; 4],
        };
        assert!(unset.in_pod_cidr([192, 168, 50, 2]), "not set: anything may be a pod's");
        let set = NatConfig { pod_net: [10, 1, 1, 0], pod_mask: [255, 255, 255, 0], ..unset };
        assert!(set.in_pod_cidr([10, 1, 1, 0]) && set.in_pod_cidr([10, 1, 1, 255]));
        for outside in [[10, 1, 2, 1], [10, 1, 0, 255], [11, 1, 1, 1], [192, 168, 50, 2]] {
            assert!(!set.in_pod_cidr(outside), "{outside:?}");
        }
    }

    #[test]
    fn route_slots_spread_a_nodes_pods_and_their_destinations() {
        // 250 pods of one node, each talking to 8 destinations (peers' pods and the outside).
        let keys = (1..=250u8).flat_map(|pod| {
            (0..8u8).map(move |d| RouteKey { saddr: [10, 1, 1, pod], daddr: [10 + d % 2, 2 + d, 0, 1 + pod] })
        });
        let slots: Vec<u32> = keys.map(|k| route_slot(&k)).collect();
        assert!(slots.iter().all(|&s| (s as usize) < maps::ROUTES_SLOTS));
        let distinct: std::collections::HashSet<u32> = slots.iter().copied().collect();
        // 2000 keys thrown at random into 4096 slots land in about 4096 * (1 - e^(-2000/4096)),
        // 1587, distinct ones.
        assert!(distinct.len() > 1500, "{} distinct slots of 2000 keys", distinct.len());
    }

    #[test]
    fn checksum_replace_matches_a_full_recompute() {
        let mut header =
            [0x45, 0, 0, 0x54, 0x12, 0x34, 0x40, 0, 64, 1, 0, 0, 192, 168, 50, 1, 192, 168, 60, 100];
        let check = inet_checksum(&header);
        header[10..12].copy_from_slice(&check.to_be_bytes());
        for new_source in [[10, 1, 1, 2], [255, 255, 255, 255], [0, 0, 0, 0], [192, 168, 50, 1]] {
            let updated = checksum_after_replace(check, [192, 168, 50, 1], new_source);
            let mut changed = header;
            changed[12..16].copy_from_slice(&new_source);
            changed[10..12].copy_from_slice(&[0, 0]);
            assert_eq!(updated, inet_checksum(&changed), "{new_source:?}");
        }
    }

    #[test]
    fn martian_destinations() {
        for martian in
            [[0, 0, 0, 0], [0, 1, 2, 3], [127, 0, 0, 1], [224, 0, 0, 1], [239, 1, 1, 1], [240, 0, 0, 1]]
        {
            assert!(is_martian_destination(martian), "{martian:?}");
        }
        assert!(is_martian_destination([255, 255, 255, 255]));
        for fine in [[10, 1, 1, 2], [1, 1, 1, 1], [192, 168, 50, 100], [223, 255, 255, 255], [126, 0, 0, 1]] {
            assert!(!is_martian_destination(fine), "{fine:?}");
        }
    }

    #[test]
    fn ipv4_lengths() {
        // A 20-byte header and 8 bytes of UDP in a frame with 28 (or, padded, 46) bytes of L3.
        assert!(ipv4_lengths_consistent(5, 28, 28));
        assert!(ipv4_lengths_consistent(5, 28, 46));
        assert!(!ipv4_lengths_consistent(5, 29, 28), "total length beyond the frame");
        assert!(!ipv4_lengths_consistent(5, 19, 46), "total length below the header");
        assert!(!ipv4_lengths_consistent(15, 40, 46), "IHL beyond the packet");
        assert!(!ipv4_lengths_consistent(4, 28, 46), "IHL below 5");
        assert!(ipv4_lengths_consistent(15, 60, 60), "maximal options");
    }

    #[test]
    fn reasons_index_their_own_slot() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{} is out of order", r.name());
        }
    }
}

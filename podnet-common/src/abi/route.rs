//! Other nodes and routing: peer map values, the FIB answer cache, and the uplink admissions.

use crate::{maps, ports::mix};

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

/// Values of the [`maps::UPLINK_ALLOW`] trie.
pub mod admission {
    /// Sources in this CIDR may not reach pods from the uplink.
    pub const REFUSE: u32 = 0;
    /// Sources in this CIDR may reach pods from the uplink.
    pub const ADMIT: u32 = 1;
}

/// Most ports one [`maps::POD_DENY`] entry holds.
pub const DENIED_PORTS_MAX: usize = 8;

/// What pods may not reach in one destination network ([`maps::POD_DENY`]): every packet
/// (`all` = 1), or TCP and UDP to one of `ports` (network byte order; 0 is no port).
///
/// Layout: 2 * 8 + 1 + 1 = 18 bytes, 2-byte aligned, explicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeniedPorts {
    pub ports: [u16; DENIED_PORTS_MAX],
    pub all: u8,
    pub _pad: u8,
}

impl DeniedPorts {
    /// Whether everything sent here is denied, or TCP and UDP to `port` (network byte order).
    #[inline(always)]
    pub fn holds(&self, port: u16) -> bool {
        let mut i = 0;
        while i < DENIED_PORTS_MAX {
            if self.ports[i] == port && port != 0 {
                return true;
            }
            i += 1;
        }
        false
    }
}

const _: () = assert!(size_of::<DeniedPorts>() == 18);
const _: () = assert!(size_of::<RouteKey>() == 8);
const _: () = assert!(size_of::<CachedRoute>() == 40);
const _: () = assert!(size_of::<Peer>() == 36);

#[cfg(test)]
mod tests {
    use super::*;
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
}

//! NAT settings written by `podnet up`.

use crate::abi::conntrack::CtState;

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

const _: () = assert!(size_of::<NatConfig>() == 48);

#[cfg(test)]
mod tests {
    use super::*;
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
}

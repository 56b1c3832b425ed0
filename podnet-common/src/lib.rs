//! Types and constants shared by podnet's kernel programs (`podnet-ebpf`) and its loader
//! (`podnet`). Everything here is `no_std`, `#[repr(C)]`, `Copy` and free of implicit padding, so
//! both sides agree on the bytes and `bpftool` can print the maps with field names from BTF.
#![cfg_attr(not(test), no_std)]

/// Names of the kernel programs in the eBPF object.
pub mod programs {
    /// tc (tcx) ingress on the host side of every pod veth: packets leaving a pod.
    pub const FROM_POD: &str = "from_pod";
}

/// Map names (as the kernel and bpftool show them, at most 15 bytes) and sizes.
pub mod maps {
    /// Local pods by IPv4 address: [`crate::EndpointKey`] -> [`crate::Endpoint`].
    pub const ENDPOINTS: &str = "ENDPOINTS";
    /// Capacity of [`ENDPOINTS`]: pods one node can hold.
    pub const ENDPOINTS_MAX: usize = 1024;
    /// Per-CPU packet counters indexed by [`crate::Reason`].
    pub const COUNTERS: &str = "COUNTERS";
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
/// Layout: 4 + 4 + 6 + 6 = 20 bytes, 4-byte aligned, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Index of the host-side veth (in the node namespace); `bpf_redirect_peer` to it lands the
    /// packet on the pod-side veth's ingress, inside the pod namespace.
    pub host_ifindex: u32,
    /// Reserved for per-endpoint policy bits; always 0 today.
    pub flags: u32,
    /// MAC of the pod-side veth: the destination MAC of delivered frames.
    pub pod_mac: [u8; 6],
    /// MAC of the host-side veth: the source MAC of delivered frames.
    pub host_mac: [u8; 6],
}

/// Why the datapath did what it did with a packet; the index into the counters map.
///
/// Every program decision counts exactly one reason, so the counters add up to the packets seen.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// IPv4 to a pod on this node: delivered straight into the pod with `bpf_redirect_peer`.
    RedirectLocal = 0,
    /// Not IPv4 (ARP, IPv6, ...): left to the kernel stack.
    PassNotIpv4 = 1,
    /// IPv4 whose destination is not a local pod: left to the kernel stack.
    PassNotLocal = 2,
    /// Frame or IPv4 header truncated, or IHL below 5: dropped.
    DropMalformed = 3,
}

impl Reason {
    /// Every reason, in counter-index order.
    pub const ALL: [Reason; 4] = [
        Reason::RedirectLocal,
        Reason::PassNotIpv4,
        Reason::PassNotLocal,
        Reason::DropMalformed,
    ];
    /// Number of counter slots.
    pub const COUNT: usize = Self::ALL.len();

    /// Stable, human-readable name (used by `podnet status` and its JSON).
    pub const fn name(self) -> &'static str {
        match self {
            Reason::RedirectLocal => "redirect_local",
            Reason::PassNotIpv4 => "pass_not_ipv4",
            Reason::PassNotLocal => "pass_not_local",
            Reason::DropMalformed => "drop_malformed",
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `EndpointKey` is `#[repr(C)]`, `Copy`, made only of `u8`s: every bit pattern is
    // valid and there is no padding.
    unsafe impl aya::Pod for super::EndpointKey {}
    // SAFETY: `Endpoint` is `#[repr(C)]`, `Copy`, made of integers and byte arrays laid out
    // without padding (see its layout note): every bit pattern is valid.
    unsafe impl aya::Pod for super::Endpoint {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(core::mem::size_of::<EndpointKey>(), 4);
        assert_eq!(core::mem::size_of::<Endpoint>(), 20);
        assert_eq!(core::mem::align_of::<Endpoint>(), 4);
    }

    #[test]
    fn reasons_index_their_own_slot() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{} is out of order", r.name());
        }
    }
}

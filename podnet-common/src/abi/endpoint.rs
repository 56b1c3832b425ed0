//! Local pods: the endpoint map's key and value, the source check's slot, and per-pod counters.

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
    /// The pod's counters in [`crate::maps::POD_STATS`]; 0: none (a pod attached by podnet 0.2 or
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
    /// The pod's counters in [`crate::maps::POD_STATS`], as in its [`Endpoint`].
    pub slot: u16,
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

const _: () = assert!(size_of::<EndpointKey>() == 4);
const _: () = assert!(size_of::<Endpoint>() == 20 && align_of::<Endpoint>() == 4);
const _: () = assert!(size_of::<PodSource>() == 16);
const _: () = assert!(size_of::<PodStats>() == 32);

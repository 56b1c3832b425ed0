//! Events from the datapath to `podnet monitor`: the ring buffer's record, the per-CPU budget
//! that rate-limits it, and their constants.

/// Constants of the event path.
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

/// One event in the [`crate::maps::EVENTS`] ring buffer.
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

/// An event on its way from a hook's program to the logger it tail-calls, with the packet's
/// fate (the [`crate::maps::PENDING`] per-CPU slot). Pinned and shared across program versions:
/// an old program may tail-call a new logger, and both must read the same event and action.
///
/// Layout: 40 + 4 + 4 = 48 bytes, 8-byte aligned, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub event: Event,
    /// What the hook's program returns for the packet; the logger returns it instead.
    pub action: i32,
    /// 1 when `event` is this packet's (a logger only logs a fresh one).
    pub fresh: u32,
}

const _: () = assert!(size_of::<Event>() == 40 && align_of::<Event>() == 8);
const _: () = assert!(size_of::<EventBudget>() == 16);
const _: () = assert!(size_of::<Pending>() == 48);

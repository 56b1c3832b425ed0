//! Connection tracking: translations' keys and entries, their state, and fragments.

use crate::ipv4::proto;

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

impl CtEntry {
    /// Whether this reply-side entry is the claim of the connection whose pod side is `out`:
    /// it translates back to that connection's pod address and port. Another connection may
    /// have taken the node port over.
    #[inline(always)]
    pub fn holds(&self, out: &CtKey) -> bool {
        self.addr == out.saddr && self.port == out.sport
    }
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

const _: () = assert!(size_of::<CtKey>() == 16);
const _: () = assert!(size_of::<CtEntry>() == 24);
const _: () = assert!(size_of::<FragKey>() == 12);
const _: () = assert!(size_of::<FragEntry>() == 16);

#[cfg(test)]
mod tests {
    use super::*;
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
}

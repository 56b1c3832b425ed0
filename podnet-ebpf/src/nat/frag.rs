//! Fragmented datagrams through the NAT, both ways. The first fragment carries the ports: it
//! is translated as any packet, and records in `NAT_FRAGS` what the later fragments of its
//! datagram (same addresses, IP identification and protocol) get: the node's address as their
//! source going out, the pod's as their destination coming in. A later fragment whose first one
//! was not translated gets nothing: going out it is dropped (it would carry the pod's address),
//! coming in it is left to the stack. Fragments are expected in order, as Linux sends them. A
//! record goes with its datagram's last fragment and is ignored after [`FRAG_TTL_NS`] (the IP
//! identification wraps: an old record must not catch a later datagram).

use aya_ebpf::{btf_maps::LruHashMap, macros::btf_map};
use podnet_common::{FragEntry, FragKey, maps::FRAGS_MAX};

use crate::{
    clock,
    packet::{Ipv4, Side},
};

#[btf_map(pin_by_name)]
static NAT_FRAGS: LruHashMap<FragKey, FragEntry, FRAGS_MAX> = LruHashMap::new();

/// How long a datagram's fragments may take to pass (Linux's reassembly timeout).
const FRAG_TTL_NS: u64 = 30_000_000_000;

#[inline(always)]
fn key(ip: &Ipv4) -> FragKey {
    FragKey { saddr: ip.saddr(), daddr: ip.daddr(), id: ip.id(), proto: ip.protocol(), _pad: 0 }
}

/// Whether `ip` is a later fragment (no ports in it).
#[inline(always)]
pub fn is_later(ip: &Ipv4) -> bool {
    ip.fragment_offset() != 0
}

/// After translating first fragment `ip` (as it arrived): its datagram's later fragments get
/// `addr`. Whole packets record nothing.
#[inline(always)]
pub fn remember(ip: &Ipv4, addr: [u8; 4]) {
    if ip.is_fragment() {
        let created_ns = clock::now();
        // An LRU hash makes room itself; a lost record costs one datagram.
        let _ = NAT_FRAGS.insert(&key(ip), &FragEntry { created_ns, addr, _pad: 0 }, 0);
    }
}

/// Rewrites later fragment `ip` as its first fragment was: its address on `side` becomes the
/// recorded one (a direct store; no L4 header to fix). `false` when its first fragment was not
/// translated.
#[inline(always)]
pub fn translate(ip: &Ipv4, side: Side) -> bool {
    let key = key(ip);
    let Some(entry) = NAT_FRAGS.get_ptr(&key) else {
        return false;
    };
    // SAFETY: from a successful lookup; entries are written whole, once per datagram.
    let (new, created_ns) = unsafe { ((*entry).addr, (*entry).created_ns) };
    if clock::now().saturating_sub(created_ns) > FRAG_TTL_NS {
        return false;
    }
    if !ip.more_fragments() {
        // The datagram's last fragment: its record goes with it.
        let _ = NAT_FRAGS.remove(&key);
    }
    ip.set_address(side, new);
    true
}

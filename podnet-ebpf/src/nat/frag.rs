//! Fragmented datagrams through the NAT, both ways. The first fragment carries the ports: it
//! is translated as any packet, and records in `NAT_FRAGS` what the later fragments of its
//! datagram (same addresses, IP identification and protocol) get: the node's address as their
//! source going out, the pod's as their destination coming in. A later fragment whose first one
//! was not translated gets nothing: going out it is dropped (it would carry the pod's address),
//! coming in it is left to the stack. Fragments are expected in order, as Linux sends them. A
//! record goes with its datagram's last fragment and is ignored after [`FRAG_TTL_NS`] (the IP
//! identification wraps: an old record must not catch a later datagram).

use aya_ebpf::{
    btf_maps::LruHashMap, helpers::generated::bpf_ktime_get_ns, macros::btf_map, programs::TcContext,
};
use podnet_common::{FragEntry, FragKey, maps::FRAGS_MAX};

use crate::packet::{Ipv4, Malformed};

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
        // SAFETY: a helper without arguments.
        let created_ns = unsafe { bpf_ktime_get_ns() };
        // An LRU hash makes room itself; a lost record costs one datagram.
        let _ = NAT_FRAGS.insert(&key(ip), &FragEntry { created_ns, addr, _pad: 0 }, 0);
    }
}

/// Rewrites later fragment `ip` as its first fragment was: the address at `addr_offset` (source
/// or destination) becomes the recorded one. Returns it, or `None` when its first fragment was
/// not translated.
#[inline(always)]
pub fn translate(ctx: &TcContext, ip: &Ipv4, addr_offset: usize) -> Result<Option<[u8; 4]>, Malformed> {
    let key = key(ip);
    let Some(entry) = NAT_FRAGS.get_ptr(&key) else {
        return Ok(None);
    };
    // SAFETY: from a successful lookup; entries are written whole, once per datagram.
    let (new, created_ns) = unsafe { ((*entry).addr, (*entry).created_ns) };
    // SAFETY: a helper without arguments.
    if unsafe { bpf_ktime_get_ns() }.saturating_sub(created_ns) > FRAG_TTL_NS {
        return Ok(None);
    }
    if !ip.more_fragments() {
        // The datagram's last fragment: its record goes with it.
        let _ = NAT_FRAGS.remove(&key);
    }
    let old = if addr_offset == Ipv4::SADDR_OFFSET { ip.saddr() } else { ip.daddr() };
    super::set_address(ctx, addr_offset, old, new)?;
    Ok(Some(new))
}

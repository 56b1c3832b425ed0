//! The uplink's XDP prefilter: the deny list of source CIDRs, and malformed-frame drops.

use aya_ebpf::{
    btf_maps::{LpmTrie, lpm_trie::Key},
    macros::btf_map,
};
use podnet_common::{Ipv4LpmData, maps::DENY_MAX};

#[btf_map(pin_by_name)]
static DENY: LpmTrie<Ipv4LpmData, u32, DENY_MAX> = LpmTrie::new();

/// Whether source `addr` is in a denied CIDR.
#[inline(always)]
pub fn denied(addr: [u8; 4]) -> bool {
    DENY.get(&Key::new(32, addr)).is_some()
}

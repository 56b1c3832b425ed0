//! The uplink's XDP prefilter: the deny list of source CIDRs, and malformed-frame drops.

use aya_ebpf::{
    btf_maps::{LpmTrie, lpm_trie::Key},
    macros::btf_map,
};
use podnet_common::{Ipv4LpmData, maps::DENY_MAX};

use crate::packet::Ipv4;

#[btf_map(pin_by_name)]
static DENY: LpmTrie<Ipv4LpmData, u32, DENY_MAX> = LpmTrie::new();

/// Whether the packet's source is in a denied CIDR.
#[inline(always)]
pub fn denied(ip: &Ipv4) -> bool {
    DENY.get(&Key::new(32, ip.saddr())).is_some()
}

//! The uplink's XDP prefilter: the deny list of source CIDRs, and malformed-frame drops.

use aya_ebpf::{
    btf_maps::{LpmTrie, lpm_trie::Key},
    macros::btf_map,
    programs::XdpContext,
};
use podnet_common::{Ipv4LpmData, Reason, maps::DENY_MAX};

use crate::{
    packet::{Ipv4, Malformed},
    verdict::Verdict,
};

#[btf_map(pin_by_name)]
static DENY: LpmTrie<Ipv4LpmData, u32, DENY_MAX> = LpmTrie::new();

/// Drops IPv4 from a denied source; passes everything else that parses.
#[inline(always)]
pub fn filter(ctx: &XdpContext) -> Result<Verdict, Malformed> {
    let Some(ip) = Ipv4::parse(ctx)? else {
        return Ok(Verdict::xdp_pass(Reason::XdpPass));
    };
    if DENY.get(&Key::new(32, ip.saddr())).is_some() {
        return Ok(Verdict::xdp_drop(Reason::XdpDropDenied));
    }
    Ok(Verdict::xdp_pass(Reason::XdpPass))
}

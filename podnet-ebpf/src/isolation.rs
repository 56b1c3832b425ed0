//! Pod isolation: a pod can be only itself, and the node decides who reaches its pods.
//!
//! The node bridge stays (it holds the pods' gateway and carries ARP), but every frame a pod
//! sends is checked at its host veth's tcx ingress before the bridge sees it: IPv4 must carry the
//! pod's own address and MAC, ARP must announce the pod's own address and MAC, and nothing else
//! (IPv6, VLAN tags, other ethertypes) gets in. So no pod can poison the bridge's FDB or the
//! node's neighbour table, or send as someone else. From the uplink, only peers (their pods and
//! their node addresses), `[uplink] allow_from` and replies to masqueraded connections reach pods.
//! And pods never reach the destinations the node denies them (`POD_DENY`: its control
//! endpoints, `[isolation] pods_never_reach`).

use aya_ebpf::{
    btf_maps::{Array, LpmTrie, lpm_trie::Key},
    macros::btf_map,
    programs::TcContext,
};
use podnet_common::{
    DeniedPorts, DropReason, Ipv4LpmData, PassReason, admission,
    maps::{POD_DENY_MAX, UPLINK_ALLOW_MAX},
    proto::{TCP, UDP},
};

use crate::{
    endpoints,
    packet::{self, ArpHdr, EthHdr, Ipv4, Malformed},
    routing,
    verdict::Verdict,
};

#[btf_map(pin_by_name)]
static UPLINK_ALLOW: LpmTrie<Ipv4LpmData, u32, UPLINK_ALLOW_MAX> = LpmTrie::new();

#[btf_map(pin_by_name)]
static POD_DENY: LpmTrie<Ipv4LpmData, DeniedPorts, POD_DENY_MAX> = LpmTrie::new();

/// How many entries `POD_DENY` holds, at most (see `maps::POD_DENY_COUNT`).
#[btf_map(pin_by_name)]
static POD_DENY_COUNT: Array<u32, 1> = Array::new();

/// The pod's counter slot if its IPv4 packet carries its own source address and MAC, on its
/// own veth; `None` if it does not.
#[inline(always)]
pub fn pod_source(ctx: &TcContext, ip: &Ipv4) -> Option<u16> {
    endpoints::own_slot(ip.saddr(), ip.src_mac(), packet::ingress_ifindex(ctx))
}

/// A frame from a pod that is not IPv4: ARP announcing the pod's own MAC and address goes on to
/// the bridge; forged ARP and everything else is dropped.
#[inline(always)]
pub fn pod_non_ipv4(ctx: &TcContext) -> Result<Verdict, Malformed> {
    let eth = packet::read::<EthHdr>(ctx, 0)?;
    if eth.ether_type != EthHdr::TYPE_ARP {
        return Ok(Verdict::drop(DropReason::DropNotIpv4));
    }
    let arp = packet::read::<ArpHdr>(ctx, EthHdr::LEN)?;
    if !arp.is_ethernet_ipv4() {
        return Ok(Verdict::drop(DropReason::DropNotIpv4));
    }
    // The sender fields are what neighbours learn; the frame's source MAC is what the bridge
    // learns. Both must be the pod's own.
    if arp.sha != eth.src || endpoints::own_slot(arp.spa, arp.sha, packet::ingress_ifindex(ctx)).is_none() {
        return Ok(Verdict::drop(DropReason::DropSpoofed));
    }
    Ok(Verdict::pass(PassReason::PassArp))
}

/// Whether `addr` is in an `[uplink] allow_from` network: such networks route the pod CIDR to
/// this node, so pods reach them with their own addresses (no masquerade), as they reach pods.
#[inline(always)]
pub fn in_allowed_network(addr: [u8; 4]) -> bool {
    UPLINK_ALLOW.get(&Key::new(32, addr)) == Some(&admission::ADMIT)
}

/// Whether a packet from the uplink may reach a local pod: from a peer node or its pods, or
/// from a source `[uplink] allow_from` admits. Sources that can only be forged (this node's pod
/// CIDR and address, martian ranges) are refused even inside an admitted range.
#[inline(always)]
pub fn admitted_from_uplink(ip: &Ipv4) -> Result<(), DropReason> {
    let src = ip.saddr();
    if routing::is_peer(src) {
        return Ok(());
    }
    match UPLINK_ALLOW.get(&Key::new(32, src)) {
        Some(&admission::ADMIT) => Ok(()),
        Some(_) => Err(DropReason::DropSpoofed),
        None => Err(DropReason::DropNotAllowed),
    }
}

/// Whether a pod may not send `ip`: everything to a network denied whole, TCP and UDP to a
/// denied port of its network. A later fragment carries no port and goes on (its first fragment,
/// which does, did not). `ip` comes from [`Ipv4::with_l4`].
#[inline(always)]
pub fn denied_destination(ctx: &TcContext, ip: &Ipv4) -> Result<bool, Malformed> {
    if POD_DENY_COUNT.get(0).is_none_or(|&n| n == 0) {
        return Ok(false);
    }
    let Some(denied) = POD_DENY.get(&Key::new(32, ip.daddr())) else {
        return Ok(false);
    };
    if denied.all != 0 {
        return Ok(true);
    }
    let proto = ip.protocol();
    if (proto != TCP && proto != UDP) || ip.fragment_offset() != 0 {
        return Ok(false);
    }
    let [_, dport] = packet::read::<[u16; 2]>(ctx, ip.l4_offset())?;
    Ok(denied.holds(dport))
}

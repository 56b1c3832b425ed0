//! podnet's kernel programs. One thin entry per hook; each calls a `try_*` function that returns
//! a [`verdict::Verdict`] (action + reason), counts the reason and returns the action.
#![no_std]
#![no_main]
#![expect(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "aya's program macros wrap each entry in a function taking the kernel's raw context pointer"
)]

mod clock;
mod counters;
mod endpoints;
mod events;
mod isolation;
mod nat;
mod packet;
mod prefilter;
mod routing;
mod verdict;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use podnet_common::{DropReason, PassReason, RedirectReason, is_martian_destination};

use crate::{
    endpoints::Hop,
    packet::{Ipv4, Malformed},
    routing::Next,
    verdict::Verdict,
};

/// tc (tcx) ingress on the host side of a pod veth: every frame a pod sends.
///
/// First the pod must be itself (see [`isolation`]): VLAN tags, spoofed IPv4 or ARP, anything
/// but IPv4 and ARP, inconsistent or truncated headers and martian destinations are dropped.
/// Then IPv4 to another pod on this node is delivered straight into that pod
/// (`bpf_redirect_peer`, Linux >= 5.10); what pods may never reach (the node's control
/// endpoints, `[isolation] pods_never_reach`) is dropped; IPv4 to a pod on another node is routed out of the
/// uplink (`bpf_fib_lookup` + `bpf_redirect`); TCP, UDP and ICMP echo to the outside are
/// masqueraded behind the node IP and routed out of the uplink (what cannot be translated is
/// dropped); the rest (to the node, ARP) goes on to the kernel stack.
#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    try_from_pod(&ctx).unwrap_or(Verdict::drop(DropReason::DropMalformed)).finish(&ctx)
}

#[inline(always)]
fn try_from_pod(ctx: &TcContext) -> Result<Verdict, Malformed> {
    if packet::vlan_tagged(ctx)? {
        return Ok(Verdict::drop(DropReason::DropVlanTagged));
    }
    let Some(ip) = Ipv4::parse(ctx)? else {
        return isolation::pod_non_ipv4(ctx);
    };
    let Some(slot) = isolation::pod_source(ctx, &ip) else {
        return Ok(Verdict::drop(DropReason::DropSpoofed));
    };
    endpoints::count_from_pod(slot, ip.tot_len());
    let ip = ip.with_l4(ctx)?;
    ip.check_l4(ctx)?;
    if is_martian_destination(ip.daddr()) {
        return Ok(Verdict::drop(DropReason::DropMartian));
    }
    // Local pods are in the node's pod CIDR (once `up` set it): others skip the endpoint lookup.
    if nat::in_pod_cidr(ip.daddr())
        && let Some(ep) = endpoints::lookup(ip.daddr())
    {
        return Ok(endpoints::deliver(&ip, &ep, Hop::SameSegment));
    }
    if isolation::denied_destination(ctx, &ip)? {
        return Ok(Verdict::drop(DropReason::DropDeniedDestination));
    }
    let now = clock::now();
    Ok(match routing::classify(ctx, &ip, now) {
        Next::Peer(Ok(route)) => {
            let reason = if route.resolved() {
                RedirectReason::RedirectRemote
            } else {
                RedirectReason::RedirectRemoteResolve
            };
            routing::transmit(&ip, &route, reason)
        }
        Next::Peer(Err(reason)) => Verdict::pass(reason),
        Next::Outside(route) => {
            nat::masquerade(ctx, &ip, route, now)?.unwrap_or(Verdict::pass(PassReason::PassNotLocal))
        }
    })
}

/// tc (tcx) ingress on the node's uplink: replies to masqueraded connections (translated back),
/// and IPv4 to a pod on this node from a source admitted to pods (peers, `allow_from`), are
/// delivered straight into the pod (a routed hop: TTL decremented); other sources are dropped
/// before they reach a pod; other nodes' pods are held to what pods may never reach; the rest
/// (VLAN-tagged frames included) goes on to the stack.
#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    try_from_uplink(&ctx).unwrap_or(Verdict::drop(DropReason::DropMalformed)).finish(&ctx)
}

#[inline(always)]
fn try_from_uplink(ctx: &TcContext) -> Result<Verdict, Malformed> {
    // A tagged frame belongs to a VLAN device on the uplink, not to podnet; but the stack strips
    // priority tags (VLAN 0) and would route the packet inside to a pod past the checks below.
    if packet::vlan_tagged(ctx)? {
        return Ok(match packet::tagged_ipv4(ctx)? {
            Some((_, dst)) if endpoints::lookup(dst).is_some() => Verdict::drop(DropReason::DropVlanTagged),
            _ => Verdict::pass(PassReason::PassNotIpv4),
        });
    }
    let Some(ip) = Ipv4::parse(ctx)? else {
        return Ok(Verdict::pass(PassReason::PassNotIpv4));
    };
    if nat::is_node_address(ip.daddr()) {
        let ip = ip.with_l4(ctx)?;
        if let Some(verdict) = nat::unmasquerade(ctx, &ip)? {
            return Ok(verdict);
        }
        return to_stack(ctx, &ip);
    }
    let Some(ep) = endpoints::lookup(ip.daddr()) else {
        return to_stack(ctx, &ip);
    };
    if let Err(reason) = isolation::admitted_from_uplink(&ip) {
        return Ok(Verdict::drop(reason));
    }
    Ok(endpoints::deliver(&ip, &ep, Hop::Routed))
}

/// A packet from the uplink for the node itself (or for the stack to route): on it goes, but
/// other nodes' pods, which reach this node untranslated, are held to what pods may never reach.
#[inline(always)]
fn to_stack(ctx: &TcContext, ip: &Ipv4) -> Result<Verdict, Malformed> {
    // The destination first: with no control endpoint, the lookup finds nothing at once.
    let ip = ip.with_l4(ctx)?;
    if isolation::denied_destination(ctx, &ip)? && routing::is_peer_pod(ip.saddr()) {
        return Ok(Verdict::drop(DropReason::DropDeniedDestination));
    }
    Ok(Verdict::pass(PassReason::PassUplinkNotLocal))
}

/// XDP on the node's uplink (native or generic mode): drops frames from deny-listed sources and
/// malformed frames before the stack or tc spend anything on them; the rest goes on to tc.
///
/// Not declared multi-buffer aware (`frags`): it reads headers with direct packet access, which
/// only covers the first buffer, and generic-mode frames from veths can keep their headers in a
/// later one. Note that native XDP on a veth uplink makes the kernel strip the veth peer's
/// software GSO, which on the veth labs here costs cross-node TCP most of its throughput (see
/// BENCHMARKS.md); hence XDP is off by default.
#[xdp]
pub fn uplink_filter(ctx: XdpContext) -> u32 {
    try_uplink_xdp(&ctx, false).unwrap_or(Verdict::xdp_drop(DropReason::XdpDropMalformed)).finish(&ctx) as u32
}

/// `uplink_filter`, then frames from other nodes for local pods are redirected at XDP to the
/// pod's host veth (through the `POD_DEVS` devmap) instead of going on to tc's `from_uplink`.
/// Chosen with `[uplink] xdp_deliver = true`; BENCHMARKS.md has why it is not the default. NAT
/// replies still go to tc: XDP cannot tell a complete L4 checksum from a partial one (offloaded
/// by a sender on the same host), so it cannot rewrite ports safely.
#[xdp]
pub fn uplink_deliver(ctx: XdpContext) -> u32 {
    try_uplink_xdp(&ctx, true).unwrap_or(Verdict::xdp_drop(DropReason::XdpDropMalformed)).finish(&ctx) as u32
}

#[inline(always)]
fn try_uplink_xdp(ctx: &XdpContext, deliver: bool) -> Result<Verdict, Malformed> {
    let Some(ip) = Ipv4::parse(ctx)? else {
        // The deny list holds behind VLAN tags too (the stack may untag and route the packet).
        return Ok(match packet::tagged_ipv4(ctx)? {
            Some((src, _)) if prefilter::denied(src) => Verdict::xdp_drop(DropReason::XdpDropDenied),
            _ => Verdict::xdp_pass(PassReason::XdpPass),
        });
    };
    if prefilter::denied(ip.saddr()) {
        return Ok(Verdict::xdp_drop(DropReason::XdpDropDenied));
    }
    if deliver && let Some(verdict) = endpoints::deliver_xdp(ctx, &ip) {
        return Ok(verdict);
    }
    Ok(Verdict::xdp_pass(PassReason::XdpPass))
}

/// The tc programs' logger, tail-called by `from_pod` and `from_uplink` when the programs were
/// loaded with a log level: writes the pending drop or new translation as an aya-log line and
/// returns what the caller decided for the packet (see [`events`]).
#[classifier]
pub fn log_tc(ctx: TcContext) -> i32 {
    events::log(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Kernel programs cannot unwind; the verifier rejects any path that would get here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

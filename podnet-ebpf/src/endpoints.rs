//! Pods on this node and delivery into them: from tc straight into the pod's namespace, or from
//! the uplink's XDP program out of the pod's host veth.

use aya_ebpf::{
    EbpfContext as _,
    bindings::xdp_action,
    btf_maps::{Array, DevMapHash, HashMap, PerCpuArray},
    helpers::generated::{bpf_check_mtu, bpf_redirect_peer},
    macros::btf_map,
    programs::XdpContext,
};
use podnet_common::{
    Endpoint, EndpointKey, PassReason, PodSource, PodStats, RedirectReason,
    maps::{ENDPOINTS_MAX, POD_SOURCES_MAX, POD_STATS_SLOTS},
};

use crate::{isolation, packet::Ipv4, verdict::Verdict};

#[btf_map(pin_by_name)]
static ENDPOINTS: HashMap<EndpointKey, Endpoint, ENDPOINTS_MAX> = HashMap::new();
/// Who sends on each pod's host veth, by ifindex modulo the slots (see `is_own`).
#[btf_map(pin_by_name)]
static POD_SOURCES: Array<PodSource, POD_SOURCES_MAX> = Array::new();
/// The pods' host veths, keyed by ifindex: the targets of XDP delivery. A devmap holds each
/// device, so a redirect needs no per-packet ifindex lookup, and only live devices are targets.
#[btf_map(pin_by_name)]
static POD_DEVS: DevMapHash<ENDPOINTS_MAX> = DevMapHash::new();
/// Each pod's traffic, by the slot in its endpoint: an array, so counting is an offset.
#[btf_map(pin_by_name)]
static POD_STATS: PerCpuArray<PodStats, POD_STATS_SLOTS> = PerCpuArray::new();

/// How the packet reaches the pod.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// From a pod on the same bridge segment: switched, TTL untouched.
    SameSegment,
    /// From another node: routed by this node, TTL decremented.
    Routed,
    /// A reply from the outside, already translated back to the pod: routed, TTL decremented.
    NatReply,
}

/// Rewrites the packet for the local pod `ep` and redirects it into the pod's namespace.
#[inline(always)]
pub fn deliver(ip: &Ipv4, ep: &Endpoint, hop: Hop) -> Verdict {
    let reason = match hop {
        Hop::SameSegment => RedirectReason::RedirectLocal,
        Hop::Routed | Hop::NatReply => {
            if ip.ttl() <= 1 {
                return Verdict::pass(PassReason::PassTtlExpiring);
            }
            ip.decrement_ttl();
            if hop == Hop::NatReply {
                RedirectReason::RedirectNatReply
            } else {
                RedirectReason::RedirectFromUplink
            }
        }
    };
    ip.set_macs(ep.host_mac, ep.pod_mac);
    count_to_pod(ep.slot, ip.tot_len());
    // SAFETY: a helper call with plain integer arguments; valid from tc ingress.
    let action = unsafe { bpf_redirect_peer(ep.host_ifindex, 0) };
    Verdict::redirected(action as i32, reason)
}

/// The pod's counter slot if a packet from `addr` with source MAC `mac`, arriving on host veth
/// `ifindex`, comes from the pod that owns that address: its own veth, its own MAC; `None` if
/// not. The veth's slot in `POD_SOURCES` answers; when another veth holds the slot (ifindexes
/// that share it), the endpoint of `addr` does.
#[inline(always)]
pub fn own_slot(addr: [u8; 4], mac: [u8; 6], ifindex: u32) -> Option<u16> {
    if let Some(source) = POD_SOURCES.get(ifindex % POD_SOURCES_MAX as u32)
        && source.ifindex == ifindex
    {
        return (source.ip == addr && source.mac == mac).then_some(source.slot);
    }
    lookup(addr).filter(|ep| ep.host_ifindex == ifindex && ep.pod_mac == mac).map(|ep| ep.slot)
}

/// Counts a packet of `bytes` the pod with counter slot `slot` sent.
#[inline(always)]
pub fn count_from_pod(slot: u16, bytes: u16) {
    if let Some(stats) = POD_STATS.get_ptr_mut(u32::from(slot)) {
        // SAFETY: from a successful lookup in a per-CPU array: this CPU's own slot, and this
        // program cannot be preempted by another user of it.
        unsafe {
            (*stats).from_pod_packets += 1;
            (*stats).from_pod_bytes += u64::from(bytes);
        }
    }
}

/// Counts a packet of `bytes` delivered into the pod with counter slot `slot`.
#[inline(always)]
fn count_to_pod(slot: u16, bytes: u16) {
    if let Some(stats) = POD_STATS.get_ptr_mut(u32::from(slot)) {
        // SAFETY: as in `count_from_pod`.
        unsafe {
            (*stats).to_pod_packets += 1;
            (*stats).to_pod_bytes += u64::from(bytes);
        }
    }
}

/// XDP: a frame from another node for a local pod leaves by the pod's host veth and arrives on
/// the pod side (a routed hop: TTL decremented); `None` for anything tc should handle instead.
///
/// What stays with tc: frames for no local pod, from a source not admitted to pods, TTL
/// expiring, and frames longer than the pod veth's MTU (generic-mode XDP sees GSO super-packets, which a devmap redirect refuses).
#[inline(always)]
pub fn deliver_xdp(ctx: &XdpContext, ip: &Ipv4) -> Option<Verdict> {
    let ep = lookup(ip.daddr())?;
    // Refused sources go on to tc, which drops and counts them.
    if ip.ttl() <= 1 || isolation::admitted_from_uplink(ip).is_err() {
        return None;
    }
    let mut mtu = 0u32;
    // SAFETY: the helper reads the frame and writes `mtu`, on our stack for the whole call.
    if unsafe { bpf_check_mtu(ctx.as_ptr(), ep.host_ifindex, &mut mtu, 0, 0) } != 0 {
        return None;
    }
    ip.decrement_ttl();
    ip.set_macs(ep.host_mac, ep.pod_mac);
    // A pod whose device entry is missing (never, while `up` keeps both maps) goes on to tc.
    Some(match POD_DEVS.redirect(ep.host_ifindex, u64::from(xdp_action::XDP_PASS)) {
        Ok(action) => {
            // Counted here only when XDP delivers it (tc counts what it falls back to).
            count_to_pod(ep.slot, ip.tot_len());
            Verdict::redirected(action as i32, RedirectReason::XdpRedirectLocal)
        }
        // The default action: on to tc.
        Err(_) => Verdict::xdp_pass(PassReason::XdpPass),
    })
}

/// The local pod with address `addr`, if any.
#[inline(always)]
pub fn lookup(addr: [u8; 4]) -> Option<Endpoint> {
    let ep = ENDPOINTS.get_ptr(&EndpointKey { ip: addr })?;
    // SAFETY: the pointer comes from a successful lookup; the value is plain data, copied out
    // before any other map operation.
    Some(unsafe { *ep })
}

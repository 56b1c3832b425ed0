//! Pods on this node and delivery into them.

use aya_ebpf::{btf_maps::HashMap, helpers::generated::bpf_redirect_peer, macros::btf_map};
use podnet_common::{Endpoint, EndpointKey, Reason, maps::ENDPOINTS_MAX};

use crate::{packet::Ipv4, verdict::Verdict};

#[btf_map(pin_by_name)]
static ENDPOINTS: HashMap<EndpointKey, Endpoint, ENDPOINTS_MAX> = HashMap::new();

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

/// If the destination is a pod on this node, rewrites the packet for it and redirects it into
/// the pod's namespace; `None` when it is not a local pod.
#[inline(always)]
pub fn deliver(ip: &Ipv4, hop: Hop) -> Option<Verdict> {
    let ep = ENDPOINTS.get_ptr(&EndpointKey { ip: ip.daddr() })?;
    // SAFETY: the pointer comes from a successful lookup; the value is plain data, copied out
    // before any other map operation.
    let ep = unsafe { *ep };
    let reason = match hop {
        Hop::SameSegment => Reason::RedirectLocal,
        Hop::Routed | Hop::NatReply => {
            if ip.ttl() <= 1 {
                return Some(Verdict::pass(Reason::PassTtlExpiring));
            }
            ip.decrement_ttl();
            if hop == Hop::NatReply { Reason::RedirectNatReply } else { Reason::RedirectFromUplink }
        }
    };
    ip.set_macs(ep.host_mac, ep.pod_mac);
    // SAFETY: a helper call with plain integer arguments; valid from tc ingress.
    let action = unsafe { bpf_redirect_peer(ep.host_ifindex, 0) };
    Some(Verdict::redirected(action as i32, reason))
}

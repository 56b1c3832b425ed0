//! Pods on this node and delivery into them.

use aya_ebpf::{
    btf_maps::HashMap, helpers::generated::bpf_redirect_peer, macros::btf_map, programs::TcContext,
};
use podnet_common::{Endpoint, EndpointKey, Reason, maps::ENDPOINTS_MAX};

use crate::{
    packet::{self, EthHdr, Malformed},
    verdict::Verdict,
};

#[btf_map(pin_by_name)]
static ENDPOINTS: HashMap<EndpointKey, Endpoint, ENDPOINTS_MAX> = HashMap::new();

/// If `daddr` is a pod on this node, rewrites the Ethernet header for it and redirects the packet
/// into the pod's namespace; `None` when it is not a local pod.
#[inline(always)]
pub fn deliver(ctx: &TcContext, daddr: [u8; 4]) -> Result<Option<Verdict>, Malformed> {
    let Some(ep) = ENDPOINTS.get_ptr(&EndpointKey { ip: daddr }) else {
        return Ok(None);
    };
    // SAFETY: the pointer comes from a successful lookup; the value is plain data, copied out
    // before any other map operation.
    let ep = unsafe { *ep };
    let eth = packet::ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: `ptr_at` bounds-checked the header; tc programs may write packet data directly.
    unsafe {
        (*eth).dst = ep.pod_mac;
        (*eth).src = ep.host_mac;
    }
    // SAFETY: a helper call with plain integer arguments; valid from tc ingress.
    let action = unsafe { bpf_redirect_peer(ep.host_ifindex, 0) };
    Ok(Some(Verdict::redirected(action as i32, Reason::RedirectLocal)))
}

//! podnet's kernel programs. One thin entry per hook; each calls a `try_*` function that returns
//! a [`verdict::Verdict`] (action + reason), counts the reason and returns the action.
#![no_std]
#![no_main]
#![expect(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "aya's program macros wrap each entry in a function taking the kernel's raw context pointer"
)]

mod counters;
mod endpoints;
mod packet;
mod verdict;

use aya_ebpf::{macros::classifier, programs::TcContext};
use podnet_common::Reason;

use crate::{
    packet::{EthHdr, Ipv4Hdr, Malformed},
    verdict::Verdict,
};

/// tc (tcx) ingress on the host side of a pod veth: every packet a pod sends.
///
/// IPv4 to another pod on this node is delivered straight into that pod (`bpf_redirect_peer`,
/// Linux >= 5.10); everything else goes to the kernel stack unchanged.
#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    try_from_pod(&ctx)
        .unwrap_or(Verdict::drop(Reason::DropMalformed))
        .finish()
}

#[inline(always)]
fn try_from_pod(ctx: &TcContext) -> Result<Verdict, Malformed> {
    let eth = packet::ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: `ptr_at` checked that the whole Ethernet header lies inside the packet.
    if unsafe { (*eth).ether_type } != EthHdr::TYPE_IPV4 {
        return Ok(Verdict::pass(Reason::PassNotIpv4));
    }
    packet::ensure_linear(ctx, EthHdr::LEN + Ipv4Hdr::LEN)?;
    let ip = packet::ipv4(ctx, EthHdr::LEN)?;
    // SAFETY: `packet::ipv4` checked that the IPv4 header lies inside the packet.
    let daddr = unsafe { (*ip).daddr };
    Ok(endpoints::deliver(ctx, daddr)?.unwrap_or(Verdict::pass(Reason::PassNotLocal)))
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

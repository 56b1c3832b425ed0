//! What a program decided about a packet: the tc or XDP action to return and the reason to count.

use aya_ebpf::bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action};
use podnet_common::{DropReason, PassReason, RedirectReason};

use crate::{
    counters,
    events::{self, Arrival},
};

/// A decision: the action for the hook and the one counter it moves. A drop counts a drop
/// reason, a pass a pass reason, a redirect a redirect reason: the types keep them apart.
#[derive(Clone, Copy)]
pub struct Verdict {
    action: i32,
    /// The counter slot: a [`podnet_common::Reason`] of the verdict's kind.
    reason: u32,
    /// Made by `drop` or `xdp_drop`: a drop reason (known where the verdict is made, so nothing
    /// looks the reason's kind up per packet).
    dropped: bool,
}

impl Verdict {
    /// Not podnet's to forward: on to the next tcx program on the device, if any, then the
    /// kernel stack (TC_ACT_UNSPEC is tcx's "next").
    #[inline(always)]
    pub const fn pass(reason: PassReason) -> Self {
        Self { action: TC_ACT_UNSPEC, reason: reason as u32, dropped: false }
    }

    /// Drop the packet.
    #[inline(always)]
    pub const fn drop(reason: DropReason) -> Self {
        Self { action: TC_ACT_SHOT, reason: reason as u32, dropped: true }
    }

    /// XDP: on to tc and the stack.
    #[inline(always)]
    pub const fn xdp_pass(reason: PassReason) -> Self {
        Self { action: xdp_action::XDP_PASS as i32, reason: reason as u32, dropped: false }
    }

    /// XDP: drop before any other work.
    #[inline(always)]
    pub const fn xdp_drop(reason: DropReason) -> Self {
        Self { action: xdp_action::XDP_DROP as i32, reason: reason as u32, dropped: true }
    }

    /// The packet was handed to a redirect helper, which returned `action`.
    #[inline(always)]
    pub const fn redirected(action: i32, reason: RedirectReason) -> Self {
        Self { action, reason: reason as u32, dropped: false }
    }

    /// Count the reason, report a drop or new translation (see [`events`]), and give the hook its
    /// return value.
    #[inline(always)]
    pub fn finish<C: Arrival>(self, ctx: &C) -> i32 {
        counters::count(self.reason);
        events::finish(ctx, self.reason, self.dropped, self.action)
    }
}

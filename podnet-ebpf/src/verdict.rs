//! What a program decided about a packet: the tc or XDP action to return and the reason to count.

use aya_ebpf::bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action};
use podnet_common::Reason;

use crate::{
    counters,
    events::{self, Arrival},
};

/// A decision: the action for the hook and the one counter it moves.
#[derive(Clone, Copy)]
pub struct Verdict {
    action: i32,
    reason: Reason,
}

impl Verdict {
    /// Not podnet's to forward: on to the next tcx program on the device, if any, then the
    /// kernel stack (TC_ACT_UNSPEC is tcx's "next").
    #[inline(always)]
    pub const fn pass(reason: Reason) -> Self {
        Self { action: TC_ACT_UNSPEC, reason }
    }

    /// Drop the packet.
    #[inline(always)]
    pub const fn drop(reason: Reason) -> Self {
        Self { action: TC_ACT_SHOT, reason }
    }

    /// XDP: on to tc and the stack.
    #[inline(always)]
    pub const fn xdp_pass(reason: Reason) -> Self {
        Self { action: xdp_action::XDP_PASS as i32, reason }
    }

    /// XDP: drop before any other work.
    #[inline(always)]
    pub const fn xdp_drop(reason: Reason) -> Self {
        Self { action: xdp_action::XDP_DROP as i32, reason }
    }

    /// The packet was handed to a redirect helper, which returned `action`.
    #[inline(always)]
    pub const fn redirected(action: i32, reason: Reason) -> Self {
        Self { action, reason }
    }

    /// Count the reason, report a drop or new translation (see [`events`]), and give the hook its
    /// return value.
    #[inline(always)]
    pub fn finish<C: Arrival>(self, ctx: &C) -> i32 {
        counters::count(self.reason);
        events::finish(ctx, self.reason, self.action)
    }
}

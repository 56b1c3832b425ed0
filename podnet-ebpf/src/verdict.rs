//! What a program decided about a packet: the tc action to return and the reason to count.

use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_SHOT};
use podnet_common::Reason;

use crate::counters;

/// A decision: the action for the hook and the one counter it moves.
#[derive(Clone, Copy)]
pub struct Verdict {
    action: i32,
    reason: Reason,
}

impl Verdict {
    /// Hand the packet to the kernel stack unchanged.
    #[inline(always)]
    pub const fn pass(reason: Reason) -> Self {
        Self { action: TC_ACT_OK, reason }
    }

    /// Drop the packet.
    #[inline(always)]
    pub const fn drop(reason: Reason) -> Self {
        Self { action: TC_ACT_SHOT, reason }
    }

    /// The packet was handed to a redirect helper, which returned `action`.
    #[inline(always)]
    pub const fn redirected(action: i32, reason: Reason) -> Self {
        Self { action, reason }
    }

    /// Count the reason and give the hook its return value.
    #[inline(always)]
    pub fn finish(self) -> i32 {
        counters::count(self.reason);
        self.action
    }
}

//! Per-CPU packet counters, one slot per [`Reason`] (and spare slots for reasons to come);
//! userspace sums the CPUs.

use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};
use podnet_common::Reason;

#[btf_map(pin_by_name)]
static COUNTERS: PerCpuArray<u64, { Reason::SLOTS }> = PerCpuArray::new();

/// Adds one to slot `reason` (a [`Reason`]'s index) on this CPU.
#[inline(always)]
pub fn count(reason: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(reason) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array; the slot belongs
        // to this CPU and this program cannot be preempted by another user of it.
        unsafe { *slot += 1 };
    }
}

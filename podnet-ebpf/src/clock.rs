//! The time for the datapath's timestamps (translations, cached routes, fragments): CLOCK_MONOTONIC
//! nanoseconds as of the last scheduler tick, which is what their users compare with (the agent
//! reads CLOCK_MONOTONIC) and fine enough for timeouts and refreshes of a second and more.
//!
//! Reading a clock costs 20-40 ns per call in a VM (the clocksource, or the coarse clock's
//! normalisation); a packet needs it up to twice. So each CPU keeps the last reading with the
//! tick (`jiffies`) it was taken at, and reads the clock again only when the tick moved on.

use aya_ebpf::{
    btf_maps::PerCpuArray,
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::btf_map,
};

/// One CPU's last reading.
#[repr(C)]
pub struct Reading {
    jiffies: u64,
    ns: u64,
}

/// Not pinned: a cache each load starts afresh.
#[btf_map]
static CLOCK: PerCpuArray<Reading, 1> = PerCpuArray::new();

/// Now, in CLOCK_MONOTONIC nanoseconds as of the last tick.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a helper without arguments.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(last) = CLOCK.get_ptr_mut(0) else {
        // SAFETY: a helper without arguments.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: from a successful lookup in a per-CPU array: this CPU's own slot, and this program
    // cannot be preempted by another user of it.
    let last = unsafe { &mut *last };
    if last.jiffies != jiffies || last.ns == 0 {
        last.jiffies = jiffies;
        // SAFETY: a helper without arguments.
        last.ns = unsafe { bpf_ktime_get_coarse_ns() };
    }
    last.ns
}

//! What the datapath tells `podnet monitor`, and the agent's log when the programs were loaded
//! with a log level: every dropped packet with its reason, and the first packet of every new NAT
//! translation. Slow paths only: nothing here runs for a packet that is forwarded, and a drop
//! pays only a look at [`MONITOR`] (against the tick's time: no clock read) when nobody
//! listens and no log level is on. A CPU writes at
//! most [`events::PER_SECOND`] events a second (bursts of [`events::BURST`]), so a flood of
//! drops cannot swamp the ring buffer or its reader; what the budget or a full ring holds back
//! is counted in [`EVENT_STATS`].
//!
//! Log lines (aya-log) are written by a program of their own, `log_tc`, which the tc programs
//! tail-call as their last step once they have put the event together: they keep their stack
//! and verifier budget, and with logging off (the level is a constant fixed at load) the tail
//! call is dead code the verifier removes. XDP drops are events, not log lines.

use aya_ebpf::{
    EbpfContext,
    bindings::TC_ACT_SHOT,
    btf_maps::{Array, PerCpuArray, ProgramArray, RingBuf},
    helpers::bpf_ktime_get_ns,
    macros::btf_map,
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::macro_support::{Level, level_enabled};
use podnet_common::{
    CtKey, Event, EventBudget, Pending, Reason,
    events::{self, BURST, DROP, LISTENER_TTL_NS, NAT_NEW, PER_SECOND},
    maps::EVENTS_BYTES,
    proto::{ICMP, TCP, UDP},
};

use crate::{
    clock,
    packet::{self, Ipv4, Packet},
};

#[btf_map(pin_by_name)]
static EVENTS: RingBuf<Event, EVENTS_BYTES> = RingBuf::new();
#[btf_map(pin_by_name)]
static MONITOR: Array<u64, 1> = Array::new();
#[btf_map(pin_by_name)]
static EVENT_STATS: PerCpuArray<u64, { events::STATS }> = PerCpuArray::new();
#[btf_map(pin_by_name)]
static EVENT_BUDGET: PerCpuArray<EventBudget, 1> = PerCpuArray::new();
/// This CPU's event being put together (the programs' stacks are full already), and what the
/// logger returns for the packet. Pinned, like [`LOGGERS`]: while `up` swaps programs, an old
/// program may tail-call the new logger, and both must read the same event and action.
#[btf_map(pin_by_name)]
static PENDING: PerCpuArray<Pending, 1> = PerCpuArray::new();
/// The logger, put here by the loader when it loads it (slot [`Arrival::LOGGER`]). Pinned: the
/// kernel empties a program array once no file descriptor or pin holds it.
#[btf_map(pin_by_name)]
static LOGGERS: ProgramArray<1> = ProgramArray::new();

/// Nanoseconds per token of the event budget.
const NS_PER_TOKEN: u64 = 1_000_000_000 / PER_SECOND;

/// A program context that knows the interface its packet arrived on, and its logger.
pub trait Arrival: Packet + EbpfContext {
    /// The logger's slot in [`LOGGERS`]; `None`: the hook writes no log lines.
    const LOGGER: Option<u32>;
    fn ifindex(&self) -> u32;
}

impl Arrival for TcContext {
    const LOGGER: Option<u32> = Some(0);

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        packet::ingress_ifindex(self)
    }
}

/// XDP writes events but no log lines: the kernel refuses an XDP program that both calls
/// functions (`memset`) and tail-calls (EINVAL after verification, Linux 6.18).
impl Arrival for XdpContext {
    const LOGGER: Option<u32> = None;

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ingress_ifindex() as u32
    }
}

/// The hook's last step for a packet counted as `reason` that gets `action`: a drop becomes an
/// event, and a drop or new translation with an event becomes a log line when logging is on
/// (the logger, tail-called, then returns `action`). Returns `action`.
#[inline(always)]
pub fn finish<C: Arrival>(ctx: &C, reason: u32, drop: bool, action: i32) -> i32 {
    let pending = if drop {
        dropped(ctx, reason)
    } else if reason == Reason::RedirectNatNew as u32 && C::LOGGER.is_some() && level_enabled(Level::Debug) {
        // SAFETY: this CPU's slot (see `pending`), read in place.
        pending().filter(|&p| unsafe { (*p).fresh } != 0)
    } else {
        None
    };
    if let Some(pending) = pending {
        // SAFETY: this CPU's slot (see `pending`), borrowed only within this block.
        let pending = unsafe { &mut *pending };
        if let Some(logger) = C::LOGGER
            && level_enabled(Level::Info)
        {
            pending.action = action;
            // SAFETY: a tail call with this program's own context into a logger of the same
            // type; when it fails (no logger loaded) the program goes on below.
            unsafe { LOGGERS.tail_call(ctx, logger) };
        }
        // Not logged: the event must not be taken for a later packet's.
        pending.fresh = 0;
    }
    action
}

/// Reports a packet dropped for `reason`: the event, if one is wanted.
#[inline(always)]
fn dropped<C: Arrival>(ctx: &C, reason: u32) -> Option<*mut Pending> {
    let slot = pending()?;
    // SAFETY: this CPU's slot (see `pending`), borrowed only within this function.
    let pending = unsafe { &mut *slot };
    let Some((now, listening)) = wanted(Level::Info, C::LOGGER.is_some()) else {
        // A new translation's event this packet did not get to log (it was dropped after all).
        pending.fresh = 0;
        return None;
    };
    let event = &mut pending.event;
    describe(event, ctx, now);
    event.kind = DROP;
    event.reason = reason as u8;
    pending.fresh = 1;
    if listening {
        send(event);
    }
    Some(slot)
}

/// Reports the first packet of a new translation: the pod side `key` (network byte order) leaves
/// as `node_ip`:`port`.
#[inline(always)]
pub fn nat_new(ctx: &TcContext, key: &CtKey, node_ip: [u8; 4], port: u16) {
    let Some((now, listening)) = wanted(Level::Debug, true) else {
        return;
    };
    let Some(pending) = pending() else {
        return;
    };
    // SAFETY: this CPU's slot (see `pending`), borrowed only within this function.
    let pending = unsafe { &mut *pending };
    // Field by field: a whole `Event` would be built on the stack first.
    let event = &mut pending.event;
    event.time_ns = now;
    event.ifindex = ctx.ifindex();
    event.saddr = key.saddr;
    event.daddr = key.daddr;
    event.nat_addr = node_ip;
    event.sport = u16::from_be(key.sport);
    event.dport = u16::from_be(key.dport);
    event.nat_port = u16::from_be(port);
    event.kind = NAT_NEW;
    event.reason = Reason::RedirectNatNew as u8;
    event.protocol = key.proto;
    pending.fresh = 1;
    if listening {
        send(event);
    }
}

/// The logger: writes the pending event as a log line and returns the packet's action (its
/// caller wrote it just before the tail call).
#[inline(always)]
pub fn log<C: EbpfContext>(ctx: &C) -> i32 {
    let Some(pending) = pending() else {
        // Never: the array has its one slot. Nothing says what the caller decided: drop rather
        // than let the packet through.
        return TC_ACT_SHOT;
    };
    // SAFETY: this CPU's slot (see `pending`), borrowed only within this function.
    let pending = unsafe { &mut *pending };
    if pending.fresh == 0 {
        return pending.action;
    }
    pending.fresh = 0;
    let e = &pending.event;
    let (src, dst) = (u32::from_be_bytes(e.saddr), u32::from_be_bytes(e.daddr));
    if e.kind == NAT_NEW {
        aya_log_ebpf::debug!(
            ctx,
            "nat: new translation, protocol {} {:i}:{} -> {:i}:{} leaves as {:i}:{}",
            e.protocol,
            src,
            e.sport,
            dst,
            e.dport,
            u32::from_be_bytes(e.nat_addr),
            e.nat_port
        );
    } else {
        // Masked, not range-checked: the verifier follows a mask into the table (the slots are a
        // power of two); an empty slot is no reason.
        let reason = &REASON_NAMES[usize::from(e.reason) % Reason::SLOTS];
        let reason = if reason[0] == 0 { &UNKNOWN } else { reason };
        // SAFETY: the table holds the names of `Reason` (ASCII) padded with NULs.
        let reason = unsafe { core::str::from_utf8_unchecked(reason) };
        aya_log_ebpf::info!(
            ctx,
            "drop {} on ifindex {}: protocol {} {:i}:{} -> {:i}:{}",
            reason,
            e.ifindex,
            e.protocol,
            src,
            e.sport,
            dst,
            e.dport
        );
    }
    pending.action
}

/// The longest [`Reason`] name, and more.
const NAME_LEN: usize = 32;

/// Every [`Reason`]'s name by its value, padded with NULs to one length (the agent's log drops
/// them): the logger copies a string of constant length, which the compiler unrolls, where a
/// name of its own length would be a `memcpy` call.
const REASON_NAMES: [[u8; NAME_LEN]; Reason::SLOTS] = {
    assert!(Reason::SLOTS.is_power_of_two());
    let mut names = [[0; NAME_LEN]; Reason::SLOTS];
    let mut r = 0;
    while r < Reason::ALL.len() {
        names[Reason::ALL[r] as usize] = padded(Reason::ALL[r].name());
        r += 1;
    }
    names
};
const UNKNOWN: [u8; NAME_LEN] = padded("unknown");

/// `name` padded with NULs to [`NAME_LEN`] bytes.
const fn padded(name: &str) -> [u8; NAME_LEN] {
    let name = name.as_bytes();
    assert!(name.len() <= NAME_LEN);
    let mut out = [0; NAME_LEN];
    let mut i = 0;
    while i < name.len() {
        out[i] = name[i];
        i += 1;
    }
    out
}

/// This CPU's pending event: a pointer from a successful lookup in a per-CPU array, so this
/// CPU's own slot, which the programs that use it (a hook's program, then its logger) use one
/// after the other, each running to completion on this CPU.
#[inline(always)]
fn pending() -> Option<*mut Pending> {
    PENDING.get_ptr_mut(0)
}

/// The time, and whether a monitor listens, when an event is wanted (a monitor listens, or the
/// hook `can_log` and logs of `level` are on) and this CPU has budget for it; `None` otherwise.
#[inline(always)]
fn wanted(level: Level, can_log: bool) -> Option<(u64, bool)> {
    // The tick's time is enough to tell a listener of seconds from none, and costs no clock read
    // (see `clock`); the event gets the precise time.
    let listening = MONITOR.get(0).is_some_and(|&seen| seen != 0 && clock::now() < seen + LISTENER_TTL_NS);
    // A constant once loaded: the level is fixed when the programs are (see the loader).
    if !listening && !(can_log && level_enabled(level)) {
        return None;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if !take_token(now) {
        count(events::RATE_LIMITED);
        return None;
    }
    Some((now, listening))
}

/// Takes one token from this CPU's budget, topping it up for the time since it last was.
#[inline(always)]
fn take_token(now: u64) -> bool {
    let Some(budget) = EVENT_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: from a successful lookup in a per-CPU array: this CPU's own slot, and this program
    // cannot be preempted by another user of it.
    let budget = unsafe { &mut *budget };
    let earned = now.saturating_sub(budget.filled_ns) / NS_PER_TOKEN;
    if earned > 0 {
        budget.tokens = (budget.tokens + earned).min(BURST);
        budget.filled_ns = now;
    }
    if budget.tokens == 0 {
        return false;
    }
    budget.tokens -= 1;
    true
}

/// Writes the packet's interface, addresses, protocol and ports, as far as it has them.
#[inline(always)]
fn describe<C: Arrival>(event: &mut Event, ctx: &C, now: u64) {
    let (addrs, protocol, [sport, dport]) = match Ipv4::parse(ctx) {
        Ok(Some(ip)) => ((ip.saddr(), ip.daddr()), ip.protocol(), ports(ctx, &ip)),
        _ => (([0; 4], [0; 4]), 0, [0, 0]),
    };
    // Field by field, each written once: a struct literal, or zeroing adjacent fields before
    // filling them in, becomes a byte-loop `memset` call in BPF.
    event.time_ns = now;
    event.ifindex = ctx.ifindex();
    (event.saddr, event.daddr) = addrs;
    event.nat_addr = [0; 4];
    event.protocol = protocol;
    event.sport = sport;
    event.dport = dport;
    event.nat_port = 0;
}

/// The packet's ports (host byte order), the ICMP echo identifier as the source port; zeros
/// when it has none.
#[inline(always)]
fn ports<C: Arrival>(ctx: &C, ip: &Ipv4) -> [u16; 2] {
    if ip.fragment_offset() != 0 {
        return [0, 0];
    }
    let ports = match ip.protocol() {
        TCP | UDP => packet::read::<[u16; 2]>(ctx, ip.l4_offset()),
        // Echo: type and code, checksum, then the identifier (reported as the source port).
        ICMP => packet::read::<[u16; 2]>(ctx, ip.l4_offset() + 4).map(|[id, _]| [id, 0]),
        _ => return [0, 0],
    };
    ports.map_or([0, 0], |[sport, dport]| [u16::from_be(sport), u16::from_be(dport)])
}

#[inline(always)]
fn send(event: &Event) {
    match EVENTS.output(event, 0) {
        Ok(()) => count(events::SENT),
        Err(_) => count(events::RING_FULL),
    }
}

#[inline(always)]
fn count(slot: u32) {
    if let Some(n) = EVENT_STATS.get_ptr_mut(slot) {
        // SAFETY: from a successful lookup in a per-CPU array: this CPU's own slot.
        unsafe { *n += 1 };
    }
}

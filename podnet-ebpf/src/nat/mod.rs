//! Masquerading (SNAT to the node IP) with podnet's own connection tracking.
//!
//! TCP and the rest (UDP, ICMP echo) have separate tables, so a flood of one cannot crowd out
//! the other. In each, a pod's first packet to the outside claims a node port: the reply-side
//! entry (`*_IN`) is inserted with BPF_NOEXIST, which claims (node port, remote, protocol)
//! atomically, then the pod-side entry (`*_OUT`). Both are plain hashes that never evict (an
//! LRU insert cost a new connection ~200 ns more).
//! Later packets find the pod side; replies find the reply side and are translated back into
//! the pod. So one node port toward one remote carries at most one pod connection, whatever is
//! lost (removed by hand, not carried over): once a second a connection checks that its reply
//! side is still its own (restoring it, or moving to a new port when another connection holds
//! it); two CPUs translating one new connection agree on one port and keep its claim; a claim
//! whose holder has been idle past its state's timeout may be taken over, under its key in
//! `NAT_LOCKS` (so two take-overs, or a take-over and the agent's removal, never act on one claim
//! at once). Only connections create state: a TCP FIN or RST of no known connection is dropped,
//! unless the connection's claim lives on (its pod side was lost): then it is restored, so the
//! close still goes out.
//! `podnet agent` removes expired translations (and collects at once when a table fills up).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST},
    btf_maps::{Array, HashMap},
    macros::btf_map,
    programs::TcContext,
};
use podnet_common::{
    CtEntry, CtKey, CtState, DropReason, NatConfig, PassReason, RedirectReason, ct_flags,
    maps::{CT_MAX, LOCKS_MAX, PRESSURE_OTHER, PRESSURE_TCP},
    port_search_offset, port_search_start,
    proto::{ICMP, TCP, UDP},
};

mod frag;
mod icmp;

use crate::{
    clock::now,
    endpoints::{self, Hop},
    events, isolation,
    packet::{self, Ipv4, Malformed, Side},
    routing,
    verdict::Verdict,
};

#[btf_map(pin_by_name)]
static NAT_CONFIG: Array<NatConfig, 1> = Array::new();
#[btf_map(pin_by_name)]
static CT_OUT: HashMap<CtKey, CtEntry, CT_MAX> = HashMap::new();
#[btf_map(pin_by_name)]
static CT_IN: HashMap<CtKey, CtEntry, CT_MAX> = HashMap::new();
#[btf_map(pin_by_name)]
static CT_TCP_OUT: HashMap<CtKey, CtEntry, CT_MAX> = HashMap::new();
#[btf_map(pin_by_name)]
static CT_TCP_IN: HashMap<CtKey, CtEntry, CT_MAX> = HashMap::new();
#[btf_map(pin_by_name)]
static NAT_PRESSURE: Array<u64, 2> = Array::new();
#[btf_map(pin_by_name)]
static NAT_LOCKS: HashMap<CtKey, u64, LOCKS_MAX> = HashMap::new();

/// One protocol family's pair of translation tables. Code generic over it is instantiated once
/// per table, so every map call names one map (the verifier can then inline the lookups).
trait Tables {
    fn out() -> &'static HashMap<CtKey, CtEntry, CT_MAX>;
    fn inbound() -> &'static HashMap<CtKey, CtEntry, CT_MAX>;
    /// Slot of `NAT_PRESSURE`.
    const PRESSURE: u32;
}

struct Tcp;
struct Other;

impl Tables for Tcp {
    fn out() -> &'static HashMap<CtKey, CtEntry, CT_MAX> {
        &CT_TCP_OUT
    }
    fn inbound() -> &'static HashMap<CtKey, CtEntry, CT_MAX> {
        &CT_TCP_IN
    }
    const PRESSURE: u32 = PRESSURE_TCP;
}

impl Tables for Other {
    fn out() -> &'static HashMap<CtKey, CtEntry, CT_MAX> {
        &CT_OUT
    }
    fn inbound() -> &'static HashMap<CtKey, CtEntry, CT_MAX> {
        &CT_IN
    }
    const PRESSURE: u32 = PRESSURE_OTHER;
}

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// `-E2BIG`: what inserting into a full hash map returns.
const E2BIG: i32 = -7;
/// Ports tried for a new connection before it is refused as exhausted (all of them when the
/// range is smaller). The verifier walks every try of every copy of the search: 16 tries keep
/// `from_pod` under half of the kernel's 1,000,000 verified instructions (24 took 816,000, 32
/// went over). The tries are scattered ([`port_search_offset`]), so at 90% of a remote's ports
/// in use 16 still find a free one for about 81% of new connections (1 - 0.9^16); the agent's
/// collection frees expired ones.
const MAX_TRIES: u32 = 16;

/// The translatable part of one packet: its conntrack key and where the rewritten fields are.
struct Flow {
    key: CtKey,
    /// Offset of the L4 checksum.
    csum: usize,
    /// Offset of the port to rewrite: source port (or ICMP id) outbound, destination inbound.
    port: usize,
    /// TCP and UDP checksums cover the addresses (pseudo-header); ICMP's does not.
    pseudo: bool,
    /// BPF_F_MARK_MANGLED_0 for UDP: a zero checksum means "none" and must stay zero.
    mangled: u64,
    /// [`ct_flags`] this packet shows.
    flags: u8,
}

impl Flow {
    /// TCP, UDP, or ICMP echo (request outbound, reply inbound); `None` for anything else.
    #[inline(always)]
    fn parse(ctx: &TcContext, ip: &Ipv4, outbound: bool) -> Result<Option<Self>, Malformed> {
        let l4 = ip.l4_offset();
        let mut key = CtKey {
            saddr: ip.saddr(),
            daddr: ip.daddr(),
            sport: 0,
            dport: 0,
            proto: ip.protocol(),
            _pad: 0,
            _pad2: 0,
        };
        let port = if outbound { l4 } else { l4 + 2 };
        let flow = match key.proto {
            TCP | UDP => {
                let [sport, dport] = packet::read::<[u16; 2]>(ctx, l4)?;
                key.sport = sport;
                key.dport = dport;
                if key.proto == TCP {
                    let tcp_flags = packet::read::<u8>(ctx, l4 + 13)?;
                    let flags = ct_flags::SEEN
                        | if tcp_flags & TCP_FIN != 0 { ct_flags::FIN } else { 0 }
                        | if tcp_flags & TCP_RST != 0 { ct_flags::RST } else { 0 }
                        | if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN { ct_flags::SYN } else { 0 };
                    Flow { key, csum: l4 + 16, port, pseudo: true, mangled: 0, flags }
                } else {
                    let mangled = u64::from(BPF_F_MARK_MANGLED_0);
                    Flow { key, csum: l4 + 6, port, pseudo: true, mangled, flags: ct_flags::SEEN }
                }
            }
            ICMP => {
                let [icmp_type, _code] = packet::read::<[u8; 2]>(ctx, l4)?;
                let wanted = if outbound { ICMP_ECHO_REQUEST } else { ICMP_ECHO_REPLY };
                if icmp_type != wanted {
                    return Ok(None);
                }
                // The identifier plays the port: source side outbound, destination side inbound.
                let id = packet::read::<u16>(ctx, l4 + 4)?;
                if outbound {
                    key.sport = id;
                } else {
                    key.dport = id;
                }
                Flow { key, csum: l4 + 2, port: l4 + 4, pseudo: false, mangled: 0, flags: ct_flags::SEEN }
            }
            _ => return Ok(None),
        };
        Ok(Some(flow))
    }

    /// Rewrites the flow's address on `side` and its port with direct stores (the IPv4 header
    /// checksum by arithmetic) and returns what the L4 checksum still needs: the kernel's
    /// helpers, which know the skb's checksum state (a CHECKSUM_PARTIAL packet's field holds the
    /// pseudo-header sum, not a checksum). Apply it after the packet's last direct write: the
    /// helpers invalidate packet pointers.
    #[inline(always)]
    fn rewrite(
        &self,
        ctx: &TcContext,
        ip: &Ipv4,
        side: Side,
        new_addr: [u8; 4],
        (old_port, new_port): (u16, u16),
    ) -> Result<L4Fix, Malformed> {
        let port = packet::ptr_at::<u16>(ctx, self.port)?;
        let old_addr = ip.set_address(side, new_addr);
        // SAFETY: `ptr_at` bounds-checked the port; tc programs may write packet data.
        unsafe { *port = new_port };
        Ok(L4Fix {
            csum: self.csum,
            pseudo: self.pseudo.then_some((u32::from_ne_bytes(old_addr), u32::from_ne_bytes(new_addr))),
            port: (old_port, new_port),
            mangled: self.mangled,
        })
    }
}

/// The L4 checksum update a rewrite leaves to the kernel's helpers.
struct L4Fix {
    /// Offset of the checksum.
    csum: usize,
    /// The address it covers through the pseudo-header (TCP, UDP), old and new.
    pseudo: Option<(u32, u32)>,
    /// The port (or ICMP identifier), old and new.
    port: (u16, u16),
    mangled: u64,
}

impl L4Fix {
    #[inline(always)]
    fn apply(self, ctx: &TcContext) -> Result<(), Malformed> {
        if let Some((old, new)) = self.pseudo {
            let flags = u64::from(BPF_F_PSEUDO_HDR) | self.mangled | 4;
            ctx.l4_csum_replace(self.csum, u64::from(old), u64::from(new), flags).map_err(|_| Malformed)?;
        }
        let (old, new) = self.port;
        ctx.l4_csum_replace(self.csum, u64::from(old), u64::from(new), self.mangled | 2)
            .map_err(|_| Malformed)
    }
}

/// How stale `seen_ns` may get: refreshing it at most this often keeps busy flows from writing
/// (and bouncing between CPUs) the entry's cache line on every packet. Idle timeouts are seconds.
/// It is also how often a connection checks that its reply side is still its own.
const SEEN_REFRESH_NS: u64 = 1_000_000_000;

/// Marks a conntrack entry as seen now (to within [`SEEN_REFRESH_NS`]), with this packet's flags.
/// A packet without RST after an RST in the same direction takes the RST back: the sender goes
/// on talking, so that reset was not its own (resets' sequence numbers are not checked; a forged
/// one must not end a live connection's translation).
#[inline(always)]
fn touch(entry: *mut CtEntry, now: u64, flags: u8) {
    // SAFETY: `entry` comes from a successful map lookup; concurrent writers only store
    // timestamps and set or clear flags, so a lost update is harmless.
    unsafe {
        if now.saturating_sub((*entry).seen_ns) >= SEEN_REFRESH_NS {
            (*entry).seen_ns = now;
        }
        let had = (*entry).flags;
        let mut want = had | flags;
        if flags & ct_flags::RST == 0 {
            want &= !ct_flags::RST;
        }
        if want != had {
            (*entry).flags = want;
        }
    }
}

/// The NAT settings when NAT is on, read in place: a copy would be no more consistent, since
/// `up` rewrites the map's value in place (it changes only when the config does).
#[inline(always)]
fn config() -> Option<&'static NatConfig> {
    NAT_CONFIG.get(0).filter(|c| c.enabled != 0)
}

/// Whether `addr` may be a local pod's: inside the node's pod CIDR, which `up` writes with the
/// NAT settings (NAT on or off). Outside it, a pod's packet skips the endpoint lookup.
#[inline(always)]
pub fn in_pod_cidr(addr: [u8; 4]) -> bool {
    NAT_CONFIG.get(0).is_none_or(|c| c.in_pod_cidr(addr))
}

/// Masquerades a pod's packet to the outside and routes it out of the uplink; `None` when NAT
/// is off or the destination is the node itself (pod-to-node is never translated). Called only
/// for destinations that are neither local pods nor other nodes' pods or addresses, with the
/// route when the routing cache knew it. What would leave the uplink but cannot be translated is
/// dropped: it would carry the pod's address out. `ip` comes from [`Ipv4::with_l4`];
/// `now` is the packet's time ([`now`]).
#[inline(always)]
pub fn masquerade(
    ctx: &TcContext,
    ip: &Ipv4,
    route: Option<Result<routing::Route, PassReason>>,
    now: u64,
) -> Result<Option<Verdict>, Malformed> {
    let Some(cfg) = config() else {
        return Ok(None);
    };
    if ip.daddr() == cfg.node_ip {
        return Ok(None);
    }
    // Route first: a packet the stack must handle (TTL, no route) is not translated, and only
    // what leaves by the uplink is (never what stays on the node's own networks). The stack
    // would fragment a packet too big without DF and send it with the pod's address: drop it
    // (with DF it only answers "fragmentation needed").
    let route = match route.unwrap_or_else(|| routing::to_outside(ctx, ip, now)) {
        Ok(route) if route.ifindex == cfg.uplink_ifindex => route,
        Ok(_) => return Ok(Some(Verdict::pass(PassReason::PassNotLocal))),
        Err(PassReason::PassFragNeeded) if !ip.dont_fragment() => {
            return Ok(Some(Verdict::drop(DropReason::DropNotNatable)));
        }
        Err(reason) => return Ok(Some(Verdict::pass(reason))),
    };
    if frag::is_later(ip) {
        if !frag::translate(ip, Side::Source) {
            // Its first fragment went untranslated to an `allow_from` network, or was dropped.
            return Ok(Some(if isolation::in_allowed_network(ip.daddr()) {
                Verdict::pass(PassReason::PassNoNat)
            } else {
                Verdict::drop(DropReason::DropNotNatable)
            }));
        }
        return Ok(Some(routing::transmit(ip, &route, RedirectReason::RedirectNat)));
    }
    let Some(flow) = Flow::parse(ctx, ip, true)? else {
        if icmp::outbound(ctx, ip, cfg)? {
            // The ICMP rewrite used helpers, which may have moved the packet.
            let ip = Ipv4::parse(ctx)?.ok_or(Malformed)?;
            return Ok(Some(routing::transmit(&ip, &route, RedirectReason::RedirectNat)));
        }
        // Networks in `allow_from` route the pod CIDR back to this node: they get pod addresses.
        return Ok(Some(if isolation::in_allowed_network(ip.daddr()) {
            Verdict::pass(PassReason::PassNoNat)
        } else {
            Verdict::drop(DropReason::DropNotNatable)
        }));
    };
    let translated = if flow.key.proto == TCP {
        translate::<Tcp>(ip, &flow, cfg, now)
    } else {
        translate::<Other>(ip, &flow, cfg, now)
    };
    let (port, reason) = match translated {
        Ok(translation) => translation,
        Err(verdict) => return Ok(Some(verdict)),
    };
    if reason == RedirectReason::RedirectNatNew {
        events::nat_new(ctx, &flow.key, cfg.node_ip, port);
    }
    frag::remember(ip, cfg.node_ip);
    let fix = flow.rewrite(ctx, ip, Side::Source, cfg.node_ip, (flow.key.sport, port))?;
    let verdict = routing::transmit(ip, &route, reason);
    fix.apply(ctx)?;
    Ok(Some(verdict))
}

/// The node port of `flow`'s translation in tables `T`, made now if it has none, with the reason
/// to count; or the verdict for a packet that gets no translation.
#[inline(always)]
fn translate<T: Tables>(
    ip: &Ipv4,
    flow: &Flow,
    cfg: &NatConfig,
    now: u64,
) -> Result<(u16, RedirectReason), Verdict> {
    if let Some(entry) = T::out().get_ptr_mut(&flow.key) {
        return Ok((established::<T>(flow, entry, cfg, now)?, RedirectReason::RedirectNat));
    }
    // Asked only where there is no translation, so established flows pay no lookup for it.
    if isolation::in_allowed_network(ip.daddr()) {
        return Err(Verdict::pass(PassReason::PassNoNat));
    }
    // A FIN or RST starts nothing: it may only close a connection whose pod side was lost
    // (collected, or not carried over) while its claim lives on.
    let create = flow.flags & (ct_flags::FIN | ct_flags::RST) == 0;
    let port = claim::<T>(flow, cfg, now, create).map_err(Verdict::drop)?;
    let node_side =
        CtEntry { created_ns: now, seen_ns: now, addr: cfg.node_ip, port, flags: flow.flags, _pad: 0 };
    if let Err(error) = T::out().insert(&flow.key, &node_side, u64::from(BPF_NOEXIST)) {
        let claimed = flow.key.reply(cfg.node_ip, port);
        // Another CPU translated this connection a moment ago (even when the table was full for
        // this one, the other may have found room since): its port is the connection's.
        let Some(winner) = T::out().get_ptr(&flow.key) else {
            // No other: give the claim back, and this packet up. Pod sides have room for twice
            // the claims (one outlives its claim, taken over or lost with no other port found,
            // until the agent collects it); full anyway, it is refused as a full claims table.
            release::<T>(&claimed, &flow.key, now);
            return Err(Verdict::drop(if error == E2BIG {
                table_full::<T>(now)
            } else {
                DropReason::DropNatPortsExhausted
            }));
        };
        // SAFETY: from a successful lookup; the port is rewritten only by the connection's own
        // packets.
        let winner_port = unsafe { (*winner).port };
        if winner_port != port {
            // The claim made here goes back (it may also be the winner's: then it stays).
            release::<T>(&claimed, &flow.key, now);
        }
        return Ok((winner_port, RedirectReason::RedirectNatRaced));
    }
    Ok((port, if create { RedirectReason::RedirectNatNew } else { RedirectReason::RedirectNat }))
}

/// A packet of a translated connection (`entry` its pod side): its node port. Once a second,
/// and when a SYN may restart a closed connection, the reply side is checked: restored when it
/// is gone, and the connection moves to another port when another one holds it.
#[inline(always)]
fn established<T: Tables>(
    flow: &Flow,
    entry: *mut CtEntry,
    cfg: &NatConfig,
    now: u64,
) -> Result<u16, Verdict> {
    // SAFETY: from a successful lookup; see `touch` for concurrent writers.
    let (seen, flags, mut port) = unsafe { ((*entry).seen_ns, (*entry).flags, (*entry).port) };
    let syn = flow.flags & ct_flags::SYN != 0;
    if syn || now.saturating_sub(seen) >= SEEN_REFRESH_NS {
        let reply_key = flow.key.reply(cfg.node_ip, port);
        match T::inbound().get_ptr_mut(&reply_key) {
            Some(reply) if holds(reply, &flow.key) => {
                // SAFETY: from a successful lookup; a racing reply only ORs flags in.
                let closed = (flags | unsafe { (*reply).flags }) & (ct_flags::FIN | ct_flags::RST) != 0;
                if syn && closed {
                    // A SYN restarts the connection: both sides start over.
                    // SAFETY: as above.
                    unsafe {
                        (*reply).flags = 0;
                        (*reply).created_ns = now;
                        (*entry).flags = 0;
                        (*entry).created_ns = now;
                    }
                }
            }
            held => {
                let pod_side = pod_side(flow, now);
                let restored = held.is_none()
                    && (T::inbound().insert(&reply_key, &pod_side, u64::from(BPF_NOEXIST)).is_ok()
                        // Another CPU restored it first.
                        || T::inbound().get_ptr(&reply_key).is_some_and(|r| holds(r, &flow.key)));
                if !restored {
                    port = claim::<T>(flow, cfg, now, true).map_err(Verdict::drop)?;
                    // SAFETY: as above; this connection's packets are the only writers of port.
                    unsafe { (*entry).port = port };
                }
            }
        }
    }
    touch(entry, now, flow.flags);
    Ok(port)
}

/// The reply-side entry of a new translation of `flow`.
#[inline(always)]
fn pod_side(flow: &Flow, now: u64) -> CtEntry {
    CtEntry { created_ns: now, seen_ns: now, addr: flow.key.saddr, port: flow.key.sport, flags: 0, _pad: 0 }
}

/// Whether reply-side entry `reply` belongs to the connection with pod-side key `key` (the rule
/// is [`CtEntry::holds`], which userspace applies too).
#[inline(always)]
pub(super) fn holds(reply: *const CtEntry, key: &CtKey) -> bool {
    // SAFETY: from a successful lookup.
    unsafe { (*reply).holds(key) }
}

/// Claims a node port for `flow` in tables `T` (its reply-side entry); the drop reason when none
/// of the tried ports can be had. The search starts at [`port_search_start`] and goes on as
/// [`port_search_offset`] says; a port held by
/// `flow` itself (its pod side was lost) is its own again, and with `create` a free port is
/// claimed and one held by a translation idle past its timeout is taken over (a full table
/// only stops new claims, not take-overs). Without `create` only the flow's own claim is found.
#[inline(always)]
fn claim<T: Tables>(flow: &Flow, cfg: &NatConfig, now: u64, create: bool) -> Result<u16, DropReason> {
    let range = u32::from(cfg.port_max).saturating_sub(u32::from(cfg.port_min)) + 1;
    let start = port_search_start(&flow.key, cfg.port_min, cfg.port_max);
    let pod_side = pod_side(flow, now);
    let mut full = false;
    for i in 0..MAX_TRIES.min(range) {
        let offset = port_search_offset(&flow.key, start, i, range, MAX_TRIES);
        let port = ((u32::from(cfg.port_min) + offset) as u16).to_be();
        let reply_key = flow.key.reply(cfg.node_ip, port);
        if create && !full {
            match T::inbound().insert(&reply_key, &pod_side, u64::from(BPF_NOEXIST)) {
                Ok(()) => return Ok(port),
                Err(E2BIG) => full = true,
                Err(_) => {}
            }
        }
        let Some(held) = T::inbound().get_ptr(&reply_key) else {
            continue;
        };
        if holds(held, &flow.key) {
            return Ok(port);
        }
        if create && take_over::<T>(&reply_key, &pod_side, cfg, now) {
            return Ok(port);
        }
    }
    if full {
        return Err(table_full::<T>(now));
    }
    Err(if create { DropReason::DropNatPortsExhausted } else { DropReason::DropNatNoFlow })
}

/// Tells the agent that tables `T` refused a new connection for want of room (it collects at
/// once); the drop reason.
#[inline(always)]
fn table_full<T: Tables>(now: u64) -> DropReason {
    if let Some(slot) = NAT_PRESSURE.get_ptr_mut(T::PRESSURE) {
        // SAFETY: an array slot; a racing store of another timestamp is as good.
        unsafe { *slot = now };
    }
    DropReason::DropNatTableFull
}

/// Takes claim `reply_key` over for `pod_side` if its translation has expired. Under its key in
/// `NAT_LOCKS`, so two CPUs (or the agent) never act on one claim at once: a second one taking
/// it over would delete the first one's new claim.
#[inline(always)]
fn take_over<T: Tables>(reply_key: &CtKey, pod_side: &CtEntry, cfg: &NatConfig, now: u64) -> bool {
    if NAT_LOCKS.insert(reply_key, &now, u64::from(BPF_NOEXIST)).is_err() {
        return false;
    }
    let taken = match T::inbound().get_ptr(reply_key) {
        Some(held) if expired::<T>(held, reply_key, cfg, now) => {
            T::inbound().remove(reply_key).is_ok()
                && T::inbound().insert(reply_key, pod_side, u64::from(BPF_NOEXIST)).is_ok()
        }
        _ => false,
    };
    let _ = NAT_LOCKS.remove(reply_key);
    taken
}

/// Gives claim `reply_key` back if it is still the one of pod-side key `key`.
#[inline(always)]
fn release<T: Tables>(reply_key: &CtKey, key: &CtKey, now: u64) {
    if NAT_LOCKS.insert(reply_key, &now, u64::from(BPF_NOEXIST)).is_err() {
        return;
    }
    if T::inbound().get_ptr(reply_key).is_some_and(|r| holds(r, key)) {
        let _ = T::inbound().remove(reply_key);
    }
    let _ = NAT_LOCKS.remove(reply_key);
}

/// Whether the translation whose reply side is `reply` (under `reply_key`) has been idle longer
/// than its state's timeout.
#[inline(always)]
fn expired<T: Tables>(reply: *const CtEntry, reply_key: &CtKey, cfg: &NatConfig, now: u64) -> bool {
    // SAFETY: from a successful lookup.
    let (addr, port, reply_seen, reply_flags) =
        unsafe { ((*reply).addr, (*reply).port, (*reply).seen_ns, (*reply).flags) };
    let (out_seen, out_flags) = match T::out().get_ptr(&reply_key.pod_side(addr, port)) {
        // SAFETY: from a successful lookup.
        Some(out) => unsafe { ((*out).seen_ns, (*out).flags) },
        None => (0, 0),
    };
    let state = CtState::of(reply_key.proto, out_flags, reply_flags) as usize;
    let timeout_s = cfg.timeouts_s.get(state).copied().unwrap_or(0);
    now.saturating_sub(reply_seen.max(out_seen)) > u64::from(timeout_s) * 1_000_000_000
}

/// Translates a reply to a masqueraded connection back to the pod and delivers it; `None` when
/// the packet (for the node's address, see [`is_node_address`]; from [`Ipv4::with_l4`]) is no
/// such reply.
#[inline(always)]
pub fn unmasquerade(ctx: &TcContext, ip: &Ipv4) -> Result<Option<Verdict>, Malformed> {
    match config() {
        Some(cfg) => translate_back(ctx, ip, cfg),
        None => Ok(None),
    }
}

/// Whether `addr` is the node's address (the one pods are masqueraded behind, with NAT on): what
/// is for it and no reply goes to the stack, as no pod has the node's address.
#[inline(always)]
pub fn is_node_address(addr: [u8; 4]) -> bool {
    config().is_some_and(|cfg| u32::from_ne_bytes(cfg.node_ip) == u32::from_ne_bytes(addr))
}

/// [`unmasquerade`] for a packet to the node: `None` when it is no reply to a translation.
#[inline(always)]
fn translate_back(ctx: &TcContext, ip: &Ipv4, cfg: &NatConfig) -> Result<Option<Verdict>, Malformed> {
    if frag::is_later(ip) {
        if !frag::translate(ip, Side::Destination) {
            return Ok(None);
        }
        return Ok(Some(deliver_reply(ip)));
    }
    if icmp::inbound(ctx, ip, cfg)? {
        // The ICMP rewrite used helpers, which may have moved the packet.
        return Ok(Some(deliver_reply(&Ipv4::parse(ctx)?.ok_or(Malformed)?)));
    }
    let Some(flow) = Flow::parse(ctx, ip, false)? else {
        return Ok(None);
    };
    // Node ports outside the NAT's range were never handed out: the node's own sockets.
    if !(cfg.port_min..=cfg.port_max).contains(&u16::from_be(flow.key.dport)) {
        return Ok(None);
    }
    let entry =
        if flow.key.proto == TCP { CT_TCP_IN.get_ptr_mut(&flow.key) } else { CT_IN.get_ptr_mut(&flow.key) };
    let Some(entry) = entry else {
        return Ok(None);
    };
    // Translated and left to the stack, its "time exceeded" would quote the pod's address to the
    // outside (ICMP errors and later fragments, the other replies, get none).
    if ip.ttl() <= 1 {
        return Ok(Some(Verdict::drop(DropReason::DropNatReplyTtlExpired)));
    }
    touch(entry, now(), flow.flags);
    // SAFETY: as in `touch`; address and port are never rewritten after insertion.
    let (pod_ip, pod_port) = unsafe { ((*entry).addr, (*entry).port) };
    frag::remember(ip, pod_ip);
    let fix = flow.rewrite(ctx, ip, Side::Destination, pod_ip, (flow.key.dport, pod_port))?;
    let verdict = deliver_reply(ip);
    fix.apply(ctx)?;
    Ok(Some(verdict))
}

/// Delivers a reply just translated back (its destination is the pod's now) into the pod. A pod
/// gone meanwhile (its translations go with it, but a reply may be on its way) gets nothing: the
/// stack's errors about it would quote the pod's address to the outside.
#[inline(always)]
fn deliver_reply(ip: &Ipv4) -> Verdict {
    match endpoints::lookup(ip.daddr()) {
        Some(ep) => endpoints::deliver(ip, &ep, Hop::NatReply),
        None => Verdict::drop(DropReason::DropNatReplyNoPod),
    }
}

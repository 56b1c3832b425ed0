//! Where a pod's packet goes when its destination is no local pod, and how it gets there: the
//! peer LPM trie says which node owns the destination, the kernel FIB says how to reach that
//! node or the outside (uplink, MACs, MTU), and the packet leaves without the stack; when the
//! next hop's MAC is not cached yet, `bpf_redirect_neigh` resolves it. What the fast path cannot
//! finish (TTL expiring, too big for the route, no route) goes to the stack, which has the same
//! routes (podnet installs them) and answers with ICMP errors.
//!
//! Both answers are kept in `ROUTES` per (pod, destination) and asked again once a second, so
//! established traffic pays an array slot instead of a trie walk and a FIB lookup: route,
//! neighbour and MTU changes reach it within [`ROUTE_REFRESH_NS`], peer changes at once (they
//! raise `ROUTE_GENERATION`). The FIB is asked with the pod's source and veth, so policy routing
//! (`ip rule from ...`) applies to pods as to the stack; the cache is keyed by the same inputs.
//!
//! `ROUTES` is a per-CPU array, direct-mapped: a (pod, destination) pair has one slot per CPU
//! ([`route_slot`]), which holds the pair's key to tell it from another pair's. Finding a slot
//! is arithmetic, not a hash-table lookup, and each CPU reads and writes only its own copy, in
//! place and whole before any other program runs on that CPU (tc and XDP programs run with
//! bottom halves off and do not nest): no reader sees half an answer. That does not hold on
//! PREEMPT_RT kernels, where a program may be preempted by another on its CPU; podnet's other
//! per-CPU state (the clock's reading, pending events) assumes the same. Two pairs that share a
//! slot take it from each other; each then asks the FIB more often (a pod that picks
//! destinations to collide with another pod's pairs on its CPU costs that pod FIB lookups, not
//! wrong answers), never gets the other's answer.

use core::mem::{self, MaybeUninit};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        __sk_buff, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_SUCCESS, bpf_check_mtu_flags::BPF_MTU_CHK_SEGS, bpf_fib_lookup, bpf_redir_neigh,
    },
    btf_maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key},
    helpers::generated::{bpf_check_mtu, bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    macros::btf_map,
    programs::TcContext,
};
use podnet_common::{
    CachedRoute, Ipv4LpmData, PassReason, Peer, RedirectReason, RouteKey,
    maps::{PEERS_MAX, ROUTES_SLOTS},
    route_slot,
};

use crate::{
    packet::{self, Ipv4},
    verdict::Verdict,
};

#[btf_map(pin_by_name)]
static PEERS: LpmTrie<Ipv4LpmData, Peer, PEERS_MAX> = LpmTrie::new();
#[btf_map(pin_by_name)]
static ROUTES: PerCpuArray<CachedRoute, ROUTES_SLOTS> = PerCpuArray::new();
/// Raised by userspace whenever the peers change: cached answers of an older generation are
/// not used.
#[btf_map(pin_by_name)]
static ROUTE_GENERATION: Array<u32, 1> = Array::new();

/// How long a cached FIB answer stands before the FIB is asked again.
const ROUTE_REFRESH_NS: u64 = 1_000_000_000;

const AF_INET: u8 = 2;

/// How to send a packet out: the FIB's answer for its next hop.
pub struct Route {
    /// The interface the packet leaves by.
    pub ifindex: u32,
    hop: Hop,
}

/// The next hop, by its MACs when the neighbour is known.
enum Hop {
    /// Source and destination MAC.
    Macs([u8; 6], [u8; 6]),
    /// Not resolved yet: `bpf_redirect_neigh` resolves this address.
    Unresolved([u8; 4]),
}

impl Route {
    /// Whether the next hop's MAC is known (else `bpf_redirect_neigh` resolves it).
    #[inline(always)]
    pub fn resolved(&self) -> bool {
        matches!(self.hop, Hop::Macs(..))
    }
}

/// Where a pod's packet for an address that is no local pod goes.
pub enum Next {
    /// Another node's pod CIDR or address: routed to that node (or why the stack must handle it).
    Peer(Result<Route, PassReason>),
    /// Outside the cluster, with the route when the cache knew it (`None`: not asked yet).
    Outside(Option<Result<Route, PassReason>>),
}

/// Whether `addr` is a peer node's address or in a peer's pod CIDR.
#[inline(always)]
pub fn is_peer(addr: [u8; 4]) -> bool {
    PEERS.get(&Key::new(32, addr)).is_some()
}

/// Whether `addr` is in a peer's pod CIDR (a pod of another node, not the node itself).
#[inline(always)]
pub fn is_peer_pod(addr: [u8; 4]) -> bool {
    PEERS
        .get(&Key::new(32, addr))
        .is_some_and(|peer| u32::from_ne_bytes(peer.node_ip) != u32::from_ne_bytes(addr))
}

/// Classifies a pod's packet whose destination is no local pod, at time `now`: from the cache
/// while its answer is fresh, else by the peer trie (and, for a peer, the FIB).
#[inline(always)]
pub fn classify(ctx: &TcContext, ip: &Ipv4, now: u64) -> Next {
    let stamp = stamp(now);
    if let Some(cached) = cached(&key(ip), stamp) {
        let route = check(ctx, ip, cached);
        return if cached.peer != 0 { Next::Peer(route) } else { Next::Outside(Some(route)) };
    }
    match PEERS.get(&Key::new(32, ip.daddr())) {
        Some(peer) => Next::Peer(ask_fib(ctx, ip, peer.node_ip, true, stamp)),
        None => Next::Outside(None),
    }
}

/// Routes `ip` toward its destination outside the cluster at time `now` (the FIB asked, the
/// answer cached).
#[inline(always)]
pub fn to_outside(ctx: &TcContext, ip: &Ipv4, now: u64) -> Result<Route, PassReason> {
    ask_fib(ctx, ip, ip.daddr(), false, stamp(now))
}

/// When a routing answer is given: now, and the peers' generation.
type Stamp = (u64, u32);

/// `now`, and the generation of the peers: taken before the peer trie is read, so an answer
/// given while the peers change carries the old generation and is not used after the change.
#[inline(always)]
fn stamp(now: u64) -> Stamp {
    (now, ROUTE_GENERATION.get(0).copied().unwrap_or(0))
}

#[inline(always)]
fn key(ip: &Ipv4) -> RouteKey {
    RouteKey { saddr: ip.saddr(), daddr: ip.daddr() }
}

/// The cached answer for `key`, if its slot holds it, the FIB gave it less than
/// [`ROUTE_REFRESH_NS`] ago and the peers have not changed since.
#[inline(always)]
fn cached(key: &RouteKey, (now, generation): Stamp) -> Option<CachedRoute> {
    let entry = ROUTES.get_ptr(route_slot(key))?;
    // SAFETY: from a successful lookup in a per-CPU array: this CPU's own slot, written only
    // whole by programs on this CPU, which do not nest (see the module's documentation).
    let entry = unsafe { *entry };
    (entry.key.same(key)
        && now.saturating_sub(entry.checked_ns) < ROUTE_REFRESH_NS
        && entry.generation == generation)
        .then_some(entry)
}

/// A cached route for `ip`, after the checks the FIB would make of this packet: TTL and MTU.
#[inline(always)]
fn check(ctx: &TcContext, ip: &Ipv4, cached: CachedRoute) -> Result<Route, PassReason> {
    if ip.ttl() <= 1 {
        return Err(PassReason::PassTtlExpiring);
    }
    if gso(ctx) {
        fits_device(ctx, cached.ifindex)?;
    } else if ip.tot_len() > cached.mtu {
        return Err(PassReason::PassFragNeeded);
    }
    Ok(Route { ifindex: cached.ifindex, hop: Hop::Macs(cached.smac, cached.dmac) })
}

/// Whether the skb is a GSO packet (its segments, not its length, must fit the MTU).
#[inline(always)]
fn gso(ctx: &TcContext) -> bool {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: `skb` is the context the kernel passed to this program; the field is readable
    // from tc programs.
    unsafe { (*skb).gso_size != 0 }
}

/// Whether the packet fits `ifindex`'s MTU, each segment of a GSO packet (without
/// BPF_MTU_CHK_SEGS the helper passes every GSO packet).
#[inline(always)]
fn fits_device(ctx: &TcContext, ifindex: u32) -> Result<(), PassReason> {
    let mut mtu = 0u32;
    // SAFETY: the helper reads the skb and writes `mtu`, on our stack for the whole call.
    let rc = unsafe { bpf_check_mtu(ctx.as_ptr(), ifindex, &mut mtu, 0, u64::from(BPF_MTU_CHK_SEGS)) };
    if rc == 0 { Ok(()) } else { Err(PassReason::PassFragNeeded) }
}

/// Asks the FIB how to forward `ip` toward `via` (its destination, or the node that owns it;
/// `peer` says which), checking TTL and MTU too: everything that makes the packet the stack's
/// business comes back as the reason to pass it. A route with a known neighbour is cached.
#[inline(always)]
fn ask_fib(
    ctx: &TcContext,
    ip: &Ipv4,
    via: [u8; 4],
    peer: bool,
    (now, generation): Stamp,
) -> Result<Route, PassReason> {
    if ip.ttl() <= 1 {
        return Err(PassReason::PassTtlExpiring);
    }
    let mut params = MaybeUninit::<bpf_fib_lookup>::uninit();
    // SAFETY: a stack slot of the struct's own size and alignment; zeroed, it is a valid
    // `bpf_fib_lookup` (plain data).
    let fib = unsafe { zeroed(params.as_mut_ptr()) };
    fib.family = AF_INET;
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(via);
    // The source and input device too, so policy routing applies to pods as to the stack.
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.saddr());
    fib.ifindex = packet::ingress_ifindex(ctx);
    // The length the route's MTU must hold (route metrics and learned path MTU included, as
    // the stack's forwarding checks); a GSO packet's segments are checked below instead (1:
    // the FIB checks the route and answers with its MTU all the same).
    let gso = gso(ctx);
    fib.__bindgen_anon_1.tot_len = if gso { 1 } else { ip.tot_len() };
    // SAFETY: the helper reads and writes `fib`, on our stack for the whole call.
    let rc = unsafe { fib_lookup(ctx.as_ptr(), fib, mem::size_of::<bpf_fib_lookup>() as i32, 0) } as u32;
    let neighbour_known = match rc {
        BPF_FIB_LKUP_RET_SUCCESS => true,
        BPF_FIB_LKUP_RET_NO_NEIGH => false,
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Err(PassReason::PassFragNeeded),
        // For this node itself (the gateway address, say): the stack's.
        BPF_FIB_LKUP_RET_NOT_FWDED => return Err(PassReason::PassNotLocal),
        _ => return Err(PassReason::PassNoRoute),
    };
    if gso {
        fits_device(ctx, fib.ifindex)?;
    }
    // SAFETY: on success the FIB filled both MAC arrays.
    let (smac, dmac) =
        unsafe { (fib.__bindgen_anon_6.__bindgen_anon_2.smac, fib.__bindgen_anon_6.__bindgen_anon_2.dmac) };
    if neighbour_known && let Some(slot) = ROUTES.get_ptr_mut(route_slot(&key(ip))) {
        let entry = CachedRoute {
            checked_ns: now,
            key: key(ip),
            ifindex: fib.ifindex,
            // SAFETY: on success the FIB wrote the route's MTU over `tot_len` (a union).
            mtu: unsafe { fib.__bindgen_anon_1.mtu_result },
            peer: u8::from(peer),
            _pad: 0,
            smac,
            dmac,
            generation,
        };
        // SAFETY: this CPU's own slot of a per-CPU array (see `cached`); whatever pair held it
        // asks the FIB again.
        unsafe { *slot = entry };
    }
    let hop = if neighbour_known {
        Hop::Macs(smac, dmac)
    } else {
        // SAFETY: the FIB replaced the destination with the next hop (a gateway, if the route
        // has one).
        Hop::Unresolved(unsafe { fib.__bindgen_anon_4.ipv4_dst }.to_ne_bytes())
    };
    Ok(Route { ifindex: fib.ifindex, hop })
}

/// Forwards `ip` along `route`: one routed hop (TTL - 1), then out of the route's interface,
/// counting `reason`. The redirect takes effect when the program returns.
#[inline(always)]
pub fn transmit(ip: &Ipv4, route: &Route, reason: RedirectReason) -> Verdict {
    ip.decrement_ttl();
    let action = match route.hop {
        Hop::Macs(smac, dmac) => {
            ip.set_macs(smac, dmac);
            // SAFETY: a helper call with plain integer arguments; redirects to the interface's
            // egress.
            unsafe { bpf_redirect(route.ifindex, 0) }
        }
        Hop::Unresolved(next_hop) => {
            let mut params = MaybeUninit::<bpf_redir_neigh>::uninit();
            // SAFETY: as for the FIB parameters in `ask_fib`.
            let nh = unsafe { zeroed(params.as_mut_ptr()) };
            nh.nh_family = u32::from(AF_INET);
            nh.__bindgen_anon_1.ipv4_nh = u32::from_ne_bytes(next_hop);
            // SAFETY: the helper reads `nh`, on our stack for the whole call; it fills in the
            // MACs once the neighbour is resolved.
            unsafe { bpf_redirect_neigh(route.ifindex, nh, mem::size_of::<bpf_redir_neigh>() as i32, 0) }
        }
    };
    Verdict::redirected(action as i32, reason)
}

/// Zeroes `*p` with 4-byte stores and hands it out: `mem::zeroed` or a struct literal becomes a
/// byte-loop `memset` call in BPF (64 iterations for the FIB parameters).
///
/// # Safety
/// `p` must be valid for writes of a `T`, 4-byte aligned, and all-zero must be a valid `T`
/// whose size is a multiple of 4.
#[inline(always)]
unsafe fn zeroed<'a, T>(p: *mut T) -> &'a mut T {
    const { assert!(mem::size_of::<T>() % 4 == 0 && mem::align_of::<T>() >= 4) };
    let words = p.cast::<u32>();
    for i in 0..mem::size_of::<T>() / 4 {
        // SAFETY: inside `*p` (the caller's promise); volatile, so the compiler keeps the stores
        // as they are instead of merging them into a `memset` call.
        unsafe { words.add(i).write_volatile(0) };
    }
    // SAFETY: every byte is zero now, a valid `T` (the caller's promise).
    unsafe { &mut *p }
}

//! Routing to pods on other nodes: the peer LPM trie says which node owns the destination, the
//! kernel FIB says how to reach that node (uplink, MACs, MTU), and the packet leaves the uplink
//! without the stack; when the next hop's MAC is not cached yet, `bpf_redirect_neigh` resolves
//! it. What the fast path cannot finish (TTL expiring, too big for the uplink, no route) goes to
//! the stack, which has the same routes (podnet installs them) and answers with ICMP errors.

use core::mem;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        __sk_buff, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_SUCCESS, bpf_check_mtu_flags::BPF_MTU_CHK_SEGS, bpf_fib_lookup, bpf_redir_neigh,
    },
    btf_maps::{LpmTrie, lpm_trie::Key},
    helpers::generated::{bpf_check_mtu, bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    macros::btf_map,
    programs::TcContext,
};
use podnet_common::{Ipv4LpmData, Peer, Reason, maps::PEERS_MAX};

use crate::{
    packet::{self, Ipv4},
    verdict::Verdict,
};

#[btf_map(pin_by_name)]
static PEERS: LpmTrie<Ipv4LpmData, Peer, PEERS_MAX> = LpmTrie::new();

const AF_INET: u8 = 2;

/// How to send a packet out: the FIB's answer for its next hop.
pub struct Route {
    /// The interface the packet leaves by.
    pub ifindex: u32,
    next_hop: [u8; 4],
    /// `None` when the next hop's MAC is not cached yet (`bpf_redirect_neigh` resolves it).
    macs: Option<([u8; 6], [u8; 6])>,
}

/// Whether `addr` is a peer node's address or in a peer's pod CIDR.
#[inline(always)]
pub fn is_peer(addr: [u8; 4]) -> bool {
    PEERS.get(&Key::new(32, addr)).is_some()
}

/// If the destination is in another node's pod CIDR, routes the packet out of the uplink toward
/// that node; `None` when it is not a cluster address.
#[inline(always)]
pub fn to_peer(ctx: &TcContext, ip: &Ipv4) -> Option<Verdict> {
    let peer = PEERS.get(&Key::new(32, ip.daddr()))?;
    Some(match lookup(ctx, ip, peer.node_ip) {
        Ok(route) => {
            let reason =
                if route.macs.is_some() { Reason::RedirectRemote } else { Reason::RedirectRemoteResolve };
            transmit(ip, &route, reason)
        }
        Err(reason) => Verdict::pass(reason),
    })
}

/// Asks the FIB how to forward `ip` toward `dst`, checking TTL and MTU first: everything
/// that makes the packet the stack's business comes back as the reason to pass it.
#[inline(always)]
pub fn lookup(ctx: &TcContext, ip: &Ipv4, dst: [u8; 4]) -> Result<Route, Reason> {
    if ip.ttl() <= 1 {
        return Err(Reason::PassTtlExpiring);
    }
    // SAFETY: bpf_fib_lookup is plain data; all-zero is a valid starting point.
    let mut fib: bpf_fib_lookup = unsafe { mem::zeroed() };
    fib.family = AF_INET;
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    // The source too, so policy routing (`ip rule from ...`) applies to pods as to the stack.
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.saddr());
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: `skb` is the context the kernel passed to this program; the field is readable
    // from tc programs.
    let gso = unsafe { (*skb).gso_size } != 0;
    // The FIB takes the input device for policy routing and its forwarding setting.
    fib.ifindex = packet::ingress_ifindex(ctx);
    if !gso {
        // The FIB checks this length against the route's MTU.
        fib.__bindgen_anon_1.tot_len = ip.tot_len();
    }
    // SAFETY: the helper reads and writes `fib`, which lives on our stack for the whole call.
    let rc = unsafe { fib_lookup(ctx.as_ptr(), &mut fib, mem::size_of::<bpf_fib_lookup>() as i32, 0) };
    let neighbour_known = match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => true,
        BPF_FIB_LKUP_RET_NO_NEIGH => false,
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Err(Reason::PassFragNeeded),
        // For this node itself (the gateway address, say): the stack's.
        BPF_FIB_LKUP_RET_NOT_FWDED => return Err(Reason::PassNotLocal),
        _ => return Err(Reason::PassNoRoute),
    };
    if gso {
        // A GSO packet is checked segment by segment against the uplink's MTU (without
        // BPF_MTU_CHK_SEGS the helper passes every GSO packet).
        let mut mtu = 0u32;
        // SAFETY: the helper reads the skb and writes `mtu`, on our stack for the whole call.
        if unsafe { bpf_check_mtu(ctx.as_ptr(), fib.ifindex, &mut mtu, 0, u64::from(BPF_MTU_CHK_SEGS)) } != 0
        {
            return Err(Reason::PassFragNeeded);
        }
    }
    // SAFETY: on success the FIB filled both MAC arrays.
    let macs =
        unsafe { (fib.__bindgen_anon_6.__bindgen_anon_2.smac, fib.__bindgen_anon_6.__bindgen_anon_2.dmac) };
    // SAFETY: the FIB replaced the destination with the next hop (a gateway, if the route has one).
    let next_hop = unsafe { fib.__bindgen_anon_4.ipv4_dst }.to_ne_bytes();
    Ok(Route { ifindex: fib.ifindex, next_hop, macs: neighbour_known.then_some(macs) })
}

/// Forwards `ip` along `route`: one routed hop (TTL - 1), then out of the route's interface,
/// counting `reason`.
#[inline(always)]
pub fn transmit(ip: &Ipv4, route: &Route, reason: Reason) -> Verdict {
    ip.decrement_ttl();
    let Some((smac, dmac)) = route.macs else {
        // SAFETY: bpf_redir_neigh is plain data; all-zero is a valid starting point.
        let mut nh: bpf_redir_neigh = unsafe { mem::zeroed() };
        nh.nh_family = u32::from(AF_INET);
        nh.__bindgen_anon_1.ipv4_nh = u32::from_ne_bytes(route.next_hop);
        // SAFETY: the helper reads `nh`, on our stack for the whole call; it fills in the MACs
        // once the neighbour is resolved.
        let action = unsafe {
            bpf_redirect_neigh(route.ifindex, &mut nh, mem::size_of::<bpf_redir_neigh>() as i32, 0)
        };
        return Verdict::redirected(action as i32, reason);
    };
    ip.set_macs(smac, dmac);
    // SAFETY: a helper call with plain integer arguments; redirects to the interface's egress.
    let action = unsafe { bpf_redirect(route.ifindex, 0) };
    Verdict::redirected(action as i32, reason)
}

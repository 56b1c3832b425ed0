//! Routing to pods on other nodes: the peer LPM trie says which node owns the destination, the
//! kernel FIB says how to reach that node (uplink, MACs, MTU), and the packet leaves the uplink
//! without the stack; when the next hop's MAC is not cached yet, `bpf_redirect_neigh` resolves
//! it. What the fast path cannot finish (TTL expiring, too big for the uplink, no route) goes to
//! the stack, which has the same routes (podnet installs them) and answers with ICMP errors.

use core::mem;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        __sk_buff, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup, bpf_redir_neigh,
    },
    btf_maps::{LpmTrie, lpm_trie::Key},
    helpers::generated::{bpf_check_mtu, bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    macros::btf_map,
    programs::TcContext,
};
use podnet_common::{Peer, PeerKey, Reason, maps::PEERS_MAX};

use crate::{
    packet::{Ipv4, Malformed},
    verdict::Verdict,
};

#[btf_map(pin_by_name)]
static PEERS: LpmTrie<PeerKey, Peer, PEERS_MAX> = LpmTrie::new();

const AF_INET: u8 = 2;

/// If the destination is in another node's pod CIDR, routes the packet out of the uplink toward
/// that node; `None` when it is not a cluster address.
#[inline(always)]
pub fn to_peer(ctx: &TcContext, ip: &Ipv4) -> Result<Option<Verdict>, Malformed> {
    let Some(peer) = PEERS.get(&Key::new(32, ip.daddr())) else {
        return Ok(None);
    };
    let next_hop = peer.node_ip;
    if ip.ttl() <= 1 {
        return Ok(Some(Verdict::pass(Reason::PassTtlExpiring)));
    }
    // SAFETY: bpf_fib_lookup is plain data; all-zero is a valid starting point.
    let mut fib: bpf_fib_lookup = unsafe { mem::zeroed() };
    fib.family = AF_INET;
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(next_hop);
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: `skb` is the context the kernel passed to this program; these fields are readable
    // from tc programs.
    let (ifindex, gso) = unsafe { ((*skb).ifindex, (*skb).gso_size != 0) };
    // The FIB takes the input device for policy routing and its forwarding setting.
    fib.ifindex = ifindex;
    if !gso {
        // The FIB checks this length against the route's MTU.
        fib.__bindgen_anon_1.tot_len = ip.tot_len();
    }
    // SAFETY: the helper reads and writes `fib`, which lives on our stack for the whole call.
    let rc = unsafe { fib_lookup(ctx.as_ptr(), &mut fib, mem::size_of::<bpf_fib_lookup>() as i32, 0) };
    let neighbour_known = match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => true,
        BPF_FIB_LKUP_RET_NO_NEIGH => false,
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Ok(Some(Verdict::pass(Reason::PassFragNeeded))),
        _ => return Ok(Some(Verdict::pass(Reason::PassNoRoute))),
    };
    if gso {
        // A GSO packet is checked segment by segment against the uplink's MTU.
        let mut mtu = 0u32;
        // SAFETY: the helper reads the skb and writes `mtu`, on our stack for the whole call.
        if unsafe { bpf_check_mtu(ctx.as_ptr(), fib.ifindex, &mut mtu, 0, 0) } != 0 {
            return Ok(Some(Verdict::pass(Reason::PassFragNeeded)));
        }
    }
    ip.decrement_ttl();
    if !neighbour_known {
        // SAFETY: bpf_redir_neigh is plain data; all-zero is a valid starting point.
        let mut nh: bpf_redir_neigh = unsafe { mem::zeroed() };
        nh.nh_family = u32::from(AF_INET);
        nh.__bindgen_anon_1.ipv4_nh = u32::from_ne_bytes(next_hop);
        // SAFETY: the helper reads `nh`, on our stack for the whole call; it fills in the MACs
        // once the neighbour is resolved.
        let action =
            unsafe { bpf_redirect_neigh(fib.ifindex, &mut nh, mem::size_of::<bpf_redir_neigh>() as i32, 0) };
        return Ok(Some(Verdict::redirected(action as i32, Reason::RedirectRemoteResolve)));
    }
    // SAFETY: both MAC arrays were filled by a successful FIB lookup.
    let (smac, dmac) =
        unsafe { (fib.__bindgen_anon_6.__bindgen_anon_2.smac, fib.__bindgen_anon_6.__bindgen_anon_2.dmac) };
    ip.set_macs(smac, dmac);
    // SAFETY: a helper call with plain integer arguments; redirects to the uplink's egress.
    let action = unsafe { bpf_redirect(fib.ifindex, 0) };
    Ok(Some(Verdict::redirected(action as i32, Reason::RedirectRemote)))
}

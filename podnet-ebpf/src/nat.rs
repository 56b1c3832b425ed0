//! Masquerading (SNAT to the node IP) with podnet's own connection tracking.
//!
//! A pod's first packet to the outside allocates a node port: the reply-side entry (CT_IN) is
//! inserted first with BPF_NOEXIST, which claims the port atomically, then the pod-side entry
//! (CT_OUT). Later packets find CT_OUT; replies find CT_IN and are translated back and delivered
//! into the pod. Both maps are LRU hashes; idle entries are removed by `podnet agent` (see the
//! README), which applies the per-protocol timeouts to `seen_ns`.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST},
    btf_maps::{Array, LruHashMap},
    helpers::generated::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::btf_map,
    programs::TcContext,
};
use podnet_common::{
    CtEntry, CtKey, NatConfig, Reason, ct_flags,
    maps::CT_MAX,
    proto::{ICMP, TCP, UDP},
};

use crate::{
    endpoints::{self, Hop},
    isolation,
    packet::{self, Ipv4, Malformed},
    routing,
    verdict::Verdict,
};

#[btf_map(pin_by_name)]
static NAT_CONFIG: Array<NatConfig, 1> = Array::new();
#[btf_map(pin_by_name)]
static CT_OUT: LruHashMap<CtKey, CtEntry, CT_MAX> = LruHashMap::new();
#[btf_map(pin_by_name)]
static CT_IN: LruHashMap<CtKey, CtEntry, CT_MAX> = LruHashMap::new();

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;
/// Ports tried for a new connection before it is refused as exhausted (all of them when the
/// range is smaller).
const MAX_TRIES: u32 = 32;

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
            _pad: [0; 3],
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
                        | if tcp_flags & TCP_RST != 0 { ct_flags::RST } else { 0 };
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

    /// Rewrites the address at `addr_offset` and the flow's port, fixing the IPv4 and L4
    /// checksums with the kernel's helpers (which respect checksum offload state).
    #[inline(always)]
    fn rewrite(
        &self,
        ctx: &TcContext,
        addr_offset: usize,
        (old_addr, new_addr): ([u8; 4], [u8; 4]),
        (old_port, new_port): (u16, u16),
    ) -> Result<(), Malformed> {
        let (old_a, new_a) =
            (u64::from(u32::from_ne_bytes(old_addr)), u64::from(u32::from_ne_bytes(new_addr)));
        ctx.store(addr_offset, &new_addr, 0).map_err(|_| Malformed)?;
        ctx.l3_csum_replace(Ipv4::CHECK_OFFSET, old_a, new_a, 4).map_err(|_| Malformed)?;
        if self.pseudo {
            let flags = u64::from(BPF_F_PSEUDO_HDR) | self.mangled | 4;
            ctx.l4_csum_replace(self.csum, old_a, new_a, flags).map_err(|_| Malformed)?;
        }
        ctx.store(self.port, &new_port, 0).map_err(|_| Malformed)?;
        ctx.l4_csum_replace(self.csum, u64::from(old_port), u64::from(new_port), self.mangled | 2)
            .map_err(|_| Malformed)
    }
}

/// How stale `seen_ns` may get: refreshing it at most this often keeps busy flows from writing
/// (and bouncing between CPUs) the entry's cache line on every packet. Idle timeouts are seconds.
const SEEN_REFRESH_NS: u64 = 1_000_000_000;

/// Marks a conntrack entry as seen now (to within [`SEEN_REFRESH_NS`]), with this packet's flags.
#[inline(always)]
fn touch(entry: *mut CtEntry, now: u64, flags: u8) {
    // SAFETY: `entry` comes from a successful lookup in an LRU hash; concurrent writers only
    // store timestamps and OR flags, so a lost update is harmless.
    unsafe {
        if now.saturating_sub((*entry).seen_ns) >= SEEN_REFRESH_NS {
            (*entry).seen_ns = now;
        }
        if (*entry).flags | flags != (*entry).flags {
            (*entry).flags |= flags;
        }
    }
}

fn config() -> Option<NatConfig> {
    NAT_CONFIG.get(0).copied().filter(|c| c.enabled != 0)
}

/// Masquerades a pod's packet to the outside and routes it out of the uplink; `None` when NAT
/// is off or the destination is the node itself (pod-to-node is never translated). Called only
/// for destinations that are neither local pods nor other nodes' pods or addresses. What would
/// leave the uplink but cannot be translated is dropped: it would carry the pod's address out.
#[inline(always)]
pub fn masquerade(ctx: &TcContext, ip: &Ipv4) -> Result<Option<Verdict>, Malformed> {
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
    let route = match routing::lookup(ctx, ip, ip.daddr()) {
        Ok(route) if route.ifindex == cfg.uplink_ifindex => route,
        Ok(_) => return Ok(Some(Verdict::pass(Reason::PassNotLocal))),
        Err(Reason::PassFragNeeded) if !ip.dont_fragment() => {
            return Ok(Some(Verdict::drop(Reason::DropNotNatable)));
        }
        Err(reason) => return Ok(Some(Verdict::pass(reason))),
    };
    let flow = if ip.is_fragment() { None } else { Flow::parse(ctx, ip, true)? };
    let translated = flow.as_ref().and_then(|flow| CT_OUT.get_ptr_mut(&flow.key));
    // Networks in `allow_from` route the pod CIDR back to this node: they get pod addresses.
    // Asked only where there is no translation, so established flows pay no lookup for it.
    if translated.is_none() && isolation::in_allowed_network(ip.daddr()) {
        return Ok(Some(Verdict::pass(Reason::PassNoNat)));
    }
    let Some(flow) = flow else {
        return Ok(Some(Verdict::drop(Reason::DropNotNatable)));
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let (port, reason) = match translated {
        Some(entry) => {
            touch(entry, now, flow.flags);
            // SAFETY: as in `touch`; the port is never rewritten after insertion.
            (unsafe { (*entry).port }, Reason::RedirectNat)
        }
        None => match allocate(&flow, &cfg, now) {
            Some(port) => (port, Reason::RedirectNatNew),
            None => return Ok(Some(Verdict::drop(Reason::DropNatPortsExhausted))),
        },
    };
    flow.rewrite(ctx, Ipv4::SADDR_OFFSET, (flow.key.saddr, cfg.node_ip), (flow.key.sport, port))?;
    // The helpers may have moved the packet: parse it again before the last writes.
    let ip = Ipv4::parse(ctx)?.ok_or(Malformed)?;
    Ok(Some(routing::transmit(&ip, &route, reason)))
}

/// Claims a free node port for `flow` and records both directions; `None` when none of the
/// tried ports is free.
#[inline(always)]
fn allocate(flow: &Flow, cfg: &NatConfig, now: u64) -> Option<u16> {
    let range = u32::from(cfg.port_max).saturating_sub(u32::from(cfg.port_min)) + 1;
    // SAFETY: a helper without arguments.
    let start = unsafe { bpf_get_prandom_u32() } % range;
    let pod_side = CtEntry {
        created_ns: now,
        seen_ns: now,
        addr: flow.key.saddr,
        port: flow.key.sport,
        flags: 0,
        _pad: 0,
    };
    for i in 0..MAX_TRIES.min(range) {
        let port = ((u32::from(cfg.port_min) + (start + i) % range) as u16).to_be();
        let reply = flow.key.reply(cfg.node_ip, port);
        if CT_IN.insert(&reply, &pod_side, u64::from(BPF_NOEXIST)).is_err() {
            continue;
        }
        let node_side = CtEntry { addr: cfg.node_ip, port, flags: flow.flags, ..pod_side };
        if CT_OUT.insert(&flow.key, &node_side, u64::from(BPF_NOEXIST)).is_err() {
            // Another CPU translated this connection a moment ago: give our port back; the
            // packet is dropped as if exhausted and the connection's next packet finds the entry.
            let _ = CT_IN.remove(&reply);
            return None;
        }
        return Some(port);
    }
    None
}

/// Translates a reply to a masqueraded connection back to the pod and delivers it; `None` when
/// the packet is not such a reply.
#[inline(always)]
pub fn unmasquerade(ctx: &TcContext, ip: &Ipv4) -> Result<Option<Verdict>, Malformed> {
    let Some(cfg) = config() else {
        return Ok(None);
    };
    if ip.daddr() != cfg.node_ip || ip.is_fragment() {
        return Ok(None);
    }
    let Some(flow) = Flow::parse(ctx, ip, false)? else {
        return Ok(None);
    };
    let Some(entry) = CT_IN.get_ptr_mut(&flow.key) else {
        return Ok(None);
    };
    // SAFETY: a helper without arguments.
    touch(entry, unsafe { bpf_ktime_get_ns() }, flow.flags);
    // SAFETY: as in `touch`; address and port are never rewritten after insertion.
    let (pod_ip, pod_port) = unsafe { ((*entry).addr, (*entry).port) };
    flow.rewrite(ctx, Ipv4::DADDR_OFFSET, (flow.key.daddr, pod_ip), (flow.key.dport, pod_port))?;
    let ip = Ipv4::parse(ctx)?.ok_or(Malformed)?;
    Ok(Some(match endpoints::lookup(ip.daddr()) {
        Some(ep) => endpoints::deliver(&ip, &ep, Hop::NatReply),
        None => Verdict::pass(Reason::PassUplinkNotLocal),
    }))
}

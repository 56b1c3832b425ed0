//! ICMP errors about translated connections (destination unreachable, "fragmentation needed"
//! included, and time exceeded), translated both ways as Linux's NAT does: the outer address,
//! and inside the quoted packet the address, its header checksum and the port (or echo
//! identifier), with the ICMP checksum following each change. Without this, path MTU discovery
//! through the NAT and "connection refused" for pods would not work. The quoted packet's own L4
//! checksum is left alone: receivers do not check it (and it is often cut off).

use aya_ebpf::programs::TcContext;
use podnet_common::{
    CtEntry, CtKey, NatConfig, checksum_after_replace,
    proto::{ICMP, TCP, UDP},
};

use super::{Other, Tables, Tcp, holds};
use crate::packet::{Ipv4, Malformed, Side};

const DEST_UNREACH: u8 = 3;
const TIME_EXCEEDED: u8 = 11;
const ECHO_REPLY: u8 = 0;
const ECHO_REQUEST: u8 = 8;

/// The packet an ICMP error quotes.
struct Quoted {
    /// Offset of the quoted IPv4 header.
    ip: usize,
    /// Its header checksum as it sits in the packet.
    check: u16,
    /// The connection key it shows, from its own source to its destination (for an echo
    /// request the identifier is the source "port", for an echo reply the destination one).
    key: CtKey,
    /// Offsets of its source and destination port (both the identifier for echo).
    sport_at: usize,
    dport_at: usize,
}

impl Quoted {
    /// The packet quoted by the ICMP error `ip` carries; `None` when `ip` is no such error or
    /// quotes what podnet does not translate. Read with `bpf_skb_load_bytes`: offsets that
    /// depend on two header lengths are more than the verifier follows in direct packet access,
    /// and errors are rare.
    #[inline(always)]
    fn parse(ctx: &TcContext, ip: &Ipv4) -> Option<Self> {
        if ip.protocol() != ICMP || ip.is_fragment() {
            return None;
        }
        let l4 = ip.l4_offset();
        let icmp_type = ctx.load::<u8>(l4).ok()?;
        if icmp_type != DEST_UNREACH && icmp_type != TIME_EXCEEDED {
            return None;
        }
        let inner = l4 + 8;
        let version_ihl = ctx.load::<u8>(inner).ok()?;
        let ihl = usize::from(version_ihl & 0x0f) * 4;
        if version_ihl >> 4 != 4 || ihl < 20 {
            return None;
        }
        let proto = ctx.load::<u8>(inner + 9).ok()?;
        let check = ctx.load::<u16>(inner + 10).ok()?;
        let [saddr, daddr] = ctx.load::<[[u8; 4]; 2]>(inner + 12).ok()?;
        let l4i = inner + ihl;
        let (sport, dport, sport_at, dport_at) = match proto {
            TCP | UDP => {
                let [sport, dport] = ctx.load::<[u16; 2]>(l4i).ok()?;
                (sport, dport, l4i, l4i + 2)
            }
            ICMP => {
                let id = ctx.load::<u16>(l4i + 4).ok()?;
                match ctx.load::<u8>(l4i).ok()? {
                    ECHO_REQUEST => (id, 0, l4i + 4, l4i + 4),
                    ECHO_REPLY => (0, id, l4i + 4, l4i + 4),
                    _ => return None,
                }
            }
            _ => return None,
        };
        let key = CtKey { saddr, daddr, sport, dport, proto, _pad: 0, _pad2: 0 };
        Some(Quoted { ip: inner, check, key, sport_at, dport_at })
    }

    /// The key of the translation this packet belongs to, seen from the other end: for a
    /// packet the node sent (quoted by an error coming in) its reply side, for a packet a pod
    /// received (quoted by an error it sends) its pod side.
    #[inline(always)]
    fn reversed(&self) -> CtKey {
        CtKey {
            saddr: self.key.daddr,
            daddr: self.key.saddr,
            sport: self.key.dport,
            dport: self.key.sport,
            proto: self.key.proto,
            _pad: 0,
            _pad2: 0,
        }
    }
}

/// An ICMP error from outside about a connection a pod has through the node: rewritten to the
/// pod (outer destination, the quoted source and source port). Whether it was one.
#[inline(always)]
pub fn inbound(ctx: &TcContext, ip: &Ipv4, cfg: &NatConfig) -> Result<bool, Malformed> {
    let Some(q) = Quoted::parse(ctx, ip) else {
        return Ok(false);
    };
    if q.key.saddr != cfg.node_ip {
        return Ok(false);
    }
    let entry = if q.key.proto == TCP { lookup::<Tcp>(&q, false) } else { lookup::<Other>(&q, false) };
    let Some((pod, pod_port)) = entry else {
        return Ok(false);
    };
    rewrite(
        ctx,
        ip,
        &q,
        Side::Destination,
        (q.ip + 12, q.key.saddr, pod),
        (q.sport_at, q.key.sport, pod_port),
    )?;
    Ok(true)
}

/// An ICMP error a pod sends about a reply it got through the node: rewritten to come from the
/// node (outer source, the quoted destination and destination port). Whether it was one.
#[inline(always)]
pub fn outbound(ctx: &TcContext, ip: &Ipv4, cfg: &NatConfig) -> Result<bool, Malformed> {
    let Some(q) = Quoted::parse(ctx, ip) else {
        return Ok(false);
    };
    if q.key.daddr != ip.saddr() {
        return Ok(false);
    }
    let entry = if q.key.proto == TCP { lookup::<Tcp>(&q, true) } else { lookup::<Other>(&q, true) };
    let Some((node, node_port)) = entry.filter(|(node, _)| *node == cfg.node_ip) else {
        return Ok(false);
    };
    rewrite(ctx, ip, &q, Side::Source, (q.ip + 16, q.key.daddr, node), (q.dport_at, q.key.dport, node_port))?;
    Ok(true)
}

/// The address and port the translation of `q` writes: from the pod side (`outbound`) or the
/// reply side.
#[inline(always)]
fn lookup<T: Tables>(q: &Quoted, outbound: bool) -> Option<([u8; 4], u16)> {
    let key = q.reversed();
    let entry: *const CtEntry =
        if outbound { T::out().get_ptr(&key)? } else { T::inbound().get_ptr(&key)? };
    // SAFETY: from a successful lookup; address and port of an entry are read once.
    let (addr, port) = unsafe { ((*entry).addr, (*entry).port) };
    // A pod side whose port was taken over by another connection speaks for nobody.
    if outbound && !T::inbound().get_ptr(&key.reply(addr, port)).is_some_and(|r| holds(r, &key)) {
        return None;
    }
    Some((addr, port))
}

/// Writes `new` over the `outer` address (a direct store, before the helpers) and over the quoted address at `at`
/// (`old` in both), and the quoted port at `port_at`; fixes the outer header checksum, the
/// quoted header's checksum and the ICMP checksum.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    ip: &Ipv4,
    q: &Quoted,
    outer: Side,
    (at, old, new): (usize, [u8; 4], [u8; 4]),
    (port_at, old_port, new_port): (usize, u16, u16),
) -> Result<(), Malformed> {
    let icmp_check = ip.l4_offset() + 2;
    ip.set_address(outer, new);
    let (old32, new32) = (u64::from(u32::from_ne_bytes(old)), u64::from(u32::from_ne_bytes(new)));
    // Inside the ICMP payload: each change moves the ICMP checksum by as much.
    ctx.store(at, &new, 0).map_err(|_| Malformed)?;
    ctx.l4_csum_replace(icmp_check, old32, new32, 4).map_err(|_| Malformed)?;
    let check = checksum_after_replace(u16::from_be(q.check), old, new).to_be();
    ctx.store(q.ip + 10, &check, 0).map_err(|_| Malformed)?;
    ctx.l4_csum_replace(icmp_check, u64::from(q.check), u64::from(check), 2).map_err(|_| Malformed)?;
    ctx.store(port_at, &new_port, 0).map_err(|_| Malformed)?;
    ctx.l4_csum_replace(icmp_check, u64::from(old_port), u64::from(new_port), 2).map_err(|_| Malformed)
}

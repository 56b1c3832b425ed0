//! Bounds-checked access to packet headers. The only place that turns packet offsets into
//! pointers; callers dereference them in `unsafe` blocks that name this check.

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::__sk_buff,
    programs::{TcContext, XdpContext},
};
use podnet_common::{
    checksum_after_replace, checksum_after_ttl_decrement, ipv4_lengths_consistent, l4_min_len, proto::TCP,
};

/// The packet is shorter than a header it claims to carry, or a header field is impossible.
#[derive(Clone, Copy)]
pub struct Malformed;

/// Ethernet II header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Network byte order.
    pub ether_type: u16,
}

impl EthHdr {
    pub const LEN: usize = size_of::<Self>();
    /// 0x0800 as it sits in the packet (network byte order) on a little-endian target.
    pub const TYPE_IPV4: u16 = 0x0800u16.to_be();
    /// ARP, in packet byte order.
    pub const TYPE_ARP: u16 = 0x0806u16.to_be();
    /// 802.1Q and 802.1ad VLAN tags, in packet byte order.
    pub const TYPE_VLAN: u16 = 0x8100u16.to_be();
    pub const TYPE_QINQ: u16 = 0x88a8u16.to_be();
}

/// ARP for IPv4 over Ethernet (RFC 826), the only kind podnet lets pods send.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ArpHdr {
    /// Hardware type (1, Ethernet), network byte order.
    pub htype: u16,
    /// Protocol type (0x0800, IPv4), network byte order.
    pub ptype: u16,
    pub hlen: u8,
    pub plen: u8,
    /// Request (1) or reply (2), network byte order.
    pub oper: u16,
    /// Sender MAC and IPv4 address: what a receiver learns.
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

impl ArpHdr {
    /// Whether this is Ethernet/IPv4 ARP (the header describes the addresses it carries).
    #[inline(always)]
    pub fn is_ethernet_ipv4(&self) -> bool {
        self.htype == 1u16.to_be() && self.ptype == 0x0800u16.to_be() && self.hlen == 6 && self.plen == 4
    }
}

/// IPv4 header without options.
#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

impl Ipv4Hdr {
    pub const LEN: usize = size_of::<Self>();
}

/// A program context with packet data: tc's skb or XDP's frame.
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The whole frame's length, Ethernet header included (also what is not linear yet).
    fn len(&self) -> usize;
    /// Makes sure the first `len` bytes are directly accessible; fails only when the packet
    /// itself is shorter than `len`.
    fn ensure_linear(&self, len: usize) -> Result<(), Malformed>;
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    /// `skb->len`: tc runs with the MAC header pushed, so it counts the Ethernet header.
    #[inline(always)]
    fn len(&self) -> usize {
        TcContext::len(self) as usize
    }

    /// A GSO packet from a socket may hold headers in fragments: pull them in.
    #[inline(always)]
    fn ensure_linear(&self, len: usize) -> Result<(), Malformed> {
        if self.data() + len <= self.data_end() {
            return Ok(());
        }
        if (self.len() as usize) < len {
            return Err(Malformed);
        }
        self.pull_data(len as u32).map_err(|_| Malformed)
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    /// podnet's XDP programs are not multi-buffer aware: the frame is its first buffer.
    #[inline(always)]
    fn len(&self) -> usize {
        self.data_end() - self.data()
    }

    /// An XDP frame's headers are always in its first buffer.
    #[inline(always)]
    fn ensure_linear(&self, len: usize) -> Result<(), Malformed> {
        if self.data() + len <= self.data_end() { Ok(()) } else { Err(Malformed) }
    }
}

/// The longest L4 header podnet reads: TCP's without options.
const L4_HEADER_MAX: usize = 20;

/// A copy of the `T` at `offset` from the start of the packet, bounds-checked.
#[inline(always)]
pub fn read<T: Copy>(ctx: &impl Packet, offset: usize) -> Result<T, Malformed> {
    let p = ptr_at::<T>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that the whole `T` lies inside the packet; unaligned because
    // packet headers follow no alignment.
    Ok(unsafe { p.read_unaligned() })
}

/// A pointer to a `T` at `offset` from the start of the packet, if it lies entirely inside the
/// packet's linear data.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Packet, offset: usize) -> Result<*mut T, Malformed> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(Malformed);
    }
    Ok((start + offset) as *mut T)
}

/// The Ethernet type of the frame, in packet byte order (compare with `EthHdr::TYPE_*`).
#[inline(always)]
pub fn ether_type(ctx: &impl Packet) -> Result<u16, Malformed> {
    read::<u16>(ctx, 12)
}

/// Whether a frame tc sees carries a VLAN tag: taken out of the frame into the skb by the
/// receive path (`skb_vlan_untag`, before tc runs), or still in it (the inner tag of QinQ).
#[inline(always)]
pub fn vlan_tagged(ctx: &TcContext) -> Result<bool, Malformed> {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: `skb` is the context the kernel passed to this tc program; the field is readable.
    let offloaded = unsafe { (*skb).vlan_present } != 0;
    let ether_type = ether_type(ctx)?;
    Ok(offloaded || ether_type == EthHdr::TYPE_VLAN || ether_type == EthHdr::TYPE_QINQ)
}

/// An IPv4 source and destination address, in packet byte order.
pub type Addresses = ([u8; 4], [u8; 4]);

/// The addresses of the IPv4 packet behind one or two in-band VLAN tags (or none, when the
/// receive path already moved the tag into the skb), if that is what the frame carries.
#[inline(always)]
pub fn tagged_ipv4(ctx: &impl Packet) -> Result<Option<Addresses>, Malformed> {
    let mut offset = 12;
    for _ in 0..2 {
        let ether_type = read::<u16>(ctx, offset)?;
        if ether_type != EthHdr::TYPE_VLAN && ether_type != EthHdr::TYPE_QINQ {
            break;
        }
        offset += 4;
    }
    if read::<u16>(ctx, offset)? != EthHdr::TYPE_IPV4 {
        return Ok(None);
    }
    let header = offset + 2;
    Ok(Some((read(ctx, header + 12)?, read(ctx, header + 16)?)))
}

/// The interface a tc program's packet arrived on.
#[inline(always)]
pub fn ingress_ifindex(ctx: &TcContext) -> u32 {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: `skb` is the context the kernel passed to this tc program; the field is readable.
    unsafe { (*skb).ifindex }
}

/// One of the two addresses of an IPv4 header.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// An Ethernet + IPv4 packet, its headers checked and in linear data.
pub struct Ipv4 {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
}

impl Ipv4 {
    /// `None` for anything but IPv4 over Ethernet; `Malformed` for a truncated frame or an IPv4
    /// header that contradicts itself or the frame: a version other than 4, an IHL below 5, a
    /// total length below the header or beyond the frame.
    #[inline(always)]
    pub fn parse(ctx: &impl Packet) -> Result<Option<Self>, Malformed> {
        if ether_type(ctx)? != EthHdr::TYPE_IPV4 {
            return Ok(None);
        }
        // With the L4 header of an IPv4 header without options (TCP's without options is the
        // longest): what is not linear yet costs a pull, and one pull for both is half the
        // price of two (see `with_l4`).
        ctx.ensure_linear((EthHdr::LEN + Ipv4Hdr::LEN + L4_HEADER_MAX).min(ctx.len()))?;
        // Pulling data moves the packet: take both pointers afresh.
        let eth = ptr_at::<EthHdr>(ctx, 0)?;
        let ip = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN)?;
        // SAFETY: `ptr_at` checked that the whole fixed IPv4 header lies inside the packet.
        let (version_ihl, tot_len) = unsafe { ((*ip).version_ihl, u16::from_be((*ip).tot_len)) };
        let l3_len = ctx.len().saturating_sub(EthHdr::LEN);
        if version_ihl >> 4 != 4 || !ipv4_lengths_consistent(version_ihl & 0x0f, tot_len, l3_len) {
            return Err(Malformed);
        }
        Ok(Some(Self { eth, ip }))
    }

    /// The packet again, its L4 header (as far as it has one: TCP's 20 bytes, 8 of the rest) in
    /// linear data too, for what reads ports and checksums: senders such as packet sockets' TX
    /// rings leave all but the Ethernet header in fragments. Nothing moves for the usual frame,
    /// whose headers its sender's stack wrote into linear data, nor after `parse` pulled them
    /// (IPv4 options aside); when something does, `self` is stale.
    #[inline(always)]
    pub fn with_l4(&self, ctx: &TcContext) -> Result<Self, Malformed> {
        let header = if self.protocol() == TCP { L4_HEADER_MAX } else { 8 };
        let len = Packet::len(ctx).min(self.l4_offset() + header);
        if ctx.data() + len <= ctx.data_end() {
            // Linear already: nothing moved, the pointers stand.
            return Ok(Self { eth: self.eth, ip: self.ip });
        }
        ctx.ensure_linear(len)?;
        Self::parse(ctx)?.ok_or(Malformed)
    }

    /// Checks that a packet which starts its L4 payload (not a later fragment) carries the whole
    /// minimal TCP, UDP or ICMP header, and for TCP a data offset inside the packet. `self`
    /// comes from [`Ipv4::with_l4`]: the TCP header is in linear data.
    #[inline(always)]
    pub fn check_l4(&self, ctx: &TcContext) -> Result<(), Malformed> {
        if self.fragment_offset() != 0 {
            return Ok(());
        }
        let min = l4_min_len(self.protocol());
        let l4_len = usize::from(self.tot_len()).saturating_sub(self.l4_offset() - EthHdr::LEN);
        if l4_len < min {
            return Err(Malformed);
        }
        if self.protocol() == TCP {
            let doff = usize::from(read::<u8>(ctx, self.l4_offset() + 12)? >> 4) * 4;
            if doff < min || doff > l4_len {
                return Err(Malformed);
            }
        }
        Ok(())
    }

    #[inline(always)]
    pub fn saddr(&self) -> [u8; 4] {
        // SAFETY: `parse` bounds-checked the IPv4 header.
        unsafe { (*self.ip).saddr }
    }

    #[inline(always)]
    pub fn protocol(&self) -> u8 {
        // SAFETY: `parse` bounds-checked the IPv4 header.
        unsafe { (*self.ip).protocol }
    }

    /// Whether this is a fragment (more fragments follow, or a non-zero offset): it carries no
    /// complete L4 header to translate.
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        self.frag_off() & 0x3fff != 0
    }

    /// The identification field, as it sits in the packet.
    #[inline(always)]
    pub fn id(&self) -> u16 {
        // SAFETY: `parse` bounds-checked the IPv4 header.
        unsafe { (*self.ip).id }
    }

    /// The fragment offset in 8-byte units: 0 for a whole packet or a first fragment.
    #[inline(always)]
    pub fn fragment_offset(&self) -> u16 {
        self.frag_off() & 0x1fff
    }

    /// Whether more fragments of this datagram follow (MF).
    #[inline(always)]
    pub fn more_fragments(&self) -> bool {
        self.frag_off() & 0x2000 != 0
    }

    /// Whether the sender forbade fragmentation (DF).
    #[inline(always)]
    pub fn dont_fragment(&self) -> bool {
        self.frag_off() & 0x4000 != 0
    }

    /// Flags and fragment offset (host byte order).
    #[inline(always)]
    fn frag_off(&self) -> u16 {
        // SAFETY: `parse` bounds-checked the IPv4 header.
        u16::from_be(unsafe { (*self.ip).frag_off })
    }

    /// Offset of the L4 header from the start of the frame (IPv4 options skipped).
    #[inline(always)]
    pub fn l4_offset(&self) -> usize {
        // SAFETY: `parse` bounds-checked the IPv4 header.
        EthHdr::LEN + usize::from(unsafe { (*self.ip).version_ihl } & 0x0f) * 4
    }

    #[inline(always)]
    pub fn daddr(&self) -> [u8; 4] {
        // SAFETY: `parse` bounds-checked the IPv4 header.
        unsafe { (*self.ip).daddr }
    }

    #[inline(always)]
    pub fn ttl(&self) -> u8 {
        // SAFETY: `parse` bounds-checked the IPv4 header.
        unsafe { (*self.ip).ttl }
    }

    /// Total length from the IPv4 header (host byte order).
    #[inline(always)]
    pub fn tot_len(&self) -> u16 {
        // SAFETY: `parse` bounds-checked the IPv4 header.
        u16::from_be(unsafe { (*self.ip).tot_len })
    }

    /// One routed hop: TTL - 1 with the header checksum updated incrementally. Callers check
    /// first that the TTL is above 1.
    #[inline(always)]
    pub fn decrement_ttl(&self) {
        // SAFETY: `parse` bounds-checked the IPv4 header; tc programs may write packet data.
        unsafe {
            (*self.ip).ttl -= 1;
            (*self.ip).check = checksum_after_ttl_decrement((*self.ip).check);
        }
    }

    /// Writes `new` over the source or destination address and updates the header checksum by
    /// arithmetic, as [`Ipv4::decrement_ttl`] does: the header's one's-complement sum stays what
    /// it was, so this holds whatever the skb's checksum state. Returns the old address.
    #[inline(always)]
    pub fn set_address(&self, side: Side, new: [u8; 4]) -> [u8; 4] {
        // SAFETY: `parse` bounds-checked the IPv4 header; tc programs may write packet data.
        unsafe {
            let field = match side {
                Side::Source => &mut (*self.ip).saddr,
                Side::Destination => &mut (*self.ip).daddr,
            };
            let old = *field;
            *field = new;
            (*self.ip).check = checksum_after_replace(u16::from_be((*self.ip).check), old, new).to_be();
            old
        }
    }

    /// The frame's source MAC.
    #[inline(always)]
    pub fn src_mac(&self) -> [u8; 6] {
        // SAFETY: `parse` bounds-checked the Ethernet header.
        unsafe { (*self.eth).src }
    }

    /// Sets the Ethernet addresses for the next hop, as six 16-bit stores (a 6-byte array copy
    /// becomes a byte-loop `memmove` call in BPF; the header is 2-byte aligned).
    #[inline(always)]
    pub fn set_macs(&self, src: [u8; 6], dst: [u8; 6]) {
        let words = self.eth.cast::<u16>();
        let (d, s) = (mac_words(dst), mac_words(src));
        for i in 0..3 {
            // SAFETY: `parse` bounds-checked the Ethernet header, whose 12 address bytes these six
            // words are; tc and XDP programs may write packet data. Volatile: the compiler must
            // not merge the stores back into a copy.
            unsafe {
                words.add(i).write_volatile(d[i]);
                words.add(3 + i).write_volatile(s[i]);
            }
        }
    }
}

/// A MAC address as the three 16-bit words it occupies in a header.
#[inline(always)]
fn mac_words(mac: [u8; 6]) -> [u16; 3] {
    [
        u16::from_ne_bytes([mac[0], mac[1]]),
        u16::from_ne_bytes([mac[2], mac[3]]),
        u16::from_ne_bytes([mac[4], mac[5]]),
    ]
}

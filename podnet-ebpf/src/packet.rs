//! Bounds-checked access to packet headers. The only place that turns packet offsets into
//! pointers; callers dereference them in `unsafe` blocks that name this check.

use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};
use podnet_common::checksum_after_ttl_decrement;

/// The packet is shorter than a header it claims to carry, or a header field is impossible.
#[derive(Clone, Copy)]
pub struct Malformed;

/// Ethernet II header.
#[repr(C)]
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

    /// An XDP frame's headers are always in its first buffer.
    #[inline(always)]
    fn ensure_linear(&self, len: usize) -> Result<(), Malformed> {
        if self.data() + len <= self.data_end() { Ok(()) } else { Err(Malformed) }
    }
}

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

/// An Ethernet + IPv4 packet, its headers checked and in linear data.
pub struct Ipv4 {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
}

impl Ipv4 {
    /// `None` for anything but IPv4 over Ethernet; `Malformed` for a truncated frame or an IPv4
    /// header with a version other than 4 or an IHL below 5.
    #[inline(always)]
    pub fn parse(ctx: &impl Packet) -> Result<Option<Self>, Malformed> {
        let eth = ptr_at::<EthHdr>(ctx, 0)?;
        // SAFETY: `ptr_at` checked that the whole Ethernet header lies inside the packet.
        if unsafe { (*eth).ether_type } != EthHdr::TYPE_IPV4 {
            return Ok(None);
        }
        ctx.ensure_linear(EthHdr::LEN + Ipv4Hdr::LEN)?;
        // Pulling data moves the packet: take both pointers afresh.
        let eth = ptr_at::<EthHdr>(ctx, 0)?;
        let ip = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN)?;
        // SAFETY: `ptr_at` checked that the whole fixed IPv4 header lies inside the packet.
        let version_ihl = unsafe { (*ip).version_ihl };
        if version_ihl >> 4 != 4 || version_ihl & 0x0f < 5 {
            return Err(Malformed);
        }
        Ok(Some(Self { eth, ip }))
    }

    /// Offset of the IPv4 source address from the start of the frame.
    pub const SADDR_OFFSET: usize = EthHdr::LEN + 12;
    /// Offset of the IPv4 destination address from the start of the frame.
    pub const DADDR_OFFSET: usize = EthHdr::LEN + 16;
    /// Offset of the IPv4 header checksum from the start of the frame.
    pub const CHECK_OFFSET: usize = EthHdr::LEN + 10;

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
        // SAFETY: `parse` bounds-checked the IPv4 header.
        u16::from_be(unsafe { (*self.ip).frag_off }) & 0x3fff != 0
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

    /// Sets the Ethernet addresses for the next hop.
    #[inline(always)]
    pub fn set_macs(&self, src: [u8; 6], dst: [u8; 6]) {
        // SAFETY: `parse` bounds-checked the Ethernet header; tc programs may write packet data.
        unsafe {
            (*self.eth).src = src;
            (*self.eth).dst = dst;
        }
    }
}

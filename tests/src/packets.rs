//! Synthetic frames for `BPF_PROG_TEST_RUN`, with checksums computed on the host so tests can
//! compare what the kernel program wrote against an independent computation.

use std::net::Ipv4Addr;

use bytes::{BufMut as _, BytesMut};
pub use podnet_common::inet_checksum;

pub const ETH_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_ICMP: u8 = 1;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// An Ethernet header.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], ether_type: u16) -> BytesMut {
    let mut b = BytesMut::with_capacity(128);
    b.put_slice(&dst);
    b.put_slice(&src);
    b.put_u16(ether_type);
    b
}

/// An IPv4 frame carrying `l4` (whose checksum field, if any, is already filled in), IHL 5,
/// TTL 64, DF, with a correct header checksum.
pub fn ipv4(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    l4: &[u8],
) -> BytesMut {
    let mut b = ethernet(eth_dst, eth_src, ETHERTYPE_IPV4);
    let mut ip = BytesMut::with_capacity(20);
    ip.put_u8(0x45);
    ip.put_u8(0);
    ip.put_u16((20 + l4.len()) as u16);
    ip.put_u16(0x1234);
    ip.put_u16(0x4000); // don't fragment
    ip.put_u8(64);
    ip.put_u8(protocol);
    ip.put_u16(0);
    ip.put_slice(&src.octets());
    ip.put_slice(&dst.octets());
    let csum = inet_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    b.put_slice(&ip);
    b.put_slice(l4);
    b
}

/// The TCP/UDP pseudo-header followed by the segment, as the L4 checksum covers it.
fn pseudo(src: [u8; 4], dst: [u8; 4], protocol: u8, segment: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + segment.len());
    v.extend_from_slice(&src);
    v.extend_from_slice(&dst);
    v.extend_from_slice(&[0, protocol]);
    v.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    v.extend_from_slice(segment);
    v
}

/// A UDP/IPv4 frame with checksum 0 ("none", as UDP allows).
pub fn udp4(eth_dst: [u8; 6], eth_src: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> BytesMut {
    let mut udp = BytesMut::with_capacity(8 + payload.len());
    udp.put_u16(40000);
    udp.put_u16(53);
    udp.put_u16((8 + payload.len()) as u16);
    udp.put_u16(0);
    udp.put_slice(payload);
    ipv4(eth_dst, eth_src, src, dst, PROTO_UDP, &udp)
}

/// A UDP/IPv4 frame with a real checksum.
pub fn udp4_checksummed(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> BytesMut {
    let mut udp = BytesMut::with_capacity(8 + payload.len());
    udp.put_u16(src.1);
    udp.put_u16(dst.1);
    udp.put_u16((8 + payload.len()) as u16);
    udp.put_u16(0);
    udp.put_slice(payload);
    let c = inet_checksum(&pseudo(src.0.octets(), dst.0.octets(), PROTO_UDP, &udp));
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    ipv4([0xaa; 6], [0xbb; 6], src.0, dst.0, PROTO_UDP, &udp)
}

/// A TCP/IPv4 frame (20-byte header, `flags`, 4 bytes of payload) with a correct checksum.
pub fn tcp4(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> BytesMut {
    let mut tcp = BytesMut::with_capacity(24);
    tcp.put_u16(src.1);
    tcp.put_u16(dst.1);
    tcp.put_u32(1000); // seq
    tcp.put_u32(0); // ack
    tcp.put_u8(5 << 4);
    tcp.put_u8(flags);
    tcp.put_u16(64240);
    tcp.put_u16(0); // checksum
    tcp.put_u16(0); // urgent
    tcp.put_slice(b"ping");
    let c = inet_checksum(&pseudo(src.0.octets(), dst.0.octets(), PROTO_TCP, &tcp));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    ipv4([0xaa; 6], [0xbb; 6], src.0, dst.0, PROTO_TCP, &tcp)
}

/// An ICMP echo request (type 8) or reply (type 0) with a correct checksum.
pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, icmp_type: u8, id: u16) -> BytesMut {
    let mut icmp = BytesMut::with_capacity(16);
    icmp.put_u8(icmp_type);
    icmp.put_u8(0);
    icmp.put_u16(0);
    icmp.put_u16(id);
    icmp.put_u16(1); // sequence
    icmp.put_slice(b"podnet!!");
    let c = inet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4([0xaa; 6], [0xbb; 6], src, dst, PROTO_ICMP, &icmp)
}

/// An ICMP error (`icmp_type`/`code`, e.g. 3/4 "fragmentation needed" with next-hop MTU
/// `mtu`) from `src` to `dst` quoting `quoted` (an IPv4 frame: its IPv4 header and the first
/// 28 bytes after it, as routers send), with a correct checksum.
pub fn icmp_error(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    (icmp_type, code): (u8, u8),
    mtu: u16,
    quoted: &[u8],
) -> BytesMut {
    let inner = &quoted[ETH_LEN..quoted.len().min(ETH_LEN + 48)];
    let mut icmp = BytesMut::with_capacity(8 + inner.len());
    icmp.put_u8(icmp_type);
    icmp.put_u8(code);
    icmp.put_u16(0);
    icmp.put_u16(0);
    icmp.put_u16(mtu);
    icmp.put_slice(inner);
    let c = inet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4([0xaa; 6], [0xbb; 6], src, dst, PROTO_ICMP, &icmp)
}

/// An Ethernet/IPv4 ARP frame: `op` ([`ARP_REQUEST`] or [`ARP_REPLY`]) with sender `sha`/`spa`
/// and target `tpa` (target MAC zero).
pub fn arp(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    op: u16,
    (sha, spa): ([u8; 6], Ipv4Addr),
    tpa: Ipv4Addr,
) -> BytesMut {
    let mut b = ethernet(eth_dst, eth_src, ETHERTYPE_ARP);
    b.put_u16(1); // Ethernet
    b.put_u16(ETHERTYPE_IPV4);
    b.put_u8(6);
    b.put_u8(4);
    b.put_u16(op);
    b.put_slice(&sha);
    b.put_slice(&spa.octets());
    b.put_slice(&[0; 6]);
    b.put_slice(&tpa.octets());
    b.put_slice(&[0; 18]); // Ethernet padding to 60 bytes
    b
}

/// `frame` with other Ethernet addresses.
pub fn with_macs(frame: &[u8], dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f
}

/// `frame` (IPv4) with total length `tot_len` and a valid header checksum: a header that may
/// disagree with the frame.
pub fn with_tot_len(frame: &[u8], tot_len: u16) -> BytesMut {
    with_header_bytes(frame, 2, &tot_len.to_be_bytes())
}

/// `frame` (IPv4) with TTL `ttl` and a valid header checksum.
pub fn with_ttl(frame: &[u8], ttl: u8) -> BytesMut {
    with_header_bytes(frame, 8, &[ttl])
}

/// `frame` (IPv4) as a fragment: `more` fragments follow, at `offset` bytes (a multiple of 8)
/// into its datagram; DF off; a valid header checksum.
pub fn as_fragment(frame: &[u8], more: bool, offset: u16) -> BytesMut {
    let field = (u16::from(more) << 13) | (offset / 8);
    with_header_bytes(frame, 6, &field.to_be_bytes())
}

/// `frame` with `bytes` at `offset` of its (option-less) IPv4 header, checksum recomputed.
fn with_header_bytes(frame: &[u8], offset: usize, bytes: &[u8]) -> BytesMut {
    let mut f = BytesMut::from(frame);
    f[ETH_LEN + offset..ETH_LEN + offset + bytes.len()].copy_from_slice(bytes);
    f[ETH_LEN + 10..ETH_LEN + 12].fill(0);
    let c = inet_checksum(&f[ETH_LEN..ETH_LEN + 20]);
    f[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&c.to_be_bytes());
    f
}

/// `frame` with an 802.1Q tag for VLAN `vid` after its MAC addresses.
pub fn vlan_tagged(frame: &[u8], vid: u16) -> BytesMut {
    let mut b = BytesMut::with_capacity(frame.len() + 4);
    b.put_slice(&frame[..12]);
    b.put_u16(ETHERTYPE_VLAN);
    b.put_u16(vid);
    b.put_slice(&frame[12..]);
    b
}

/// An IPv6 router advertisement from link-local `fe80::1` to all nodes (`ff02::1`), offering
/// prefix 2001:db8:1::/64 for autoconfiguration, with a correct ICMPv6 checksum.
pub fn router_advertisement(eth_src: [u8; 6]) -> BytesMut {
    let src: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let dst: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let mut icmp = BytesMut::with_capacity(48);
    icmp.put_u8(134); // router advertisement
    icmp.put_u8(0);
    icmp.put_u16(0); // checksum
    icmp.put_u8(64); // hop limit
    icmp.put_u8(0);
    icmp.put_u16(1800); // router lifetime: be the default router
    icmp.put_u32(0);
    icmp.put_u32(0);
    // Prefix information: 2001:db8:1::/64, on-link and autonomous.
    icmp.put_slice(&[3, 4, 64, 0xc0]);
    icmp.put_u32(86400);
    icmp.put_u32(14400);
    icmp.put_u32(0);
    icmp.put_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut pseudo = Vec::with_capacity(40 + icmp.len());
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&icmp);
    let c = inet_checksum(&pseudo);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut b = ethernet([0x33, 0x33, 0, 0, 0, 1], eth_src, ETHERTYPE_IPV6);
    b.put_u32(0x6000_0000);
    b.put_u16(icmp.len() as u16);
    b.put_u8(58); // ICMPv6
    b.put_u8(255);
    b.put_slice(&src);
    b.put_slice(&dst);
    b.put_slice(&icmp);
    b
}

/// Sends raw Ethernet `frames` out of interface `ifname` inside network namespace `ns`, as an
/// attacker in that namespace could (AF_PACKET; no checks, no offloads).
pub fn send(ns: &str, ifname: &str, frames: &[&[u8]]) -> anyhow::Result<()> {
    podnet::host::netns::run_in(ns, || -> anyhow::Result<()> {
        let name = std::ffi::CString::new(ifname)?;
        // SAFETY: a NUL-terminated name that lives across the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        anyhow::ensure!(ifindex != 0, "no interface {ifname} in {ns}");
        // SAFETY: plain socket creation; the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        anyhow::ensure!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a descriptor this function just opened and nothing else owns.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        for frame in frames {
            // SAFETY: the frame buffer and the address live across the call; lengths match.
            let sent = unsafe {
                libc::sendto(
                    raw,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            anyhow::ensure!(
                sent == frame.len() as isize,
                "sendto on {ifname}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    })?
}

/// Whether the frame's IPv4 header checksum and its TCP, UDP or ICMP checksum verify,
/// computed from scratch (a UDP checksum of 0 means "none" and passes).
pub fn checksums_valid(frame: &[u8]) -> bool {
    let ip = &frame[ETH_LEN..ETH_LEN + 20];
    let l4 = &frame[ETH_LEN + 20..ETH_LEN + usize::from(u16::from_be_bytes([ip[2], ip[3]]))];
    let (src, dst, protocol) = (ip[12..16].try_into().unwrap(), ip[16..20].try_into().unwrap(), ip[9]);
    let l4_ok = match protocol {
        PROTO_UDP if l4[6..8] == [0, 0] => true,
        PROTO_TCP | PROTO_UDP => inet_checksum(&pseudo(src, dst, protocol, l4)) == 0,
        _ => inet_checksum(l4) == 0,
    };
    inet_checksum(ip) == 0 && l4_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_have_valid_checksums() {
        let (a, b) = (Ipv4Addr::new(10, 1, 1, 2), Ipv4Addr::new(192, 0, 2, 1));
        assert!(checksums_valid(&tcp4((a, 40000), (b, 80), TCP_SYN)));
        assert!(checksums_valid(&udp4_checksummed((a, 40000), (b, 53), b"q")));
        assert!(checksums_valid(&icmp_echo(a, b, 8, 0x1234)));
        let mut broken = tcp4((a, 40000), (b, 80), TCP_SYN);
        broken[ETH_LEN + 20] ^= 1;
        assert!(!checksums_valid(&broken));
    }

    #[test]
    fn ipv4_header_checksum_verifies_to_zero() {
        let f = udp4([1; 6], [2; 6], Ipv4Addr::new(10, 1, 1, 2), Ipv4Addr::new(10, 1, 1, 3), b"x");
        assert_eq!(inet_checksum(&f[ETH_LEN..ETH_LEN + 20]), 0);
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is 0xddf2, so the checksum is !0xddf2.
        assert_eq!(inet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
    }
}

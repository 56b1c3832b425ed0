//! Synthetic frames for `BPF_PROG_TEST_RUN`, with checksums computed on the host so tests can
//! compare what the kernel program wrote against an independent computation.

use std::net::Ipv4Addr;

use bytes::{BufMut as _, BytesMut};
pub use podnet_common::inet_checksum;

pub const ETH_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_ICMP: u8 = 1;
pub const TCP_SYN: u8 = 0x02;
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

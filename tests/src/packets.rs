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

/// An Ethernet header.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], ether_type: u16) -> BytesMut {
    let mut b = BytesMut::with_capacity(128);
    b.put_slice(&dst);
    b.put_slice(&src);
    b.put_u16(ether_type);
    b
}

/// A UDP/IPv4 frame from `src` to `dst` with `payload`, IHL 5, TTL 64 and a correct header
/// checksum (UDP checksum 0: none).
pub fn udp4(eth_dst: [u8; 6], eth_src: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> BytesMut {
    let mut b = ethernet(eth_dst, eth_src, ETHERTYPE_IPV4);
    let total = 20 + 8 + payload.len();
    let mut ip = BytesMut::with_capacity(20);
    ip.put_u8(0x45);
    ip.put_u8(0);
    ip.put_u16(total as u16);
    ip.put_u16(0x1234);
    ip.put_u16(0x4000); // don't fragment
    ip.put_u8(64);
    ip.put_u8(PROTO_UDP);
    ip.put_u16(0);
    ip.put_slice(&src.octets());
    ip.put_slice(&dst.octets());
    let csum = inet_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    b.put_slice(&ip);
    b.put_u16(40000);
    b.put_u16(53);
    b.put_u16((8 + payload.len()) as u16);
    b.put_u16(0);
    b.put_slice(payload);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

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

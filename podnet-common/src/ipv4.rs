//! IPv4 header facts both sides check.

/// IP protocol numbers podnet translates.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// Whether a pod may never send to `daddr`: "this network" 0.0.0.0/8, loopback 127.0.0.0/8,
/// multicast 224.0.0.0/4 and reserved 240.0.0.0/4 (which holds the limited broadcast
/// 255.255.255.255). Such packets are neither routed nor translated.
pub const fn is_martian_destination(daddr: [u8; 4]) -> bool {
    daddr[0] == 0 || daddr[0] == 127 || daddr[0] >= 224
}

/// Whether an IPv4 header's lengths agree with each other and with the frame: the header
/// (`ihl` words of 4 bytes, at least 5) fits in the total length, and the total length fits in
/// the `l3_len` bytes the frame carries after its Ethernet header (Ethernet padding may follow).
pub const fn ipv4_lengths_consistent(ihl: u8, tot_len: u16, l3_len: usize) -> bool {
    let header = ihl as usize * 4;
    ihl >= 5 && header <= tot_len as usize && tot_len as usize <= l3_len
}

/// The smallest L4 header a packet of `protocol` must carry in full (TCP without options, UDP,
/// ICMP); 0 for protocols podnet does not look into.
pub const fn l4_min_len(protocol: u8) -> usize {
    match protocol {
        proto::TCP => 20,
        proto::UDP | proto::ICMP => 8,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn martian_destinations() {
        for martian in
            [[0, 0, 0, 0], [0, 1, 2, 3], [127, 0, 0, 1], [224, 0, 0, 1], [239, 1, 1, 1], [240, 0, 0, 1]]
        {
            assert!(is_martian_destination(martian), "{martian:?}");
        }
        assert!(is_martian_destination([255, 255, 255, 255]));
        for fine in [[10, 1, 1, 2], [1, 1, 1, 1], [192, 168, 50, 100], [223, 255, 255, 255], [126, 0, 0, 1]] {
            assert!(!is_martian_destination(fine), "{fine:?}");
        }
    }
    #[test]
    fn ipv4_lengths() {
        // A 20-byte header and 8 bytes of UDP in a frame with 28 (or, padded, 46) bytes of L3.
        assert!(ipv4_lengths_consistent(5, 28, 28));
        assert!(ipv4_lengths_consistent(5, 28, 46));
        assert!(!ipv4_lengths_consistent(5, 29, 28), "total length beyond the frame");
        assert!(!ipv4_lengths_consistent(5, 19, 46), "total length below the header");
        assert!(!ipv4_lengths_consistent(15, 40, 46), "IHL beyond the packet");
        assert!(!ipv4_lengths_consistent(4, 28, 46), "IHL below 5");
        assert!(ipv4_lengths_consistent(15, 60, 60), "maximal options");
    }
}

//! Internet checksum arithmetic: incremental updates the programs use, and the full
//! computation they are tested against.

/// The IPv4 header checksum after decrementing TTL by one, updated incrementally as the kernel's
/// `ip_decrease_ttl` does. `check` is the checksum field exactly as it sits in the packet, read
/// as a little-endian `u16` (what a BPF program on a little-endian machine sees).
pub const fn checksum_after_ttl_decrement(check: u16) -> u16 {
    // TTL is the high byte of its 16-bit word: the word drops by 0x0100, so the one's-complement
    // checksum rises by 0x0100 (network order), which is 0x0001 in the little-endian view.
    let sum = check as u32 + 0x0001;
    (sum + (sum >= 0xffff) as u32) as u16
}

/// An Internet checksum after one of the 4-byte fields it covers changed from `from` to `to`
/// (RFC 1624: HC' = ~(~HC + ~m + m'), word by word). `check` is the checksum as a big-endian
/// number (`u16::from_be_bytes` of the field); so is the result.
pub const fn checksum_after_replace(check: u16, from: [u8; 4], to: [u8; 4]) -> u16 {
    let mut sum = !check as u32 & 0xffff;
    sum += !word(from, 0) & 0xffff;
    sum += !word(from, 2) & 0xffff;
    sum += word(to, 0);
    sum += word(to, 2);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The 16-bit word at byte `i` of `b`, big-endian.
const fn word(b: [u8; 4], i: usize) -> u32 {
    ((b[i] as u32) << 8) | b[i + 1] as u32
}

/// The Internet checksum (RFC 1071) of `data`, computed from scratch: the reference that
/// incremental updates are tested against.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for word in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([word[0], if word.len() == 2 { word[1] } else { 0 }]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use inet_checksum as full_checksum;
    #[test]
    fn ttl_decrement_checksum_matches_a_full_recomputation() {
        for ttl in [2u8, 64, 65, 128, 255] {
            for id in [0u16, 0x1234, 0xfeff, 0xffff] {
                let mut h = [
                    0x45,
                    0,
                    0,
                    84,
                    (id >> 8) as u8,
                    id as u8,
                    0x40,
                    0,
                    ttl,
                    1,
                    0,
                    0,
                    10,
                    1,
                    1,
                    2,
                    10,
                    1,
                    2,
                    2,
                ];
                let c = full_checksum(&h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                let in_packet = u16::from_le_bytes([h[10], h[11]]);
                h[8] -= 1;
                let updated = checksum_after_ttl_decrement(in_packet).to_le_bytes();
                h[10..12].copy_from_slice(&updated);
                assert_eq!(full_checksum(&h), 0, "ttl {ttl} id {id:#x}: header must verify");
            }
        }
    }
    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is 0xddf2, so the checksum is !0xddf2.
        assert_eq!(inet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
    }
    #[test]
    fn checksum_replace_matches_a_full_recompute() {
        let mut header =
            [0x45, 0, 0, 0x54, 0x12, 0x34, 0x40, 0, 64, 1, 0, 0, 192, 168, 50, 1, 192, 168, 60, 100];
        let check = inet_checksum(&header);
        header[10..12].copy_from_slice(&check.to_be_bytes());
        for new_source in [[10, 1, 1, 2], [255, 255, 255, 255], [0, 0, 0, 0], [192, 168, 50, 1]] {
            let updated = checksum_after_replace(check, [192, 168, 50, 1], new_source);
            let mut changed = header;
            changed[12..16].copy_from_slice(&new_source);
            changed[10..12].copy_from_slice(&[0, 0]);
            assert_eq!(updated, inet_checksum(&changed), "{new_source:?}");
        }
    }
}

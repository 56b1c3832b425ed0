//! Node-port search for new translations, and the hash mixer it shares with route slots.

use crate::abi::conntrack::CtKey;

/// Where a new connection's search for a node port starts: its own source port when that is in
/// the range (as Linux's MASQUERADE and Cilium keep it), else a hash of the connection, so a
/// connection that lost its translation comes back on the same port where it can.
pub const fn port_search_start(key: &CtKey, port_min: u16, port_max: u16) -> u32 {
    // Never 0 (a division by zero would be a panic path the verifier rejects).
    let range = (port_max as u32).saturating_sub(port_min as u32) + 1;
    let sport = u16::from_be(key.sport);
    if sport >= port_min && sport <= port_max {
        return (sport - port_min) as u32;
    }
    mix(flow_hash(key)) % range
}

/// The offset into the range (of `range` ports) of the `i`th node port a connection's search
/// tries, `tries` at most: first where it starts ([`port_search_start`]); then, in a range larger
/// than `tries`, offsets scattered by a hash of the connection and `i`, since consecutive ports
/// pile up behind each other's claims (linear probing) and a busy range would want many more
/// tries; in a smaller range, every port in turn. Deterministic: a connection searching again
/// finds its own claim.
pub const fn port_search_offset(key: &CtKey, start: u32, i: u32, range: u32, tries: u32) -> u32 {
    if i == 0 || range <= tries {
        return (start + i) % range;
    }
    mix(flow_hash(key) ^ i.wrapping_mul(0x9e37_79b9)) % range
}

/// A hash of a connection's addresses, ports and protocol.
const fn flow_hash(key: &CtKey) -> u32 {
    u32::from_ne_bytes(key.saddr).wrapping_mul(0x9e37_79b1)
        ^ u32::from_ne_bytes(key.daddr).rotate_left(13).wrapping_mul(0x85eb_ca77)
        ^ (((key.sport as u32) << 16) | key.dport as u32).wrapping_mul(0xc2b2_ae3d)
        ^ key.proto as u32
}

/// Scrambles `h` (the murmur3 finaliser's first rounds), so nearby inputs land far apart.
pub(crate) const fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipv4::proto;
    /// A pod's TCP connection from `sport` to an outside web server.
    fn key(sport: u16) -> CtKey {
        CtKey {
            saddr: [10, 1, 1, 2],
            daddr: [192, 168, 50, 100],
            sport: sport.to_be(),
            dport: 80u16.to_be(),
            proto: proto::TCP,
            _pad: 0,
            _pad2: 0,
        }
    }
    #[test]
    fn port_search_keeps_the_pods_port_or_hashes() {
        assert_eq!(port_search_start(&key(61234), 61000, 65535), 234, "the pod's own port");
        let a = port_search_start(&key(40000), 61000, 65535);
        assert_eq!(a, port_search_start(&key(40000), 61000, 65535), "deterministic");
        assert!(a < 4536);
        let spread: std::collections::HashSet<u32> =
            (40000..40100).map(|p| port_search_start(&key(p), 61000, 65535)).collect();
        assert!(spread.len() > 90, "flows spread over the range: {}", spread.len());
        assert_eq!(port_search_start(&key(40000), 61000, 61000), 0);
    }
    #[test]
    fn port_search_scatters_in_large_ranges_and_walks_small_ones() {
        let flow = key(40000);
        let offsets =
            |range: u32| (0..16.min(range)).map(move |i| port_search_offset(&flow, 7 % range, i, range, 16));
        assert_eq!(offsets(4).collect::<Vec<_>>(), [3, 0, 1, 2], "a small range: every port");
        let large: Vec<u32> = offsets(4536).collect();
        assert_eq!(large[0], 7, "starts where it starts");
        assert!(large.iter().all(|&o| o < 4536));
        let distinct: std::collections::HashSet<u32> = large.iter().copied().collect();
        assert!(distinct.len() >= 15, "scattered, not a run of neighbours: {large:?}");
        assert!(large.windows(2).filter(|w| w[1] == w[0] + 1).count() <= 1, "{large:?}");
        // A busy range: 90% of the ports taken, in runs as claims pile up. Scattered tries still
        // find a free port for about 1 - 0.9^16 of new connections.
        let taken = |o: u32| !o.is_multiple_of(10);
        let found = (0..1000u16)
            .filter(|&p| {
                let k = key(20000 + p);
                let start = port_search_start(&k, 61000, 65535);
                (0..16).any(|i| !taken(port_search_offset(&k, start, i, 4536, 16)))
            })
            .count();
        assert!(found > 750, "{found} of 1000 found a free port");
    }
}

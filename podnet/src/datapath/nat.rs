//! Masquerade state as users see it: translations decoded from the conntrack maps, their TCP
//! state and age, and expiry (`podnet nat gc`, run in a loop by `podnet agent`).

use std::{net::Ipv4Addr, time::Duration};

use podnet_common::{CtKey, NatConfig, ct_flags, proto};
use serde::Serialize;

use crate::{
    config::Timeouts,
    datapath::PinDir,
    datapath::maps::{Conntrack, CtPair, MapsError},
};

/// What a translation's packets have shown so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// TCP, no reply yet.
    SynSent,
    /// TCP, replies seen, no FIN or RST.
    Established,
    /// TCP after a FIN or RST in either direction.
    Closing,
    Udp,
    Icmp,
}

impl State {
    fn of(protocol: u8, out_flags: u8, reply_flags: u8) -> Self {
        match protocol {
            proto::UDP => State::Udp,
            proto::ICMP => State::Icmp,
            _ if (out_flags | reply_flags) & (ct_flags::FIN | ct_flags::RST) != 0 => State::Closing,
            _ if reply_flags & ct_flags::SEEN != 0 => State::Established,
            _ => State::SynSent,
        }
    }

    /// How long a translation in this state may stay idle.
    pub fn timeout(self, t: &Timeouts) -> Duration {
        match self {
            State::SynSent => t.tcp_syn,
            State::Established => t.tcp_established,
            State::Closing => t.tcp_closing,
            State::Udp => t.udp,
            State::Icmp => t.icmp,
        }
    }
}

/// One masqueraded connection.
#[derive(Debug, Clone, Serialize)]
pub struct Translation {
    pub protocol: &'static str,
    pub pod: String,
    pub node: String,
    pub remote: String,
    pub state: State,
    /// Seconds since the translation was made.
    pub age_s: f64,
    /// Seconds since the last packet in either direction.
    pub idle_s: f64,
    #[serde(skip)]
    keys: (CtKey, CtKey),
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn now_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC exists");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

fn endpoint(addr: [u8; 4], port: u16) -> String {
    format!("{}:{}", Ipv4Addr::from(addr), u16::from_be(port))
}

fn decode((key, out, reply_key, reply): &CtPair, now: u64) -> Translation {
    let (reply_flags, reply_seen) = reply.map_or((0, 0), |r| (r.flags, r.seen_ns));
    let seen = out.seen_ns.max(reply_seen);
    let secs = |ns: u64| Duration::from_nanos(now.saturating_sub(ns)).as_secs_f64();
    let protocol = match key.proto {
        proto::TCP => "tcp",
        proto::UDP => "udp",
        _ => "icmp",
    };
    Translation {
        protocol,
        pod: endpoint(key.saddr, key.sport),
        node: endpoint(out.addr, out.port),
        // ICMP echo has no remote port; its identifier shows on the pod and node sides.
        remote: if key.proto == proto::ICMP {
            Ipv4Addr::from(key.daddr).to_string()
        } else {
            endpoint(key.daddr, key.dport)
        },
        state: State::of(key.proto, out.flags, reply_flags),
        age_s: secs(out.created_ns),
        idle_s: secs(seen),
        keys: (*key, *reply_key),
    }
}

/// Live translations, oldest first.
pub fn list(pins: &PinDir) -> Result<Vec<Translation>, MapsError> {
    let now = now_ns();
    let mut all: Vec<Translation> = Conntrack::open(pins)?.pairs().iter().map(|p| decode(p, now)).collect();
    all.sort_by(|a, b| b.age_s.total_cmp(&a.age_s));
    Ok(all)
}

/// Removes translations idle longer than their state's timeout; returns how many.
pub fn gc(pins: &PinDir, timeouts: &Timeouts) -> Result<usize, MapsError> {
    let mut ct = Conntrack::open(pins)?;
    let now = now_ns();
    let expired: Vec<Translation> = ct
        .pairs()
        .iter()
        .map(|p| decode(p, now))
        .filter(|t| Duration::from_secs_f64(t.idle_s) > t.state.timeout(timeouts))
        .collect();
    for t in &expired {
        ct.remove(&t.keys.0, &t.keys.1);
    }
    Ok(expired.len())
}

/// Removes the translations of pod address `ip` (the pod is gone or moved); returns how many.
/// Without conntrack maps (a node half down, or mid-migration) there is nothing to remove.
pub fn forget_pod(pins: &PinDir, ip: Ipv4Addr) -> Result<usize, MapsError> {
    let Ok(mut ct) = Conntrack::open(pins) else {
        return Ok(0);
    };
    Ok(ct.remove_where(|key, _| key.saddr == ip.octets(), |_, entry| entry.addr == ip.octets()))
}

/// Removes the translations that `settings` no longer allow (all of them when NAT is off, else
/// those made as another node address or on a node port outside the range) and those of pod
/// addresses `pod_exists` denies; returns how many.
pub fn forget_unlike(
    pins: &PinDir,
    settings: &NatConfig,
    pod_exists: impl Fn(Ipv4Addr) -> bool,
) -> Result<usize, MapsError> {
    let mut ct = Conntrack::open(pins)?;
    let fits = |addr: [u8; 4], port: u16, pod: [u8; 4]| {
        settings.enabled != 0
            && addr == settings.node_ip
            && (settings.port_min..=settings.port_max).contains(&u16::from_be(port))
            && pod_exists(Ipv4Addr::from(pod))
    };
    // ICMP echo identifiers are allocated from the same range as ports.
    Ok(ct.remove_where(
        |key, out| !fits(out.addr, out.port, key.saddr),
        |reply_key, entry| !fits(reply_key.daddr, reply_key.dport, entry.addr),
    ))
}

/// Removes every translation; returns how many there were.
pub fn flush(pins: &PinDir) -> Result<usize, MapsError> {
    Ok(Conntrack::open(pins)?.flush())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        tcp_syn: Duration::from_secs(60),
        tcp_established: Duration::from_secs(21600),
        tcp_closing: Duration::from_secs(10),
        udp: Duration::from_secs(30),
        icmp: Duration::from_secs(5),
    };

    #[test]
    fn tcp_state_follows_flags_in_both_directions() {
        use ct_flags::{FIN, RST, SEEN};
        assert_eq!(State::of(proto::TCP, SEEN, 0), State::SynSent);
        assert_eq!(State::of(proto::TCP, SEEN, SEEN), State::Established);
        assert_eq!(State::of(proto::TCP, SEEN | FIN, SEEN), State::Closing);
        assert_eq!(State::of(proto::TCP, SEEN, SEEN | RST), State::Closing);
        assert_eq!(State::of(proto::UDP, SEEN | FIN, 0), State::Udp);
    }

    #[test]
    fn timeouts_by_state() {
        assert_eq!(State::SynSent.timeout(&T), Duration::from_secs(60));
        assert_eq!(State::Established.timeout(&T), Duration::from_secs(21600));
        assert_eq!(State::Closing.timeout(&T), Duration::from_secs(10));
        assert_eq!(State::Icmp.timeout(&T), Duration::from_secs(5));
    }

    #[test]
    fn decode_uses_the_latest_packet_of_either_direction() {
        use podnet_common::CtEntry;
        let key = CtKey {
            saddr: [10, 1, 1, 2],
            daddr: [192, 168, 50, 100],
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            proto: proto::TCP,
            _pad: [0; 3],
        };
        let out = CtEntry {
            created_ns: 1_000_000_000,
            seen_ns: 2_000_000_000,
            addr: [192, 168, 50, 1],
            port: 61000u16.to_be(),
            flags: ct_flags::SEEN,
            _pad: 0,
        };
        let reply = CtEntry { seen_ns: 5_000_000_000, flags: ct_flags::SEEN, ..out };
        let t = decode(&(key, out, key.reply(out.addr, out.port), Some(reply)), 6_000_000_000);
        assert_eq!(
            (t.pod.as_str(), t.node.as_str(), t.remote.as_str()),
            ("10.1.1.2:40000", "192.168.50.1:61000", "192.168.50.100:80")
        );
        assert_eq!((t.state, t.age_s, t.idle_s), (State::Established, 5.0, 1.0));
    }
}

//! Masquerade state as users see it: translations decoded from the conntrack maps, their TCP
//! state and age, and expiry (`podnet nat gc`, run in a loop by `podnet agent`).

use std::{net::Ipv4Addr, time::Duration};

use podnet_common::{CtEntry, CtKey, CtState, NatConfig, ct_flags, proto};
use serde::Serialize;

use crate::{
    datapath::PinDir,
    datapath::maps::{Conntrack, CtPair, MapsError, NatPressure, TableUse},
    model::Timeouts,
};

/// One masqueraded connection.
#[derive(Debug, Clone, Serialize)]
pub struct Translation {
    pub protocol: &'static str,
    pub pod: String,
    pub node: String,
    pub remote: String,
    /// Shown by name: `syn_sent`, `established`, `time_wait`, `reset`, `udp` or `icmp`.
    #[serde(serialize_with = "state_name")]
    pub state: CtState,
    /// Seconds since the translation was made.
    pub age_s: f64,
    /// Seconds since the last packet in either direction.
    pub idle_s: f64,
    #[serde(skip)]
    keys: (CtKey, CtKey),
    /// `seen_ns` of both sides when read: a translation is removed only if they are unchanged.
    #[serde(skip)]
    seen: (u64, Option<u64>),
    #[serde(skip)]
    replied: bool,
}

impl Translation {
    /// Whether its reply side, the claim on its node port, is still its own (not gone, not taken
    /// over by another connection).
    fn holds_claim(&self) -> bool {
        self.seen.1.is_some()
    }
}

fn state_name<S: serde::Serializer>(state: &CtState, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(state.name())
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
        state: CtState::of(key.proto, out.flags, reply_flags),
        age_s: secs(out.created_ns),
        idle_s: secs(seen),
        keys: (*key, *reply_key),
        seen: (out.seen_ns, reply.map(|r| r.seen_ns)),
        replied: reply_flags & ct_flags::SEEN != 0,
    }
}

/// Live translations, oldest first.
pub fn list(pins: &PinDir) -> Result<Vec<Translation>, MapsError> {
    let now = now_ns();
    let mut all: Vec<Translation> = Conntrack::open(pins)?.pairs().iter().map(|p| decode(p, now)).collect();
    all.sort_by(|a, b| b.age_s.total_cmp(&a.age_s));
    Ok(all)
}

/// What one collection removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Collected {
    /// Translations idle past their state's timeout.
    pub expired: usize,
    /// One side without the other: reply sides left without a pod side, idle past their
    /// timeout, and pod sides without a claim (it was taken over, or lost with no other port
    /// found), idle past [`CLAIMLESS_GRACE`].
    pub orphans: usize,
    /// Under pressure: UDP and ICMP translations that never had a reply, and TCP that never
    /// got past SYN, oldest first, until the table is three quarters full.
    pub early: usize,
}

/// How long a pod side without a claim is kept: a connection still sending restores its claim
/// (or moves to another port) within a second, so one idle longer has lost its port for good.
/// Until collected it takes room in the pod-side table, which new connections need.
pub const CLAIMLESS_GRACE: Duration = Duration::from_secs(2);

/// Removes translations idle longer than their state's timeout, pod sides without a claim idle
/// past [`CLAIMLESS_GRACE`], and reply sides whose pod side is gone once idle as long as their
/// state allows. A translation the datapath used while the scan ran is kept: it is
/// removed only if both sides are as they were read. With `pressure` (a table filled up), also
/// drops, oldest first, translations that never saw an answer or are closed (TIME_WAIT, reset)
/// until each table is at most three quarters full (as Linux's conntrack early drop does).
pub fn gc(pins: &PinDir, timeouts: &Timeouts, pressure: bool) -> Result<Collected, MapsError> {
    let mut ct = Conntrack::open(pins)?;
    let now = now_ns();
    let mut done = Collected::default();
    let mut live: Vec<Translation> = Vec::new();
    for t in ct.pairs().iter().map(|p| decode(p, now)) {
        let idle = Duration::from_secs_f64(t.idle_s);
        if !t.holds_claim() && idle > timeouts.of(t.state).min(CLAIMLESS_GRACE) {
            done.orphans += usize::from(remove_if_unchanged(&mut ct, &t));
        } else if idle > timeouts.of(t.state) {
            done.expired += usize::from(remove_if_unchanged(&mut ct, &t));
        } else {
            live.push(t);
        }
    }
    ct.clear_stale_locks(STALE_LOCK_NS);
    for (reply_key, entry, pod_key) in ct.orphans() {
        // Without its pod side a TCP claim's state is half known (no FIN of the pod's side):
        // held no longer than TIME_WAIT.
        let state = CtState::of(reply_key.proto, 0, entry.flags);
        let timeout = match state {
            CtState::Udp | CtState::Icmp => timeouts.of(state),
            tcp => timeouts.of(tcp).min(timeouts.tcp_time_wait),
        };
        if Duration::from_nanos(now.saturating_sub(entry.seen_ns)) > timeout {
            // Only while it is still an orphan, and as it was read.
            let unchanged = |out: Option<CtEntry>, reply: Option<CtEntry>| {
                out.is_none() && reply.is_some_and(|r| r.seen_ns == entry.seen_ns)
            };
            done.orphans += usize::from(ct.remove_if(&pod_key, &reply_key, unchanged));
        }
    }
    if pressure {
        for table in ct.usage() {
            let target = table.capacity as usize * 3 / 4;
            let Some(excess) = table.entries.checked_sub(target).filter(|&n| n > 0) else {
                continue;
            };
            // What holds a claim without a live conversation: no answer yet, or closed.
            let mut droppable: Vec<&Translation> = live
                .iter()
                .filter(|t| (t.keys.0.proto == proto::TCP) == (table.table == "tcp"))
                .filter(|t| t.holds_claim())
                .filter(|t| !t.replied || matches!(t.state, CtState::TcpTimeWait | CtState::TcpReset))
                .collect();
            droppable.sort_by(|a, b| b.idle_s.total_cmp(&a.idle_s));
            for t in droppable.into_iter().take(excess) {
                done.early += usize::from(remove_if_unchanged(&mut ct, t));
            }
        }
    }
    Ok(done)
}

/// A lock older than this was left by a process that died holding it.
const STALE_LOCK_NS: u64 = 1_000_000_000;

/// Removes translation `t` if neither side was used since it was read.
fn remove_if_unchanged(ct: &mut Conntrack, t: &Translation) -> bool {
    ct.remove_if(&t.keys.0, &t.keys.1, |out, reply| {
        out.map(|o| o.seen_ns) == Some(t.seen.0) && reply.map(|r| r.seen_ns) == t.seen.1
    })
}

/// How full the translation tables are.
pub fn usage(pins: &PinDir) -> Result<[TableUse; 2], MapsError> {
    Ok(Conntrack::open(pins)?.usage())
}

/// When a new connection last found a translation table full (`bpf_ktime_get_ns`; 0: never).
pub fn pressure(pins: &PinDir) -> Result<u64, MapsError> {
    Ok(NatPressure::open(pins)?.latest())
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

    #[test]
    fn decode_uses_the_latest_packet_of_either_direction() {
        use podnet_common::CtEntry;
        let key = CtKey {
            saddr: [10, 1, 1, 2],
            daddr: [192, 168, 50, 100],
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            proto: proto::TCP,
            _pad: 0,
            _pad2: 0,
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
        assert_eq!((t.state.name(), t.age_s, t.idle_s), ("established", 5.0, 1.0));
    }
}

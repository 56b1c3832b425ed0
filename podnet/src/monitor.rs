//! `podnet monitor`: the datapath's events, live: every dropped packet with its reason, interface
//! or pod and addresses, and the first packet of every new NAT translation. They come from the
//! `EVENTS` ring buffer, which has one reader, so one monitor runs per node at a time. While it
//! runs it tells the programs once a second that it listens (they write no events otherwise);
//! events the kernel held back (each CPU writes at most 1000 a second) or lost (the ring was
//! full) are counted, and reported as they happen.

use std::{collections::HashMap, io::Write as _, net::Ipv4Addr, time::Duration};

use aya::maps::{Map, MapData, RingBuf};
use podnet_common::{Event, Reason, events, maps::EVENTS, proto};
use serde_json::json;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    datapath::{
        maps::{EventMaps, EventTotals, MapsError},
        nat::now_ns,
    },
    model::Config,
    node::{self, NodeError, lock::NodeLock},
};

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    Lock(#[from] crate::node::lock::LockError),
    #[error("another `podnet monitor` reads node {node:?}'s events (they have one reader): stop it first")]
    Busy { node: String },
    #[error("could not open the event ring buffer {path}")]
    Ring {
        path: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("could not watch the event ring buffer or signals")]
    Io(#[from] std::io::Error),
    #[error("no pod called {pod:?} on this node (see `podnet status`)")]
    UnknownPod { pod: String },
    #[error(
        "{count} pods are shown as {pod:?} (containers whose ids start alike): give the pod's IP instead"
    )]
    AmbiguousPod { pod: String, count: usize },
}

/// Which events to show.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only drops, no new translations.
    pub drops_only: bool,
    /// Only events of this pod (its veth, or its address as source or destination).
    pub pod: Option<String>,
}

/// How often the monitor says it listens, refreshes pod names and reports lost events.
const TICK: Duration = Duration::from_secs(1);

/// Prints the node's events until SIGINT or SIGTERM (or until stdout is closed).
pub async fn run(config: &Config, filter: &Filter, json: bool) -> Result<(), MonitorError> {
    let node = &config.node.name;
    let pins = node::pins_of_running_node(node)?;
    let _reader = NodeLock::monitor(node)?.ok_or_else(|| MonitorError::Busy { node: node.clone() })?;
    let path = pins.map(EVENTS);
    let ring = MapData::from_pin(&path)
        .and_then(|data| RingBuf::try_from(Map::RingBuf(data)))
        .map_err(|source| MonitorError::Ring { path: path.display().to_string(), source })?;
    // SAFETY: the ring buffer owns its map's file descriptor, which stays open and the same for
    // as long as the `AsyncFd` owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(std::io::Error::from)?;
    // What an earlier monitor left unread (one killed, say) is old news: not shown.
    while ring.get_mut().next().is_some() {}
    let mut maps = EventMaps::open(&pins)?;
    let mut names = Names::of(config)?;
    let wanted = filter.pod.as_ref().map(|pod| names.pod(pod)).transpose()?;
    let mut reported = maps.totals()?;
    let result =
        follow(config, filter, json, &mut ring, &mut maps, &mut names, wanted.as_ref(), &mut reported).await;
    // Nobody listens any more (also after an error): the programs stop writing at once, not in
    // three seconds.
    maps.set_listening(0)?;
    result
}

/// Prints events until a signal, a closed stdout or an error.
#[expect(clippy::too_many_arguments, reason = "the monitor's state, passed once")]
async fn follow(
    config: &Config,
    filter: &Filter,
    json: bool,
    ring: &mut AsyncFd<RingBuf<MapData>>,
    maps: &mut EventMaps,
    names: &mut Names,
    wanted: Option<&PodId>,
    reported: &mut EventTotals,
) -> Result<(), MonitorError> {
    let (mut term, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
    let mut tick = tokio::time::interval(TICK);
    let mut out = std::io::stdout().lock();
    // Said once the programs know (stderr: with --json, stdout holds only events).
    maps.set_listening(now_ns())?;
    eprintln!("listening for events on node {} (Ctrl-C to stop)", config.node.name);
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = tick.tick() => {
                maps.set_listening(now_ns())?;
                // Pods come and go; a moment when the node's state cannot be read keeps the old names.
                if let Ok(fresh) = Names::of(config) {
                    *names = fresh;
                }
                let now = maps.totals()?;
                let lost = EventTotals {
                    sent: 0,
                    rate_limited: now.rate_limited - reported.rate_limited,
                    ring_full: now.ring_full - reported.ring_full,
                };
                *reported = now;
                if lost.rate_limited + lost.ring_full > 0 && write_lost(&mut out, &lost, json).is_err() {
                    return Ok(());
                }
            }
            ready = ring.readable_mut() => {
                let mut ready = ready?;
                let mut written = Ok(());
                while let Some(item) = ready.get_inner_mut().next() {
                    if item.len() < size_of::<Event>() {
                        continue;
                    }
                    // SAFETY: the item holds at least one `Event` (checked above), a plain-data type
                    // every bit pattern of which is valid; read unaligned, as the ring gives bytes.
                    let event = unsafe { item.as_ptr().cast::<Event>().read_unaligned() };
                    if shown(&event, filter, wanted) {
                        written = written.and_then(|()| write_event(&mut out, &event, names, json));
                    }
                }
                ready.clear_ready();
                if written.and_then(|()| out.flush()).is_err() {
                    return Ok(()); // the reader went away (`| head`)
                }
            }
        }
    }
}

/// A pod the filter names: its address and host veth.
#[derive(Debug, Clone, Copy)]
struct PodId {
    ip: [u8; 4],
    ifindex: u32,
}

fn shown(event: &Event, filter: &Filter, pod: Option<&PodId>) -> bool {
    if filter.drops_only && event.kind != events::DROP {
        return false;
    }
    pod.is_none_or(|p| event.ifindex == p.ifindex || event.saddr == p.ip || event.daddr == p.ip)
}

/// Names of the node's pods and interfaces, for events that carry addresses and ifindexes.
struct Names {
    pods_by_ifindex: HashMap<u32, String>,
    pods_by_ip: HashMap<Ipv4Addr, (String, u32)>,
}

impl Names {
    fn of(config: &Config) -> Result<Self, NodeError> {
        let status = node::status(config)?;
        Ok(Self {
            pods_by_ifindex: status.endpoints.iter().map(|e| (e.host_ifindex, e.pod.clone())).collect(),
            pods_by_ip: status.endpoints.iter().map(|e| (e.ip, (e.pod.clone(), e.host_ifindex))).collect(),
        })
    }

    /// The pod called `name` as `status` shows it, or with address `name`.
    fn pod(&self, name: &str) -> Result<PodId, MonitorError> {
        let by_ip = name.parse::<Ipv4Addr>().ok();
        let found: Vec<PodId> = self
            .pods_by_ip
            .iter()
            .filter(|(ip, (pod, _))| pod == name || Some(**ip) == by_ip)
            .map(|(ip, (_, ifindex))| PodId { ip: ip.octets(), ifindex: *ifindex })
            .collect();
        match found.len() {
            0 => Err(MonitorError::UnknownPod { pod: name.to_owned() }),
            1 => Ok(found[0]),
            n => Err(MonitorError::AmbiguousPod { pod: name.to_owned(), count: n }),
        }
    }

    /// The pod an event is about: the one whose veth it came in on, else the one it came from or
    /// went to.
    fn pod_of(&self, event: &Event) -> Option<&str> {
        let by_ip = |a: [u8; 4]| self.pods_by_ip.get(&Ipv4Addr::from(a)).map(|(pod, _)| pod.as_str());
        self.pods_by_ifindex
            .get(&event.ifindex)
            .map(String::as_str)
            .or_else(|| by_ip(event.saddr))
            .or_else(|| by_ip(event.daddr))
    }
}

fn protocol_name(protocol: u8) -> String {
    match protocol {
        proto::TCP => "tcp".to_owned(),
        proto::UDP => "udp".to_owned(),
        proto::ICMP => "icmp".to_owned(),
        other => format!("proto-{other}"),
    }
}

/// What an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventKind {
    Drop,
    NatNew,
    /// One a newer podnet's programs write: shown by number.
    Unknown(u8),
}

impl EventKind {
    fn of(kind: u8) -> Self {
        match kind {
            events::DROP => Self::Drop,
            events::NAT_NEW => Self::NatNew,
            other => Self::Unknown(other),
        }
    }

    fn name(self) -> String {
        match self {
            Self::Drop => "drop".to_owned(),
            Self::NatNew => "nat_new".to_owned(),
            Self::Unknown(k) => format!("kind_{k}"),
        }
    }
}

fn reason_name(reason: u8) -> &'static str {
    Reason::ALL.iter().find(|r| **r as u8 == reason).map_or("unknown", |r| r.name())
}

/// The name of interface `ifindex` in this namespace (its number when it has none any more).
fn ifname(ifindex: u32) -> String {
    nix::net::if_::if_indextoname(ifindex)
        .map_or_else(|_| format!("if{ifindex}"), |n| n.to_string_lossy().into_owned())
}

fn write_event(out: &mut impl std::io::Write, e: &Event, names: &Names, json: bool) -> std::io::Result<()> {
    let (src, dst) = (Ipv4Addr::from(e.saddr), Ipv4Addr::from(e.daddr));
    let pod = names.pod_of(e);
    let kind = EventKind::of(e.kind);
    if json {
        let mut line = json!({
            "time_ns": e.time_ns,
            "kind": kind.name(),
            "reason": reason_name(e.reason),
            "ifindex": e.ifindex,
            "interface": ifname(e.ifindex),
            "pod": pod,
            "protocol": protocol_name(e.protocol),
            "src": src, "sport": e.sport,
            "dst": dst, "dport": e.dport,
        });
        if kind == EventKind::NatNew {
            line["nat_src"] = json!(Ipv4Addr::from(e.nat_addr));
            line["nat_sport"] = json!(e.nat_port);
        }
        return writeln!(out, "{line}");
    }
    let seconds = e.time_ns as f64 / 1e9;
    let on = match pod {
        Some(pod) => format!("{} (pod {pod})", ifname(e.ifindex)),
        None => ifname(e.ifindex),
    };
    let protocol = protocol_name(e.protocol);
    match kind {
        EventKind::NatNew => writeln!(
            out,
            "{seconds:.6} nat new  {protocol} {src}:{} -> {dst}:{} as {}:{} from {on}",
            e.sport,
            e.dport,
            Ipv4Addr::from(e.nat_addr),
            e.nat_port
        ),
        EventKind::Drop => writeln!(
            out,
            "{seconds:.6} drop {} on {on}: {protocol} {src}:{} -> {dst}:{}",
            reason_name(e.reason),
            e.sport,
            e.dport
        ),
        EventKind::Unknown(_) => writeln!(
            out,
            "{seconds:.6} {} ({}) on {on}: {protocol} {src}:{} -> {dst}:{}",
            kind.name(),
            reason_name(e.reason),
            e.sport,
            e.dport
        ),
    }
}

fn write_lost(out: &mut impl std::io::Write, lost: &EventTotals, json: bool) -> std::io::Result<()> {
    if json {
        writeln!(
            out,
            "{}",
            json!({"kind": "lost", "rate_limited": lost.rate_limited, "ring_full": lost.ring_full})
        )?;
    } else {
        writeln!(
            out,
            "lost {} event(s): {} over the per-CPU budget (1000/s), {} to a full ring",
            lost.rate_limited + lost.ring_full,
            lost.rate_limited,
            lost.ring_full
        )?;
    }
    out.flush()
}

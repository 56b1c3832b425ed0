//! Per-packet cost of podnet's programs through `BPF_PROG_TEST_RUN`: the kernel runs the program
//! in batches on one synthetic packet and reports the mean time per run. It runs on a thread
//! inside a [`Lab::fib_fixture`] namespace, so routed packets get a real FIB lookup.

use std::net::Ipv4Addr;

use aya::programs::{TestRun as _, TestRunOptions};
use bytes::BytesMut;
use podnet::{
    config::PeerNode,
    config::Timeouts,
    datapath::maps::{Deny, Endpoints, NatSettings, Peers},
    datapath::{Datapath, EbpfLog, PinDir, TableSizes},
    host::netns,
};
use podnet_common::{
    Endpoint, NatConfig,
    programs::{FROM_POD, FROM_UPLINK, UPLINK_DELIVER, UPLINK_FILTER},
};
use serde::Serialize;

use crate::{
    Lab,
    packets::{ETH_LEN, TCP_ACK, TCP_SYN, ipv4, tcp4, udp4, with_ttl},
};

/// Runs per `BPF_PROG_TEST_RUN` call: the TTL (255) must stay above 1 through a whole batch.
const BATCH: u32 = 200;

/// One program on one kind of packet.
#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    pub program: &'static str,
    pub packet: &'static str,
    pub ns_per_packet: f64,
}

/// Loads the programs into a private pin directory and namespace, measures, removes both.
pub fn measure(repeat: u32, only: Option<&str>) -> anyhow::Result<Vec<Cost>> {
    let mut lab = Lab::new("cost")?;
    let fixture = lab.fib_fixture()?;
    let pins = PinDir::for_node(&format!("bench-cost{}", std::process::id()));
    // A scoped thread enters the namespace, so this process's own threads stay where they are.
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            netns::enter(&fixture.ns)?;
            measure_in(&pins, (fixture.eth0, fixture.eth0_mac), repeat, only)
        })
        .join()
        .expect("cost thread does not panic")
    });
    pins.remove()?;
    result
}

/// One timed case: `frames` are run in turn, each `batch` runs per call, until `repeat` runs
/// (or each frame once, for the new-flow case). NAT cases run once per call: the kernel keeps a
/// run's edits for the next run of a batch, and a translated packet is a different packet.
struct Case {
    program: &'static str,
    packet: &'static str,
    frames: Vec<BytesMut>,
    batch: u32,
    /// tc action every call must end with (TC_ACT_UNSPEC, TC_ACT_SHOT, 7 for TC_ACT_REDIRECT),
    /// so a figure never times a different path than its label says.
    expected: u32,
}

/// tc's "next program" (-1), what podnet returns for what it leaves to the stack.
const TC_ACT_UNSPEC: u32 = -1i32 as u32;
const TC_ACT_SHOT: u32 = 2;

fn measure_in(
    pins: &PinDir,
    (ifindex, mac): (u32, [u8; 6]),
    repeat: u32,
    only: Option<&str>,
) -> anyhow::Result<Vec<Cost>> {
    let mut datapath = Datapath::load(pins, TableSizes::default(), EbpfLog::Off)?;
    let local = Ipv4Addr::new(10, 1, 1, 3);
    // Runs of a batch see the frame as the previous run left it: delivery writes `host_mac` and
    // routing the uplink's MAC as the source, so both are the sender's MAC (`mac`), which keeps
    // every run past the source check.
    let endpoint = Endpoint::new(1, [2, 0, 0, 0, 0, 3], mac);
    let mut endpoints = Endpoints::open(pins)?;
    endpoints.insert(local, &endpoint)?;
    // The sending pod: its frames come from `mac` on the fixture's uplink (the input device the
    // FIB needs), so they pass the source check.
    let pod1 = Ipv4Addr::new(10, 1, 1, 2);
    let sender = Endpoint::new(ifindex, mac, [2, 0, 0, 0, 0, 0xb2]);
    endpoints.insert(pod1, &sender)?;
    // node2 at .3; .2 plays an external host (both neighbours are known in the fixture).
    let peer = PeerNode {
        name: "node2".into(),
        ip: Ipv4Addr::new(192, 168, 50, 3),
        pod_cidr: "10.1.2.0/24".parse()?,
    };
    Peers::open(pins)?.insert(&peer)?;
    let node = Ipv4Addr::new(192, 168, 50, 1);
    let nat = NatConfig {
        node_ip: node.octets(),
        enabled: 1,
        uplink_ifindex: ifindex,
        port_min: 1024,
        port_max: 65535,
        timeouts_s: Timeouts::default().seconds(),
        // The node's pods, as `up` writes it: 10.1.1.2 and 10.1.1.3 are local.
        pod_net: [10, 1, 1, 0],
        pod_mask: [255, 255, 255, 0],
    };
    NatSettings::open(pins)?.set(&nat)?;
    let denied = Ipv4Addr::new(203, 0, 113, 7);
    Deny::open(pins)?.insert("203.0.113.0/24".parse()?)?;
    // The kernel reruns the program on the same packet, keeping its edits: routed cases lower
    // the TTL each run. Start at 255 and run batches of BATCH so that every run is routed. Every
    // frame comes from the sender's MAC.
    let ttl255 = |f: BytesMut| {
        let mut f = with_ttl(&f, 255);
        f[6..12].copy_from_slice(&mac);
        f
    };
    let udp = |src, dst| ttl255(udp4([0xaa; 6], [0xbb; 6], src, dst, &[0; 18]));
    let frame = |dst| udp(pod1, dst);
    // Another pod's address from pod1's veth and MAC.
    let frame_from_spoofer = |dst| udp(Ipv4Addr::new(10, 1, 1, 9), dst);
    // From the uplink: a pod on node2 (a peer, admitted to pods).
    let from_peer = |dst| udp(Ipv4Addr::new(10, 1, 2, 2), dst);
    let external = Ipv4Addr::new(192, 168, 50, 2);
    let outbound = ttl255(tcp4((pod1, 40000), (external, 80), TCP_ACK));
    // struct __sk_buff is 192 bytes; `ifindex` (the input device for the FIB) sits at offset 40.
    let mut skb = [0u8; 192];
    skb[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    // Create the translation the established cases use, and learn its node port.
    let mut out = vec![0u8; outbound.len() + 64];
    datapath.program(FROM_POD)?.test_run(TestRunOptions {
        data_in: Some(&outbound),
        data_out: Some(&mut out),
        ctx_in: Some(&skb),
        ..Default::default()
    })?;
    let node_port = u16::from_be_bytes([out[ETH_LEN + 20], out[ETH_LEN + 21]]);
    let case = |batch: u32| {
        move |program, packet, frame, expected| Case { program, packet, frames: vec![frame], batch, expected }
    };
    let (one, single) = (case(BATCH), case(1));
    let cases = [
        one(FROM_POD, "local hit (redirect_peer)", frame(local), 7),
        one(FROM_POD, "remote hit (FIB + redirect)", frame(Ipv4Addr::new(10, 1, 2, 2)), 7),
        single(FROM_POD, "local hit, 1 run per call", frame(local), 7),
        single(FROM_POD, "NAT established, 1 run per call", outbound, 7),
        Case {
            program: FROM_POD,
            packet: "NAT new flow, 1 run per call",
            frames: (0..repeat.min(10_000))
                .map(|i| ttl255(tcp4((pod1, 1024 + i as u16), (external, 443), TCP_SYN)))
                .collect(),
            batch: 1,
            expected: 7,
        },
        one(
            FROM_POD,
            "drop (GRE, not NATable)",
            ttl255(ipv4([0xaa; 6], [0xbb; 6], pod1, external, 47, &[0; 24])),
            TC_ACT_SHOT,
        ),
        one(FROM_POD, "spoofed source (drop)", frame_from_spoofer(local), TC_ACT_SHOT),
        one(FROM_UPLINK, "to local pod (redirect_peer)", from_peer(local), 7),
        single(
            FROM_UPLINK,
            "NAT reply, 1 run per call",
            ttl255(tcp4((external, 80), (node, node_port), TCP_ACK)),
            7,
        ),
        one(FROM_UPLINK, "pass-through (for the node)", from_peer(node), TC_ACT_UNSPEC),
        // XDP actions: XDP_DROP 1, XDP_PASS 2, XDP_REDIRECT 4.
        one(UPLINK_FILTER, "deny-listed source (drop)", udp(denied, local), 1),
        one(UPLINK_FILTER, "allowed source (pass)", from_peer(local), 2),
        one(UPLINK_DELIVER, "to local pod (devmap redirect)", from_peer(local), 4),
    ];
    cases
        .into_iter()
        .filter(|c| only.is_none_or(|o| c.packet.contains(o)))
        .map(|case| {
            let calls =
                if case.frames.len() > 1 { case.frames.len() as u32 } else { (repeat / case.batch).max(1) };
            let mut total_ns = 0.0;
            for call in 0..calls {
                let frame = &case.frames[call as usize % case.frames.len()];
                let result = if [UPLINK_FILTER, UPLINK_DELIVER].contains(&case.program) {
                    // XDP takes no skb context.
                    let opts =
                        TestRunOptions { data_in: Some(frame), repeat: case.batch, ..Default::default() };
                    datapath.xdp_program(case.program)?.test_run(opts)?
                } else {
                    datapath.program(case.program)?.test_run(TestRunOptions {
                        data_in: Some(frame),
                        ctx_in: Some(&skb),
                        repeat: case.batch,
                        ..Default::default()
                    })?
                };
                anyhow::ensure!(
                    result.return_value == case.expected,
                    "{} on {}: returned {}, expected {}",
                    case.program,
                    case.packet,
                    result.return_value,
                    case.expected
                );
                total_ns += result.duration.as_nanos() as f64;
            }
            Ok(Cost {
                program: case.program,
                packet: case.packet,
                ns_per_packet: total_ns / f64::from(calls),
            })
        })
        .collect()
}

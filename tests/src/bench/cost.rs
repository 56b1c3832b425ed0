//! Per-packet cost of podnet's programs through `BPF_PROG_TEST_RUN`: the kernel runs the program
//! in batches on one synthetic packet and reports the mean time per run. It runs on a thread
//! inside a [`Lab::fib_fixture`] namespace, so routed packets get a real FIB lookup.

use std::net::Ipv4Addr;

use bytes::BytesMut;
use podnet::{
    datapath::TableSizes,
    datapath::maps::{Deny, Peers},
    host::netns,
    model::PeerNode,
};
use podnet_common::programs::{FROM_POD, FROM_UPLINK, UPLINK_DELIVER, UPLINK_FILTER};
use serde::Serialize;

use crate::{
    Lab,
    packets::{ETH_LEN, TCP_ACK, TCP_SYN, ipv4, tcp4, udp4, with_ttl},
    test_run::{
        Loaded, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, XDP_DROP, XDP_PASS, XDP_REDIRECT, nat_config,
    },
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
    // A scoped thread enters the namespace, so this process's own threads stay where they are.
    std::thread::scope(|s| {
        s.spawn(|| {
            netns::enter(&fixture.ns)?;
            let mut loaded = Loaded::new("bench-cost", TableSizes::default())?;
            measure_in(&mut loaded, (fixture.eth0, fixture.eth0_mac), repeat, only)
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the cost thread panicked")))
    })
}

/// One timed case: `frames` are run in turn, each `batch` runs per call, until `repeat` runs
/// (or each frame once, for the new-flow case). NAT cases run once per call: the kernel keeps a
/// run's edits for the next run of a batch, and a translated packet is a different packet.
struct Case {
    program: &'static str,
    packet: &'static str,
    frames: Vec<BytesMut>,
    batch: u32,
    /// Action every call must end with (TC_ACT_UNSPEC, TC_ACT_SHOT, TC_ACT_REDIRECT, XDP_*),
    /// so a figure never times a different path than its label says.
    expected: u32,
}

fn measure_in(
    loaded: &mut Loaded,
    (ifindex, mac): (u32, [u8; 6]),
    repeat: u32,
    only: Option<&str>,
) -> anyhow::Result<Vec<Cost>> {
    let local = Ipv4Addr::new(10, 1, 1, 3);
    // Runs of a batch see the frame as the previous run left it: delivery writes `host_mac` and
    // routing the uplink's MAC as the source, so both are the sender's MAC (`mac`), which keeps
    // every run past the source check.
    loaded.add_endpoint(local, 1, [2, 0, 0, 0, 0, 3], mac);
    // The sending pod: its frames come from `mac` on the fixture's uplink (the input device the
    // FIB needs), so they pass the source check.
    let pod1 = Ipv4Addr::new(10, 1, 1, 2);
    loaded.add_endpoint(pod1, ifindex, mac, [2, 0, 0, 0, 0, 0xb2]);
    // node2 at .3; .2 plays an external host (both neighbours are known in the fixture).
    let peer = PeerNode {
        name: "node2".into(),
        ip: Ipv4Addr::new(192, 168, 50, 3),
        pod_cidr: "10.1.2.0/24".parse()?,
    };
    Peers::open(&loaded.pins)?.insert(&peer)?;
    let node = Ipv4Addr::new(192, 168, 50, 1);
    // The node's pods, as `up` writes it: 10.1.1.2 and 10.1.1.3 are local.
    loaded.set_nat(&nat_config(node, ifindex, 1024, 65535));
    let denied = Ipv4Addr::new(203, 0, 113, 7);
    Deny::open(&loaded.pins)?.insert("203.0.113.0/24".parse()?)?;
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
    // Create the translation the established cases use, and learn its node port.
    let out = loaded.run_tc(FROM_POD, &outbound, Some(ifindex), 1)?.frame;
    let node_port = u16::from_be_bytes([out[ETH_LEN + 20], out[ETH_LEN + 21]]);
    let case = |batch: u32| {
        move |program, packet, frame, expected| Case { program, packet, frames: vec![frame], batch, expected }
    };
    let (one, single) = (case(BATCH), case(1));
    let cases = [
        one(FROM_POD, "local hit (redirect_peer)", frame(local), TC_ACT_REDIRECT),
        one(FROM_POD, "remote hit (FIB + redirect)", frame(Ipv4Addr::new(10, 1, 2, 2)), TC_ACT_REDIRECT),
        single(FROM_POD, "local hit, 1 run per call", frame(local), TC_ACT_REDIRECT),
        single(FROM_POD, "NAT established, 1 run per call", outbound, TC_ACT_REDIRECT),
        Case {
            program: FROM_POD,
            packet: "NAT new flow, 1 run per call",
            frames: (0..repeat.min(10_000))
                .map(|i| ttl255(tcp4((pod1, 1024 + i as u16), (external, 443), TCP_SYN)))
                .collect(),
            batch: 1,
            expected: TC_ACT_REDIRECT,
        },
        one(
            FROM_POD,
            "drop (GRE, not NATable)",
            ttl255(ipv4([0xaa; 6], [0xbb; 6], pod1, external, 47, &[0; 24])),
            TC_ACT_SHOT,
        ),
        one(FROM_POD, "spoofed source (drop)", frame_from_spoofer(local), TC_ACT_SHOT),
        one(FROM_UPLINK, "to local pod (redirect_peer)", from_peer(local), TC_ACT_REDIRECT),
        single(
            FROM_UPLINK,
            "NAT reply, 1 run per call",
            ttl255(tcp4((external, 80), (node, node_port), TCP_ACK)),
            TC_ACT_REDIRECT,
        ),
        one(FROM_UPLINK, "pass-through (for the node)", from_peer(node), TC_ACT_UNSPEC),
        one(UPLINK_FILTER, "deny-listed source (drop)", udp(denied, local), XDP_DROP),
        one(UPLINK_FILTER, "allowed source (pass)", from_peer(local), XDP_PASS),
        one(UPLINK_DELIVER, "to local pod (devmap redirect)", from_peer(local), XDP_REDIRECT),
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
                    loaded.run_xdp(case.program, frame, case.batch)?
                } else {
                    loaded.run_tc(case.program, frame, Some(ifindex), case.batch)?
                };
                anyhow::ensure!(
                    result.action == case.expected,
                    "{} on {}: returned {}, expected {}",
                    case.program,
                    case.packet,
                    result.action,
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

//! Per-packet cost of podnet's programs through `BPF_PROG_TEST_RUN`: the kernel runs the program
//! in batches on one synthetic packet and reports the mean time per run. It runs on a thread
//! inside a [`Lab::fib_fixture`] namespace, so routed packets get a real FIB lookup.

use std::net::Ipv4Addr;

use aya::programs::{TestRun as _, TestRunOptions};
use podnet::{
    datapath::{Datapath, PinDir},
    maps::{Endpoints, PeerEntry, Peers},
    netlink::netns,
};
use podnet_common::{
    Endpoint,
    programs::{FROM_POD, FROM_UPLINK},
};
use serde::Serialize;

use crate::{Lab, packets::udp4};

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
pub fn measure(repeat: u32) -> anyhow::Result<Vec<Cost>> {
    let mut lab = Lab::new("cost")?;
    let fixture = lab.fib_fixture()?;
    let pins = PinDir::for_node(&format!("bench-cost{}", std::process::id()));
    // A scoped thread enters the namespace, so this process's own threads stay where they are.
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            netns::enter(&fixture.ns)?;
            measure_in(&pins, fixture.eth0, repeat)
        })
        .join()
        .expect("cost thread does not panic")
    });
    pins.remove()?;
    result
}

fn measure_in(pins: &PinDir, ifindex: u32, repeat: u32) -> anyhow::Result<Vec<Cost>> {
    let mut datapath = Datapath::load(pins)?;
    let local = Ipv4Addr::new(10, 1, 1, 3);
    let endpoint =
        Endpoint { host_ifindex: 1, flags: 0, pod_mac: [2, 0, 0, 0, 0, 3], host_mac: [2, 0, 0, 0, 0, 0xb3] };
    Endpoints::open(pins)?.insert(local, &endpoint)?;
    let peer = PeerEntry {
        name: "node2".into(),
        ip: Ipv4Addr::new(192, 168, 50, 2),
        pod_cidr: "10.1.2.0/24".parse()?,
    };
    Peers::open(pins)?.insert(&peer)?;
    let pod1 = Ipv4Addr::new(10, 1, 1, 2);
    // The kernel reruns the program on the same packet, keeping its edits: routed cases lower
    // the TTL each run. Start at 255 and run batches of BATCH so that every run is routed.
    let frame = |dst| {
        let mut f = udp4([0xaa; 6], [0xbb; 6], pod1, dst, &[0; 18]);
        f[crate::packets::ETH_LEN + 8] = 255;
        f
    };
    // tc actions: TC_ACT_OK 0, TC_ACT_REDIRECT 7. A case that does not end as expected is an
    // error, so a figure never times a different path than its label says.
    let cases = [
        (FROM_POD, "local hit (redirect_peer)", frame(local), 7),
        (FROM_POD, "remote hit (FIB + redirect)", frame(Ipv4Addr::new(10, 1, 2, 2)), 7),
        (FROM_POD, "pass-through (not cluster)", frame(Ipv4Addr::new(192, 0, 2, 1)), 0),
        (FROM_UPLINK, "to local pod (redirect_peer)", frame(local), 7),
        (FROM_UPLINK, "pass-through (for the node)", frame(Ipv4Addr::new(192, 168, 50, 1)), 0),
    ];
    // struct __sk_buff is 192 bytes; `ifindex` (the input device for the FIB) sits at offset 40.
    let mut skb = [0u8; 192];
    skb[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    cases
        .into_iter()
        .map(|(program, packet, frame, expected)| {
            let batches = (repeat / BATCH).max(1);
            let mut total_ns = 0.0;
            for _ in 0..batches {
                let result = datapath.program(program)?.test_run(TestRunOptions {
                    data_in: Some(&frame),
                    ctx_in: Some(&skb),
                    repeat: BATCH,
                    ..Default::default()
                })?;
                anyhow::ensure!(
                    result.return_value == expected,
                    "{program} on {packet}: returned {}, expected {expected}",
                    result.return_value
                );
                total_ns += result.duration.as_nanos() as f64;
            }
            Ok(Cost { program, packet, ns_per_packet: total_ns / f64::from(batches) })
        })
        .collect()
}

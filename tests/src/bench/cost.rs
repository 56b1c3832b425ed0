//! Per-packet cost of podnet's programs through `BPF_PROG_TEST_RUN`: the kernel runs the program
//! `repeat` times on one synthetic packet and reports the mean time per run.

use std::net::Ipv4Addr;

use aya::programs::{TestRun as _, TestRunOptions};
use podnet::{
    datapath::{Datapath, PinDir},
    maps::Endpoints,
};
use podnet_common::Endpoint;
use serde::Serialize;

use crate::packets::udp4;

/// One program on one kind of packet.
#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    pub program: &'static str,
    pub packet: &'static str,
    pub ns_per_packet: f64,
}

/// Loads the programs into a private pin directory, measures, and removes it again.
pub fn measure(repeat: u32) -> anyhow::Result<Vec<Cost>> {
    let pins = PinDir::for_node(&format!("bench-cost{}", std::process::id()));
    let result = measure_in(&pins, repeat);
    pins.remove()?;
    result
}

fn measure_in(pins: &PinDir, repeat: u32) -> anyhow::Result<Vec<Cost>> {
    let mut datapath = Datapath::load(pins)?;
    let local = Ipv4Addr::new(10, 1, 1, 3);
    let endpoint =
        Endpoint { host_ifindex: 1, flags: 0, pod_mac: [2, 0, 0, 0, 0, 3], host_mac: [2, 0, 0, 0, 0, 0xb3] };
    Endpoints::open(pins)?.insert(local, &endpoint)?;
    let pod1 = Ipv4Addr::new(10, 1, 1, 2);
    let cases = [
        ("local hit (redirect_peer)", udp4([0xaa; 6], [0xbb; 6], pod1, local, &[0; 18])),
        ("pass-through (not local)", udp4([0xaa; 6], [0xbb; 6], pod1, Ipv4Addr::new(192, 0, 2, 1), &[0; 18])),
    ];
    let prog = datapath.program(podnet_common::programs::FROM_POD)?;
    cases
        .into_iter()
        .map(|(packet, frame)| {
            let result =
                prog.test_run(TestRunOptions { data_in: Some(&frame), repeat, ..Default::default() })?;
            Ok(Cost {
                program: podnet_common::programs::FROM_POD,
                packet,
                ns_per_packet: result.duration.as_nanos() as f64,
            })
        })
        .collect()
}

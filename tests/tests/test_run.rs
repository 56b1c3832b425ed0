//! The forwarding program on synthetic packets through `BPF_PROG_TEST_RUN`: what it returns,
//! what it writes, and which counter it moves. Needs root and BPF; loads into a private pin dir.

use std::net::Ipv4Addr;

use aya::programs::{TestRun as _, TestRunOptions};
use podnet::{
    datapath::{Datapath, PinDir},
    maps::{Counters, Endpoints},
};
use podnet_common::{Endpoint, Reason};
use podnet_tests::packets::{ETH_LEN, ETHERTYPE_ARP, ETHERTYPE_IPV6, ethernet, udp4};

/// tc actions as the kernel numbers them (include/uapi/linux/pkt_cls.h).
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb3];
const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 3);

/// A datapath loaded into its own pin directory, removed again on drop.
struct Loaded {
    datapath: Datapath,
    pins: PinDir,
}

impl Loaded {
    fn new() -> Self {
        let pins = PinDir::for_node(&format!("testrun{}", std::process::id()));
        let datapath = Datapath::load(&pins).expect("load the embedded eBPF object");
        let mut endpoints = Endpoints::open(&pins).unwrap();
        let endpoint = Endpoint {
            host_ifindex: 42,
            flags: 0,
            pod_mac: POD_MAC,
            host_mac: HOST_MAC,
        };
        endpoints.insert(LOCAL, &endpoint).unwrap();
        Self { datapath, pins }
    }

    /// Runs `from_pod` once on `frame`; returns the action and the frame as the program left it.
    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 256];
        let prog = self.datapath.from_pod().unwrap();
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn counters(&self) -> Vec<u64> {
        Counters::open(&self.pins)
            .unwrap()
            .totals()
            .unwrap()
            .into_iter()
            .map(|(_, n)| n)
            .collect()
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = self.pins.remove();
    }
}

fn counted(before: &[u64], after: &[u64], reason: Reason) {
    let moved: Vec<usize> = (0..Reason::COUNT).filter(|&i| after[i] != before[i]).collect();
    assert_eq!(
        moved,
        [reason as usize],
        "exactly {} must move: {before:?} -> {after:?}",
        reason.name()
    );
    assert_eq!(after[reason as usize] - before[reason as usize], 1);
}

/// All cases share one load: the pin directory is per process.
#[test]
fn from_pod_decisions() {
    let mut dp = Loaded::new();
    let pod1 = Ipv4Addr::new(10, 1, 1, 2);

    // Local destination: redirected, Ethernet rewritten for the pod, IP packet untouched.
    let frame = udp4([0xaa; 6], [0xbb; 6], pod1, LOCAL, b"hello");
    let before = dp.counters();
    let (action, out) = dp.run(&frame);
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(out[0..6], POD_MAC, "destination MAC is the pod's");
    assert_eq!(out[6..12], HOST_MAC, "source MAC is the host veth's");
    assert_eq!(
        out[12..],
        frame[12..],
        "nothing past the MACs changes (same L2 segment, TTL kept)"
    );
    counted(&before, &dp.counters(), Reason::RedirectLocal);

    // Unknown destination (another node, the outside): to the stack, unchanged.
    let frame = udp4([0xaa; 6], [0xbb; 6], pod1, Ipv4Addr::new(192, 0, 2, 1), b"x");
    let before = dp.counters();
    assert_eq!(dp.run(&frame), (TC_ACT_OK, frame.to_vec()));
    counted(&before, &dp.counters(), Reason::PassNotLocal);

    // Not IPv4: ARP and IPv6 go to the stack.
    for ether_type in [ETHERTYPE_ARP, ETHERTYPE_IPV6] {
        let mut frame = ethernet([0xff; 6], [0xbb; 6], ether_type);
        frame.extend_from_slice(&[0u8; 46]);
        let before = dp.counters();
        assert_eq!(dp.run(&frame), (TC_ACT_OK, frame.to_vec()));
        counted(&before, &dp.counters(), Reason::PassNotIpv4);
    }

    // Malformed IPv4 headers, even to a local pod, are dropped and never forwarded: IHL below 5
    // (a 16-byte header cannot exist) and a version that is not 4 under the IPv4 ethertype.
    // (Frames shorter than their L3 header cannot be fed in: BPF_PROG_TEST_RUN itself rejects
    // them with EINVAL on this kernel, so truncation is only checked by the verifier-enforced
    // bounds in `packet::ptr_at`.)
    for version_ihl in [0x44, 0x65] {
        let mut frame = udp4([0xaa; 6], [0xbb; 6], pod1, LOCAL, b"x");
        frame[ETH_LEN] = version_ihl;
        let before = dp.counters();
        assert_eq!(dp.run(&frame).0, TC_ACT_SHOT, "version/IHL {version_ihl:#x}");
        counted(&before, &dp.counters(), Reason::DropMalformed);
    }
}

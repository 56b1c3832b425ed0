//! Running podnet's programs on synthetic packets through `BPF_PROG_TEST_RUN`: the one fixture
//! the `test_run` tests and the benchmark's per-packet costs share. A [`Loaded`] datapath lives
//! in a pin directory of its own, removed when it is dropped.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::Context as _;
use aya::programs::{TestRun as _, TestRunOptions};
use podnet::{
    datapath::{
        Datapath, EbpfLog, PinDir, TableSizes,
        maps::{Counters, Endpoints, NatSettings},
    },
    model::Timeouts,
};
use podnet_common::{Endpoint, NatConfig, programs::FROM_POD};

/// tc actions as the kernel numbers them (include/uapi/linux/pkt_cls.h); TC_ACT_UNSPEC (-1) is
/// tcx's "next program", what podnet returns for what it leaves to others.
pub const TC_ACT_UNSPEC: u32 = -1i32 as u32;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
/// XDP actions (include/uapi/linux/bpf.h).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;

/// One program run: what it returned, the frame it left, and the kernel's mean time per run.
#[derive(Debug, Clone)]
pub struct Run {
    pub action: u32,
    pub frame: Vec<u8>,
    pub duration: Duration,
}

/// The programs loaded (and their maps pinned) in a pin directory of their own.
pub struct Loaded {
    pub datapath: Datapath,
    pub pins: PinDir,
}

impl Loaded {
    /// Loads the embedded object into pin directory `<name><pid>`, translation tables of
    /// `tables` claims.
    pub fn new(name: &str, tables: TableSizes) -> anyhow::Result<Self> {
        let pins = PinDir::for_node(&format!("{name}{}", std::process::id()));
        match Datapath::load(&pins, tables, EbpfLog::Off) {
            Ok(datapath) => Ok(Self { datapath, pins }),
            Err(e) => {
                // No `Loaded` to drop yet: what the load pinned goes here.
                let _ = pins.remove();
                Err(e).context("load the embedded eBPF object")
            }
        }
    }

    /// Registers pod `ip` behind host veth `ifindex`: frames from `pod_mac` on that veth pass the
    /// source check, and frames to `ip` are delivered with these MACs.
    pub fn add_endpoint(&mut self, ip: Ipv4Addr, ifindex: u32, pod_mac: [u8; 6], host_mac: [u8; 6]) {
        let endpoint = Endpoint::new(ifindex, pod_mac, host_mac);
        Endpoints::open(&self.pins).unwrap().insert(ip, &endpoint).unwrap();
    }

    /// Writes the NAT settings.
    pub fn set_nat(&mut self, nat: &NatConfig) {
        NatSettings::open(&self.pins).unwrap().set(nat).unwrap();
    }

    /// Runs tc program `name` `repeat` times on `frame`, as if it arrived on interface `ifindex`
    /// (the FIB needs an input device with forwarding on).
    pub fn run_tc(
        &mut self,
        name: &'static str,
        frame: &[u8],
        ifindex: Option<u32>,
        repeat: u32,
    ) -> anyhow::Result<Run> {
        let mut out = vec![0u8; frame.len() + 256];
        // struct __sk_buff is 192 bytes; `ifindex` sits at offset 40.
        let mut skb = [0u8; 192];
        skb[40..44].copy_from_slice(&ifindex.unwrap_or(0).to_ne_bytes());
        let result = self.datapath.program(name)?.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ifindex.map(|_| &skb[..]),
            repeat,
            ..Default::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok(Run { action: result.return_value, frame: out, duration: result.duration })
    }

    /// Runs XDP program `name` `repeat` times on `frame`.
    pub fn run_xdp(&mut self, name: &'static str, frame: &[u8], repeat: u32) -> anyhow::Result<Run> {
        let mut out = vec![0u8; frame.len() + 256];
        let result = self.datapath.xdp_program(name)?.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok(Run { action: result.return_value, frame: out, duration: result.duration })
    }

    /// Runs `from_pod` once on `frame`; returns the action and the frame as the program left it.
    pub fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_on(FROM_POD, frame, None)
    }

    /// Runs tc program `name` once on `frame`, arriving on `ifindex`.
    pub fn run_on(&mut self, name: &'static str, frame: &[u8], ifindex: Option<u32>) -> (u32, Vec<u8>) {
        let run = self.run_tc(name, frame, ifindex, 1).expect("BPF_PROG_TEST_RUN");
        (run.action, run.frame)
    }

    /// Runs XDP program `name` once on `frame`.
    pub fn run_xdp_once(&mut self, name: &'static str, frame: &[u8]) -> (u32, Vec<u8>) {
        let run = self.run_xdp(name, frame, 1).expect("BPF_PROG_TEST_RUN");
        (run.action, run.frame)
    }

    /// Packets per reason, in counter order.
    pub fn counters(&self) -> Vec<u64> {
        Counters::open(&self.pins).unwrap().totals().unwrap().into_iter().map(|(_, n)| n).collect()
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = self.pins.remove();
    }
}

/// NAT settings masquerading as `node` out of interface `uplink` with node ports
/// `port_min..=port_max` and the default timeouts, the node's pods in 10.1.1.0/24.
pub fn nat_config(node: Ipv4Addr, uplink: u32, port_min: u16, port_max: u16) -> NatConfig {
    NatConfig {
        node_ip: node.octets(),
        enabled: 1,
        uplink_ifindex: uplink,
        port_min,
        port_max,
        timeouts_s: Timeouts::default().seconds(),
        pod_net: [10, 1, 1, 0],
        pod_mask: [255, 255, 255, 0],
    }
}

//! The forwarding programs on synthetic packets through `BPF_PROG_TEST_RUN`: what they return,
//! what they write, and which counter they move. Needs root and BPF; each test loads into its
//! own pin dir, and the routing test runs in a namespace it builds (the FIB lookup consults the
//! routes and neighbours of the namespace it runs in).

use std::net::Ipv4Addr;

use aya::programs::{TestRun as _, TestRunOptions};
use ipnet::Ipv4Net;
use podnet::{
    config::PeerNode,
    datapath::{Datapath, PinDir},
    maps::{Conntrack, Counters, Deny, Endpoints, NatSettings, Peers},
    netlink::netns,
};
use podnet_common::{
    Endpoint, NatConfig, Reason,
    programs::{FROM_POD, FROM_UPLINK, UPLINK_DELIVER, UPLINK_FILTER},
};
use podnet_tests::{
    FIB_NEIGH_MAC, FibFixture, Lab,
    packets::{
        ETH_LEN, ETHERTYPE_ARP, ETHERTYPE_IPV6, TCP_ACK, TCP_SYN, checksums_valid, ethernet, icmp_echo,
        inet_checksum, tcp4, udp4, udp4_checksummed,
    },
};

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
    fn new(tag: &str) -> Self {
        let pins = PinDir::for_node(&format!("testrun-{tag}{}", std::process::id()));
        let datapath = Datapath::load(&pins).expect("load the embedded eBPF object");
        let mut endpoints = Endpoints::open(&pins).unwrap();
        // The pod's "host veth" is `lo` (ifindex 1): the devmap takes only devices that exist.
        let endpoint = Endpoint { host_ifindex: 1, flags: 0, pod_mac: POD_MAC, host_mac: HOST_MAC };
        endpoints.insert(LOCAL, &endpoint).unwrap();
        Self { datapath, pins }
    }

    /// Runs XDP program `name` once on `frame`; returns its action and the frame it left.
    fn run_xdp(&mut self, name: &'static str, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 256];
        let prog = self.datapath.xdp_program(name).unwrap();
        let result = prog
            .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    /// Runs `from_pod` once on `frame`; returns the action and the frame as the program left it.
    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_on(FROM_POD, frame, None)
    }

    /// Runs program `name` once on `frame`, as if it arrived on interface `ifindex` (the FIB
    /// needs an input device with forwarding on).
    fn run_on(&mut self, name: &'static str, frame: &[u8], ifindex: Option<u32>) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 256];
        // struct __sk_buff is 192 bytes; `ifindex` sits at offset 40.
        let mut skb = [0u8; 192];
        skb[40..44].copy_from_slice(&ifindex.unwrap_or(0).to_ne_bytes());
        let prog = self.datapath.program(name).unwrap();
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: ifindex.map(|_| &skb[..]),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn counters(&self) -> Vec<u64> {
        Counters::open(&self.pins).unwrap().totals().unwrap().into_iter().map(|(_, n)| n).collect()
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = self.pins.remove();
    }
}

fn counted(before: &[u64], after: &[u64], reason: Reason) {
    let moved: Vec<usize> = (0..Reason::COUNT).filter(|&i| after[i] != before[i]).collect();
    assert_eq!(moved, [reason as usize], "exactly {} must move: {before:?} -> {after:?}", reason.name());
    assert_eq!(after[reason as usize] - before[reason as usize], 1);
}

/// All cases share one load: the pin directory is per process.
#[test]
fn from_pod_decisions() {
    let mut dp = Loaded::new("pod");
    let pod1 = Ipv4Addr::new(10, 1, 1, 2);

    // Local destination: redirected, Ethernet rewritten for the pod, IP packet untouched.
    let frame = udp4([0xaa; 6], [0xbb; 6], pod1, LOCAL, b"hello");
    let before = dp.counters();
    let (action, out) = dp.run(&frame);
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(out[0..6], POD_MAC, "destination MAC is the pod's");
    assert_eq!(out[6..12], HOST_MAC, "source MAC is the host veth's");
    assert_eq!(out[12..], frame[12..], "nothing past the MACs changes (same L2 segment, TTL kept)");
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

fn ipv4_header_verifies(frame: &[u8]) -> bool {
    inet_checksum(&frame[ETH_LEN..ETH_LEN + 20]) == 0
}

/// Cross-node decisions of `from_pod` and `from_uplink`, in a [`Lab::fib_fixture`] namespace.
#[test]
fn routing_decisions() {
    let mut lab = Lab::new("trr").unwrap();
    let FibFixture { ns, eth0, eth0_mac } = lab.fib_fixture().unwrap();
    // This test's thread (only) moves into the node namespace: the FIB lookups happen there.
    netns::enter(&ns).unwrap();

    let mut dp = Loaded::new("route");
    let mut peers = Peers::open(&dp.pins).unwrap();
    for (name, ip, cidr) in
        [("node2", [192, 168, 50, 2], "10.1.2.0/24"), ("node4", [192, 168, 50, 4], "10.1.4.0/24")]
    {
        let pod_cidr: Ipv4Net = cidr.parse().unwrap();
        peers.insert(&PeerNode { name: name.into(), ip: Ipv4Addr::from(ip), pod_cidr }).unwrap();
    }
    let pod1 = Ipv4Addr::new(10, 1, 1, 2);
    let frame = |dst: Ipv4Addr, ttl: u8, payload: usize| {
        let mut f = udp4([0xaa; 6], [0xbb; 6], pod1, dst, &vec![0u8; payload]);
        f[ETH_LEN + 8] = ttl;
        f[ETH_LEN + 10..ETH_LEN + 12].fill(0);
        let c = inet_checksum(&f[ETH_LEN..ETH_LEN + 20]);
        f[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&c.to_be_bytes());
        f
    };

    // Remote hit, neighbour known: out of eth0 with its MAC and the neighbour's, TTL 63.
    let before = dp.counters();
    let (action, out) = dp.run_on(FROM_POD, &frame(Ipv4Addr::new(10, 1, 2, 2), 64, 18), Some(eth0));
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!((out[0..6].to_vec(), out[6..12].to_vec()), (FIB_NEIGH_MAC.to_vec(), eth0_mac.to_vec()));
    assert_eq!(out[ETH_LEN + 8], 63, "TTL decremented");
    assert!(ipv4_header_verifies(&out), "checksum updated with the TTL");
    counted(&before, &dp.counters(), Reason::RedirectRemote);

    // Remote hit, neighbour unknown: still redirected, bpf_redirect_neigh resolves the MAC.
    let before = dp.counters();
    let (action, out) = dp.run_on(FROM_POD, &frame(Ipv4Addr::new(10, 1, 4, 2), 64, 18), Some(eth0));
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(out[ETH_LEN + 8], 63);
    assert!(ipv4_header_verifies(&out));
    counted(&before, &dp.counters(), Reason::RedirectRemoteResolve);

    // TTL 1 would expire: to the stack untouched (it sends ICMP time exceeded).
    let f = frame(Ipv4Addr::new(10, 1, 2, 2), 1, 18);
    let before = dp.counters();
    assert_eq!(dp.run_on(FROM_POD, &f, Some(eth0)), (TC_ACT_OK, f.to_vec()));
    counted(&before, &dp.counters(), Reason::PassTtlExpiring);

    // Larger than eth0's MTU (1400) with no GSO: to the stack (fragmentation / frag-needed).
    let f = frame(Ipv4Addr::new(10, 1, 2, 2), 64, 1450 - 28);
    let before = dp.counters();
    assert_eq!(dp.run_on(FROM_POD, &f, Some(eth0)), (TC_ACT_OK, f.to_vec()));
    counted(&before, &dp.counters(), Reason::PassFragNeeded);

    // No peer owns it: not a cluster address, to the stack.
    let f = frame(Ipv4Addr::new(10, 1, 3, 2), 64, 18);
    let before = dp.counters();
    assert_eq!(dp.run_on(FROM_POD, &f, Some(eth0)), (TC_ACT_OK, f.to_vec()));
    counted(&before, &dp.counters(), Reason::PassNotLocal);

    // From the uplink to a local pod: a routed hop into the pod, TTL 63, pod MACs.
    let before = dp.counters();
    let (action, out) = dp.run_on(FROM_UPLINK, &frame(LOCAL, 64, 18), Some(eth0));
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!((out[0..6].to_vec(), out[6..12].to_vec()), (POD_MAC.to_vec(), HOST_MAC.to_vec()));
    assert_eq!(out[ETH_LEN + 8], 63);
    assert!(ipv4_header_verifies(&out));
    counted(&before, &dp.counters(), Reason::RedirectFromUplink);

    // From the uplink with TTL 1, and to the node itself: the stack's.
    for (f, reason) in [
        (frame(LOCAL, 1, 18), Reason::PassTtlExpiring),
        (frame(Ipv4Addr::new(192, 168, 50, 1), 64, 18), Reason::PassUplinkNotLocal),
    ] {
        let before = dp.counters();
        assert_eq!(dp.run_on(FROM_UPLINK, &f, Some(eth0)), (TC_ACT_OK, f.to_vec()));
        counted(&before, &dp.counters(), reason);
    }
}

/// Masquerade and its reverse on synthetic TCP, UDP and ICMP packets, with every checksum
/// recomputed on the host; one node port only, so the second connection finds none.
#[test]
fn nat_rewrites() {
    let mut lab = Lab::new("trn").unwrap();
    let FibFixture { ns, eth0, .. } = lab.fib_fixture().unwrap();
    netns::enter(&ns).unwrap();
    let mut dp = Loaded::new("nat");
    let node = Ipv4Addr::new(192, 168, 50, 1);
    let config = NatConfig {
        node_ip: node.octets(),
        enabled: 1,
        uplink_ifindex: eth0,
        port_min: 61000,
        port_max: 61000,
    };
    NatSettings::open(&dp.pins).unwrap().set(&config).unwrap();
    let (pod, remote) = (Ipv4Addr::new(10, 1, 1, 3), Ipv4Addr::new(192, 168, 50, 2));
    let src = |f: &[u8]| (Ipv4Addr::new(f[26], f[27], f[28], f[29]), u16::from_be_bytes([f[34], f[35]]));
    let dst = |f: &[u8]| (Ipv4Addr::new(f[30], f[31], f[32], f[33]), u16::from_be_bytes([f[36], f[37]]));

    // TCP SYN out: source becomes node:61000, checksums stay valid, a new translation.
    let syn = tcp4((pod, 40000), (remote, 80), TCP_SYN);
    let before = dp.counters();
    let (action, out) = dp.run_on(FROM_POD, &syn, Some(eth0));
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(src(&out), (node, 61000));
    assert_eq!(dst(&out), (remote, 80));
    assert!(checksums_valid(&out), "IPv4 and TCP checksums after SNAT");
    counted(&before, &dp.counters(), Reason::RedirectNatNew);

    // The same connection again reuses its port.
    let before = dp.counters();
    let (_, out) = dp.run_on(FROM_POD, &syn, Some(eth0));
    assert_eq!(src(&out), (node, 61000));
    counted(&before, &dp.counters(), Reason::RedirectNat);

    // The reply comes back to the pod's address and port and is delivered into it.
    let synack = tcp4((remote, 80), (node, 61000), TCP_SYN | TCP_ACK);
    let before = dp.counters();
    let (action, out) = dp.run_on(FROM_UPLINK, &synack, Some(eth0));
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!((src(&out), dst(&out)), ((remote, 80), (pod, 40000)));
    assert_eq!((out[0..6].to_vec(), out[6..12].to_vec()), (POD_MAC.to_vec(), HOST_MAC.to_vec()));
    assert!(checksums_valid(&out), "IPv4 and TCP checksums after reverse NAT");
    counted(&before, &dp.counters(), Reason::RedirectNatReply);

    // A second TCP connection needs another port: there is none; dropped, counted, and the
    // existing translation is untouched.
    let before = dp.counters();
    assert_eq!(dp.run_on(FROM_POD, &tcp4((pod, 40001), (remote, 80), TCP_SYN), Some(eth0)).0, TC_ACT_SHOT);
    counted(&before, &dp.counters(), Reason::DropNatPortsExhausted);
    assert_eq!(src(&dp.run_on(FROM_POD, &syn, Some(eth0)).1), (node, 61000));

    // UDP with a checksum (port space is per protocol, so 61000 is free for UDP).
    let (action, out) =
        dp.run_on(FROM_POD, &udp4_checksummed((pod, 5353), (remote, 53), b"query"), Some(eth0));
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(src(&out), (node, 61000));
    assert!(checksums_valid(&out), "UDP checksum after SNAT");

    // UDP with checksum 0 ("none") keeps 0; ICMP echo gets its identifier translated.
    assert_eq!(Conntrack::open(&dp.pins).unwrap().flush(), 2, "one TCP and one UDP translation");
    let (_, out) = dp.run_on(FROM_POD, &udp4([0xaa; 6], [0xbb; 6], pod, remote, b"x"), Some(eth0));
    assert_eq!(out[ETH_LEN + 26..ETH_LEN + 28], [0, 0], "a zero UDP checksum stays zero");
    assert!(checksums_valid(&out));
    let (action, out) = dp.run_on(FROM_POD, &icmp_echo(pod, remote, 8, 0x1234), Some(eth0));
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(u16::from_be_bytes([out[ETH_LEN + 24], out[ETH_LEN + 25]]), 61000, "identifier translated");
    assert!(checksums_valid(&out), "ICMP checksum after SNAT");
    let (action, out) = dp.run_on(FROM_UPLINK, &icmp_echo(remote, node, 0, 61000), Some(eth0));
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(u16::from_be_bytes([out[ETH_LEN + 24], out[ETH_LEN + 25]]), 0x1234, "identifier restored");
    assert_eq!(dst(&out).0, pod);
    assert!(checksums_valid(&out), "ICMP checksum after reverse NAT");
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

/// The uplink's XDP prefilter: deny-listed sources and malformed frames dropped (and counted),
/// everything else passed on to tc. `uplink_deliver` makes the same decisions for these frames
/// (none is a routable frame for a local pod).
#[test]
fn uplink_filter_decisions() {
    let mut dp = Loaded::new("xdp");
    Deny::open(&dp.pins).unwrap().insert("203.0.113.0/24".parse().unwrap()).unwrap();
    let (pod, node) = (Ipv4Addr::new(10, 1, 1, 2), Ipv4Addr::new(192, 168, 50, 1));
    let cases: Vec<(&str, Vec<u8>, u32, Reason)> = vec![
        (
            "denied source",
            tcp4((Ipv4Addr::new(203, 0, 113, 7), 5555), (pod, 80), TCP_SYN).to_vec(),
            XDP_DROP,
            Reason::XdpDropDenied,
        ),
        (
            "allowed source",
            tcp4((Ipv4Addr::new(192, 168, 50, 2), 5555), (pod, 80), TCP_SYN).to_vec(),
            XDP_PASS,
            Reason::XdpPass,
        ),
        (
            "reply to the node",
            icmp_echo(Ipv4Addr::new(198, 51, 100, 1), node, 0, 61000).to_vec(),
            XDP_PASS,
            Reason::XdpPass,
        ),
        (
            "ARP",
            {
                let mut f = ethernet([0xff; 6], [0xbb; 6], ETHERTYPE_ARP);
                f.extend_from_slice(&[0; 46]);
                f.to_vec()
            },
            XDP_PASS,
            Reason::XdpPass,
        ),
        (
            "bad IHL",
            {
                let mut f = udp4([0xaa; 6], [0xbb; 6], pod, node, b"x");
                f[ETH_LEN] = 0x43;
                f.to_vec()
            },
            XDP_DROP,
            Reason::XdpDropMalformed,
        ),
        (
            "truncated IPv4",
            {
                let mut f = ethernet([0xaa; 6], [0xbb; 6], 0x0800);
                f.extend_from_slice(&[0x45, 0, 0, 20, 0, 0]);
                f.to_vec()
            },
            XDP_DROP,
            Reason::XdpDropMalformed,
        ),
    ];
    for program in [UPLINK_FILTER, UPLINK_DELIVER] {
        for (what, frame, action, reason) in &cases {
            let before = dp.counters();
            assert_eq!(dp.run_xdp(program, frame).0, *action, "{program}: {what}");
            counted(&before, &dp.counters(), *reason);
        }
    }
}

/// `uplink_deliver`: a frame from another node for a local pod is redirected at XDP (a routed
/// hop: TTL - 1 with a valid header checksum, MACs for the pod); what tc must handle passes.
#[test]
fn uplink_deliver_decisions() {
    let mut dp = Loaded::new("deliver");
    let remote = Ipv4Addr::new(10, 1, 2, 2);
    let frame = udp4([0xaa; 6], [0xbb; 6], remote, LOCAL, b"hello");
    let before = dp.counters();
    let (action, out) = dp.run_xdp(UPLINK_DELIVER, &frame);
    assert_eq!(action, XDP_REDIRECT);
    counted(&before, &dp.counters(), Reason::XdpRedirectLocal);
    assert_eq!(out[..6], POD_MAC, "destination MAC is the pod's");
    assert_eq!(out[6..12], HOST_MAC, "source MAC is the host veth's");
    assert_eq!(out[ETH_LEN + 8], frame[ETH_LEN + 8] - 1, "TTL decremented");
    assert_eq!(inet_checksum(&out[ETH_LEN..ETH_LEN + 20]), 0, "IPv4 header checksum still valid");
    assert_eq!(out[ETH_LEN..ETH_LEN + 8], frame[ETH_LEN..ETH_LEN + 8], "rest of the header unchanged");
    assert_eq!(out[ETH_LEN + 12..], frame[ETH_LEN + 12..], "addresses and payload unchanged");

    let mut ttl_one = frame.to_vec();
    ttl_one[ETH_LEN + 8] = 1;
    let other = udp4([0xaa; 6], [0xbb; 6], remote, Ipv4Addr::new(10, 1, 1, 99), b"hello");
    for (what, f) in [("TTL 1 (the stack answers)", ttl_one), ("no such pod", other.to_vec())] {
        let before = dp.counters();
        assert_eq!(dp.run_xdp(UPLINK_DELIVER, &f), (XDP_PASS, f.clone()), "{what}: passed untouched");
        counted(&before, &dp.counters(), Reason::XdpPass);
    }
    // The prefilter comes first: a denied source is dropped even when it is for a local pod.
    Deny::open(&dp.pins).unwrap().insert("10.1.2.0/24".parse().unwrap()).unwrap();
    assert_eq!(dp.run_xdp(UPLINK_DELIVER, &frame).0, XDP_DROP);
}

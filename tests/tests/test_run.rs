//! The forwarding programs on synthetic packets through `BPF_PROG_TEST_RUN`: what they return,
//! what they write, and which counter they move. Needs root and BPF; each test loads into its
//! own pin dir, and the routing test runs in a namespace it builds (the FIB lookup consults the
//! routes and neighbours of the namespace it runs in).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use podnet::{
    datapath::maps::{Conntrack, Deny, Endpoints, NatSettings, Peers, PodDeny, UplinkAllow},
    datapath::{PinDir, TableSizes, nat},
    host::netns,
    model::{PeerNode, Timeouts, refused_sources},
};
use podnet_common::{
    CtEntry, CtKey, CtState, DeniedPorts, Endpoint, PodSource, Reason,
    programs::{FROM_POD, FROM_UPLINK, UPLINK_DELIVER, UPLINK_FILTER},
};
use podnet_tests::{
    FIB_NEIGH_MAC, FibFixture, Lab,
    packets::{
        ARP_REPLY, ARP_REQUEST, ETH_LEN, ETHERTYPE_ARP, ETHERTYPE_IPV6, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
        arp, as_fragment, checksums_valid, ethernet, icmp_echo, icmp_error, inet_checksum, ipv4,
        router_advertisement, tcp4, udp4, udp4_checksummed, vlan_tagged, with_tot_len, with_ttl,
    },
    test_run::{
        Loaded, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, XDP_DROP, XDP_PASS, XDP_REDIRECT, nat_config,
    },
};

const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb3];
const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 3);
/// The sending pod of the synthetic frames (their source MAC is [`SENDER_MAC`]).
const SENDER: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 2);
const SENDER_MAC: [u8; 6] = [0xbb; 6];
/// The masquerading node and its pod in the NAT cases.
const NAT_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
const NAT_POD: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 4);

/// A datapath of its own, with [`LOCAL`] on `lo` (ifindex 1: the devmap takes only devices that
/// exist) and [`SENDER`] sending on `lo` too (what a test run sends without a context arrives
/// there).
fn loaded(tag: &str) -> Loaded {
    with_tables(tag, TableSizes::default())
}

fn with_tables(tag: &str, tables: TableSizes) -> Loaded {
    let mut dp = Loaded::new(&format!("testrun-{tag}"), tables).unwrap();
    dp.add_endpoint(LOCAL, 1, POD_MAC, HOST_MAC);
    add_sender(&mut dp, SENDER, 1);
    dp
}

/// A datapath masquerading as [`NAT_NODE`] out of `eth0` with node ports 61000-`port_max`,
/// pod CIDR 10.1.1.0/24, and [`NAT_POD`] sending on `eth0` (call it in a [`FibFixture`]
/// namespace).
fn with_nat(tag: &str, eth0: u32, port_max: u16) -> Loaded {
    with_nat_tables(tag, eth0, port_max, TableSizes::default())
}

/// [`with_nat`] with translation tables of `tables` claims.
fn with_nat_tables(tag: &str, eth0: u32, port_max: u16, tables: TableSizes) -> Loaded {
    let mut dp = with_tables(tag, tables);
    dp.set_nat(&nat_config(NAT_NODE, eth0, 61000, port_max));
    add_sender(&mut dp, NAT_POD, eth0);
    dp
}

/// Registers pod `ip` on host veth `ifindex` with MAC [`SENDER_MAC`], the source MAC of the
/// synthetic frames, so its frames pass the source check when they arrive on `ifindex`.
fn add_sender(dp: &mut Loaded, ip: Ipv4Addr, ifindex: u32) {
    dp.add_endpoint(ip, ifindex, SENDER_MAC, HOST_MAC);
}

/// The CPUs this thread may run on (its affinity mask: a container or taskset may leave out
/// CPU 0 or 1).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a plain bitmask on our stack, zeroed before use; pid 0 is the calling thread.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed), 0);
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &allowed)).collect()
    }
}

/// Keeps the calling thread on CPU `cpu` from now on (test runs execute on the caller's CPU).
fn run_on_cpu(cpu: usize) {
    // SAFETY: a plain bitmask on our stack, zeroed before use; pid 0 is the calling thread.
    unsafe {
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one), 0);
    }
}

/// Keeps the calling thread on the CPU it runs on (test runs execute on the caller's CPU) until
/// the returned guard is dropped, which gives the thread its CPUs back.
fn stay_on_this_cpu() -> impl Drop {
    struct Restore(libc::cpu_set_t);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: a mask the kernel filled in for this thread; pid 0 is the calling thread.
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0) };
        }
    }
    // SAFETY: the masks are plain bitmasks on our stack, zeroed before use; pid 0 is the calling
    // thread, and the CPU it runs on is one it may run on.
    unsafe {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, size, &mut allowed), 0);
        let cpu = usize::try_from(libc::sched_getcpu()).expect("sched_getcpu");
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        assert_eq!(libc::sched_setaffinity(0, size, &one), 0);
        Restore(allowed)
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
    let mut dp = loaded("pod");
    let pod1 = SENDER;

    // Local destination: redirected, Ethernet rewritten for the pod, IP packet untouched.
    let frame = udp4([0xaa; 6], [0xbb; 6], pod1, LOCAL, b"hello");
    let before = dp.counters();
    let (action, out) = dp.run(&frame);
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(out[0..6], POD_MAC, "destination MAC is the pod's");
    assert_eq!(out[6..12], HOST_MAC, "source MAC is the host veth's");
    assert_eq!(out[12..], frame[12..], "nothing past the MACs changes (same L2 segment, TTL kept)");
    counted(&before, &dp.counters(), Reason::RedirectLocal);

    // Unknown destination (another node, the outside): on to the next program and the stack,
    // unchanged.
    let frame = udp4([0xaa; 6], [0xbb; 6], pod1, Ipv4Addr::new(192, 0, 2, 1), b"x");
    let before = dp.counters();
    assert_eq!(dp.run(&frame), (TC_ACT_UNSPEC, frame.to_vec()));
    counted(&before, &dp.counters(), Reason::PassNotLocal);

    // The pod's own ARP goes on to the bridge; IPv6 and other ethertypes are dropped.
    let frame = arp([0xff; 6], SENDER_MAC, ARP_REQUEST, (SENDER_MAC, pod1), LOCAL);
    let before = dp.counters();
    assert_eq!(dp.run(&frame), (TC_ACT_UNSPEC, frame.to_vec()));
    counted(&before, &dp.counters(), Reason::PassArp);
    for ether_type in [ETHERTYPE_IPV6, 0x88cc] {
        let mut frame = ethernet([0xff; 6], [0xbb; 6], ether_type);
        frame.extend_from_slice(&[0u8; 46]);
        let before = dp.counters();
        assert_eq!(dp.run(&frame).0, TC_ACT_SHOT, "ethertype {ether_type:#x}");
        counted(&before, &dp.counters(), Reason::DropNotIpv4);
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

    // Destinations pods may never reach: one port of etcd's host, a whole network.
    let etcd = Ipv4Addr::new(192, 168, 50, 250);
    let mut denied = DeniedPorts::default();
    denied.ports[0] = 2379u16.to_be();
    let whole = DeniedPorts { all: 1, ..DeniedPorts::default() };
    PodDeny::open(&dp.pins)
        .unwrap()
        .set(&[(Ipv4Net::from(etcd), denied), ("169.254.0.0/16".parse().unwrap(), whole)])
        .unwrap();
    let to_etcd = |port: u16| udp4_checksummed((pod1, 40000), (etcd, port), b"put");
    for (what, frame, reason) in [
        ("UDP to the denied port", to_etcd(2379).to_vec(), Reason::DropDeniedDestination),
        (
            "TCP to the denied port",
            tcp4((pod1, 40000), (etcd, 2379), TCP_SYN).to_vec(),
            Reason::DropDeniedDestination,
        ),
        (
            "ICMP into a network denied whole",
            icmp_echo(pod1, Ipv4Addr::new(169, 254, 169, 254), 8, 7).to_vec(),
            Reason::DropDeniedDestination,
        ),
        ("another port of that host", to_etcd(2380).to_vec(), Reason::PassNotLocal),
        ("ICMP to that host", icmp_echo(pod1, etcd, 8, 7).to_vec(), Reason::PassNotLocal),
        // No port in it: its first fragment, which has one, is what is dropped.
        (
            "a later fragment to the denied port",
            as_fragment(&to_etcd(2379), false, 8).to_vec(),
            Reason::PassNotLocal,
        ),
    ] {
        let before = dp.counters();
        let expected = if reason == Reason::DropDeniedDestination { TC_ACT_SHOT } else { TC_ACT_UNSPEC };
        assert_eq!(dp.run(&frame).0, expected, "{what}");
        counted(&before, &dp.counters(), reason);
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

    let mut dp = loaded("route");
    let mut peers = Peers::open(&dp.pins).unwrap();
    for (name, ip, cidr) in
        [("node2", [192, 168, 50, 2], "10.1.2.0/24"), ("node4", [192, 168, 50, 4], "10.1.4.0/24")]
    {
        let pod_cidr: Ipv4Net = cidr.parse().unwrap();
        peers.insert(&PeerNode { name: name.into(), ip: Ipv4Addr::from(ip), pod_cidr }).unwrap();
    }
    // The FIB needs an input device with forwarding on: the sending pod's "veth" is eth0.
    add_sender(&mut dp, SENDER, eth0);
    let remote_pod = Ipv4Addr::new(10, 1, 2, 2);
    let frame_from = |src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, payload: usize| {
        with_ttl(&udp4([0xaa; 6], [0xbb; 6], src, dst, &vec![0u8; payload]), ttl)
    };
    let frame = |dst: Ipv4Addr, ttl: u8, payload: usize| frame_from(SENDER, dst, ttl, payload);

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
    assert_eq!(dp.run_on(FROM_POD, &f, Some(eth0)), (TC_ACT_UNSPEC, f.to_vec()));
    counted(&before, &dp.counters(), Reason::PassTtlExpiring);

    // Larger than eth0's MTU (1400) with no GSO: to the stack (fragmentation / frag-needed).
    let f = frame(Ipv4Addr::new(10, 1, 2, 2), 64, 1450 - 28);
    let before = dp.counters();
    assert_eq!(dp.run_on(FROM_POD, &f, Some(eth0)), (TC_ACT_UNSPEC, f.to_vec()));
    counted(&before, &dp.counters(), Reason::PassFragNeeded);

    // No peer owns it: not a cluster address, to the stack.
    let f = frame(Ipv4Addr::new(10, 1, 3, 2), 64, 18);
    let before = dp.counters();
    assert_eq!(dp.run_on(FROM_POD, &f, Some(eth0)), (TC_ACT_UNSPEC, f.to_vec()));
    counted(&before, &dp.counters(), Reason::PassNotLocal);

    // From the uplink to a local pod, from a peer's pod: a routed hop into the pod, TTL 63,
    // pod MACs.
    let frame = |dst: Ipv4Addr, ttl: u8, payload: usize| frame_from(remote_pod, dst, ttl, payload);
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
        assert_eq!(dp.run_on(FROM_UPLINK, &f, Some(eth0)), (TC_ACT_UNSPEC, f.to_vec()));
        counted(&before, &dp.counters(), reason);
    }
}

/// The verifier walks every path of a program, up to 1,000,000 instructions: a program that
/// grows past that no longer loads. Each tc program must stay within 70% of it, so a change that
/// eats the headroom shows here first (`MAX_TRIES` in the NAT is the big lever).
#[test]
fn programs_stay_well_inside_the_verifiers_budget() {
    let mut dp = loaded("budget");
    for name in [FROM_POD, FROM_UPLINK] {
        let info = dp.datapath.program(name).unwrap().info().unwrap();
        let verified = info.verified_instruction_count().expect("the kernel reports verified instructions");
        println!("{name}: {verified} instructions verified");
        assert!(verified < 700_000, "{name}: {verified} instructions verified, over 70% of the limit");
    }
}

/// The programs keep the FIB's answer per (pod, destination) in `ROUTES` and ask again within a
/// second: a neighbour or MTU change reaches established traffic after at most that, a change of
/// peers (podnet's own) at once.
#[test]
fn cached_routes_follow_changes_within_a_second() {
    // `ROUTES` is per CPU: every run on one CPU, so a run finds what the one before cached.
    let _pinned = stay_on_this_cpu();
    let mut lab = Lab::new("trc").unwrap();
    let FibFixture { ns, eth0, .. } = lab.fib_fixture().unwrap();
    netns::enter(&ns).unwrap();
    let mut dp = loaded("routes");
    let node2 = PeerNode {
        name: "node2".into(),
        ip: Ipv4Addr::new(192, 168, 50, 2),
        pod_cidr: "10.1.2.0/24".parse().unwrap(),
    };
    Peers::open(&dp.pins).unwrap().insert(&node2).unwrap();
    add_sender(&mut dp, SENDER, eth0);
    let frame = |payload: usize| {
        with_ttl(&udp4([0xaa; 6], [0xbb; 6], SENDER, Ipv4Addr::new(10, 1, 2, 2), &vec![0u8; payload]), 64)
    };
    let dmac = |dp: &mut Loaded| {
        let (action, out) = dp.run_on(FROM_POD, &frame(18), Some(eth0));
        assert_eq!(action, TC_ACT_REDIRECT);
        out[0..6].to_vec()
    };
    let refresh = || std::thread::sleep(std::time::Duration::from_millis(1100));
    let new_mac = [0x02, 0, 0, 0, 0, 0x44];

    assert_eq!(dmac(&mut dp), FIB_NEIGH_MAC.to_vec());
    podnet_tests::sh(
        &ns,
        "ip",
        &[
            "neigh",
            "replace",
            "192.168.50.2",
            "lladdr",
            "02:00:00:00:00:44",
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    )
    .unwrap();
    assert_eq!(dmac(&mut dp), FIB_NEIGH_MAC.to_vec(), "answered from the cache within its second");
    refresh();
    assert_eq!(dmac(&mut dp), new_mac.to_vec(), "the FIB asked again after a second");

    // A smaller MTU holds once the FIB is asked again.
    podnet_tests::sh(&ns, "ip", &["link", "set", "eth0", "mtu", "1300"]).unwrap();
    refresh();
    let before = dp.counters();
    assert_eq!(dp.run_on(FROM_POD, &frame(1350 - 28), Some(eth0)).0, TC_ACT_UNSPEC);
    counted(&before, &dp.counters(), Reason::PassFragNeeded);

    // A route's own (locked) MTU holds too, as in the stack's forwarding.
    podnet_tests::sh(&ns, "ip", &["route", "add", "192.168.50.2/32", "dev", "eth0", "mtu", "lock", "1200"])
        .unwrap();
    refresh();
    let before = dp.counters();
    assert_eq!(dp.run_on(FROM_POD, &frame(1250 - 28), Some(eth0)).0, TC_ACT_UNSPEC);
    counted(&before, &dp.counters(), Reason::PassFragNeeded);
    assert_eq!(dmac(&mut dp), new_mac.to_vec(), "what fits still goes");

    // The peer leaves: its pods are no cluster destination any more, at once.
    Peers::open(&dp.pins).unwrap().remove(&node2).unwrap();
    let before = dp.counters();
    assert_eq!(dp.run_on(FROM_POD, &frame(18), Some(eth0)).0, TC_ACT_UNSPEC);
    counted(&before, &dp.counters(), Reason::PassNotLocal);
}

/// `from_pod` looks for local pods only inside the node's pod CIDR (where the config and the
/// address allocator put every pod): a pod inside it is delivered into, an endpoint outside it
/// is not (`up` leaves the CIDR unset while it has one), and without a CIDR set every address
/// is looked up.
#[test]
fn local_pods_are_looked_up_inside_the_pod_cidr() {
    let mut lab = Lab::new("trp").unwrap();
    let FibFixture { ns, eth0, .. } = lab.fib_fixture().unwrap();
    netns::enter(&ns).unwrap();
    let outside = Ipv4Addr::new(10, 1, 9, 3);
    let to = |dst| with_ttl(&udp4([0xaa; 6], [0xbb; 6], NAT_POD, dst, &[0; 18]), 64);
    let delivered = |dp: &mut Loaded, dst| {
        let before = dp.counters();
        dp.run_on(FROM_POD, &to(dst), Some(eth0));
        dp.counters()[Reason::RedirectLocal as usize] > before[Reason::RedirectLocal as usize]
    };
    let mut without = loaded("nocidr");
    add_sender(&mut without, NAT_POD, eth0);
    for (mut dp, cidr_set) in [(with_nat("cidr", eth0, 61000), true), (without, false)] {
        Endpoints::open(&dp.pins).unwrap().insert(outside, &Endpoint::new(1, POD_MAC, HOST_MAC)).unwrap();
        assert!(delivered(&mut dp, LOCAL), "inside the pod CIDR");
        assert_eq!(delivered(&mut dp, outside), !cidr_set, "outside the pod CIDR, CIDR set: {cidr_set}");
    }
}

/// Masquerade and its reverse on synthetic TCP, UDP and ICMP packets, with every checksum
/// recomputed on the host; one node port only, so the second connection finds none.
#[test]
fn nat_rewrites() {
    let mut lab = Lab::new("trn").unwrap();
    let FibFixture { ns, eth0, .. } = lab.fib_fixture().unwrap();
    netns::enter(&ns).unwrap();
    let (node, pod, remote) = (NAT_NODE, NAT_POD, Ipv4Addr::new(192, 168, 50, 2));
    let mut dp = with_nat("nat", eth0, 61000);
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
    assert_eq!((out[0..6].to_vec(), out[6..12].to_vec()), (SENDER_MAC.to_vec(), HOST_MAC.to_vec()));
    assert!(checksums_valid(&out), "IPv4 and TCP checksums after reverse NAT");
    counted(&before, &dp.counters(), Reason::RedirectNatReply);
    // One whose TTL would expire on the hop into the pod is dropped as it came: the stack's
    // "time exceeded" would quote the pod's address to the outside.
    let expiring = with_ttl(&synack, 1);
    let before = dp.counters();
    let (action, out) = dp.run_on(FROM_UPLINK, &expiring, Some(eth0));
    assert_eq!((action, &out[..]), (TC_ACT_SHOT, &expiring[..]), "dropped untranslated");
    counted(&before, &dp.counters(), Reason::DropNatReplyTtlExpired);
    // One for a pod gone meanwhile is dropped, not left to the stack with the pod's address.
    Endpoints::open(&dp.pins).unwrap().remove(pod).unwrap();
    let before = dp.counters();
    assert_eq!(dp.run_on(FROM_UPLINK, &synack, Some(eth0)).0, TC_ACT_SHOT);
    counted(&before, &dp.counters(), Reason::DropNatReplyNoPod);
    add_sender(&mut dp, pod, eth0);

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

/// The pod-side key of [`NAT_POD`]'s TCP connection from port `sport` to `remote`:80.
fn nat_pod_tcp_key(remote: Ipv4Addr, sport: u16) -> CtKey {
    CtKey {
        saddr: NAT_POD.octets(),
        daddr: remote.octets(),
        sport: sport.to_be(),
        dport: 80u16.to_be(),
        proto: 6,
        _pad: 0,
        _pad2: 0,
    }
}

/// A pinned translation table, to lose entries by hand.
fn ct_table(pins: &PinDir, name: &str) -> aya::maps::HashMap<aya::maps::MapData, CtKey, CtEntry> {
    let data = aya::maps::MapData::from_pin(pins.map(name)).expect("the table is pinned");
    aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).expect("a hash of translations")
}

/// One node port only: a connection that loses either side of its translation keeps its port,
/// one whose port another connection took is never translated onto it again, packets that are
/// no connection make no state, TCP closes on FINs both ways and reopens on a SYN, and a port
/// whose translation expired is taken over.
#[test]
fn nat_keeps_one_connection_per_node_port() {
    let mut lab = Lab::new("trpair").unwrap();
    let FibFixture { ns, eth0, .. } = lab.fib_fixture().unwrap();
    netns::enter(&ns).unwrap();
    let (node, pod, remote) = (NAT_NODE, NAT_POD, Ipv4Addr::new(192, 168, 50, 2));
    let mut dp = with_nat("pair", eth0, 61000);
    let port = 61000u16;
    let src_port = |f: &[u8]| u16::from_be_bytes([f[34], f[35]]);
    let dst = |f: &[u8]| (Ipv4Addr::new(f[30], f[31], f[32], f[33]), u16::from_be_bytes([f[36], f[37]]));
    let a = |flags| tcp4((pod, 40000), (remote, 80), flags);
    let b = |flags| tcp4((pod, 40001), (remote, 80), flags);
    let reply = |flags| tcp4((remote, 80), (node, port), flags);
    let key = |sport| nat_pod_tcp_key(remote, sport);
    let reply_key = key(40000).reply(node.octets(), port.to_be());
    let states = |dp: &Loaded| -> Vec<(String, &'static str)> {
        nat::list(&dp.pins).unwrap().into_iter().map(|t| (t.pod, t.state.name())).collect()
    };
    let settle = || std::thread::sleep(std::time::Duration::from_millis(1100));

    let (action, out) = dp.run_on(FROM_POD, &a(TCP_SYN), Some(eth0));
    assert_eq!((action, src_port(&out)), (TC_ACT_REDIRECT, port));
    assert_eq!(dp.run_on(FROM_UPLINK, &reply(TCP_SYN | TCP_ACK), Some(eth0)).0, TC_ACT_REDIRECT);

    // Its pod side is lost: the next packet finds its port again (the reply side names it).
    ct_table(&dp.pins, "CT_TCP_OUT").remove(&key(40000)).unwrap();
    assert_eq!(src_port(&dp.run_on(FROM_POD, &a(TCP_ACK), Some(eth0)).1), port);
    // Its reply side is lost: checked once a second, restored, and replies reach the pod again.
    ct_table(&dp.pins, "CT_TCP_IN").remove(&reply_key).unwrap();
    settle();
    assert_eq!(src_port(&dp.run_on(FROM_POD, &a(TCP_ACK), Some(eth0)).1), port);
    let restored = ct_table(&dp.pins, "CT_TCP_IN").get(&reply_key, 0).expect("the reply side is back");
    assert_eq!((restored.addr, u16::from_be(restored.port)), (pod.octets(), 40000));
    assert_eq!(dst(&dp.run_on(FROM_UPLINK, &reply(TCP_ACK), Some(eth0)).1), (pod, 40000));

    // Lost again, and another connection claims the port meanwhile: it is the port's only
    // connection from then on; the first finds no port and is dropped, never translated onto it.
    ct_table(&dp.pins, "CT_TCP_IN").remove(&reply_key).unwrap();
    let (action, out) = dp.run_on(FROM_POD, &b(TCP_SYN), Some(eth0));
    assert_eq!((action, src_port(&out)), (TC_ACT_REDIRECT, port));
    settle();
    let before = dp.counters();
    assert_eq!(dp.run_on(FROM_POD, &a(TCP_ACK), Some(eth0)).0, TC_ACT_SHOT);
    counted(&before, &dp.counters(), Reason::DropNatPortsExhausted);
    assert_eq!(dst(&dp.run_on(FROM_UPLINK, &reply(TCP_SYN | TCP_ACK), Some(eth0)).1), (pod, 40001));

    // No connection, no state: a lone RST or FIN, a truncated datagram.
    let pairs = Conntrack::open(&dp.pins).unwrap().pairs().len();
    for lone in
        [tcp4((pod, 40002), (remote, 80), TCP_RST), tcp4((pod, 40003), (remote, 80), TCP_FIN | TCP_ACK)]
    {
        let before = dp.counters();
        assert_eq!(dp.run_on(FROM_POD, &lone, Some(eth0)).0, TC_ACT_SHOT);
        counted(&before, &dp.counters(), Reason::DropNatNoFlow);
    }
    let udp = udp4_checksummed((pod, 5000), (remote, 53), b"query");
    let truncated = with_tot_len(&udp[..ETH_LEN + 24], 24);
    for _ in 0..200 {
        assert_eq!(dp.run_on(FROM_POD, &truncated, Some(eth0)).0, TC_ACT_SHOT);
    }
    assert_eq!(Conntrack::open(&dp.pins).unwrap().pairs().len(), pairs, "no state was made");

    // FIN one way is a half-close; FINs both ways close; a SYN reopens.
    let b_out = states(&dp).into_iter().find(|(p, _)| p.ends_with(":40001")).map(|(_, s)| s);
    assert_eq!(b_out, Some("established"));
    dp.run_on(FROM_POD, &b(TCP_FIN | TCP_ACK), Some(eth0));
    assert!(states(&dp).contains(&(format!("{pod}:40001"), "established")), "half-closed");
    dp.run_on(FROM_UPLINK, &reply(TCP_FIN | TCP_ACK), Some(eth0));
    assert!(states(&dp).contains(&(format!("{pod}:40001"), "time_wait")), "{:?}", states(&dp));
    assert_eq!(src_port(&dp.run_on(FROM_POD, &b(TCP_SYN), Some(eth0)).1), port);
    assert!(states(&dp).contains(&(format!("{pod}:40001"), "syn_sent")), "reopened: {:?}", states(&dp));

    // A reset the other side goes on talking after was not its own: taken back.
    dp.run_on(FROM_UPLINK, &reply(TCP_SYN | TCP_ACK), Some(eth0));
    dp.run_on(FROM_UPLINK, &reply(TCP_RST), Some(eth0));
    assert!(states(&dp).contains(&(format!("{pod}:40001"), "reset")), "{:?}", states(&dp));
    dp.run_on(FROM_UPLINK, &reply(TCP_ACK), Some(eth0));
    assert!(states(&dp).contains(&(format!("{pod}:40001"), "established")), "{:?}", states(&dp));

    // A reset holds the port until its timeout (1 s here); then another connection takes it.
    dp.run_on(FROM_POD, &b(TCP_RST), Some(eth0));
    assert!(states(&dp).contains(&(format!("{pod}:40001"), "reset")), "{:?}", states(&dp));
    let c = tcp4((pod, 40004), (remote, 80), TCP_SYN);
    assert_eq!(dp.run_on(FROM_POD, &c, Some(eth0)).0, TC_ACT_SHOT, "held");
    let mut settings = NatSettings::open(&dp.pins).unwrap();
    let mut config = settings.get().unwrap();
    config.timeouts_s[CtState::TcpReset as usize] = 1;
    settings.set(&config).unwrap();
    settle();
    let (action, out) = dp.run_on(FROM_POD, &c, Some(eth0));
    assert_eq!((action, src_port(&out)), (TC_ACT_REDIRECT, port), "taken over once expired");
    assert_eq!(dst(&dp.run_on(FROM_UPLINK, &reply(TCP_SYN | TCP_ACK), Some(eth0)).1), (pod, 40004));

    // The connections that lost the port (the first, and the one whose claim was taken over)
    // keep pod sides without a claim: collected once idle for the grace, the port's holder kept.
    let pod_side = |sport| ct_table(&dp.pins, "CT_TCP_OUT").get(&key(sport), 0).is_ok();
    assert!(pod_side(40000) && pod_side(40001) && pod_side(40004));
    std::thread::sleep(nat::CLAIMLESS_GRACE + std::time::Duration::from_millis(100));
    let collected = nat::gc(&dp.pins, &Timeouts::default(), false).unwrap();
    assert_eq!((collected.orphans, collected.expired), (2, 0), "{collected:?}");
    assert!(!pod_side(40000) && !pod_side(40001) && pod_side(40004));
}

/// Pod sides that outlive their claims (taken over, or lost with no other port found) wait for
/// the agent, in a table of twice the claims. Should they fill it, a new connection is refused
/// as by a full claims table: counted, the agent told, and its claim given back.
#[test]
fn a_full_pod_side_table_refuses_new_connections() {
    let mut lab = Lab::new("trfull").unwrap();
    let FibFixture { ns, eth0, .. } = lab.fib_fixture().unwrap();
    netns::enter(&ns).unwrap();
    let (node, pod, remote) = (NAT_NODE, NAT_POD, Ipv4Addr::new(192, 168, 50, 2));
    let mut dp = with_nat_tables("full", eth0, 65535, TableSizes { tcp: 4, udp_icmp: 4 });
    let key = |sport| nat_pod_tcp_key(remote, sport);
    let mut pod_sides = ct_table(&dp.pins, "CT_TCP_OUT");
    for sport in 50000u16..50008 {
        let stale = CtEntry {
            created_ns: 1,
            seen_ns: 1,
            addr: node.octets(),
            port: sport.to_be(),
            flags: 0,
            _pad: 0,
        };
        pod_sides.insert(&key(sport), &stale, 0).expect("room for twice the 4 claims");
    }
    let syn = tcp4((pod, 40000), (remote, 80), TCP_SYN);
    let before = dp.counters();
    assert_eq!(dp.run_on(FROM_POD, &syn, Some(eth0)).0, TC_ACT_SHOT);
    counted(&before, &dp.counters(), Reason::DropNatTableFull);
    assert_ne!(nat::pressure(&dp.pins).unwrap(), 0, "the agent is told");
    assert_eq!(ct_table(&dp.pins, "CT_TCP_IN").keys().count(), 0, "the claim went back");
    // Once one is collected, new connections are translated again.
    pod_sides.remove(&key(50000)).unwrap();
    let before = dp.counters();
    assert_eq!(dp.run_on(FROM_POD, &syn, Some(eth0)).0, TC_ACT_REDIRECT);
    counted(&before, &dp.counters(), Reason::RedirectNatNew);
}

/// ICMP errors about translated connections are translated both ways: one from outside (a
/// router's "fragmentation needed" about a pod's TCP segment, a host's "port unreachable" about
/// its UDP, a time exceeded about its ping) reaches the pod with the pod's address and port
/// quoted; one a pod sends about a reply leaves as the node. Every checksum verifies, the quoted
/// header's included. An error about no translation goes to the stack (inbound) or is dropped
/// (outbound: it would leave with the pod's address).
#[test]
fn icmp_errors_are_translated_both_ways() {
    let mut lab = Lab::new("tricmp").unwrap();
    let FibFixture { ns, eth0, .. } = lab.fib_fixture().unwrap();
    netns::enter(&ns).unwrap();
    let (node, pod, remote, router) =
        (NAT_NODE, NAT_POD, Ipv4Addr::new(192, 168, 50, 2), Ipv4Addr::new(192, 168, 50, 3));
    let mut dp = with_nat("icmp", eth0, 61000);
    // The quoted IPv4 header: after the outer one and the 8-byte ICMP header.
    let q = ETH_LEN + 28;
    let addr = |f: &[u8], at: usize| Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3]);
    let port = |f: &[u8], at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
    let valid = |f: &[u8]| checksums_valid(f) && inet_checksum(&f[q..q + 20]) == 0;

    for (connection, proto, error) in [
        (tcp4((pod, 40000), (remote, 80), TCP_SYN), 6, (3, 4)),
        (udp4_checksummed((pod, 5000), (remote, 53), b"query"), 17, (3, 3)),
        (icmp_echo(pod, remote, 8, 0x1234), 1, (11, 0)),
    ] {
        let (action, out) = dp.run_on(FROM_POD, &connection, Some(eth0));
        assert_eq!(action, TC_ACT_REDIRECT, "protocol {proto} translated");
        // The id of an echo sits 4 bytes into the ICMP header, ports at 0.
        let port_at = if proto == 1 { 4 } else { 0 };
        let node_port = port(&out, ETH_LEN + 20 + port_at);
        let error_frame = icmp_error(router, node, error, 1280, &out);
        let before = dp.counters();
        let (action, back) = dp.run_on(FROM_UPLINK, &error_frame, Some(eth0));
        assert_eq!(action, TC_ACT_REDIRECT, "protocol {proto}: the error is delivered");
        counted(&before, &dp.counters(), Reason::RedirectNatReply);
        assert_eq!(addr(&back, ETH_LEN + 16), pod, "outer destination");
        assert_eq!(
            (addr(&back, q + 12), port(&back, q + 20 + port_at)),
            (pod, if proto == 1 { 0x1234 } else { port(&connection, ETH_LEN + 20) })
        );
        assert_eq!(addr(&back, q + 16), remote);
        assert!(valid(&back), "protocol {proto}: outer, ICMP and quoted checksums");
        assert_ne!(node_port, 0);
    }

    // The pod answers a reply with "port unreachable": it leaves as the node, about the node port.
    // (Another remote port: with one node port, there is one connection per remote port.)
    let (action, out) = dp.run_on(FROM_POD, &udp4_checksummed((pod, 5001), (remote, 54), b"q"), Some(eth0));
    assert_eq!(action, TC_ACT_REDIRECT);
    let node_port = port(&out, ETH_LEN + 20);
    let (_, reply) =
        dp.run_on(FROM_UPLINK, &udp4_checksummed((remote, 54), (node, node_port), b"a"), Some(eth0));
    let (action, sent) = dp.run_on(FROM_POD, &icmp_error(pod, remote, (3, 3), 0, &reply), Some(eth0));
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(addr(&sent, ETH_LEN + 12), node, "outer source");
    assert_eq!((addr(&sent, q + 16), port(&sent, q + 22)), (node, node_port), "quoted destination");
    assert!(valid(&sent));

    // About no translation: inbound to the stack, outbound dropped.
    let stray = tcp4((node, 61999), (remote, 80), TCP_SYN);
    assert_eq!(
        dp.run_on(FROM_UPLINK, &icmp_error(router, node, (3, 4), 1280, &stray), Some(eth0)).0,
        TC_ACT_UNSPEC
    );
    let not_ours = udp4_checksummed((remote, 53), (pod, 6000), b"a");
    assert_eq!(
        dp.run_on(FROM_POD, &icmp_error(pod, remote, (3, 3), 0, &not_ours), Some(eth0)).0,
        TC_ACT_SHOT
    );
}

/// A fragmented datagram is translated fragment by fragment, both ways: the first by its ports,
/// the later ones (no ports) as their first was; a later fragment whose first was not translated
/// is dropped going out (it would carry the pod's address) and left to the stack coming in.
#[test]
fn fragmented_datagrams_are_translated_both_ways() {
    let mut lab = Lab::new("trfrag").unwrap();
    let FibFixture { ns, eth0, .. } = lab.fib_fixture().unwrap();
    netns::enter(&ns).unwrap();
    let (node, pod, remote) = (NAT_NODE, NAT_POD, Ipv4Addr::new(192, 168, 50, 2));
    let mut dp = with_nat("frag", eth0, 61000);
    let addr = |f: &[u8], at: usize| Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3]);
    let ports = |f: &[u8]| (u16::from_be_bytes([f[34], f[35]]), u16::from_be_bytes([f[36], f[37]]));
    let header_ok = |f: &[u8]| inet_checksum(&f[ETH_LEN..ETH_LEN + 20]) == 0;
    // Every frame of the datagram shares the IP identification `ipv4` gives (0x1234).
    let first = as_fragment(&udp4_checksummed((pod, 5000), (remote, 53), &[7; 24]), true, 0);
    let later = as_fragment(&ipv4([0xaa; 6], SENDER_MAC, pod, remote, 17, &[7; 16]), false, 32);

    let (action, out) = dp.run_on(FROM_POD, &first, Some(eth0));
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!((addr(&out, ETH_LEN + 12), ports(&out).0), (node, 61000), "first fragment translated");
    assert!(header_ok(&out));
    let (action, out) = dp.run_on(FROM_POD, &later, Some(eth0));
    assert_eq!((action, addr(&out, ETH_LEN + 12)), (TC_ACT_REDIRECT, node), "later fragment follows");
    assert!(header_ok(&out));
    let stray = as_fragment(
        &ipv4([0xaa; 6], SENDER_MAC, pod, Ipv4Addr::new(192, 168, 50, 3), 17, &[7; 16]),
        false,
        32,
    );
    assert_eq!(dp.run_on(FROM_POD, &stray, Some(eth0)).0, TC_ACT_SHOT, "no first fragment, no way out");

    let first_back = as_fragment(&udp4_checksummed((remote, 53), (node, 61000), &[9; 24]), true, 0);
    let later_back = as_fragment(&ipv4([0xaa; 6], [0xbb; 6], remote, node, 17, &[9; 16]), false, 32);
    let (action, out) = dp.run_on(FROM_UPLINK, &first_back, Some(eth0));
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!((addr(&out, ETH_LEN + 16), ports(&out).1), (pod, 5000));
    let (action, out) = dp.run_on(FROM_UPLINK, &later_back, Some(eth0));
    assert_eq!((action, addr(&out, ETH_LEN + 16)), (TC_ACT_REDIRECT, pod));
    assert!(header_ok(&out));
    let stray_back = as_fragment(
        &ipv4([0xaa; 6], [0xbb; 6], Ipv4Addr::new(192, 168, 50, 3), node, 17, &[9; 16]),
        false,
        32,
    );
    assert_eq!(dp.run_on(FROM_UPLINK, &stray_back, Some(eth0)).0, TC_ACT_UNSPEC);

    // To an `allow_from` network the datagram goes untranslated, its later fragments too.
    UplinkAllow::open(&dp.pins).unwrap().set(&["192.168.50.0/24".parse().unwrap()], &[]).unwrap();
    let other = Ipv4Addr::new(192, 168, 50, 4);
    let first = as_fragment(&udp4_checksummed((pod, 5002), (other, 53), &[7; 24]), true, 0);
    let later = as_fragment(&ipv4([0xaa; 6], SENDER_MAC, pod, other, 17, &[7; 16]), false, 32);
    for frame in [first, later] {
        let before = dp.counters();
        assert_eq!(dp.run_on(FROM_POD, &frame, Some(eth0)).0, TC_ACT_UNSPEC);
        counted(&before, &dp.counters(), Reason::PassNoNat);
    }
}

/// The uplink's XDP prefilter: deny-listed sources and malformed frames dropped (and counted),
/// everything else passed on to tc. `uplink_deliver` makes the same decisions for these frames
/// (none is a routable frame for a local pod).
#[test]
fn uplink_filter_decisions() {
    let mut dp = loaded("xdp");
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
            assert_eq!(dp.run_xdp_once(program, frame).0, *action, "{program}: {what}");
            counted(&before, &dp.counters(), *reason);
        }
    }
}

/// `uplink_deliver`: a frame from another node for a local pod is redirected at XDP (a routed
/// hop: TTL - 1 with a valid header checksum, MACs for the pod); what tc must handle passes.
#[test]
fn uplink_deliver_decisions() {
    let mut dp = loaded("deliver");
    let remote = Ipv4Addr::new(10, 1, 2, 2);
    let peer = PeerNode {
        name: "node2".into(),
        ip: Ipv4Addr::new(192, 168, 50, 2),
        pod_cidr: "10.1.2.0/24".parse().unwrap(),
    };
    Peers::open(&dp.pins).unwrap().insert(&peer).unwrap();
    let frame = udp4([0xaa; 6], [0xbb; 6], remote, LOCAL, b"hello");
    let before = dp.counters();
    let (action, out) = dp.run_xdp_once(UPLINK_DELIVER, &frame);
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
    let stranger = udp4([0xaa; 6], [0xbb; 6], Ipv4Addr::new(192, 168, 50, 100), LOCAL, b"hello");
    for (what, f) in [
        ("TTL 1 (the stack answers)", ttl_one),
        ("no such pod", other.to_vec()),
        ("not a peer (tc drops it)", stranger.to_vec()),
    ] {
        let before = dp.counters();
        assert_eq!(dp.run_xdp_once(UPLINK_DELIVER, &f), (XDP_PASS, f.clone()), "{what}: passed untouched");
        counted(&before, &dp.counters(), Reason::XdpPass);
    }
    // The prefilter comes first: a denied source is dropped even when it is for a local pod.
    Deny::open(&dp.pins).unwrap().insert("10.1.2.0/24".parse().unwrap()).unwrap();
    assert_eq!(dp.run_xdp_once(UPLINK_DELIVER, &frame).0, XDP_DROP);
}

/// A pod can be only itself: what `from_pod` drops before any forwarding, and why. Pod A (the
/// frames' sender) sits on `lo`, pod B on the fixture's `eth0`.
#[test]
fn isolation_decisions() {
    let mut lab = Lab::new("tri").unwrap();
    let FibFixture { ns, eth0, .. } = lab.fib_fixture().unwrap();
    netns::enter(&ns).unwrap();
    let mut dp = loaded("iso");
    let pod_b = Ipv4Addr::new(10, 1, 1, 5);
    let b_mac = [0xcc; 6];
    Endpoints::open(&dp.pins).unwrap().insert(pod_b, &Endpoint::new(eth0, b_mac, HOST_MAC)).unwrap();
    let good = udp4([0xaa; 6], SENDER_MAC, SENDER, LOCAL, b"hello");
    let mut wrong_mac = good.to_vec();
    wrong_mac[6..12].copy_from_slice(&b_mac);
    let ipv4_with_ihl = |ihl: u8| {
        let mut f = good.to_vec();
        f[ETH_LEN] = 0x40 | ihl;
        f
    };
    let udp_truncated =
        with_tot_len(&ipv4([0xaa; 6], SENDER_MAC, SENDER, LOCAL, 17, &[0x9c, 0x40, 0, 53]), 24);
    let mut tcp_bad_offset = tcp4((SENDER, 40000), (LOCAL, 80), TCP_SYN).to_vec();
    tcp_bad_offset[ETH_LEN + 20 + 12] = 15 << 4; // 60-byte header in a 24-byte segment
    let cases: Vec<(&str, Vec<u8>, Option<u32>, Reason)> = vec![
        (
            "another pod's source address",
            udp4([0xaa; 6], SENDER_MAC, pod_b, LOCAL, b"x").to_vec(),
            None,
            Reason::DropSpoofed,
        ),
        (
            "an address no pod has",
            udp4([0xaa; 6], SENDER_MAC, Ipv4Addr::new(10, 1, 1, 77), LOCAL, b"x").to_vec(),
            None,
            Reason::DropSpoofed,
        ),
        (
            "the node's address",
            udp4([0xaa; 6], SENDER_MAC, Ipv4Addr::new(192, 168, 50, 1), LOCAL, b"x").to_vec(),
            None,
            Reason::DropSpoofed,
        ),
        ("another pod's source MAC", wrong_mac, None, Reason::DropSpoofed),
        ("its own packet on another pod's veth", good.to_vec(), Some(eth0), Reason::DropSpoofed),
        ("VLAN 100", vlan_tagged(&good, 100).to_vec(), None, Reason::DropVlanTagged),
        ("IPv6 router advertisement", router_advertisement(SENDER_MAC).to_vec(), None, Reason::DropNotIpv4),
        (
            "forged ARP reply for pod B",
            arp([0xff; 6], SENDER_MAC, ARP_REPLY, (SENDER_MAC, pod_b), LOCAL).to_vec(),
            None,
            Reason::DropSpoofed,
        ),
        (
            "ARP with another sender MAC",
            arp([0xff; 6], SENDER_MAC, ARP_REPLY, (b_mac, SENDER), LOCAL).to_vec(),
            None,
            Reason::DropSpoofed,
        ),
        (
            "ARP probe (sender 0.0.0.0)",
            arp([0xff; 6], SENDER_MAC, ARP_REQUEST, (SENDER_MAC, Ipv4Addr::UNSPECIFIED), LOCAL).to_vec(),
            None,
            Reason::DropSpoofed,
        ),
        ("total length beyond the frame", with_tot_len(&good, 200).to_vec(), None, Reason::DropMalformed),
        ("total length below the header", with_tot_len(&good, 19).to_vec(), None, Reason::DropMalformed),
        ("IHL beyond the packet", ipv4_with_ihl(15), None, Reason::DropMalformed),
        ("truncated UDP header", udp_truncated.to_vec(), None, Reason::DropMalformed),
        ("TCP data offset beyond the segment", tcp_bad_offset, None, Reason::DropMalformed),
    ];
    for (what, frame, ifindex, reason) in cases {
        let before = dp.counters();
        let (action, _) = dp.run_on(FROM_POD, &frame, ifindex);
        assert_eq!(action, TC_ACT_SHOT, "{what}");
        counted(&before, &dp.counters(), reason);
    }
    for dst in [[0, 0, 0, 0], [255, 255, 255, 255], [224, 0, 0, 1], [240, 0, 0, 1], [127, 0, 0, 1]] {
        let before = dp.counters();
        let frame = udp4([0xaa; 6], SENDER_MAC, SENDER, Ipv4Addr::from(dst), b"x");
        assert_eq!(dp.run(&frame).0, TC_ACT_SHOT, "martian {dst:?}");
        counted(&before, &dp.counters(), Reason::DropMartian);
    }
    // The veth's POD_SOURCES slot answers; when another veth took the slot over (ifindexes
    // 65536 apart share one), ENDPOINTS does, and still tells the pod from a forger.
    let mut endpoints = Endpoints::open(&dp.pins).unwrap();
    let other = PodSource { ifindex: 65537, ip: [10, 1, 1, 99], mac: [0xdd; 6], slot: 0 };
    endpoints.set_source(65537, &other).unwrap();
    let before = dp.counters();
    assert_eq!(dp.run(&good).0, TC_ACT_REDIRECT, "the sender's own frame, through the fallback");
    counted(&before, &dp.counters(), Reason::RedirectLocal);
    let before = dp.counters();
    let forged = udp4([0xaa; 6], SENDER_MAC, pod_b, LOCAL, b"x");
    assert_eq!(dp.run(&forged).0, TC_ACT_SHOT, "a forged source, through the fallback");
    counted(&before, &dp.counters(), Reason::DropSpoofed);

    // Pod B's own frame on its own veth is fine.
    let before = dp.counters();
    let frame = udp4([0xaa; 6], b_mac, pod_b, LOCAL, b"x");
    assert_eq!(dp.run_on(FROM_POD, &frame, Some(eth0)).0, TC_ACT_REDIRECT);
    counted(&before, &dp.counters(), Reason::RedirectLocal);
}

/// Who reaches pods from the uplink: peers and their pods, `allow_from`, never a source that
/// can only be forged; `uplink_deliver` leaves every refused frame to tc.
#[test]
fn uplink_admission_decisions() {
    let mut lab = Lab::new("tra").unwrap();
    let FibFixture { ns, eth0, .. } = lab.fib_fixture().unwrap();
    netns::enter(&ns).unwrap();
    let mut dp = loaded("adm");
    let peer = PeerNode {
        name: "node2".into(),
        ip: Ipv4Addr::new(192, 168, 50, 2),
        pod_cidr: "10.1.2.0/24".parse().unwrap(),
    };
    Peers::open(&dp.pins).unwrap().insert(&peer).unwrap();
    let node = Ipv4Addr::new(192, 168, 50, 1);
    let refused = refused_sources("10.1.1.0/24".parse().unwrap(), node);
    let mut allow = UplinkAllow::open(&dp.pins).unwrap();
    allow.set(&[], &refused).unwrap();
    let from = |src: [u8; 4]| udp4([0xaa; 6], [0xbb; 6], Ipv4Addr::from(src), LOCAL, b"x");
    let check = |dp: &mut Loaded, src: [u8; 4], tc: u32, reason: Reason, xdp: u32| {
        let before = dp.counters();
        assert_eq!(dp.run_on(FROM_UPLINK, &from(src), Some(eth0)).0, tc, "tc, from {src:?}");
        counted(&before, &dp.counters(), reason);
        assert_eq!(dp.run_xdp_once(UPLINK_DELIVER, &from(src)).0, xdp, "uplink_deliver, from {src:?}");
    };
    check(&mut dp, [10, 1, 2, 7], TC_ACT_REDIRECT, Reason::RedirectFromUplink, XDP_REDIRECT);
    check(&mut dp, [192, 168, 50, 2], TC_ACT_REDIRECT, Reason::RedirectFromUplink, XDP_REDIRECT);
    check(&mut dp, [192, 168, 50, 100], TC_ACT_SHOT, Reason::DropNotAllowed, XDP_PASS);
    check(&mut dp, [10, 1, 1, 2], TC_ACT_SHOT, Reason::DropSpoofed, XDP_PASS);

    // allow_from opens it, but never for sources that can only be forged.
    allow.set(&["0.0.0.0/0".parse().unwrap()], &refused).unwrap();
    check(&mut dp, [192, 168, 50, 100], TC_ACT_REDIRECT, Reason::RedirectFromUplink, XDP_REDIRECT);
    for forged in [[10, 1, 1, 2], [192, 168, 50, 1], [127, 0, 0, 1], [224, 0, 0, 5], [0, 0, 0, 0]] {
        check(&mut dp, forged, TC_ACT_SHOT, Reason::DropSpoofed, XDP_PASS);
    }
    // A priority tag (VLAN 0), which the stack would strip before routing the packet to the
    // pod, changes nothing: tagged frames for pods are dropped; others are the VLAN devices'.
    allow.set(&[], &refused).unwrap();
    for tpid in [0x8100u16, 0x88a8] {
        let mut tagged = vlan_tagged(&from([192, 168, 50, 100]), 0);
        tagged[12..14].copy_from_slice(&tpid.to_be_bytes());
        let before = dp.counters();
        assert_eq!(dp.run_on(FROM_UPLINK, &tagged, Some(eth0)).0, TC_ACT_SHOT, "tag {tpid:#x}");
        counted(&before, &dp.counters(), Reason::DropVlanTagged);
    }
    let elsewhere = vlan_tagged(&udp4([0xaa; 6], [0xbb; 6], Ipv4Addr::new(192, 168, 50, 100), node, b"x"), 7);
    let before = dp.counters();
    assert_eq!(dp.run_on(FROM_UPLINK, &elsewhere, Some(eth0)).0, TC_ACT_UNSPEC);
    counted(&before, &dp.counters(), Reason::PassNotIpv4);
    // The deny list holds behind tags too.
    Deny::open(&dp.pins).unwrap().insert("192.168.50.100/32".parse().unwrap()).unwrap();
    for program in [UPLINK_FILTER, UPLINK_DELIVER] {
        let before = dp.counters();
        assert_eq!(
            dp.run_xdp_once(program, &vlan_tagged(&from([192, 168, 50, 100]), 0)).0,
            XDP_DROP,
            "{program}"
        );
        counted(&before, &dp.counters(), Reason::XdpDropDenied);
    }
    Deny::open(&dp.pins).unwrap().remove("192.168.50.100/32".parse().unwrap()).unwrap();

    // `set` replaces: the admission is gone again.
    allow.set(&[], &refused).unwrap();
    assert_eq!(allow.admitted(), []);
    check(&mut dp, [192, 168, 50, 100], TC_ACT_SHOT, Reason::DropNotAllowed, XDP_PASS);
}

/// What would leave the uplink with a pod's address is translated or dropped, never passed;
/// the FIB lookup takes the pod's source, so `ip rule from POD` routes it.
#[test]
fn nothing_leaves_untranslated() {
    let mut lab = Lab::new("trx").unwrap();
    let FibFixture { ns, eth0, .. } = lab.fib_fixture().unwrap();
    podnet_tests::sh(&ns, "ip", &["route", "add", "198.51.100.0/24", "via", "192.168.50.2"]).unwrap();
    // Policy routing: pod 10.1.1.6 reaches 203.0.113.0/24, which only its own table routes.
    podnet_tests::sh(&ns, "ip", &["route", "add", "203.0.113.0/24", "via", "192.168.50.2", "table", "100"])
        .unwrap();
    podnet_tests::sh(&ns, "ip", &["rule", "add", "from", "10.1.1.6", "lookup", "100"]).unwrap();
    netns::enter(&ns).unwrap();
    let mut dp = with_nat("leak", eth0, 61999);
    let (pod, policy_pod) = (NAT_POD, Ipv4Addr::new(10, 1, 1, 6));
    // One pod per veth: the policy-routed pod sends on `lo` (forwarding is on there too).
    add_sender(&mut dp, policy_pod, 1);
    let remote = Ipv4Addr::new(198, 51, 100, 1);

    let gre = ipv4([0xaa; 6], SENDER_MAC, pod, remote, 47, &[0; 24]);
    // A later fragment of a datagram whose first fragment was never translated.
    let fragment =
        as_fragment(&udp4([0xaa; 6], SENDER_MAC, pod, remote, b"later fragment!!"), true, 64).to_vec();
    let icmp_error = icmp_echo(pod, remote, 3, 0).to_vec(); // destination unreachable
    let mut big = udp4([0xaa; 6], SENDER_MAC, pod, remote, &[0; 1450 - 28]).to_vec();
    big[ETH_LEN + 6] = 0; // DF off: the stack would fragment it with the pod's address
    let big = with_tot_len(&big, 1450).to_vec();
    for (what, frame) in [
        ("GRE", gre.to_vec()),
        ("a stray fragment", fragment),
        ("an ICMP error", icmp_error),
        ("too big, no DF", big.clone()),
    ] {
        let before = dp.counters();
        assert_eq!(dp.run_on(FROM_POD, &frame, Some(eth0)).0, TC_ACT_SHOT, "{what}");
        counted(&before, &dp.counters(), Reason::DropNotNatable);
    }
    // Unless the destination is in `allow_from`: that network routes pod addresses back.
    let mut allow = UplinkAllow::open(&dp.pins).unwrap();
    allow.set(&["198.51.100.0/24".parse().unwrap()], &[]).unwrap();
    for (what, frame) in [("GRE", gre.to_vec()), ("TCP", tcp4((pod, 40000), (remote, 80), TCP_SYN).to_vec())]
    {
        let before = dp.counters();
        assert_eq!(dp.run_on(FROM_POD, &frame, Some(eth0)), (TC_ACT_UNSPEC, frame.clone()), "{what}");
        counted(&before, &dp.counters(), Reason::PassNoNat);
    }
    allow.set(&[], &[]).unwrap();

    // Too big with DF: the stack only answers "fragmentation needed" to the pod.
    let mut big_df = big;
    big_df[ETH_LEN + 6] = 0x40;
    let big_df = with_tot_len(&big_df, 1450).to_vec();
    let before = dp.counters();
    assert_eq!(dp.run_on(FROM_POD, &big_df, Some(eth0)).0, TC_ACT_UNSPEC);
    counted(&before, &dp.counters(), Reason::PassFragNeeded);

    // Policy routing by the pod's source: only the pod's table has the route.
    let to_policy = |src| tcp4((src, 40000), (Ipv4Addr::new(203, 0, 113, 9), 443), TCP_SYN);
    let (action, out) = dp.run_on(FROM_POD, &to_policy(policy_pod), Some(1));
    assert_eq!(action, TC_ACT_REDIRECT, "ip rule from {policy_pod} applies to the fast path");
    assert_eq!(out[0..6], FIB_NEIGH_MAC);
    // Any other pod has no route there: not forwarded (the FIB says "not forwarded" for a
    // network it cannot reach), left to the stack, which answers "unreachable".
    let before = dp.counters();
    assert_eq!(dp.run_on(FROM_POD, &to_policy(pod), Some(eth0)).0, TC_ACT_UNSPEC);
    counted(&before, &dp.counters(), Reason::PassNotLocal);
}

/// Two CPUs translating one new connection at the same moment agree on one node port and keep
/// one claim for it. 4000 connections, each one's SYN run through `from_pod` by both CPUs at
/// once (the two threads meet at a spin barrier before every run): the contended path runs
/// (`redirect_nat_raced` counts the packets that found the other CPU's translation made a moment
/// before theirs), both packets of every connection leave on the same node port, and the tables
/// hold one claim and one pod side per connection.
#[test]
fn two_cpus_on_one_new_connection_keep_one_claim() {
    let mut lab = Lab::new("trrace").unwrap();
    let FibFixture { ns, eth0, .. } = lab.fib_fixture().unwrap();
    netns::enter(&ns).unwrap();
    let mut dp = with_nat("race", eth0, 65535);
    // Each thread runs the program through a descriptor of its own.
    dp.datapath.pin_pod_program().unwrap();
    let pinned = dp.pins.program(FROM_POD);
    const CONNECTIONS: u16 = 4000;
    let remote = Ipv4Addr::new(192, 168, 50, 2);
    // Each to a port of its own: their node ports never run short (the range holds 4536
    // connections to one remote address and port).
    let frames: Vec<Vec<u8>> =
        (0..CONNECTIONS).map(|i| tcp4((NAT_POD, 20000 + i), (remote, 1000 + i), TCP_SYN).to_vec()).collect();
    let arrived = std::sync::atomic::AtomicUsize::new(0);
    let racer = |cpu: usize| {
        run_on_cpu(cpu);
        let program = aya::programs::SchedClassifier::from_pin(&pinned).unwrap();
        let mut skb = [0u8; 192];
        skb[40..44].copy_from_slice(&eth0.to_ne_bytes());
        let mut ports = Vec::with_capacity(frames.len());
        for (i, frame) in frames.iter().enumerate() {
            // Both threads run connection i together.
            arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            while arrived.load(std::sync::atomic::Ordering::SeqCst) < 2 * (i + 1) {
                std::hint::spin_loop();
            }
            let mut out = vec![0u8; frame.len() + 64];
            let result = aya::programs::TestRun::test_run(
                &program,
                aya::programs::TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(&skb),
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(result.return_value, TC_ACT_REDIRECT, "connection {i} on CPU {cpu}");
            ports.push(u16::from_be_bytes([out[34], out[35]]));
        }
        ports
    };
    let cpus = allowed_cpus();
    assert!(cpus.len() >= 2, "the race needs two CPUs this process may run on; it has {cpus:?}");
    let (first, second) = std::thread::scope(|s| {
        let (a, b) = (s.spawn(|| racer(cpus[0])), s.spawn(|| racer(cpus[1])));
        (a.join().expect("first racer"), b.join().expect("second racer"))
    });
    let raced = dp.counters()[Reason::RedirectNatRaced as usize];
    assert!(raced > 0, "the CPUs never raced on a new connection: the test proves nothing");
    eprintln!("{raced} of {CONNECTIONS} connections raced");
    let split: Vec<usize> = (0..first.len()).filter(|&i| first[i] != second[i]).collect();
    assert!(
        split.is_empty(),
        "{} connections' two packets left on different node ports, e.g. (connection, ports) {:?}",
        split.len(),
        split.iter().take(5).map(|&i| (i, first[i], second[i])).collect::<Vec<_>>()
    );
    let tcp = nat::usage(&dp.pins).unwrap()[0];
    assert_eq!((tcp.entries, tcp.pod_sides), (CONNECTIONS as usize, CONNECTIONS as usize), "{tcp:?}");
}

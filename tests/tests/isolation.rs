//! Pod isolation, tried as an attacker would: a hostile pod (pod1 on node1) sends raw frames
//! that forge addresses, poison the bridge and the node's neighbour table, carry VLAN tags,
//! malformed headers, martian destinations and IPv6 router advertisements; a host outside routes
//! the pod CIDR via the node and tries to reach pods. Each attack is captured where it would
//! land, and shown to land nowhere; the drop counters say why. Normal traffic keeps working.

use std::{thread, time::Duration};

use podnet_tests::{
    Cluster, Lab, Node, cluster, in_every_xdp_mode, link,
    packets::{
        ARP_REPLY, ARP_REQUEST, arp, ipv4, router_advertisement, send, tcp4, udp4_checksummed, vlan_tagged,
        with_macs, with_tot_len,
    },
    pings, sh,
};
use std::net::Ipv4Addr;

const EXT: &str = "192.168.50.100";
/// UDP port of every attack datagram, so captures can count them.
const MARK: u16 = 7777;

/// Two nodes with two pods each and an external host on their switch; NAT on.
fn lab_cluster(lab: &mut Lab, xdp: &str) -> anyhow::Result<(Cluster, String)> {
    let cluster = cluster(lab, "", &[&[2], &[1]], xdp)?;
    let ext = lab.netns("ext")?;
    lab.plug(&cluster.switch, &ext, "portx", &format!("{EXT}/24"))?;
    Ok((cluster, ext))
}

fn ip(text: &str) -> Ipv4Addr {
    text.parse().expect("an IPv4 address")
}

/// A marked UDP datagram `src` -> `dst` carrying "attack", as a frame from `mac` to the node's
/// gateway `gw_mac`.
fn datagram(gw_mac: [u8; 6], mac: [u8; 6], src: &str, dst: &str) -> Vec<u8> {
    with_macs(&udp4_checksummed((ip(src), MARK), (ip(dst), MARK), b"attack"), gw_mac, mac)
}

/// The same, carrying "legit!": a control the sender may send.
fn control(gw_mac: [u8; 6], mac: [u8; 6], src: &str, dst: &str) -> Vec<u8> {
    with_macs(&udp4_checksummed((ip(src), MARK), (ip(dst), MARK), b"legit!"), gw_mac, mac)
}

/// Capture filters for the payloads of [`datagram`] and [`control`] (NAT keeps payloads).
const ATTACK: &str = "udp[8:4] = 0x61747461";
const CONTROL: &str = "udp[8:4] = 0x6c656769";

/// Where each victim would see a marked datagram: (namespace, interface).
fn victims(n1: &Node, n2: &Node, ext: &str) -> Vec<(String, &'static str)> {
    vec![
        (n1.pod_ns("pod2"), "veth_pod2"),
        (n2.pod_ns("pod1"), "veth_pod1"),
        (ext.to_owned(), "eth0"),
        (n1.netns.clone(), "br0"),
    ]
}

#[test]
fn a_pod_cannot_send_as_anyone_else() -> anyhow::Result<()> {
    in_every_xdp_mode(a_pod_cannot_send_as_anyone_else_with)
}

fn a_pod_cannot_send_as_anyone_else_with(xdp: &str) -> anyhow::Result<()> {
    let mut lab = Lab::new("isos")?;
    let (cluster, ext) = lab_cluster(&mut lab, xdp)?;
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let attacker = n1.pod_ns("pod1");
    let (_, mac) = link(&attacker, "veth_pod1")?;
    let (_, gw_mac) = link(&n1.netns, "br0")?;
    // Normal traffic first: same node, other node, the outside.
    for to in ["10.1.1.3", "10.1.2.2", EXT, "10.1.1.1"] {
        assert!(pings(&attacker, to, 1), "pod1 -> {to}");
    }

    let captures: Vec<(String, String)> = victims(n1, n2, &ext)
        .into_iter()
        .map(|(ns, iface)| Ok((ns.clone(), lab.capture(&ns, iface, &format!("udp port {MARK}"))?)))
        .collect::<anyhow::Result<_>>()?;
    let spoofed_before = n1.counter("drop_spoofed")?;
    // Every forged source (a neighbour, the node, another node's pod, the external host, a
    // random address) to every destination (a neighbour, another node's pod, the outside through
    // NAT, the node itself).
    let sources = ["10.1.1.3", "192.168.50.1", "10.1.2.2", EXT, "203.0.113.9"];
    let destinations = ["10.1.1.3", "10.1.2.2", EXT, "10.1.1.1"];
    let mut frames: Vec<Vec<u8>> = Vec::new();
    for src in sources {
        for dst in destinations {
            frames.push(datagram(gw_mac, mac, src, dst));
        }
    }
    // Its own address with the neighbour's MAC.
    let (_, victim_mac) = link(&n1.pod_ns("pod2"), "veth_pod2")?;
    frames.push(datagram(gw_mac, victim_mac, "10.1.1.2", EXT));
    send(&attacker, "veth_pod1", &frames.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
    // Controls, last: the same datagrams with its own addresses arrive everywhere, so the
    // captures work and hold everything sent before.
    let controls: Vec<Vec<u8>> =
        destinations.iter().map(|dst| control(gw_mac, mac, "10.1.1.2", dst)).collect();
    send(&attacker, "veth_pod1", &controls.iter().map(Vec::as_slice).collect::<Vec<_>>())?;

    for (ns, pcap) in &captures {
        assert_eq!(lab.wait_captured(ns, pcap, CONTROL, 1)?, 1, "the control reached {ns}");
        assert_eq!(lab.count(ns, pcap, ATTACK)?, 0, "forged datagrams reached {ns}");
    }
    let dropped = n1.counter("drop_spoofed")? - spoofed_before;
    assert_eq!(dropped, frames.len() as u64, "each forged frame counted once as drop_spoofed");
    assert!(pings(&attacker, "10.1.1.3", 1), "the attacker's own traffic still flows");
    Ok(())
}

/// A forged FIN and RST with a neighbour's masqueraded tuple change nothing in its translation.
#[test]
fn a_pod_cannot_touch_a_neighbours_translations() -> anyhow::Result<()> {
    let mut lab = Lab::new("isof")?;
    let (cluster, ext) = lab_cluster(&mut lab, "off")?;
    let n1 = &cluster.nodes[0];
    let nc = lab.netcat()?;
    lab.spawn(&ext, "python3", &[&nc, "tcp-echo", EXT, "9001"])?;
    podnet_tests::wait_listening(&ext, 9001)?;
    lab.spawn(&n1.pod_ns("pod2"), "python3", &[&nc, "tcp-open", EXT, "9001", "1", "60"])?;
    let victim = || -> anyhow::Result<serde_json::Value> {
        let list: serde_json::Value = serde_json::from_str(&n1.run_podnet(&["nat", "list", "--json"])?)?;
        Ok(list
            .as_array()
            .and_then(|l| l.iter().find(|t| t["pod"].as_str().is_some_and(|p| p.starts_with("10.1.1.3:"))))
            .cloned()
            .unwrap_or_default())
    };
    let mut translation = victim()?;
    for _ in 0..50 {
        if translation["state"] == "established" {
            break;
        }
        thread::sleep(Duration::from_millis(100));
        translation = victim()?;
    }
    assert_eq!(translation["state"], "established", "pod2's connection: {translation}");
    let port: u16 =
        translation["pod"].as_str().unwrap_or_default().rsplit(':').next().unwrap_or("").parse()?;

    let attacker = n1.pod_ns("pod1");
    let (_, mac) = link(&attacker, "veth_pod1")?;
    let (_, gw_mac) = link(&n1.netns, "br0")?;
    let (fin, rst) = (0x01 | 0x10, 0x04);
    let frames: Vec<Vec<u8>> = [fin, rst]
        .into_iter()
        .map(|flags| with_macs(&tcp4((ip("10.1.1.3"), port), (ip(EXT), 9001), flags), gw_mac, mac))
        .collect();
    let before = n1.counter("drop_spoofed")?;
    send(&attacker, "veth_pod1", &frames.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
    assert_eq!(n1.counter("drop_spoofed")? - before, 2);
    let after = victim()?;
    assert_eq!(after["state"], "established", "the neighbour's translation is untouched: {after}");
    assert_eq!(after["node"], translation["node"]);
    Ok(())
}

/// No pod can move the bridge's FDB entry or the node's neighbour entry of another pod, send
/// IPv6 router advertisements to anyone, or send VLAN-tagged frames out; pods have no IPv6.
#[test]
fn a_pod_cannot_poison_layer_2() -> anyhow::Result<()> {
    let mut lab = Lab::new("isol2")?;
    let (cluster, ext) = lab_cluster(&mut lab, "off")?;
    let n1 = &cluster.nodes[0];
    let (attacker, victim) = (n1.pod_ns("pod1"), n1.pod_ns("pod2"));
    let (_, mac) = link(&attacker, "veth_pod1")?;
    let (_, victim_mac) = link(&victim, "veth_pod2")?;
    let (_, gw_mac) = link(&n1.netns, "br0")?;
    let victim_mac_text = podnet::host::netlink::fmt_mac(&victim_mac);
    assert!(pings(&n1.netns, "10.1.1.3", 1), "the node knows pod2's MAC");
    // Linux ignores neighbour updates within a second of the last (locktime).
    thread::sleep(Duration::from_millis(1100));

    let ra_before = lab.capture(&victim, "veth_pod2", "icmp6 and ip6[40] == 134")?;
    let ra_node = lab.capture(&n1.netns, "br0", "icmp6 and ip6[40] == 134")?;
    let tagged = lab.capture(&cluster.switch, "port1", "vlan")?;
    let before = |reason| n1.counter(reason);
    let (spoofed, vlan, not_ipv4) =
        (before("drop_spoofed")?, before("drop_vlan_tagged")?, before("drop_not_ipv4")?);
    let forged: Vec<Vec<u8>> = vec![
        // A frame from the neighbour's MAC (bridge FDB), with its own IPv4 source.
        datagram(gw_mac, victim_mac, "10.1.1.2", EXT),
        // A forged ARP reply to the node and a gratuitous one for the neighbour's address.
        arp(gw_mac, mac, ARP_REPLY, (mac, ip("10.1.1.3")), ip("10.1.1.1")).to_vec(),
        arp([0xff; 6], mac, ARP_REQUEST, (mac, ip("10.1.1.3")), ip("10.1.1.3")).to_vec(),
        // ARP claiming the gateway.
        arp([0xff; 6], mac, ARP_REPLY, (mac, ip("10.1.1.1")), ip("10.1.1.3")).to_vec(),
    ];
    let tagged_frames: Vec<Vec<u8>> = [EXT, "10.1.2.2"]
        .iter()
        .map(|dst| vlan_tagged(&datagram(gw_mac, mac, "10.1.1.2", dst), 100).to_vec())
        .collect();
    let ra = router_advertisement(mac).to_vec();
    let all: Vec<&[u8]> =
        forged.iter().chain(&tagged_frames).map(Vec::as_slice).chain([ra.as_slice()]).collect();
    send(&attacker, "veth_pod1", &all)?;

    let fdb = sh(&n1.netns, "bridge", &["fdb", "show", "br", "br0"])?;
    let owner = fdb.lines().find(|l| l.starts_with(&victim_mac_text)).unwrap_or_default();
    assert!(owner.contains("dev brveth_pod2"), "pod2's MAC stays on its port: {owner:?}\n{fdb}");
    let neigh = sh(&n1.netns, "ip", &["neigh", "show", "10.1.1.3"])?;
    assert!(neigh.contains(&victim_mac_text), "the node's neighbour entry for pod2 is pod2's: {neigh}");
    assert!(
        !sh(&n1.netns, "ip", &["neigh", "show", "10.1.1.3"])?.contains(&podnet::host::netlink::fmt_mac(&mac))
    );
    assert_eq!(n1.counter("drop_spoofed")? - spoofed, forged.len() as u64);
    assert_eq!(n1.counter("drop_vlan_tagged")? - vlan, 2);
    assert_eq!(n1.counter("drop_not_ipv4")? - not_ipv4, 1, "the router advertisement");
    // Controls, last: the node's own RA on its bridge reaches pod2 and the bridge's capture; a
    // frame the node tags (VLAN 200) itself leaves its uplink.
    send(&n1.netns, "br0", &[&router_advertisement(gw_mac)])?;
    let (_, uplink_mac) = link(&n1.netns, "eth0")?;
    let own_tagged = vlan_tagged(&datagram([0xff; 6], uplink_mac, "192.168.50.1", EXT), 200);
    send(&n1.netns, "eth0", &[&own_tagged])?;
    let from = |mac: [u8; 6]| format!("ether src {}", podnet::host::netlink::fmt_mac(&mac));
    for (ns, pcap, what) in [(&victim, &ra_before, "pod2"), (&n1.netns, &ra_node, "the node")] {
        assert_eq!(lab.wait_captured(ns, pcap, &from(gw_mac), 1)?, 1, "the node's RA reached {what}");
        assert_eq!(lab.count(ns, pcap, &from(mac))?, 0, "pod1's RA reached {what}");
    }
    assert_eq!(
        lab.wait_captured(&cluster.switch, &tagged, "vlan 200", 1)?,
        1,
        "the node's tagged frame left"
    );
    assert_eq!(lab.count(&cluster.switch, &tagged, "vlan 100")?, 0, "pod1's tagged frames left the node");
    // Pods have no IPv6 at all, so none could be configured from an RA either.
    assert_eq!(sh(&victim, "ip", &["-6", "-o", "addr"])?.trim(), "", "pod2 has IPv6 addresses");
    assert!(!sh(&n1.netns, "ip", &["-6", "-o", "addr"])?.contains("2001:db8"));
    // And the neighbourhood still works.
    assert!(pings(&n1.netns, "10.1.1.3", 1) && pings(&attacker, "10.1.1.3", 1));
    let _ = ext;
    Ok(())
}

/// Malformed IPv4 and martian destinations go nowhere: not to other nodes, not to the outside.
#[test]
fn malformed_and_martian_packets_go_nowhere() -> anyhow::Result<()> {
    let mut lab = Lab::new("isom")?;
    let (cluster, ext) = lab_cluster(&mut lab, "off")?;
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let attacker = n1.pod_ns("pod1");
    let (_, mac) = link(&attacker, "veth_pod1")?;
    let (_, gw_mac) = link(&n1.netns, "br0")?;
    let wire =
        lab.capture(&cluster.switch, "port1", &format!("udp port {MARK} or (ip[6:2] & 0x3fff != 0)"))?;
    let remote = lab.capture(&n2.pod_ns("pod1"), "veth_pod1", "udp")?;

    let mut malformed = Vec::new();
    for dst in [EXT, "10.1.2.2"] {
        let good = datagram(gw_mac, mac, "10.1.1.2", dst);
        let len = good.len() as u16 - 14;
        let mut ihl = good.clone();
        ihl[14] = 0x4f;
        let truncated_udp = with_macs(
            &ipv4(gw_mac, mac, ip("10.1.1.2"), ip(dst), 17, &[0x1e, 0x61, 0x1e, 0x61]),
            gw_mac,
            mac,
        );
        malformed.extend([
            with_tot_len(&good, len + 100).to_vec(),
            with_tot_len(&good, 19).to_vec(),
            ihl,
            truncated_udp,
        ]);
    }
    let martians: Vec<Vec<u8>> = ["0.0.0.0", "255.255.255.255", "224.0.0.1", "240.0.0.1"]
        .iter()
        .map(|dst| datagram(gw_mac, mac, "10.1.1.2", dst))
        .collect();
    let (bad_before, martian_before) = (n1.counter("drop_malformed")?, n1.counter("drop_martian")?);
    send(&attacker, "veth_pod1", &malformed.iter().chain(&martians).map(Vec::as_slice).collect::<Vec<_>>())?;
    let controls = [control(gw_mac, mac, "10.1.1.2", EXT), control(gw_mac, mac, "10.1.1.2", "10.1.2.2")];
    send(&attacker, "veth_pod1", &controls.iter().map(Vec::as_slice).collect::<Vec<_>>())?;

    assert_eq!(n1.counter("drop_malformed")? - bad_before, malformed.len() as u64);
    assert_eq!(n1.counter("drop_martian")? - martian_before, martians.len() as u64);
    assert_eq!(lab.wait_captured(&cluster.switch, &wire, CONTROL, 2)?, 2, "the controls left the node");
    assert_eq!(
        lab.count(&cluster.switch, &wire, &format!("not ({CONTROL})"))?,
        0,
        "nothing else left the node"
    );
    assert_eq!(
        lab.wait_captured(&n2.pod_ns("pod1"), &remote, CONTROL, 1)?,
        1,
        "the control reached node2's pod"
    );
    assert_eq!(lab.count(&n2.pod_ns("pod1"), &remote, &format!("not ({CONTROL})"))?, 0, "nothing else did");
    assert!(pings(&attacker, EXT, 1) && pings(&attacker, "10.1.2.2", 1), "normal traffic flows");
    let _ = ext;
    Ok(())
}

/// From the uplink only peers reach pods (and replies to the pods' own connections); a host
/// that routes the pod CIDR via the node gets nothing through until `allow_from` admits it, and
/// never with a forged local pod source.
#[test]
fn only_peers_reach_pods_from_outside() -> anyhow::Result<()> {
    in_every_xdp_mode(only_peers_reach_pods_from_outside_with)
}

fn only_peers_reach_pods_from_outside_with(xdp: &str) -> anyhow::Result<()> {
    let mut lab = Lab::new("isou")?;
    let (cluster, ext) = lab_cluster(&mut lab, xdp)?;
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    sh(&ext, "ip", &["route", "add", "10.1.1.0/24", "via", "192.168.50.1"])?;
    let pod = n1.pod_ns("pod1");
    let nc = lab.netcat()?;
    lab.spawn(&pod, "python3", &[&nc, "udp-echo", "10.1.1.2", "9999"])?;
    lab.http_server(&pod, 8080, "pod1")?;
    let seen = lab.capture(&pod, "veth_pod1", &format!("src host {EXT}"))?;

    let refused = n1.counter("drop_not_allowed")?;
    assert!(!pings(&ext, "10.1.1.2", 1), "ICMP from outside");
    assert!(sh(&ext, "python3", &[&nc, "udp-ask", "10.1.1.2", "9999", "hi"]).is_err(), "UDP from outside");
    assert!(podnet_tests::http_get(&ext, "http://10.1.1.2:8080/").is_err(), "TCP SYN from outside");
    assert!(n1.counter("drop_not_allowed")? - refused >= 3);
    // Peers and their pods still do; the pod's own connections out still get replies: the
    // outside host's echo reply is the control of the capture.
    assert!(pings(&n2.pod_ns("pod1"), "10.1.1.2", 1) && pings(&n2.netns, "10.1.1.2", 1));
    assert!(pings(&pod, EXT, 1));
    let reply = "icmp[icmptype] = icmp-echoreply";
    assert_eq!(lab.wait_captured(&pod, &seen, reply, 1)?, 1, "the reply to the pod's own ping arrived");
    assert_eq!(lab.count(&pod, &seen, &format!("not ({reply})"))?, 0, "the pod saw the outside host");

    // allow_from admits the host.
    let config = std::fs::read_to_string(&n1.config)?;
    std::fs::write(
        &n1.config,
        config.replace("[uplink]\n", &format!("[uplink]\nallow_from = [\"{EXT}/32\"]\n")),
    )?;
    n1.run_podnet(&["up"])?;
    assert!(pings(&ext, "10.1.1.2", 1), "admitted ICMP");
    assert_eq!(podnet_tests::http_get(&ext, "http://10.1.1.2:8080/")?, "pod1");

    // A priority tag (VLAN 0), which the stack would strip and route past every check, gets a
    // refused source nowhere either.
    let (_, ext_mac) = link(&ext, "eth0")?;
    let (_, uplink_mac) = link(&n1.netns, "eth0")?;
    let stranger = lab.netns("stranger")?;
    lab.plug(&cluster.switch, &stranger, "ports", "192.168.50.101/24")?;
    let (_, stranger_mac) = link(&stranger, "eth0")?;
    let tagged_seen = lab.capture(&pod, "veth_pod1", "src host 192.168.50.101")?;
    let tagged_before = n1.counter("drop_vlan_tagged")?;
    let tagged = vlan_tagged(&datagram(uplink_mac, stranger_mac, "192.168.50.101", "10.1.1.2"), 0);
    send(&stranger, "eth0", &[&tagged])?;
    assert_eq!(
        n1.counter("drop_vlan_tagged")? - tagged_before,
        1,
        "the priority-tagged datagram was dropped"
    );
    // Control: the reply to the pod's own ping of the stranger.
    assert!(pings(&pod, "192.168.50.101", 1));
    assert_eq!(lab.wait_captured(&pod, &tagged_seen, reply, 1)?, 1, "the stranger's echo reply arrived");
    assert_eq!(lab.count(&pod, &tagged_seen, "udp")?, 0, "a priority-tagged datagram reached the pod");

    // A forged local pod source never gets through, admitted or not.
    let forged = lab.capture(&pod, "veth_pod1", "src host 10.1.1.3")?;
    let spoofed = n1.counter("drop_spoofed")?;
    send(&ext, "eth0", &[&datagram(uplink_mac, ext_mac, "10.1.1.3", "10.1.1.2")])?;
    assert_eq!(n1.counter("drop_spoofed")? - spoofed, 1);
    // Control: the real neighbour's ping.
    assert!(pings(&n1.pod_ns("pod2"), "10.1.1.2", 1));
    assert_eq!(lab.wait_captured(&pod, &forged, "icmp", 1)?, 1, "pod2's ping arrived");
    assert_eq!(lab.count(&pod, &forged, "udp")?, 0, "a forged neighbour source reached the pod");
    Ok(())
}

/// What the fast path cannot translate is dropped, never sent with a pod's address: protocols
/// other than TCP, UDP and ICMP echo, too big without DF; fragments are translated. TTL 1 and
/// too big with DF get the node's ICMP answer. The NAT port range is reserved from the node's
/// own sockets.
#[test]
fn nothing_leaves_the_uplink_with_a_pod_address() -> anyhow::Result<()> {
    let mut lab = Lab::new("isoleak")?;
    let (cluster, ext) = lab_cluster(&mut lab, "off")?;
    let n1 = &cluster.nodes[0];
    let pod = n1.pod_ns("pod1");
    // One capture for both (so the last translated packet is the control of the rest).
    let wire = lab.capture(&ext, "eth0", "src net 10.1.0.0/16 or src host 192.168.50.1")?;
    let translated = "src host 192.168.50.1";
    let before = n1.counter("drop_not_natable")?;

    // A 3000-byte datagram leaves the pod as three fragments, translated; GRE is not.
    let send_py = "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_RAW if sys.argv[1]=='gre' else socket.SOCK_DGRAM, 47 if sys.argv[1]=='gre' else 0); s.sendto(b'x'*(24 if sys.argv[1]=='gre' else 3000), (sys.argv[2], 9))";
    sh(&pod, "python3", &["-c", send_py, "udp", EXT])?;
    sh(&pod, "python3", &["-c", send_py, "gre", EXT])?;
    // A smaller uplink MTU than the pods': too big without DF is dropped, with DF answered.
    sh(&n1.netns, "ip", &["link", "set", "eth0", "mtu", "1400"])?;
    // The datagram above left a cached route to EXT: the programs ask the FIB again within a
    // second (route and MTU changes made outside podnet reach established traffic in that time).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let dont = podnet_tests::in_ns(&pod, "ping")
        .args(["-c", "1", "-W", "1", "-M", "dont", "-s", "1450", EXT])
        .output()?;
    assert!(!dont.status.success(), "a non-DF 1478-byte ping cannot leave untranslated");
    let out = podnet_tests::in_ns(&pod, "ping")
        .args(["-c", "1", "-W", "1", "-M", "do", "-s", "1450", EXT])
        .output()?;
    let out = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.contains("Frag needed") || out.contains("mtu = 1400"), "frag-needed expected:\n{out}");
    let out = podnet_tests::in_ns(&pod, "ping").args(["-c", "1", "-W", "1", "-t", "1", EXT]).output()?;
    assert!(String::from_utf8_lossy(&out.stdout).contains("Time to live exceeded"), "TTL 1 is answered");

    assert_eq!(n1.counter("drop_not_natable")? - before, 1 + 1, "GRE, non-DF too big");
    assert!(
        lab.wait_captured(&ext, &wire, &format!("{translated} and ip[6:2] & 0x3fff != 0"), 3)? >= 3,
        "the datagram's fragments left as the node"
    );
    assert!(pings(&pod, EXT, 1), "translated traffic still flows");
    assert!(
        lab.wait_captured(&ext, &wire, &format!("{translated} and icmp[icmptype] = icmp-echo"), 1)? >= 1,
        "the capture sees the ping"
    );
    assert_eq!(lab.count(&ext, &wire, "src net 10.1.0.0/16")?, 0, "a pod address reached the outside");

    let reserved = || sh(&n1.netns, "sysctl", &["-n", "net.ipv4.ip_local_reserved_ports"]);
    assert_eq!(reserved()?.trim(), "61000-65535", "the NAT range is reserved on the node");
    n1.run_podnet(&["down"])?;
    assert_eq!(reserved()?.trim(), "", "down gives the range back");
    Ok(())
}

/// Pods' veths take the uplink's MTU; with a smaller MTU between the nodes (uplinks and switch
/// at 1400) pod-to-pod TCP across nodes works, also with pods configured larger (PMTUD: the node
/// answers "fragmentation needed" for what the fast path cannot send).
#[test]
fn pod_mtu_follows_the_uplink() -> anyhow::Result<()> {
    for pod_mtu in [None, Some(1500u32)] {
        let mut lab = Lab::new("isomtu")?;
        let switch = lab.switch("sw")?;
        let mut nodes = Vec::new();
        for k in [1u8, 2] {
            let extra = pod_mtu.map_or(String::new(), |m| format!("mtu = {m}\n"));
            let node = lab.node(
                &format!("node{k}"),
                &format!("{extra}{}", podnet_tests::node_config(k, &[3 - k], "off")),
            )?;
            lab.plug(&switch, &node.netns, &format!("port{k}"), &format!("192.168.50.{k}/24"))?;
            sh(&node.netns, "ip", &["link", "set", "eth0", "mtu", "1400"])?;
            sh(&switch, "ip", &["link", "set", &format!("port{k}"), "mtu", "1400"])?;
            node.run_podnet(&["up"])?;
            nodes.push(node);
        }
        let mtu_of = |ns: &str, ifname: &str| -> anyhow::Result<u64> {
            let json: serde_json::Value =
                serde_json::from_str(&sh(ns, "ip", &["-j", "link", "show", ifname])?)?;
            Ok(json[0]["mtu"].as_u64().unwrap_or(0))
        };
        let want = u64::from(pod_mtu.unwrap_or(1400));
        assert_eq!(mtu_of(&nodes[0].pod_ns("pod1"), "veth_pod1")?, want, "pod end");
        assert_eq!(mtu_of(&nodes[0].netns, "brveth_pod1")?, want, "host end");
        lab.iperf3_server(&nodes[1].pod_ns("pod1"), 5201)?;
        let iperf = podnet_tests::iperf3_tcp(&nodes[0].pod_ns("pod1"), "10.1.2.2", 5201, 2)?;
        assert!(iperf.bytes > 10_000_000, "pod MTU {want}: iperf3 moved only {} bytes", iperf.bytes);
    }
    Ok(())
}

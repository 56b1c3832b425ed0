//! Masquerade end to end: pods reach an "external host" (a namespace on the node's wire with no
//! route back to pod addresses) as the node, with podnet's own conntrack and no iptables rules.

use std::{
    thread,
    time::{Duration, Instant},
};

use podnet_tests::{Lab, Node, in_every_xdp_mode, node_config, pings, sh, wait_for, wait_udp_bound};

const EXT: &str = "192.168.50.100";

/// One node with NAT (extra `[nat]` settings appended), uplink XDP in mode `xdp`, and an external
/// host on its wire.
fn nat_node(lab: &mut Lab, nat: &str, xdp: &str) -> anyhow::Result<(Node, String)> {
    let switch = lab.switch("sw")?;
    let node = lab.node("node1", &format!("{}\n{nat}", node_config(1, &[], xdp)))?;
    lab.plug(&switch, &node.netns, "port1", "192.168.50.1/24")?;
    let ext = lab.netns("ext")?;
    lab.plug(&switch, &ext, "portx", &format!("{EXT}/24"))?;
    node.run_podnet(&["up"])?;
    Ok((node, ext))
}

fn translations(node: &Node) -> anyhow::Result<Vec<serde_json::Value>> {
    let json: serde_json::Value = serde_json::from_str(&node.run_podnet(&["nat", "list", "--json"])?)?;
    Ok(json.as_array().cloned().unwrap_or_default())
}

#[test]
fn pods_reach_the_outside_as_the_node() -> anyhow::Result<()> {
    in_every_xdp_mode(pods_reach_the_outside_as_the_node_with)
}

fn pods_reach_the_outside_as_the_node_with(xdp: &str) -> anyhow::Result<()> {
    let mut lab = Lab::new("nat")?;
    let (node, ext) = nat_node(&mut lab, "", xdp)?;
    let nc = lab.netcat()?;
    let pcap = lab.capture(&ext, "eth0", "ip")?;
    let pcap = pcap.as_str();
    lab.spawn(&ext, "python3", &[&nc, "http-whoami", EXT, "8080"])?;
    lab.spawn(&ext, "python3", &[&nc, "udp-echo", EXT, "9999"])?;
    wait_udp_bound(&ext, 9999)?;
    podnet_tests::wait_listening(&ext, 8080)?;
    let pod = node.pod_ns("pod1");

    let seen_as = podnet_tests::http_get(&pod, &format!("http://{EXT}:8080/"))?;
    assert_eq!(seen_as, "192.168.50.1", "the external server sees the node's address");
    assert_eq!(
        sh(&pod, "python3", &[&nc, "udp-ask", EXT, "9999", "hello"])?.trim(),
        "hello from 192.168.50.1"
    );
    assert!(pings(&pod, EXT, 2), "ping through NAT");

    let list = translations(&node)?;
    for proto in ["tcp", "udp", "icmp"] {
        assert!(
            list.iter()
                .any(|t| t["protocol"] == proto && t["node"].as_str().unwrap().starts_with("192.168.50.1:6")),
            "a {proto} translation to the node address in {list:?}"
        );
    }
    assert!(node.counter("redirect_nat_new")? >= 3 && node.counter("redirect_nat_reply")? >= 3);

    // The wire never carried a pod address; it did carry the node's.
    // tcpdump may lag behind on a busy machine: wait (at most 10 s) for the node's packets.
    let mut from_node = String::new();
    for _ in 0..100 {
        from_node = sh(&ext, "tcpdump", &["-n", "-r", pcap, "src host 192.168.50.1"])?;
        if from_node.lines().count() >= 6 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let from_pods = sh(&ext, "tcpdump", &["-n", "-r", pcap, "src net 10.1.0.0/16"])?;
    assert_eq!(from_pods.lines().count(), 0, "xdp {xdp}: pod-sourced packets on the wire:\n{from_pods}");
    assert!(from_node.lines().count() >= 6, "xdp {xdp}: the capture saw the node's packets:\n{from_node}");

    // No iptables or nftables rules anywhere in the node: this was all eBPF.
    assert_eq!(sh(&node.netns, "iptables-save", &[])?.trim(), "");
    assert_eq!(sh(&node.netns, "nft", &["list", "ruleset"])?.trim(), "");

    // Pod-to-pod and pod-to-node (the gateway on the bridge) are never translated.
    assert!(pings(&pod, "10.1.1.3", 1));
    assert!(pings(&pod, "10.1.1.1", 1));
    assert!(!pings(&pod, "10.1.1.99", 1), "no such pod");
    let remotes: Vec<_> =
        translations(&node)?.iter().map(|t| t["remote"].as_str().unwrap().to_owned()).collect();
    assert!(remotes.iter().all(|r| r.starts_with(EXT)), "only the external host is translated: {remotes:?}");

    node.run_podnet(&["nat", "flush"])?;
    assert!(translations(&node)?.is_empty());
    Ok(())
}

#[test]
fn a_thousand_connections_get_distinct_node_ports() -> anyhow::Result<()> {
    in_every_xdp_mode(a_thousand_connections_get_distinct_node_ports_with)
}

fn a_thousand_connections_get_distinct_node_ports_with(xdp: &str) -> anyhow::Result<()> {
    let mut lab = Lab::new("nat1k")?;
    let (node, ext) = nat_node(&mut lab, "", xdp)?;
    let nc = lab.netcat()?;
    let peers = lab.dir().join("peers.txt");
    lab.spawn(&ext, "python3", &[&nc, "tcp-record", EXT, "9000", peers.to_str().unwrap()])?;
    podnet_tests::wait_listening(&ext, 9000)?;

    let clients: Vec<_> = ["pod1", "pod2"]
        .into_iter()
        .map(|pod| {
            let (ns, nc) = (node.pod_ns(pod), nc.clone());
            thread::spawn(move || sh(&ns, "python3", &[&nc, "tcp-open", EXT, "9000", "500", "4"]))
        })
        .collect();
    for client in clients {
        assert_eq!(client.join().unwrap()?.trim(), "500", "every connection succeeded");
    }
    let seen = std::fs::read_to_string(&peers)?;
    let ports: std::collections::HashSet<&str> =
        seen.lines().map(|l| l.strip_prefix("192.168.50.1:").unwrap()).collect();
    assert_eq!(seen.lines().count(), 1000, "the server saw 1000 connections, all from the node address");
    assert_eq!(ports.len(), 1000, "each with its own node port");
    let tcp = translations(&node)?.iter().filter(|t| t["protocol"] == "tcp").count();
    assert!(tcp >= 1000, "{tcp} TCP translations listed");
    Ok(())
}

#[test]
fn exhausted_ports_fail_new_flows_cleanly() -> anyhow::Result<()> {
    in_every_xdp_mode(exhausted_ports_fail_new_flows_cleanly_with)
}

fn exhausted_ports_fail_new_flows_cleanly_with(xdp: &str) -> anyhow::Result<()> {
    let mut lab = Lab::new("natx")?;
    let (node, ext) = nat_node(&mut lab, "[nat]\nports = \"61000-61003\"\n", xdp)?;
    let nc = lab.netcat()?;
    lab.spawn(&ext, "python3", &[&nc, "tcp-echo", EXT, "9001"])?;
    podnet_tests::wait_listening(&ext, 9001)?;

    let out = sh(&node.pod_ns("pod1"), "python3", &[&nc, "tcp-exhaust", EXT, "9001", "4"])?;
    let result: serde_json::Value = serde_json::from_str(out.trim())?;
    assert_eq!(result["opened"], 4, "{result}");
    assert_ne!(result["extra"], "connected", "a fifth connection cannot get a port: {result}");
    assert_eq!(result["echoed"], 4, "the four existing connections keep working: {result}");
    assert!(node.counter("drop_nat_ports_exhausted")? > 0);
    for t in translations(&node)? {
        let port: u16 = t["node"].as_str().unwrap().rsplit(':').next().unwrap().parse()?;
        assert!((61000..=61003).contains(&port), "{t}");
    }
    Ok(())
}

#[test]
fn idle_translations_expire_with_the_agent() -> anyhow::Result<()> {
    in_every_xdp_mode(idle_translations_expire_with_the_agent_with)
}

fn idle_translations_expire_with_the_agent_with(xdp: &str) -> anyhow::Result<()> {
    let mut lab = Lab::new("nata")?;
    let (node, ext) = nat_node(&mut lab, "[nat]\nudp_timeout = 4\nicmp_timeout = 4\n", xdp)?;
    let nc = lab.netcat()?;
    lab.spawn(&ext, "python3", &[&nc, "udp-echo", EXT, "9999"])?;
    wait_udp_bound(&ext, 9999)?;
    lab.spawn_command(&mut node.podnet(&["agent", "--interval", "1"]))?;

    let pod = node.pod_ns("pod1");
    assert_eq!(sh(&pod, "python3", &[&nc, "udp-ask", EXT, "9999", "hi"])?.trim(), "hi from 192.168.50.1");
    assert!(pings(&pod, EXT, 1));
    // Both connections' last packets were before this instant.
    let idle_since = Instant::now();
    assert_eq!(translations(&node)?.len(), 2, "one UDP and one ICMP translation while active");
    let gone = wait_for("the idle translations to expire", Duration::from_secs(10), || {
        Ok(translations(&node)?.is_empty().then(|| idle_since.elapsed()))
    })?;
    // Idle for 4 s, then collected by the next sweep (every second): gone 4 to 5 s after their
    // last packet. At half the timeout they would go within 2 to 3 s.
    assert!(
        gone >= Duration::from_millis(3700),
        "the translations went {gone:?} after their last packet, before their 4 s timeout"
    );
    Ok(())
}

/// The node port of the one translation of `proto` from `pod` (an "ip:port" prefix match).
fn node_port_of(node: &Node, proto: &str, pod: &str) -> anyhow::Result<Option<String>> {
    Ok(translations(node)?
        .into_iter()
        .find(|t| t["protocol"] == proto && t["pod"].as_str().is_some_and(|p| p.starts_with(pod)))
        .and_then(|t| t["node"].as_str().map(str::to_owned)))
}

/// Waits (at most 10 s) until `path` holds a line `line`.
fn wait_for_line(path: &std::path::Path, line: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        if std::fs::read_to_string(path).is_ok_and(|t| t.lines().any(|l| l == line)) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("no line {line:?} in {} after 10 s", path.display())
}

/// One pod sprays 100,000 UDP flows into a small UDP table while another keeps an idle TCP
/// connection: the TCP connection keeps its translation and node port and still works, the full
/// table is counted, the agent collects at once, and new UDP flows work again afterwards.
#[test]
fn a_udp_flood_leaves_tcp_connections_alone() -> anyhow::Result<()> {
    let mut lab = Lab::new("natf")?;
    let (node, ext) = nat_node(&mut lab, "[nat]\nudp_icmp_table = 4096\n", "off")?;
    let nc = lab.netcat()?;
    lab.spawn(&ext, "python3", &[&nc, "tcp-echo", EXT, "7000"])?;
    lab.spawn(&ext, "python3", &[&nc, "udp-echo", EXT, "9999"])?;
    wait_udp_bound(&ext, 9999)?;
    podnet_tests::wait_listening(&ext, 7000)?;
    lab.agent(&node)?;
    let (pod1, pod2) = (node.pod_ns("pod1"), node.pod_ns("pod2"));
    let held = lab.dir().join("held");
    lab.spawn(&pod2, "python3", &[&nc, "tcp-hold", EXT, "7000", held.to_str().unwrap_or_default()])?;
    std::fs::write(held.with_extension("in"), "before\n")?;
    wait_for_line(&held.with_extension("out"), "before")?;
    let tcp_port = node_port_of(&node, "tcp", "10.1.1.3:")?.expect("pod2's TCP translation");

    let sent = sh(&pod1, "python3", &[&nc, "udp-spray", EXT, "20000", "100000"])?;
    assert_eq!(sent.trim(), "100000");
    assert!(node.counter("drop_nat_table_full")? > 0, "the UDP table filled up");
    let tables = node.status()?["nat_tables"].clone();
    let udp = tables.as_array().and_then(|ts| ts.iter().find(|t| t["table"] == "udp_icmp")).cloned();
    let field = |name: &str| udp.as_ref().map(|t| t[name].clone());
    assert_eq!(field("capacity"), Some(4096.into()), "status shows the table: {tables}");
    assert_eq!(field("pod_side_capacity"), Some(8192.into()), "and its pod sides: {tables}");
    let pod_sides = field("pod_sides").and_then(|n| n.as_u64()).unwrap_or(0);
    // Thousands, even once the agent's sweep for pressure took the table down to three quarters.
    assert!(pod_sides >= 1000, "and the spray's pod sides: {tables}");
    assert_eq!(node_port_of(&node, "tcp", "10.1.1.3:")?, Some(tcp_port), "pod2 keeps its translation");
    std::fs::write(held.with_extension("in"), "before\nafter\n")?;
    wait_for_line(&held.with_extension("out"), "after")?;

    // The agent dropped unanswered flows under pressure: a new UDP flow gets through.
    let mut answered = false;
    for _ in 0..20 {
        let out = podnet_tests::in_ns(&pod1, "python3").args([&nc, "udp-ask", EXT, "9999", "hi"]).output()?;
        if String::from_utf8_lossy(&out.stdout).trim() == "hi from 192.168.50.1" {
            answered = true;
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
    assert!(answered, "a new UDP flow works again after the flood");
    Ok(())
}

/// A client that shuts its sending side and waits 15 s for a slow server's answer keeps its
/// translation (one FIN is a half-close, not a close), with the agent sweeping every second; and
/// a pod's own source port is kept as the node port when it is in the range.
#[test]
fn a_half_closed_connection_waits_for_a_slow_server() -> anyhow::Result<()> {
    let mut lab = Lab::new("nath")?;
    let (node, ext) = nat_node(&mut lab, "", "off")?;
    let nc = lab.netcat()?;
    lab.spawn(&ext, "python3", &[&nc, "tcp-slow", EXT, "7001", "15"])?;
    lab.spawn(&ext, "python3", &[&nc, "udp-echo", EXT, "9999"])?;
    wait_udp_bound(&ext, 9999)?;
    podnet_tests::wait_listening(&ext, 7001)?;
    lab.agent(&node)?;
    let pod = node.pod_ns("pod1");

    assert_eq!(
        sh(&pod, "python3", &[&nc, "udp-ask", EXT, "9999", "hi", "61500"])?.trim(),
        "hi from 192.168.50.1"
    );
    assert_eq!(
        node_port_of(&node, "udp", "10.1.1.2:61500")?.as_deref(),
        Some("192.168.50.1:61500"),
        "sticky"
    );

    let answer = sh(&pod, "python3", &[&nc, "tcp-half-close", EXT, "7001", "hello"])?;
    assert_eq!(answer.trim(), "late answer to hello");
    Ok(())
}

/// ICMP errors reach pods through the NAT: UDP to a closed port of the external host is
/// "connection refused" in the pod, and a TCP transfer to a host behind a hop with a lower MTU
/// completes because the hop's "fragmentation needed" reaches the sender (path MTU discovery).
#[test]
fn icmp_errors_reach_pods_through_the_nat() -> anyhow::Result<()> {
    let mut lab = Lab::new("nati")?;
    let (node, ext) = nat_node(&mut lab, "", "off")?;
    let nc = lab.netcat()?;
    let pod = node.pod_ns("pod1");
    assert_eq!(sh(&pod, "python3", &[&nc, "udp-refused", EXT, "9"])?.trim(), "refused");

    // ext routes to a far host through a link of MTU 1280 (the far end keeps 1500, so its MSS
    // does not tell the sender); the node routes that network via ext.
    let far = lab.netns("far")?;
    sh(&ext, "ip", &["link", "add", "mtu0", "type", "veth", "peer", "name", "mtu1", "netns", &far])?;
    sh(&ext, "ip", &["addr", "add", "192.168.60.1/24", "dev", "mtu0"])?;
    sh(&ext, "ip", &["link", "set", "mtu0", "up", "mtu", "1280"])?;
    sh(&ext, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    sh(&far, "ip", &["addr", "add", "192.168.60.100/24", "dev", "mtu1"])?;
    sh(&far, "ip", &["link", "set", "mtu1", "up"])?;
    sh(&far, "ip", &["route", "add", "default", "via", "192.168.60.1"])?;
    sh(&node.netns, "ip", &["route", "add", "192.168.60.0/24", "via", EXT])?;
    lab.spawn(&far, "python3", &[&nc, "tcp-sink", "192.168.60.100", "7002"])?;
    podnet_tests::wait_listening(&far, 7002)?;
    let received = sh(&pod, "python3", &[&nc, "tcp-send", "192.168.60.100", "7002", "2000000"])?;
    assert_eq!(received.trim(), "2000000", "the whole transfer arrived");
    let learned = sh(&pod, "ip", &["route", "get", "192.168.60.100"])?;
    assert!(
        learned.contains("mtu 1280"),
        "the pod learned the path MTU from the translated error:\n{learned}"
    );
    Ok(())
}

/// A 3000-byte UDP datagram goes out in fragments, every one translated, and the 3000-byte
/// answer comes back in fragments into the pod; the external host never sees a pod address.
#[test]
fn fragmented_datagrams_cross_the_nat() -> anyhow::Result<()> {
    let mut lab = Lab::new("natg")?;
    let (node, ext) = nat_node(&mut lab, "", "off")?;
    let nc = lab.netcat()?;
    lab.spawn(&ext, "python3", &[&nc, "udp-echo", EXT, "9999"])?;
    wait_udp_bound(&ext, 9999)?;
    let pcap = lab.capture(&ext, "eth0", "ip")?;
    let big = "x".repeat(3000);
    let answer = sh(&node.pod_ns("pod1"), "python3", &[&nc, "udp-ask", EXT, "9999", &big])?;
    assert_eq!(answer.trim(), format!("{big} from 192.168.50.1"));
    // The answer's fragments, the exchange's last frames, mark that the capture has caught up.
    assert!(
        lab.wait_captured(&ext, &pcap, "ip[6:2] & 0x3fff != 0", 4)? >= 4,
        "fragments both ways on the wire"
    );
    assert_eq!(lab.count(&ext, &pcap, "src net 10.1.0.0/16")?, 0, "no pod address on the wire");
    Ok(())
}

/// A pod sending from a packet socket's TX ring (trafgen): the kernel leaves everything past the
/// Ethernet header in page fragments, so the NAT must pull the UDP header in before it reads the
/// ports (it used to drop such frames as malformed).
#[test]
fn frames_with_headers_in_fragments_are_masqueraded() -> anyhow::Result<()> {
    let mut lab = Lab::new("natfrag")?;
    let (node, ext) = nat_node(&mut lab, "", "off")?;
    let pod = node.pod_ns("pod1");
    assert!(pings(&pod, EXT, 1), "the gateway's MAC is known");
    let smac = podnet::host::netlink::fmt_mac(&podnet_tests::link(&pod, "veth_pod1")?.1);
    let gateway: serde_json::Value =
        serde_json::from_str(&sh(&pod, "ip", &["-j", "neigh", "show", "10.1.1.1", "dev", "veth_pod1"])?)?;
    let dmac = gateway[0]["lladdr"].as_str().unwrap().to_owned();
    let config = lab.dir().join("frames.cfg");
    std::fs::write(
        &config,
        format!(
            "{{ eth(da={dmac}, sa={smac}, type=0x0800), ipv4(sa=10.1.1.2, da={EXT}, ttl=64), \
             udp(sp=dinc(30000, 30009), dp=9), fill(0x41, 18) }}\n"
        ),
    )?;
    let pcap = lab.capture(&ext, "eth0", "udp and src host 192.168.50.1 and dst port 9")?;
    let malformed = node.counter("drop_malformed")?;
    sh(
        &pod,
        "trafgen",
        &["-o", "veth_pod1", "-i", config.to_str().unwrap(), "-n", "20", "-P", "1", "--no-sock-mem", "-Q"],
    )?;
    assert_eq!(lab.wait_captured(&ext, &pcap, "", 20)?, 20, "all 20 frames left as the node");
    assert_eq!(node.counter("drop_malformed")?, malformed, "none was taken for malformed");
    let udp = translations(&node)?.into_iter().filter(|t| t["protocol"] == "udp").count();
    assert_eq!(udp, 10, "one translation per flow");
    Ok(())
}

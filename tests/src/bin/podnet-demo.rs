//! The podnet demo (`cargo xtask demo`): a two-node cluster built entirely in network namespaces
//! (nodes on a switch, two pods each, an "external" host on the same wire), proving pod traffic
//! rides the eBPF datapath on nodes whose iptables FORWARD policy drops everything, that pods
//! reach the outside masqueraded as their node, that a podman container joins through podnet's
//! CNI plugin, and that a pod can be only itself. Everything is removed at the end.

use std::time::Instant;

use anyhow::{Context as _, ensure};
use podnet_tests::{
    Lab, Node, cluster, http_get, iperf3_tcp, link, namespaces_with_prefix,
    packets::{send, udp4_checksummed, with_macs},
    podman::Podman,
    sh,
};

fn title(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

fn ping(from: &str, to: &str) -> anyhow::Result<()> {
    let out = sh(from, "ping", &["-c", "3", "-i", "0.2", "-W", "1", to])?;
    let rtt = out.lines().find(|l| l.starts_with("rtt")).unwrap_or("").replace("rtt min/avg/max/mdev", "rtt");
    println!("  {from} -> {to}: 3/3 answered, {rtt}");
    Ok(())
}

fn iperf3_tcp_to(lab: &mut Lab, server_ns: &str, client_ns: &str) -> anyhow::Result<podnet_tests::Iperf> {
    lab.iperf3_server(server_ns, 5203)?;
    iperf3_tcp(client_ns, "192.168.50.100", 5203, 3)
}

fn counters(node: &Node) -> anyhow::Result<String> {
    let status = node.status()?;
    let moved: Vec<String> = status["counters"]
        .as_array()
        .context("counters")?
        .iter()
        .filter(|c| c["packets"].as_u64() > Some(0))
        .map(|c| format!("{}={}", c["reason"].as_str().unwrap_or("?"), c["packets"]))
        .collect();
    Ok(moved.join("  "))
}

fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let prefix;
    {
        let mut lab = Lab::new("demo")?;
        prefix = lab.prefix().to_owned();
        title("Two nodes (namespaces) on a switch, two pods each, built by `podnet up` on each node");
        let cluster = cluster(&mut lab, "", &[&[2], &[1]], "off")?;
        let nodes = &cluster.nodes;
        let (n1, n2) = (&nodes[0], &nodes[1]);
        let ext = lab.netns("external")?;
        lab.plug(&cluster.switch, &ext, "portx", "192.168.50.100/24")?;
        println!("  external host ({ext}): 192.168.50.100, no route to any pod address");
        for (k, node) in nodes.iter().enumerate() {
            println!(
                "  node{} ({}): uplink eth0 192.168.50.{}, pods 10.1.{}.2 and 10.1.{}.3",
                k + 1,
                node.netns,
                k + 1,
                k + 1,
                k + 1
            );
        }

        title("Both nodes are locked down like Kubernetes nodes");
        for node in nodes {
            node.forward_drop()?;
        }
        println!(
            "  iptables FORWARD policy DROP, bridge-nf-call-iptables=1: the kernel would drop pod traffic."
        );

        title("ping: same node, then across nodes");
        ping(&n1.pod_ns("pod1"), "10.1.1.3")?;
        ping(&n1.pod_ns("pod1"), "10.1.2.2")?;
        ping(&n2.pod_ns("pod2"), "10.1.1.3")?;

        title("HTTP across nodes");
        lab.http_server(&n2.pod_ns("pod1"), 8080, "hello from node2/pod1\n")?;
        let body = http_get(&n1.pod_ns("pod1"), "http://10.1.2.2:8080/")?;
        println!("  node1/pod1 GET http://10.1.2.2:8080/ -> {body:?}");
        ensure!(body == "hello from node2/pod1\n", "unexpected body");

        title("iperf3, 3 s, one TCP stream (cubic)");
        lab.iperf3_server(&n1.pod_ns("pod2"), 5201)?;
        lab.iperf3_server(&n2.pod_ns("pod1"), 5202)?;
        for (what, to, port) in [("same node ", "10.1.1.3", 5201), ("cross node", "10.1.2.2", 5202)] {
            let r = iperf3_tcp(&n1.pod_ns("pod1"), to, port, 3)?;
            println!(
                "  {what}: node1/pod1 -> {to}: {:.1} Gbit/s, {} retransmits",
                r.bits_per_second / 1e9,
                r.retransmits
            );
        }

        title("NAT: pods reach the external host as their node (eBPF masquerade, no iptables rules)");
        let nc = lab.netcat()?;
        lab.spawn(&ext, "python3", &[&nc, "http-whoami", "192.168.50.100", "8080"])?;
        podnet_tests::wait_listening(&ext, 8080)?;
        for node in nodes {
            let seen = http_get(&node.pod_ns("pod1"), "http://192.168.50.100:8080/")?;
            println!("  {}: the external server saw the client as {seen}", node.pod_ns("pod1"));
        }
        ping(&n1.pod_ns("pod2"), "192.168.50.100")?;
        let r = iperf3_tcp_to(&mut lab, &ext, &n1.pod_ns("pod1"))?;
        println!("  iperf3 node1/pod1 -> external: {:.1} Gbit/s", r.bits_per_second / 1e9);
        let rules = sh(&n1.netns, "iptables-save", &[])?.lines().filter(|l| l.starts_with("-A")).count();
        println!("  iptables rules in node1: {rules} (the FORWARD DROP policy is its only setting)");
        println!("\n  podnet nat list (node1):\n{}", n1.run_podnet(&["nat", "list"])?);

        title("A podman container joins node1 through podnet's CNI plugin (the agent runs on node1)");
        lab.agent(n1)?;
        let podman = Podman::new(n1, lab.dir().join("podman"))?;
        podman.start("web", &["httpd", "-f", "-p", "8080", "-h", "/www"])?;
        let web = podman.ip("web")?;
        println!("  podman run --network podnet ... web: {web} (an address from podnet's IPAM)");
        let body = http_get(&n2.pod_ns("pod1"), &format!("http://{web}:8080/"))?;
        println!("  node2/pod1 GET http://{web}:8080/ -> {body:?}");
        let seen = podman.exec("web", &["wget", "-q", "-O", "-", "http://192.168.50.100:8080/"])?;
        println!("  the container reaches the external host, which sees {seen}");
        ensure!(seen == "192.168.50.1", "the container was not masqueraded");

        title("Isolation: a pod can be only itself, and outsiders do not reach pods");
        let attacker = n1.pod_ns("pod1");
        let (_, mac) = link(&attacker, "veth_pod1")?;
        let (_, gw_mac) = link(&n1.netns, "br0")?;
        let forged = udp4_checksummed(
            ("10.1.1.3".parse()?, 5353),
            ("192.168.50.100".parse()?, 5353),
            b"as my neighbour",
        );
        let spoofed = n1.counter("drop_spoofed")?;
        send(&attacker, "veth_pod1", &[&with_macs(&forged, gw_mac, mac)])?;
        println!(
            "  node1/pod1 sends a datagram with pod2's address: dropped on its own veth \
             (drop_spoofed +{})",
            n1.counter("drop_spoofed")? - spoofed
        );
        sh(&ext, "ip", &["route", "add", "10.1.0.0/16", "via", "192.168.50.1"])?;
        let refused = n1.counter("drop_not_allowed")?;
        let answered = podnet_tests::pings(&ext, "10.1.1.2", 1);
        println!(
            "  the external host routes pods via node1 and pings 10.1.1.2: {} (drop_not_allowed +{})",
            if answered { "answered!" } else { "no answer" },
            n1.counter("drop_not_allowed")? - refused
        );
        ensure!(!answered, "an outside host reached a pod");

        title("What the datapath did (`podnet status` on node1)");
        println!("{}", n1.run_podnet(&["status"])?);
        println!("\n  counters that moved, node1: {}", counters(n1)?);
        println!("  counters that moved, node2: {}", counters(n2)?);
        println!("  (FORWARD would have dropped all of it: none of it crossed the bridge or iptables.)");

        title("Inspect it yourself");
        println!("  bpftool map dump pinned {}/ENDPOINTS", n1.pin_dir().display());
        println!("  bpftool map dump pinned {}/PEERS", n1.pin_dir().display());
        let dump = std::process::Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(n1.pin_dir().join("PEERS"))
            .output()
            .context("bpftool")?;
        print!("{}", String::from_utf8_lossy(&dump.stdout));

        title("Also there, not shown here");
        println!(
            "  The XDP prefilter on the uplink (`[uplink] xdp = \"native\"`, `podnet deny add CIDR`) is off by"
        );
        println!(
            "  default: on veth uplinks it costs more than it saves (BENCHMARKS.md). An XDP fast path is open work."
        );
        title("Cleaning up");
    }
    let left = namespaces_with_prefix(&prefix);
    ensure!(left.is_empty(), "namespaces left behind: {left:?}");
    println!("  all namespaces, links and pins removed; demo took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

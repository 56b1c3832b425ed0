//! Several nodes (namespaces) on one wire (a switch namespace): pods reach pods on other nodes
//! through podnet's eBPF routing, nodes are added and removed at runtime, and what the fast path
//! leaves to the kernel (TTL expiry, oversized packets) still gets the right ICMP answer.

use podnet_tests::{Lab, Node, cluster, http_get, in_every_xdp_mode, iperf3_tcp, pings, sh};

/// (namespace, address) of both pods of `node` number `k`.
fn pods(node: &Node, k: u8) -> [(String, String); 2] {
    [(node.pod_ns("pod1"), format!("10.1.{k}.2")), (node.pod_ns("pod2"), format!("10.1.{k}.3"))]
}

#[test]
fn two_nodes_route_pods_in_ebpf_while_forward_drops() -> anyhow::Result<()> {
    in_every_xdp_mode(two_nodes_route_pods_in_ebpf_while_forward_drops_with)
}

fn two_nodes_route_pods_in_ebpf_while_forward_drops_with(xdp: &str) -> anyhow::Result<()> {
    let mut lab = Lab::new("x2")?;
    let nodes = cluster(&mut lab, "", &[&[2], &[1]], xdp)?.nodes;
    for node in &nodes {
        node.forward_drop()?;
    }
    let all: Vec<(String, String)> = pods(&nodes[0], 1).into_iter().chain(pods(&nodes[1], 2)).collect();
    for (ns, ip) in &all {
        lab.http_server(ns, 8080, &format!("hello from {ip}"))?;
    }
    for (from, _) in &all {
        for (_, to) in all.iter().filter(|(ns, _)| ns != from) {
            assert!(pings(from, to, 1), "{from} -> {to} ping");
            assert_eq!(
                http_get(from, &format!("http://{to}:8080/"))?,
                format!("hello from {to}"),
                "{from} -> {to}"
            );
        }
    }

    let (n1, n2) = (&nodes[0], &nodes[1]);
    // Delivered from the uplink by tc, or by XDP in "+deliver" modes (GSO super-packets still
    // by tc there: a devmap redirect refuses frames over the pod veth's MTU).
    let delivered_by = |node: &Node| -> anyhow::Result<u64> {
        Ok(node.counter("redirect_from_uplink")? + node.counter("xdp_redirect_local")?)
    };
    let remote_before = n1.counter("redirect_remote")?;
    let delivered_before = delivered_by(n2)?;
    let at_xdp_before = n2.counter("xdp_redirect_local")?;
    lab.iperf3_server(&n2.pod_ns("pod1"), 5201)?;
    let iperf = iperf3_tcp(&n1.pod_ns("pod1"), "10.1.2.2", 5201, 2)?;
    assert!(iperf.bytes > 10_000_000, "iperf3 moved only {} bytes", iperf.bytes);
    let routed = n1.counter("redirect_remote")? - remote_before;
    let delivered = delivered_by(n2)? - delivered_before;
    let at_xdp = n2.counter("xdp_redirect_local")? - at_xdp_before;
    if xdp.ends_with("+deliver") {
        assert!(at_xdp > 0, "XDP delivered nothing (tc delivered {delivered})");
    } else {
        assert_eq!(at_xdp, 0, "XDP delivered without xdp_deliver");
    }
    // Every data segment (at most 64 KiB) was routed by node1's from_pod and delivered by
    // node2's from_uplink; ACKs went the other way through the same programs.
    assert!(routed >= iperf.bytes / 65_536, "node1 routed {routed} packets for {} bytes", iperf.bytes);
    assert!(
        delivered >= iperf.bytes / 65_536,
        "node2 delivered {delivered} packets for {} bytes",
        iperf.bytes
    );
    for node in &nodes {
        assert_eq!(node.counter("pass_no_route")?, 0);
    }
    Ok(())
}

#[test]
fn nodes_join_and_leave_at_runtime() -> anyhow::Result<()> {
    in_every_xdp_mode(nodes_join_and_leave_at_runtime_with)
}

fn nodes_join_and_leave_at_runtime_with(xdp: &str) -> anyhow::Result<()> {
    let mut lab = Lab::new("x3")?;
    // node1 and node2 know each other; node3 knows both but is not known yet.
    let nodes = cluster(&mut lab, "", &[&[2], &[1], &[1, 2]], xdp)?.nodes;
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let (n1pod, n3pod) = (n1.pod_ns("pod1"), n3.pod_ns("pod1"));
    assert!(pings(&n1pod, "10.1.2.2", 1));
    assert!(!pings(&n1pod, "10.1.3.2", 1), "node3 is not known to node1 yet");

    for node in [n1, n2] {
        node.run_podnet(&["node", "add", "node3", "--ip", "192.168.50.3", "--pod-cidr", "10.1.3.0/24"])?;
    }
    let peers = n1.status()?["peers"].clone();
    assert!(peers.as_array().unwrap().iter().any(|p| p["name"] == "node3" && p["pod_cidr"] == "10.1.3.0/24"));
    assert!(pings(&n1pod, "10.1.3.2", 1), "node1 -> node3 after node add");
    assert!(pings(&n3pod, "10.1.2.2", 1), "node3 -> node2 after node add");

    let err =
        n1.podnet(&["node", "add", "dup", "--ip", "192.168.50.9", "--pod-cidr", "10.1.3.0/25"]).output()?;
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("overlaps 10.1.3.0/24 of node \"node3\""));

    n1.run_podnet(&["node", "del", "node3"])?;
    assert!(!pings(&n1pod, "10.1.3.2", 1), "node3's pods are unreachable from node1 after node del");
    assert!(pings(&n1pod, "10.1.2.2", 1), "node1 -> node2 still works");
    assert!(pings(&n3pod, "10.1.2.2", 1), "node3 -> node2 still works");
    assert!(!sh(&n1.netns, "ip", &["route"])?.contains("10.1.3.0/24"), "node del removes the kernel route");
    Ok(())
}

/// What a refused `node add` must leave as it was: the peer map, the node's routes, its record.
fn peer_state(node: &Node) -> anyhow::Result<(serde_json::Value, String, String)> {
    let record = std::fs::read_to_string(format!("/var/lib/podnet/{}/node.json", node.name))?;
    Ok((node.map_dump("PEERS")?, sh(&node.netns, "ip", &["route"])?, record))
}

#[test]
fn a_refused_peer_changes_nothing() -> anyhow::Result<()> {
    let mut lab = Lab::new("xr")?;
    let nodes = cluster(&mut lab, "", &[&[2]], "off")?.nodes;
    let n1 = &nodes[0];
    // A route the operator made: podnet does not replace it.
    sh(&n1.netns, "ip", &["route", "add", "10.1.8.0/24", "via", "192.168.50.99"])?;
    let before = peer_state(n1)?;
    // (ip, pod CIDR, what the refusal says)
    let refused = [
        ("0.0.0.0", "10.1.9.0/24", "0.0.0.0 is 0.0.0.0/8"),
        ("127.0.0.1", "10.1.9.0/24", "127.0.0.1 is loopback"),
        ("224.0.0.5", "10.1.9.0/24", "224.0.0.5 is multicast"),
        ("255.255.255.255", "10.1.9.0/24", "is reserved or broadcast"),
        ("192.168.50.1", "10.1.9.0/24", "192.168.50.1 is already another node's address"),
        ("192.168.50.2", "10.1.9.0/24", "192.168.50.2 is already another node's address"),
        ("10.1.1.2", "10.1.9.0/24", "10.1.1.2 lies in this node's pod_cidr"),
        ("10.1.2.2", "10.1.9.0/24", "10.1.2.2 lies in 10.1.2.0/24 of node \"node2\""),
        ("192.168.50.9", "0.0.0.0/0", "0.0.0.0/0 overlaps 0.0.0.0/8"),
        ("192.168.50.9", "10.1.1.128/25", "overlaps this node's pod_cidr"),
        ("192.168.50.9", "10.1.2.0/23", "overlaps 10.1.2.0/24 of node \"node2\""),
        ("192.168.50.9", "192.168.50.128/28", "overlaps 192.168.50.0/24, a network of the uplink"),
        // Valid to every check, but not on the uplink's network: the kernel refuses the route.
        ("192.168.99.9", "10.1.9.0/24", "Network is unreachable"),
        ("192.168.50.9", "10.1.8.0/24", "a route to 10.1.8.0/24 exists already (via 192.168.50.99)"),
    ];
    for via in ["the CLI", "the agent"] {
        if via == "the agent" {
            lab.agent(n1)?;
        }
        for (ip, cidr, why) in refused {
            let out = n1.podnet(&["node", "add", "bad", "--ip", ip, "--pod-cidr", cidr]).output()?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{ip} {cidr} accepted through {via}");
            assert!(stderr.contains(why), "{ip} {cidr} through {via}: {stderr}");
            assert_eq!(peer_state(n1)?, before, "{ip} {cidr} through {via} changed the node");
        }
        let out = n1
            .podnet(&["node", "add", "node2", "--ip", "192.168.50.9", "--pod-cidr", "10.1.9.0/24"])
            .output()?;
        assert!(String::from_utf8_lossy(&out.stderr).contains("node name"), "a second node2 ({via})");
        assert_eq!(peer_state(n1)?, before);
    }
    Ok(())
}

#[test]
fn the_stack_answers_what_the_fast_path_leaves() -> anyhow::Result<()> {
    in_every_xdp_mode(the_stack_answers_what_the_fast_path_leaves_with)
}

fn the_stack_answers_what_the_fast_path_leaves_with(xdp: &str) -> anyhow::Result<()> {
    let mut lab = Lab::new("xs")?;
    let nodes = cluster(&mut lab, "", &[&[2], &[1]], xdp)?.nodes;
    let n1 = &nodes[0];
    let pod = n1.pod_ns("pod1");

    let ttl_before = n1.counter("pass_ttl_expiring")?;
    let out = in_ns_output(&pod, &["ping", "-c", "1", "-W", "1", "-t", "1", "10.1.2.2"]);
    assert!(out.contains("Time to live exceeded"), "ICMP time exceeded expected:\n{out}");
    assert!(n1.counter("pass_ttl_expiring")? > ttl_before);

    // A smaller uplink MTU: a 1450-byte datagram with DF set cannot leave; the node says so.
    sh(&n1.netns, "ip", &["link", "set", "eth0", "mtu", "1400"])?;
    let frag_before = n1.counter("pass_frag_needed")?;
    let out = in_ns_output(&pod, &["ping", "-c", "1", "-W", "1", "-M", "do", "-s", "1450", "10.1.2.2"]);
    assert!(out.contains("Frag needed") || out.contains("mtu = 1400"), "ICMP frag-needed expected:\n{out}");
    assert!(n1.counter("pass_frag_needed")? > frag_before);
    assert!(pings(&pod, "10.1.2.2", 1), "small packets still flow");
    Ok(())
}

/// stdout and stderr of a command in `ns` that is expected to fail (ping with errors).
fn in_ns_output(ns: &str, cmd: &[&str]) -> String {
    let out = podnet_tests::in_ns(ns, cmd[0]).args(&cmd[1..]).output().expect("command runs");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

//! Nodes find each other through a real etcd: they lease distinct pod CIDRs, become each other's
//! peers, drop a node whose lease runs out, take their CIDR back after a restart, keep
//! forwarding (and flap nothing) while etcd is down, and refuse clearly what cannot be.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use podnet_tests::{
    Lab, Node,
    etcd::{Certs, Etcd},
    iperf3_tcp_at, pings,
};

const ETCD_IP: &str = "192.168.50.250";
/// Short, so that a stopped agent's lease runs out within the test.
const TTL: u64 = 3;

/// Config body of cluster node `k`: no pod CIDR, no peers, two pods without addresses, and
/// `[cluster]` with `etcd`'s endpoint and the settings `cluster`.
fn member_config(k: u8, etcd: &Etcd, cluster: &str) -> String {
    format!(
        "[uplink]\ninterface = \"eth0\"\nip = \"192.168.50.{k}\"\n\n\
         [cluster]\netcd = [\"{}\"]\n{cluster}\n\
         [[pod]]\nname = \"pod1\"\n\n[[pod]]\nname = \"pod2\"\n",
        etcd.endpoint()
    )
}

/// A lab with a switch that also holds etcd's address, and etcd running on it (with `tls`, on
/// https and requiring client certificates).
fn etcd_lab(tag: &str, tls: bool) -> anyhow::Result<(Lab, String, Etcd)> {
    let mut lab = Lab::new(tag)?;
    let switch = lab.switch("sw")?;
    podnet_tests::sh(&switch, "ip", &["addr", "add", &format!("{ETCD_IP}/24"), "dev", "sw0"])?;
    let certs = tls.then(|| Certs::make(&lab.dir().join("pki"), "podnet-test-ca", ETCD_IP)).transpose()?;
    let etcd = Etcd::start(&mut lab, &switch, ETCD_IP, certs)?;
    Ok((lab, switch, etcd))
}

/// Node `k` on `switch`, a member of `etcd`'s cluster with the settings `cluster`.
fn member(lab: &mut Lab, switch: &str, etcd: &Etcd, k: u8, cluster: &str) -> anyhow::Result<Node> {
    let node = lab.node(&format!("node{k}"), &member_config(k, etcd, cluster))?;
    lab.plug(switch, &node.netns, &format!("port{k}"), &format!("192.168.50.{k}/24"))?;
    Ok(node)
}

/// The address pod `pod` of `node` holds.
fn pod_ip(node: &Node, pod: &str) -> anyhow::Result<String> {
    let status = node.status()?;
    status["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["pod"] == pod)
        .and_then(|e| e["ip"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("{} has no pod {pod}: {status}", node.name))
}

/// `node`'s peers as (name, pod CIDR, source).
fn peers(node: &Node) -> anyhow::Result<Vec<(String, String, String)>> {
    let status = node.status()?;
    let mut peers: Vec<_> = status["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let field = |f: &str| p[f].as_str().unwrap_or_default().to_owned();
            (field("name"), field("pod_cidr"), field("source"))
        })
        .collect();
    peers.sort();
    Ok(peers)
}

fn peer_names(node: &Node) -> anyhow::Result<Vec<String>> {
    Ok(peers(node)?.into_iter().map(|(name, ..)| name).collect())
}

/// Waits (at most `secs`) until `node`'s peers are exactly `names`.
fn wait_peers(node: &Node, names: &[&str], secs: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut want: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    want.sort();
    loop {
        let have = peer_names(node)?;
        if have == want {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(secs),
            "{}'s peers are {have:?} after {secs} s, not {want:?}",
            node.name
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn kill(signal: &str, pid: u32) -> anyhow::Result<()> {
    podnet_tests::run(std::process::Command::new("kill").args([signal, &pid.to_string()])).map(drop)
}

#[test]
fn nodes_lease_cidrs_and_find_each_other_through_etcd() -> anyhow::Result<()> {
    let (mut lab, switch, mut etcd) = etcd_lab("cl", false)?;
    let cluster = format!("cluster_cidr = \"10.1.0.0/16\"\nnode_prefix = 24\nlease_ttl = {TTL}\n");
    let nodes: Vec<Node> =
        (1..=3).map(|k| member(&mut lab, &switch, &etcd, k, &cluster)).collect::<Result<_, _>>()?;
    let mut agents = Vec::new();
    for node in &nodes {
        agents.push(lab.agent(node)?);
    }
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();

    // Distinct CIDRs out of the cluster range, and a full mesh of cluster peers.
    let mut cidrs = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let others: Vec<&str> = names.iter().copied().filter(|n| *n != node.name).collect();
        wait_peers(node, &others, 5)?;
        assert!(peers(node)?.iter().all(|(.., source)| source == "cluster"), "{:?}", peers(node)?);
        let ip: std::net::Ipv4Addr = pod_ip(node, "pod1")?.parse()?;
        let cidr = ipnet::Ipv4Net::new(ip, 24)?.trunc();
        assert!("10.1.0.0/16".parse::<ipnet::Ipv4Net>()?.contains(&cidr), "node {i}: {cidr}");
        cidrs.push(cidr);
    }
    let mut distinct = cidrs.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{cidrs:?}");
    for from in &nodes {
        for to in nodes.iter().filter(|n| n.name != from.name) {
            for pod in ["pod1", "pod2"] {
                let ip = pod_ip(to, pod)?;
                assert!(
                    pings(&from.pod_ns("pod1"), &ip, 1),
                    "{} pod1 -> {} {pod} ({ip})",
                    from.name,
                    to.name
                );
            }
        }
    }
    // The text status names where peers came from.
    assert!(nodes[0].run_podnet(&["status"])?.contains("cluster"));
    // The keys are documented JSON, readable with etcdctl.
    let keys = etcd.get_prefix("/podnet/")?;
    assert_eq!(keys.len(), 6, "a subnet key and a node key per node: {keys:?}");
    for (key, value) in &keys {
        let value: serde_json::Value = serde_json::from_str(value)?;
        let node = value["node"].as_str().unwrap_or_default();
        assert!(names.contains(&node), "{key}: {value}");
        let cidr = value["pod_cidr"].as_str().unwrap_or_default();
        assert!(
            *key == format!("/podnet/nodes/{node}")
                || *key == format!("/podnet/subnets/{}", cidr.replace('/', "-")),
            "{key}: {value}"
        );
    }

    // An agent that stops: its lease runs out and the others drop it; its datapath stays.
    let (n1, n3) = (&nodes[0], &nodes[2]);
    kill("-TERM", agents[2])?;
    let gone = wait_peers(n1, &names[1..2], TTL + 7)?;
    wait_peers(&nodes[1], &names[..1], 3)?;
    assert!(!pings(&n1.pod_ns("pod1"), &pod_ip(n3, "pod1")?, 1), "a node out of the cluster is no peer");
    // Restarted, it takes its CIDR back and the others take it back.
    let n3_agent = lab.agent(n3)?;
    wait_peers(n1, &names[1..], 5)?;
    let back: std::net::Ipv4Addr = pod_ip(n3, "pod1")?.parse()?;
    assert!(cidrs[2].contains(&back), "node3 came back with {back}, not in {}", cidrs[2]);
    assert!(pings(&n1.pod_ns("pod1"), &back.to_string(), 1));

    // etcd killed under a pod-to-pod stream: nothing drops, no peer goes.
    let n2 = &nodes[1];
    lab.iperf3_server(&n2.pod_ns("pod1"), 5201)?;
    let target = pod_ip(n2, "pod1")?;
    let ping = lab.fast_ping(&n1.pod_ns("pod2"), &target, 12)?;
    let iperf = thread::scope(|s| -> anyhow::Result<_> {
        let stream = s.spawn(|| iperf3_tcp_at(&n1.pod_ns("pod1"), &target, 5201, 8, "2G"));
        thread::sleep(Duration::from_secs(2));
        etcd.kill()?;
        // Down for longer than a lease lives: the agents must not read that as nodes leaving.
        thread::sleep(Duration::from_secs(TTL + 2));
        assert_eq!(peer_names(n1)?, names[1..], "peers while etcd is down");
        anyhow::ensure!(ping.running(), "the ping ran all through the outage");
        stream.join().unwrap_or_else(|_| Err(anyhow::anyhow!("iperf3 thread panicked")))
    })?;
    iperf.never_stalled("the stream while etcd was down", 10_000_000)?;
    let summary = ping.wait_output(Duration::from_secs(20))?;
    assert_eq!(podnet_tests::ping_loss(&summary), Some(0.0), "pod to pod lost packets:\n{summary}");
    // An agent restarted while etcd is still down goes on with the CIDR it remembers.
    kill("-TERM", agents[1])?;
    podnet_tests::wait_for("the stopped agent's socket to go", Duration::from_secs(10), || {
        Ok((!n2.agent_socket().exists()).then_some(()))
    })?;
    lab.agent(n2)?;
    let log = std::fs::read_to_string(lab.agent_log(n2))?;
    assert!(log.contains(&format!("going on with pod CIDR {}", cidrs[1])), "{log}");
    etcd.restart(&mut lab)?;
    // A fourth node joins once etcd is back, and everyone reaches it.
    let n4 = member(&mut lab, &switch, &etcd, 4, &cluster)?;
    lab.agent(&n4)?;
    let all: Vec<&str> = names.iter().copied().chain([n4.name.as_str()]).collect();
    wait_peers(n1, &all[1..], 20)?;
    wait_peers(n2, &[all[0], all[2], all[3]], 20)?;
    let n4_pod = pod_ip(&n4, "pod1")?;
    assert!(pings(&n1.pod_ns("pod1"), &n4_pod, 3), "node1 -> node4 ({n4_pod})");
    assert!(pings(&n4.pod_ns("pod1"), &pod_ip(n2, "pod2")?, 1), "node4 -> node2");
    // etcd wiped (a new, empty store): every node leases its CIDR again under a new lease. node3
    // comes back a second late (its agent stopped): the others must not read that as leaving.
    etcd.kill()?;
    etcd.wipe()?;
    kill("-STOP", n3_agent)?;
    etcd.restart(&mut lab)?;
    thread::sleep(Duration::from_secs(1));
    kill("-CONT", n3_agent)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while etcd.get_prefix("/podnet/subnets/")?.len() < 4 {
        anyhow::ensure!(Instant::now() < deadline, "the nodes did not lease again within 15 s");
        thread::sleep(Duration::from_millis(200));
    }
    thread::sleep(Duration::from_secs(TTL + 1));
    wait_peers(n1, &all[1..], 1)?;
    assert!(pings(&n1.pod_ns("pod1"), &n4_pod, 1), "node1 -> node4 after the wipe");
    // No flapping: node1 saw node3 leave once (its agent stopped) and nobody else, outages and
    // the wipe included.
    let log = std::fs::read_to_string(lab.agent_log(n1))?;
    let left: Vec<&str> = log.lines().filter(|l| l.contains("left the cluster")).collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].contains(&n3.name), "{left:?}");
    eprintln!("a stopped node left its peers after {gone:?} (lease_ttl {TTL} s)");
    Ok(())
}

#[test]
fn what_the_cluster_cannot_give_is_refused_clearly() -> anyhow::Result<()> {
    let (mut lab, switch, etcd) = etcd_lab("clr", false)?;
    // Room for four nodes.
    let small = "cluster_cidr = \"10.2.0.0/22\"\nnode_prefix = 24\nlease_ttl = 30\n";
    let a = lab.node("nodea", &format!("pod_cidr = \"10.2.0.0/24\"\n{}", member_config(1, &etcd, small)))?;
    lab.plug(&switch, &a.netns, "porta", "192.168.50.1/24")?;
    let a_agent = lab.agent(&a)?;
    // Values nobody should trust (two of them take the last free CIDRs), and a node out of reach.
    let poser = format!(r#"{{"node":"{}","node_ip":"192.168.50.1","pod_cidr":"10.2.3.0/24"}}"#, a.name);
    // A whole claim (both keys under one lease, as an agent writes them) of a node out of reach.
    let far = r#"{"node":"far","node_ip":"203.0.113.9","pod_cidr":"10.2.2.0/24"}"#;
    let far_lease = format!("--lease={}", etcd.grant(60)?);
    etcd.ctl(&["put", &far_lease, "/podnet/subnets/10.2.2.0-24", far])?;
    etcd.ctl(&["put", &far_lease, "/podnet/nodes/far", far])?;
    let hostile = [
        ("/podnet/subnets/10.2.0.64-26", "not json".to_owned()),
        (
            "/podnet/subnets/10.2.1.5-24",
            r#"{"node":"evil","node_ip":"192.168.50.69","pod_cidr":"10.2.1.5/24"}"#.to_owned(),
        ),
        ("/podnet/subnets/10.2.3.0-24", poser),
        (
            "/podnet/subnets/10.9.0.0-24",
            r#"{"node":"evil","node_ip":"192.168.50.66","pod_cidr":"10.9.0.0/24"}"#.to_owned(),
        ),
        (
            "/podnet/subnets/10.2.0.128-25",
            r#"{"node":"evil","node_ip":"192.168.50.67","pod_cidr":"10.2.0.128/25"}"#.to_owned(),
        ),
        (
            "/podnet/subnets/10.2.9.9-99",
            r#"{"node":"evil","node_ip":"192.168.50.68","pod_cidr":"10.2.9.9/32"}"#.to_owned(),
        ),
    ];
    for (key, value) in &hostile {
        etcd.ctl(&["put", key, value])?;
    }
    let b = member(&mut lab, &switch, &etcd, 2, small)?;
    let b_agent = lab.agent(&b)?;
    assert_eq!(pod_ip(&b, "pod1")?.rsplit_once('.').map(|(net, _)| net), Some("10.2.1"));
    wait_peers(&b, &[&a.name], 5)?;
    let log = podnet_tests::wait_for(
        "b's agent to say it ignores every hostile key",
        Duration::from_secs(10),
        || {
            let log = std::fs::read_to_string(lab.agent_log(&b))?;
            Ok(hostile.iter().all(|(key, _)| log.contains(&format!("ignoring {key:?}:"))).then_some(log))
        },
    )?;
    assert_eq!(peer_names(&b)?, std::slice::from_ref(&a.name), "only the genuine node is b's peer");
    for (key, _) in &hostile {
        assert!(log.contains(&format!("ignoring {key:?}:")), "{key} not ignored:\n{log}");
    }
    // The node without a route is left out, and did not stop `a` from being b's peer.
    assert!(log.contains("cluster peer far (10.2.2.0/24 via 203.0.113.9) left out for now"), "{log}");

    // A lease revoked behind the node's back: it leases its CIDR again, its pods keep their
    // addresses.
    let record = std::path::Path::new("/var/lib/podnet").join(&b.name).join("lease.json");
    let lease = |_: ()| -> anyhow::Result<i64> {
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&record)?)?;
        json["lease"].as_i64().ok_or_else(|| anyhow::anyhow!("no lease in {json}"))
    };
    let revoked = lease(())?;
    etcd.ctl(&["lease", "revoke", &format!("{revoked:x}")])?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while lease(())? == revoked || etcd.get_prefix("/podnet/subnets/10.2.1.0-24")?.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "b did not lease its CIDR again within 5 s");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(pod_ip(&b, "pod1")?.rsplit_once('.').map(|(net, _)| net), Some("10.2.1"));
    // Its name key deleted behind its back: it writes it again, under its lease.
    let name_key = format!("/podnet/nodes/{}", b.name);
    etcd.ctl(&["del", &name_key])?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while etcd.get_prefix(&name_key)?.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "b did not restore {name_key} within 5 s");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(pod_ip(&b, "pod1")?.rsplit_once('.').map(|(net, _)| net), Some("10.2.1"));

    let refused = |node: &Node, expected: &str| -> anyhow::Result<()> {
        let out = node.podnet(&["agent"]).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{}: {stderr}", node.name);
        assert!(!node.pin_dir().exists(), "{} built something", node.name);
        assert!(!std::path::Path::new("/var/lib/podnet").join(&node.name).join("lease.json").exists());
        Ok(())
    };
    // The range is full.
    let c = member(&mut lab, &switch, &etcd, 3, small)?;
    refused(&c, "has no free /24 left")?;
    // A configured CIDR another node holds.
    let d = lab.node("noded", &format!("pod_cidr = \"10.2.1.0/24\"\n{}", member_config(4, &etcd, small)))?;
    lab.plug(&switch, &d.netns, "portd", "192.168.50.4/24")?;
    refused(&d, &format!("10.2.1.0/24 is leased by node \"{}\"", b.name))?;
    // A name that a live lease of another address holds (a's agent is gone; its lease lives on).
    kill("-TERM", a_agent)?;
    let impostor = lab.netns("impostor")?;
    lab.plug(&switch, &impostor, "porti", "192.168.50.5/24")?;
    let state = lab.dir().join("impostor-state");
    let config = lab.dir().join("impostor.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nname = \"{}\"\nstate_dir = \"{}\"\n{}",
            a.name,
            state.display(),
            member_config(5, &etcd, small)
        ),
    )?;
    let out = std::process::Command::new(podnet_tests::podnet_bin())
        .args(["--netns", &impostor, "--config", config.to_str().unwrap_or_default(), "agent"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("is held by a live lease of the node at 192.168.50.1"),
        "{stderr}"
    );
    assert!(!state.join(&a.name).join("lease.json").exists());
    // `down` gives a's lease back: its keys go at once, not after the TTL.
    for (key, _) in &hostile {
        etcd.ctl(&["del", key])?;
    }
    etcd.ctl(&["del", "/podnet/subnets/10.2.2.0-24"])?;
    etcd.ctl(&["del", "/podnet/nodes/far"])?;
    let down = a.podnet(&["down"]).output()?;
    assert!(down.status.success(), "{down:?}");
    assert!(
        !String::from_utf8_lossy(&down.stderr).contains("WARN"),
        "down could not give the lease back: {down:?}"
    );
    let left = etcd.get_prefix("/podnet/nodes/")?;
    assert_eq!(
        left.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        [format!("/podnet/nodes/{}", b.name)]
    );
    wait_peers(&b, &[], 3)?;
    // A node whose lease record is lost still comes down, completely.
    kill("-TERM", b_agent)?;
    podnet_tests::wait_for("b's agent to stop", Duration::from_secs(10), || {
        Ok((!b.agent_socket().exists()).then_some(()))
    })?;
    std::fs::remove_file(&record)?;
    b.run_podnet(&["down"])?;
    assert!(!b.pin_dir().exists(), "down left b's pins");
    Ok(())
}

/// The subnet key of `cidr` ("10.1.2.0/24").
fn subnet_key(cidr: &str) -> String {
    format!("/podnet/subnets/{}", cidr.replace('/', "-"))
}

#[test]
fn an_etcd_writer_cannot_move_a_node() -> anyhow::Result<()> {
    let (mut lab, switch, etcd) = etcd_lab("cla", false)?;
    let cluster = "cluster_cidr = \"10.1.0.0/16\"\nnode_prefix = 24\nlease_ttl = 10\n";
    let nodes: Vec<Node> =
        (1..=3).map(|k| member(&mut lab, &switch, &etcd, k, cluster)).collect::<Result<_, _>>()?;
    for node in &nodes {
        lab.agent(node)?;
    }
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let mut cidrs = Vec::new();
    for node in &nodes {
        let others: Vec<&str> = names.iter().copied().filter(|n| *n != node.name).collect();
        wait_peers(node, &others, 5)?;
        let ip: std::net::Ipv4Addr = pod_ip(node, "pod1")?.parse()?;
        cidrs.push(ipnet::Ipv4Net::new(ip, 24)?.trunc().to_string());
    }
    // The victim v: the node whose subnet key sorts last, so that a free CIDR's key sorts first.
    let k = (0..3).max_by_key(|&i| subnet_key(&cidrs[i])).context("three nodes")?;
    let (v, v_cidr, v_ip) = (&nodes[k], cidrs[k].clone(), format!("192.168.50.{}", k + 1));
    let others: Vec<&Node> = nodes.iter().filter(|n| n.name != v.name).collect();
    let forged_cidr = (0..=255)
        .map(|x| format!("10.1.{x}.0/24"))
        .find(|c| !cidrs.contains(c) && subnet_key(c) < subnet_key(&v_cidr))
        .context("a free CIDR whose key sorts first")?;
    let v_pods = (pod_ip(v, "pod1")?, pod_ip(v, "pod2")?);
    let (v_subnet, v_name) = (subnet_key(&v_cidr), format!("/podnet/nodes/{}", v.name));
    let honest = etcd.entry(&v_subnet)?.context("v's subnet key")?;
    assert_eq!(etcd.entry(&v_name)?.as_ref(), Some(&honest), "v's keys: one value, one lease");
    let v_lease = format!("--lease={}", honest.1);
    let forged = format!(r#"{{"node":"{}","node_ip":"{v_ip}","pod_cidr":"{forged_cidr}"}}"#, v.name);
    let evil = format!(r#"{{"node":"evil","node_ip":"192.168.50.66","pod_cidr":"{v_cidr}"}}"#);
    let evil_lease = format!("--lease={}", etcd.grant(60)?);
    let forged_key = subnet_key(&forged_cidr);

    let seconds = 16;
    let flows = [
        lab.fast_ping(&others[0].pod_ns("pod1"), &v_pods.0, seconds)?,
        lab.fast_ping(&others[1].pod_ns("pod1"), &v_pods.1, seconds)?,
        lab.fast_ping(&v.pod_ns("pod1"), &pod_ip(others[0], "pod1")?, seconds)?,
    ];
    let put = |lease: &str, key: &str, value: &str| format!("put {lease} {key} '{value}'");
    let attacks: Vec<(&str, Vec<String>)> = vec![
        ("v's subnet key overwritten with another name and next hop", vec![put("", &v_subnet, &evil)]),
        ("the same, under another lease", vec![put(&evil_lease, &v_subnet, &evil)]),
        ("v's subnet key deleted", vec![format!("del {v_subnet}")]),
        ("v's name key deleted", vec![format!("del {v_name}")]),
        ("both of v's keys deleted at once", vec![format!("del {v_subnet}"), format!("del {v_name}")]),
        (
            "a whole claim of another node written over v's keys at once",
            vec![
                put(&evil_lease, &v_subnet, &evil),
                format!("del {v_name}"),
                put(&evil_lease, "/podnet/nodes/evil", &evil),
            ],
        ),
        (
            "a subnet key sorting first with v's name, address and lease",
            vec![put(&v_lease, &forged_key, &forged)],
        ),
        ("v's name key made to match that one", vec![put(&v_lease, &v_name, &forged)]),
    ];
    for (attack, ops) in &attacks {
        etcd.txn(ops)?;
        podnet_tests::wait_for(
            &format!("v to write its keys back after: {attack}"),
            Duration::from_secs(5),
            || {
                let whole = etcd.entry(&v_subnet)?.as_ref() == Some(&honest)
                    && etcd.entry(&v_name)?.as_ref() == Some(&honest);
                Ok(whole.then_some(()))
            },
        )?;
        thread::sleep(Duration::from_millis(300));
        assert_eq!(pod_ip(v, "pod1")?, v_pods.0, "v's pods moved after: {attack}");
    }
    anyhow::ensure!(flows.iter().all(podnet_tests::Proc::running), "the pings outlived the attacks");
    for flow in &flows {
        let summary = flow.wait_output(Duration::from_secs(u64::from(seconds) + 10))?;
        assert_eq!(podnet_tests::ping_loss(&summary), Some(0.0), "pings lost during the attacks:\n{summary}");
    }
    assert_eq!((pod_ip(v, "pod1")?, pod_ip(v, "pod2")?), v_pods, "v's pods kept their addresses");
    for node in &others {
        assert!(peers(node)?.contains(&(v.name.clone(), v_cidr.clone(), "cluster".to_owned())));
        let routes = podnet_tests::sh(&node.netns, "ip", &["route"])?;
        assert!(routes.contains(&format!("{v_cidr} via {v_ip}")), "{}: {routes}", node.name);
        assert!(!routes.contains(&forged_cidr), "{}: {routes}", node.name);
        let log = std::fs::read_to_string(lab.agent_log(node))?;
        assert!(!log.contains("left the cluster"), "{} dropped a peer:\n{log}", node.name);
    }
    let v_routes = podnet_tests::sh(&v.netns, "ip", &["route"])?;
    assert!(!v_routes.contains(&format!("{v_cidr} via")), "v routes its own CIDR away: {v_routes}");
    let v_log = std::fs::read_to_string(lab.agent_log(v))?;
    assert!(v_log.contains("deleted or overwritten by another writer; writing back"), "{v_log}");
    assert!(!v_log.contains("lost its lease"), "{v_log}");
    Ok(())
}

/// Whether `url` answers `curl` from namespace `ns` within `secs` seconds.
fn answers_within(ns: &str, url: &str, secs: u32) -> bool {
    podnet_tests::in_ns(ns, "curl")
        .args(["-s", "--fail", "--max-time", &secs.to_string(), "-o", "/dev/null", url])
        .status()
        .is_ok_and(|s| s.success())
}

fn answers(ns: &str, url: &str) -> bool {
    answers_within(ns, url, 2)
}

#[test]
fn pods_stay_off_the_control_plane() -> anyhow::Result<()> {
    let (mut lab, switch, etcd) = etcd_lab("clp", false)?;
    let ext = lab.netns("ext")?;
    lab.plug(&switch, &ext, "portx", "192.168.50.200/24")?;
    lab.http_server(&ext, 8080, "outside")?;
    lab.http_server(&ext, 8081, "outside too")?;
    let cluster = "cluster_cidr = \"10.1.0.0/16\"\nnode_prefix = 24\n";
    let settings = |open: bool| {
        format!(
            "\n[agent]\nmetrics = \"0.0.0.0:9101\"\n\n[isolation]\npods_reach_control_plane = {open}\n\
             pods_never_reach = [\"192.168.50.200:8080\"]\n"
        )
    };
    let mut nodes = Vec::new();
    for k in 1..=2 {
        let node = member(&mut lab, &switch, &etcd, k, cluster)?;
        std::fs::write(&node.config, std::fs::read_to_string(&node.config)? + &settings(false))?;
        nodes.push(node);
    }
    let (node, other) = (&nodes[0], &nodes[1]);
    // The node has an address on another link too (a management NIC); and a service of its own
    // that pods may use.
    for args in [
        // (A veth pair: this kernel has no dummy devices.)
        &["link", "add", "mgmt0", "type", "veth", "peer", "name", "mgmt1"][..],
        &["addr", "add", "172.30.0.1/32", "dev", "mgmt0"],
        &["link", "set", "mgmt0", "up"],
        &["link", "set", "mgmt1", "up"],
    ] {
        podnet_tests::sh(&node.netns, "ip", args)?;
    }
    lab.http_server(&node.netns, 8000, "the node's own service")?;
    for n in &nodes {
        lab.agent(n)?;
    }
    wait_peers(node, &[&other.name], 10)?;
    wait_peers(other, &[&node.name], 10)?;
    let pod = node.pod_ns("pod1");
    let gateway = format!("{}.1", pod_ip(node, "pod1")?.rsplit_once('.').context("an IPv4 address")?.0);
    let etcd_url = format!("{}/version", etcd.endpoint());
    let metrics: Vec<String> = [gateway.as_str(), "192.168.50.1", "172.30.0.1"]
        .iter()
        .map(|ip| format!("http://{ip}:9101/metrics"))
        .collect();
    let outside = "http://192.168.50.200:8080/";
    let denied: Vec<&str> = metrics.iter().map(String::as_str).chain([etcd_url.as_str(), outside]).collect();
    // The node reaches all of it; pods, its own and the other node's, none of it.
    for url in &denied {
        assert!(answers(&node.netns, url), "the node reaches {url}");
    }
    let from = [
        (pod.clone(), denied.clone()),
        (other.pod_ns("pod1"), metrics[..2].iter().map(String::as_str).collect()),
    ];
    for (ns, urls) in &from {
        for url in urls {
            let before = node.counter("drop_denied_destination")?;
            assert!(!answers_within(ns, url, 1), "{ns} reaches {url}");
            assert!(
                node.counter("drop_denied_destination")? > before,
                "{ns} -> {url}: not counted as denied"
            );
        }
        // Controls: what is not denied answers them.
        assert!(answers(ns, &format!("http://{gateway}:8000/")), "{ns} reaches the node's own service");
    }
    assert!(answers(&pod, "http://192.168.50.200:8081/"), "another port of that host is not denied");
    // The operator opens the control plane to pods: its own list still holds.
    std::fs::write(
        &node.config,
        std::fs::read_to_string(&node.config)?
            .replace("pods_reach_control_plane = false", "pods_reach_control_plane = true"),
    )?;
    node.run_podnet(&["up"])?;
    assert!(answers(&pod, &etcd_url), "pods reach etcd once the operator says so");
    assert!(answers(&pod, &metrics[0]), "and the metrics");
    assert!(!answers_within(&pod, outside, 1), "pods_never_reach still holds");
    Ok(())
}

/// etcd's access control as README's "Trust model" sets it up: a role per node. The nodes work
/// under it, and one node's credentials cannot touch another node's name key; what they may
/// still write (another node's subnet key) the owner writes back, and nobody's pods notice.
#[test]
fn etcd_roles_keep_each_node_to_its_own_keys() -> anyhow::Result<()> {
    let (mut lab, switch, etcd) = etcd_lab("clx", true)?;
    let certs = etcd.tls.clone().expect("a TLS etcd");
    let names: Vec<String> = (1..=2).map(|k| format!("{}-node{k}", lab.prefix())).collect();
    let mut identities = Vec::new();
    for name in &names {
        identities.push(certs.client_cert(&lab.dir().join("pki").join(name), name)?);
    }
    etcd.grant_node_roles(&names.iter().map(String::as_str).collect::<Vec<_>>())?;
    let mut nodes = Vec::new();
    for (k, (cert, key)) in (1..=2).zip(&identities) {
        let cluster = format!(
            "cluster_cidr = \"10.3.0.0/16\"\nnode_prefix = 24\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            certs.ca.display(),
            cert.display(),
            key.display()
        );
        let node = member(&mut lab, &switch, &etcd, k, &cluster)?;
        anyhow::ensure!(node.name == names[usize::from(k) - 1]);
        lab.agent(&node)?;
        nodes.push(node);
    }
    let (n1, n2) = (&nodes[0], &nodes[1]);
    wait_peers(n1, &[&n2.name], 10)?;
    wait_peers(n2, &[&n1.name], 10)?;
    let target = pod_ip(n1, "pod1")?;
    let n1_cidr = format!("{}/24", ipnet::Ipv4Net::new(target.parse()?, 24)?.trunc().network());
    let (n1_subnet, n1_name) = (subnet_key(&n1_cidr), format!("/podnet/nodes/{}", n1.name));
    let honest = etcd.entry(&n1_subnet)?.context("node1's subnet key")?;
    let ping = lab.fast_ping(&n2.pod_ns("pod1"), &target, 6)?;

    // node2's credentials: node1's name key, and any other, are out of reach.
    let as_node2 = &identities[1];
    let evil = format!(r#"{{"node":"{}","node_ip":"192.168.50.2","pod_cidr":"{n1_cidr}"}}"#, n2.name);
    for key in [n1_name.as_str(), "/podnet/nodes/evil"] {
        let refused =
            etcd.ctl_as(as_node2, &["put", key, &evil]).expect_err("a put to another node's name key");
        assert!(refused.to_string().contains("permission denied"), "{key}: {refused:#}");
    }
    assert_eq!(etcd.entry(&n1_name)?.as_ref(), Some(&honest), "node1's name key is untouched");
    // The subnet keys are everyone's to create: node2 may overwrite node1's, which node1 writes
    // back while its name key keeps it believed.
    etcd.ctl_as(as_node2, &["put", &n1_subnet, &evil])?;
    podnet_tests::wait_for("node1 to write its subnet key back", Duration::from_secs(5), || {
        Ok((etcd.entry(&n1_subnet)?.as_ref() == Some(&honest)).then_some(()))
    })?;
    let summary = ping.wait_output(Duration::from_secs(20))?;
    assert_eq!(podnet_tests::ping_loss(&summary), Some(0.0), "node2's pod lost node1's:\n{summary}");
    assert_eq!(pod_ip(n1, "pod1")?, target, "node1's pods kept their addresses");
    Ok(())
}

#[test]
fn etcd_over_tls_with_client_certificates() -> anyhow::Result<()> {
    let (mut lab, switch, etcd) = etcd_lab("clt", true)?;
    let certs = etcd.tls.clone().expect("a TLS etcd");
    let settings = |client: bool| {
        let mut c =
            format!("cluster_cidr = \"10.3.0.0/16\"\nnode_prefix = 24\nca = \"{}\"\n", certs.ca.display());
        if client {
            c +=
                &format!("cert = \"{}\"\nkey = \"{}\"\n", certs.client.0.display(), certs.client.1.display());
        }
        c
    };
    let n1 = member(&mut lab, &switch, &etcd, 1, &settings(true))?;
    let n2 = member(&mut lab, &switch, &etcd, 2, &settings(true))?;
    lab.agent(&n1)?;
    lab.agent(&n2)?;
    wait_peers(&n1, &[&n2.name], 5)?;
    assert!(pings(&n1.pod_ns("pod1"), &pod_ip(&n2, "pod1")?, 1));
    assert_eq!(etcd.get_prefix("/podnet/nodes/")?.len(), 2);
    // Without a client certificate etcd refuses the node: it keeps trying, says so, builds nothing.
    let n3 = member(&mut lab, &switch, &etcd, 3, &settings(false))?;
    let agent = lab.child(&mut n3.podnet(&["agent"]))?;
    let text =
        podnet_tests::wait_for("the refused agent to say it tries again", Duration::from_secs(10), || {
            let text = agent.errors()?;
            Ok(text.contains("trying to join again").then_some(text))
        })?;
    agent.kill();
    assert!(text.contains("trying to join again"), "{text}");
    assert!(!n3.pin_dir().exists());
    Ok(())
}

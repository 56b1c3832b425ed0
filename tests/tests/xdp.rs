//! The uplink's XDP programs end to end: a flood from a deny-listed external host dies at XDP
//! (the counter moves, the pod sees nothing) while allowed traffic flows, and `deny del` restores
//! it; native delivery is refused on a veth uplink; XDP settings change in place on `up`.
//! (Delivery at XDP itself runs in every cross-node and NAT scenario, mode "generic+deliver".)

use std::{thread, time::Duration};

use anyhow::Context as _;
use podnet::host::netns;
use podnet_tests::{Lab, Node, in_ns, node_config, pings, sh};

/// Node 1's config in XDP mode `xdp`, admitting the hosts on its wire to its pods (they route
/// the pod CIDR via the node).
fn config(xdp: &str) -> String {
    node_config(1, &[], xdp).replace("[uplink]\n", "[uplink]\nallow_from = [\"192.168.50.0/24\"]\n")
}

/// Node 1 (XDP mode `xdp`, one of `XDP_MODES`) on a new switch, not up yet.
fn node_on_a_switch(lab: &mut Lab, xdp: &str) -> anyhow::Result<(String, Node)> {
    let switch = lab.switch("sw")?;
    let node = lab.node("node1", &config(xdp))?;
    lab.plug(&switch, &node.netns, "port1", "192.168.50.1/24")?;
    Ok((switch, node))
}

#[test]
fn deny_list_drops_a_flood_at_xdp() -> anyhow::Result<()> {
    for xdp in ["native", "generic"] {
        deny_list_with(xdp).with_context(|| format!("uplink xdp = {xdp}"))?;
    }
    Ok(())
}

fn deny_list_with(xdp: &str) -> anyhow::Result<()> {
    let mut lab = Lab::new("xdp")?;
    let (switch, node) = node_on_a_switch(&mut lab, xdp)?;
    let (bad, good) = (lab.netns("bad")?, lab.netns("good")?);
    for (ns, ip, port) in [(&bad, "192.168.50.100/24", "portb"), (&good, "192.168.50.101/24", "portg")] {
        lab.plug(&switch, ns, port, ip)?;
        // These hosts route to the pods through the node (as a router upstream would).
        sh(ns, "ip", &["route", "add", "10.1.1.0/24", "via", "192.168.50.1"])?;
    }
    node.run_podnet(&["up"])?;
    let status = node.status()?;
    assert!(
        status["programs"].as_array().unwrap().iter().any(|p| p["hook"] == format!("xdp {xdp}")),
        "status shows the XDP link: {status}"
    );
    assert!(pings(&bad, "10.1.1.2", 1), "before the deny list, the host reaches the pod");

    node.run_podnet(&["deny", "add", "192.168.50.100/32"])?;
    assert_eq!(node.run_podnet(&["deny", "list"])?.trim(), "192.168.50.100/32");
    let pod = node.pod_ns("pod1");
    let pcap = lab.capture(&pod, "veth_pod1", "src host 192.168.50.100")?;
    let pcap = pcap.as_str();

    let dropped_before = node.counter("xdp_drop_denied")?;
    // A flood ping for 3 s (no answer will come, so ping paces itself at 100-1000 per second).
    let out = in_ns(&bad, "ping").args(["-f", "-i", "0.001", "-w", "3", "-q", "10.1.1.2"]).output()?;
    let out = String::from_utf8_lossy(&out.stdout);
    let sent: u64 = out
        .split(" packets transmitted")
        .next()
        .and_then(|s| s.rsplit(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("ping output: {out}"))?;
    let dropped = node.counter("xdp_drop_denied")? - dropped_before;
    assert!(sent >= 100, "the flood sent only {sent} packets");
    assert!(dropped >= sent, "XDP dropped {dropped} of {sent} flood packets");
    assert!(pings(&good, "10.1.1.2", 2), "an allowed host still reaches the pod");
    thread::sleep(Duration::from_millis(300));
    let seen = sh(&pod, "tcpdump", &["-n", "-r", pcap])?;
    assert_eq!(seen.lines().count(), 0, "the pod saw denied packets:\n{seen}");

    node.run_podnet(&["deny", "del", "192.168.50.100/32"])?;
    assert!(node.run_podnet(&["deny", "list"])?.trim().is_empty());
    assert!(pings(&bad, "10.1.1.2", 1), "deny del restores the host");
    Ok(())
}

/// Native XDP delivery from a veth uplink would hand pods frames whose offloaded checksums were
/// never filled in: `up` refuses it, says what to do instead, and leaves nothing behind.
#[test]
fn native_delivery_on_a_veth_uplink_is_refused() -> anyhow::Result<()> {
    let mut lab = Lab::new("xdpveth")?;
    let (_, node) = node_on_a_switch(&mut lab, "native+deliver")?;
    let err = node.run_podnet(&["up"]).expect_err("native delivery on a veth uplink must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("eth0 is a veth") && msg.contains("xdp = \"generic\""), "{msg}");
    assert!(!node.pin_dir().exists(), "a refused `up` rolled back its pins");
    assert!(!netns::exists(&node.pod_ns("pod1")), "a refused `up` rolled back its pods");
    Ok(())
}

/// Re-running `up` with another `[uplink] xdp` / `xdp_deliver` swaps the uplink's XDP program in
/// place (prefilter, prefilter + delivery, none) and traffic keeps flowing in each.
#[test]
fn xdp_settings_change_in_place() -> anyhow::Result<()> {
    let mut lab = Lab::new("xdpswap")?;
    let (switch, node) = node_on_a_switch(&mut lab, "generic")?;
    let host = lab.netns("host")?;
    lab.plug(&switch, &host, "porth", "192.168.50.100/24")?;
    sh(&host, "ip", &["route", "add", "10.1.1.0/24", "via", "192.168.50.1"])?;
    let body = std::fs::read_to_string(&node.config)?;
    for (mode, program) in
        [("generic", Some("uplink_filter")), ("generic+deliver", Some("uplink_deliver")), ("off", None)]
    {
        std::fs::write(&node.config, body.replace(&config("generic"), &config(mode)))?;
        node.run_podnet(&["up"])?;
        let status = node.status()?;
        let xdp: Vec<&serde_json::Value> = status["programs"]
            .as_array()
            .context("status lists programs")?
            .iter()
            .filter(|p| p["hook"].as_str().is_some_and(|h| h.starts_with("xdp")))
            .collect();
        let attached: Vec<&str> = xdp.iter().filter_map(|p| p["program"].as_str()).collect();
        assert_eq!(attached, program.into_iter().collect::<Vec<_>>(), "{mode}: {status}");
        // Re-running `up` swaps the program inside the same XDP link: no gap, no new link.
        let link_ids = |status: &serde_json::Value| -> Vec<serde_json::Value> {
            status["programs"].as_array().into_iter().flatten().map(|p| p["link_id"].clone()).collect()
        };
        node.run_podnet(&["up"])?;
        assert_eq!(link_ids(&node.status()?), link_ids(&status), "{mode}: re-up kept every link");
        assert!(pings(&host, "10.1.1.2", 1), "{mode}: the host reaches the pod");
    }
    Ok(())
}

/// A new `[uplink] interface` moves the uplink programs to it; the old uplink is detached and
/// kept (podnet deletes no device it did not make).
#[test]
fn a_new_uplink_takes_over_and_the_old_one_stays() -> anyhow::Result<()> {
    let mut lab = Lab::new("xdpmove")?;
    let (_, node) = node_on_a_switch(&mut lab, "generic")?;
    node.run_podnet(&["up"])?;
    sh(&node.netns, "ip", &["link", "add", "eth1", "type", "veth", "peer", "name", "eth1p"])?;
    sh(&node.netns, "ip", &["addr", "add", "192.168.51.1/24", "dev", "eth1"])?;
    sh(&node.netns, "ip", &["link", "set", "eth1", "up"])?;
    let body = std::fs::read_to_string(&node.config)?;
    std::fs::write(
        &node.config,
        body.replace("interface = \"eth0\"", "interface = \"eth1\"")
            .replace("ip = \"192.168.50.1\"", "ip = \"192.168.51.1\""),
    )?;
    node.run_podnet(&["up"])?;
    let status = node.status()?;
    let on: Vec<&str> = status["programs"]
        .as_array()
        .context("programs")?
        .iter()
        .filter(|p| !p["ifname"].as_str().unwrap_or("").starts_with("brveth_"))
        .filter_map(|p| p["ifname"].as_str())
        .collect();
    assert_eq!(on, ["eth1", "eth1"], "from_uplink and the XDP program moved: {status}");
    let eth0: serde_json::Value =
        serde_json::from_str(&sh(&node.netns, "ip", &["-j", "link", "show", "eth0"])?)?;
    assert!(eth0[0]["xdp"].is_null(), "no XDP program left on the old uplink: {eth0}");
    assert!(pings(&node.pod_ns("pod1"), "10.1.1.3", 1));
    Ok(())
}

/// Re-running `up` while a deny-listed host floods a pod swaps the XDP program inside its link:
/// 20 re-ups, none fails, the link id never changes and not one denied packet reaches the pod.
#[test]
fn re_up_under_a_denied_flood_opens_no_gap() -> anyhow::Result<()> {
    for xdp in ["native", "generic"] {
        re_up_under_flood_with(xdp).with_context(|| format!("uplink xdp = {xdp}"))?;
    }
    Ok(())
}

fn re_up_under_flood_with(xdp: &str) -> anyhow::Result<()> {
    let mut lab = Lab::new("xdpreup")?;
    let (switch, node) = node_on_a_switch(&mut lab, xdp)?;
    let bad = lab.netns("bad")?;
    lab.plug(&switch, &bad, "portb", "192.168.50.100/24")?;
    sh(&bad, "ip", &["route", "add", "10.1.1.0/24", "via", "192.168.50.1"])?;
    node.run_podnet(&["up"])?;
    node.run_podnet(&["deny", "add", "192.168.50.100/32"])?;
    let xdp_link = || -> anyhow::Result<serde_json::Value> {
        let status = node.status()?;
        status["programs"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["hook"] == format!("xdp {xdp}")))
            .map(|p| p["link_id"].clone())
            .with_context(|| format!("no XDP link in {status}"))
    };
    let link_id = xdp_link()?;
    let pcap = lab.capture(&node.pod_ns("pod1"), "veth_pod1", "icmp")?;
    let dropped_before = node.counter("xdp_drop_denied")?;
    lab.spawn(&bad, "ping", &["-f", "-i", "0.001", "-q", "10.1.1.2"])?;
    for i in 0..20 {
        node.run_podnet(&["up"]).with_context(|| format!("re-up {i}"))?;
        assert_eq!(xdp_link()?, link_id, "re-up {i} kept the XDP link");
        thread::sleep(Duration::from_millis(300));
    }
    let dropped = node.counter("xdp_drop_denied")? - dropped_before;
    // Unanswered, a flood ping paces itself to about 100 packets a second.
    assert!(dropped >= 300, "the flood went on during the re-ups: {dropped} packets dropped");
    // Control: pod2's ping reaches pod1's capture.
    assert!(podnet_tests::pings(&node.pod_ns("pod2"), "10.1.1.2", 1));
    assert_eq!(
        lab.wait_captured(&node.pod_ns("pod1"), &pcap, "src host 10.1.1.3", 1)?,
        1,
        "pod2's ping arrived"
    );
    assert_eq!(
        lab.count(&node.pod_ns("pod1"), &pcap, "src host 192.168.50.100")?,
        0,
        "denied packets reached the pod"
    );
    Ok(())
}

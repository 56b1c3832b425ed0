//! Same-node pod networking, end to end, in namespaces: the seed recipe's parts 1 and 2 with
//! podnet building the plumbing and forwarding in eBPF.

use podnet_tests::{Lab, http_get, iperf3_tcp, namespaces_with_prefix, pings, replies, sh};

const TWO_PODS: &str = r#"pod_cidr = "10.1.1.0/24"

[[pod]]
name = "pod1"
ip = "10.1.1.2"

[[pod]]
name = "pod2"
ip = "10.1.1.3"
"#;

/// Part 1: one pod, several "containers" (processes sharing the pod namespace) reach each other
/// over localhost and over the pod IP.
#[test]
fn containers_in_one_pod_share_localhost_and_the_pod_ip() -> anyhow::Result<()> {
    let mut lab = Lab::new("one")?;
    let node =
        lab.node("node", "pod_cidr = \"10.1.1.0/24\"\n\n[[pod]]\nname = \"pod\"\nip = \"10.1.1.2\"\n")?;
    node.run_podnet(&["up"])?;
    let pod = node.pod_ns("pod");

    lab.http_server(&pod, 8000, "hello from container 1")?;
    assert_eq!(http_get(&pod, "http://127.0.0.1:8000/")?, "hello from container 1");
    assert_eq!(http_get(&pod, "http://10.1.1.2:8000/")?, "hello from container 1");
    assert!(pings(&pod, "10.1.1.2", 1), "the pod pings its own address");
    assert!(pings(&pod, "10.1.1.1", 1), "the pod pings its gateway on the node bridge");
    Ok(())
}

/// Part 2: two pods on one node with the node's iptables FORWARD policy DROP and bridged
/// traffic sent through iptables (br_netfilter): only the eBPF datapath can carry pod traffic.
#[test]
fn two_pods_talk_through_ebpf_while_iptables_forward_drops() -> anyhow::Result<()> {
    let mut lab = Lab::new("two")?;
    let node = lab.node("node", TWO_PODS)?;
    node.run_podnet(&["up"])?;
    node.forward_drop()?;
    let (pod1, pod2) = (node.pod_ns("pod1"), node.pod_ns("pod2"));

    let before = node.counter("redirect_local")?;
    assert!(pings(&pod1, "10.1.1.3", 3), "pod1 -> pod2 ping");
    assert!(pings(&pod2, "10.1.1.2", 3), "pod2 -> pod1 ping");
    let after_ping = node.counter("redirect_local")?;
    // 6 echo requests and 6 replies, each redirected once by from_pod.
    assert!(after_ping - before >= 12, "redirect_local moved by {} for 12 ICMP packets", after_ping - before);

    lab.http_server(&pod2, 8080, "pod2 says hi")?;
    assert_eq!(http_get(&pod1, "http://10.1.1.3:8080/")?, "pod2 says hi");

    lab.iperf3_server(&pod2, 5201)?;
    let before_iperf = node.counter("redirect_local")?;
    let iperf = iperf3_tcp(&pod1, "10.1.1.3", 5201, 2)?;
    let redirected = node.counter("redirect_local")? - before_iperf;
    assert!(iperf.bytes > 10_000_000, "iperf3 moved only {} bytes", iperf.bytes);
    // Every segment (at most 64 KiB with GSO) and every ACK went through from_pod.
    assert!(redirected >= iperf.bytes / 65_536, "{redirected} redirects for {} bytes", iperf.bytes);

    // Control: with podnet's programs detached the same FORWARD DROP node carries nothing, so
    // the traffic above really took the eBPF path.
    for link in std::fs::read_dir(node.pin_dir().join("links"))? {
        std::fs::remove_file(link?.path())?;
    }
    assert_eq!(replies(&pod1, "10.1.1.3", 2), 0, "without podnet, FORWARD DROP must stop pod traffic");
    node.run_podnet(&["up"])?;
    assert!(pings(&pod1, "10.1.1.3", 2), "`up` re-attaches the datapath");
    Ok(())
}

/// `up` twice changes nothing; `down` leaves no namespace, link or pin; `down` twice is fine.
#[test]
fn up_is_idempotent_and_down_leaves_nothing() -> anyhow::Result<()> {
    let mut lab = Lab::new("idem")?;
    let node = lab.node("node", TWO_PODS)?;
    node.run_podnet(&["up"])?;
    let first = node.status()?;
    let interfaces = || -> anyhow::Result<Vec<String>> {
        let links: serde_json::Value = serde_json::from_str(&sh(&node.netns, "ip", &["-j", "link"])?)?;
        Ok(links
            .as_array()
            .unwrap()
            .iter()
            .map(|l| format!("{} {} {} {}", l["ifindex"], l["ifname"], l["address"], l["master"]))
            .collect())
    };
    let links_before = interfaces()?;
    node.run_podnet(&["up"])?;
    let second = node.status()?;
    assert_eq!(first["endpoints"], second["endpoints"]);
    let link_ids = |s: &serde_json::Value| {
        s["programs"].as_array().unwrap().iter().map(|p| p["link_id"].clone()).collect::<Vec<_>>()
    };
    assert_eq!(link_ids(&first), link_ids(&second), "re-running up keeps the same tcx links");
    assert_eq!(links_before, interfaces()?, "no interface changed");
    assert!(pings(&node.pod_ns("pod1"), "10.1.1.3", 1));

    node.run_podnet(&["down"])?;
    node.run_podnet(&["down"])?;
    let pods: Vec<_> =
        namespaces_with_prefix(lab.prefix()).into_iter().filter(|ns| ns != &node.netns).collect();
    assert!(pods.is_empty(), "pod namespaces left behind: {pods:?}");
    assert!(!node.pin_dir().exists(), "{} left behind", node.pin_dir().display());
    let links = sh(&node.netns, "ip", &["-o", "link"])?;
    assert_eq!(links.lines().count(), 1, "only lo may remain in the node namespace:\n{links}");
    Ok(())
}

/// podnet deletes only namespaces it made: a `[[pod]]` in a namespace that existed before keeps
/// it when the pod leaves the config, and after `down`.
#[test]
fn namespaces_podnet_did_not_make_stay() -> anyhow::Result<()> {
    let mut lab = Lab::new("keepns")?;
    let theirs = lab.netns("theirs")?;
    let node = lab.node("node", &format!("{TWO_PODS}netns = \"{theirs}\"\n"))?;
    node.run_podnet(&["up"])?;
    assert!(pings(&theirs, "10.1.1.2", 1), "pod2 lives in the namespace it was given");
    std::fs::write(
        &node.config,
        format!(
            "[node]\nname = \"{}\"\n{}",
            node.name,
            TWO_PODS.split("[[pod]]\nname = \"pod2\"").next().unwrap_or_default()
        ),
    )?;
    node.run_podnet(&["up"])?;
    assert!(podnet::host::netns::exists(&theirs), "removing pod2 kept its namespace");
    node.run_podnet(&["down"])?;
    assert!(podnet::host::netns::exists(&theirs), "down kept it too");
    assert!(!podnet::host::netns::exists(&node.pod_ns("pod1")), "down removed the one podnet made");
    Ok(())
}

/// A failing `up` removes what it created and leaves what was there before.
#[test]
fn failed_up_rolls_back() -> anyhow::Result<()> {
    let mut lab = Lab::new("roll")?;
    let node = lab.node("node", TWO_PODS)?;
    // A pre-existing bridge squats pod2's host veth name: pod2 cannot be built.
    sh(&node.netns, "ip", &["link", "add", "brveth_pod2", "type", "bridge"])?;
    let out = node.podnet(&["up"]).output()?;
    assert!(!out.status.success(), "up must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("veth_pod2"), "the error names what is missing: {stderr}");

    let pods: Vec<_> =
        namespaces_with_prefix(lab.prefix()).into_iter().filter(|ns| ns != &node.netns).collect();
    assert!(pods.is_empty(), "rollback left pod namespaces: {pods:?}");
    assert!(!node.pin_dir().exists());
    let links = sh(&node.netns, "ip", &["-o", "link"])?;
    assert!(!links.contains("br0") && !links.contains("brveth_pod1"), "rollback left links:\n{links}");
    assert!(links.contains("brveth_pod2"), "the pre-existing interface stays:\n{links}");
    Ok(())
}

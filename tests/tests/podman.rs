//! A real runtime drives podnet: podman 4.3 (CNI backend, runc) runs busybox containers on two
//! lab nodes with the podnet binary as its CNI plugin. Node1 runs the agent (ADD and DEL go
//! through it), node2 does not (they go straight to the pinned datapath). Containers reach each
//! other on one node and across nodes, the config's pods, and the outside through NAT; stop,
//! start, rm and network disconnect/connect keep the datapath's maps in step.

use podnet_tests::{Lab, Node, cluster, podman::Podman, sh};

const EXT: &str = "192.168.50.100";

/// The containers podnet holds on `node`, as `podnet status` names them, with their addresses.
fn containers(node: &Node) -> anyhow::Result<Vec<(String, String)>> {
    Ok(node.status()?["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["pod"].as_str().is_some_and(|p| p.starts_with("cni:")))
        .map(|e| (e["pod"].as_str().unwrap_or("").to_owned(), e["ip"].as_str().unwrap_or("").to_owned()))
        .collect())
}

/// Whether `node`'s datapath holds container `name` (by its id's prefix) at `ip`.
fn holds(node: &Node, podman: &Podman, name: &str, ip: &str) -> anyhow::Result<bool> {
    let id = podman.run(&["inspect", name, "--format", "{{.Id}}"])?;
    let short = format!("cni:{}", &id[..12]);
    Ok(containers(node)?.iter().any(|(pod, held)| *pod == short && held == ip))
}

#[test]
fn podman_containers_talk_through_podnet() -> anyhow::Result<()> {
    let mut lab = Lab::new("pm")?;
    let cluster = cluster(&mut lab, "", &[&[2], &[1]], "off")?;
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let ext = lab.netns("ext")?;
    lab.plug(&cluster.switch, &ext, "portx", &format!("{EXT}/24"))?;
    let nc = lab.netcat()?;
    lab.spawn(&ext, "python3", &[&nc, "http-whoami", EXT, "8080"])?;
    podnet_tests::wait_listening(&ext, 8080)?;
    lab.agent(n1)?;
    let pm1 = Podman::new(n1, lab.dir().join("podman1"))?;
    let pm2 = Podman::new(n2, lab.dir().join("podman2"))?;

    pm1.start("c1", &["sleep", "600"])?;
    pm1.start("c2", &["httpd", "-f", "-p", "8080", "-h", "/www"])?;
    pm2.start("c3", &["sleep", "600"])?;
    let (ip1, ip2, ip3) = (pm1.ip("c1")?, pm1.ip("c2")?, pm2.ip("c3")?);
    assert!(
        ip1.starts_with("10.1.1.") && ip2.starts_with("10.1.1.") && ip3.starts_with("10.1.2."),
        "{ip1} {ip2} {ip3}"
    );
    assert!(
        holds(n1, &pm1, "c1", &ip1)? && holds(n1, &pm1, "c2", &ip2)?,
        "node1's maps: {:?}",
        containers(n1)?
    );
    assert!(holds(n2, &pm2, "c3", &ip3)?, "node2's maps: {:?}", containers(n2)?);

    // Same node: ping and HTTP; across nodes; to and from the config's pods.
    assert!(pm1.pings("c1", &ip2), "c1 -> c2");
    assert_eq!(
        pm1.exec("c1", &["wget", "-q", "-O", "-", &format!("http://{ip2}:8080/")])?,
        "hello from podman"
    );
    assert!(pm1.pings("c1", &ip3) && pm2.pings("c3", &ip1), "across nodes");
    assert!(pm1.pings("c1", "10.1.2.2"), "a container reaches node2's pod1");
    assert!(podnet_tests::pings(&n2.pod_ns("pod1"), &ip2, 1), "node2's pod1 reaches a container");
    // The outside sees the node's address.
    assert_eq!(pm1.exec("c1", &["wget", "-q", "-O", "-", &format!("http://{EXT}:8080/")])?, "192.168.50.1");
    assert_eq!(pm2.exec("c3", &["wget", "-q", "-O", "-", &format!("http://{EXT}:8080/")])?, "192.168.50.2");

    // stop / start: the runtime's DEL and ADD keep the maps in step.
    pm1.run(&["stop", "-t", "0", "c2"])?;
    assert!(!holds(n1, &pm1, "c2", &ip2)?, "a stopped container is detached: {:?}", containers(n1)?);
    assert!(!pm1.pings("c1", &ip2));
    pm1.run(&["start", "c2"])?;
    let ip2 = pm1.ip("c2")?;
    assert!(holds(n1, &pm1, "c2", &ip2)?, "{:?}", containers(n1)?);
    assert!(pm1.pings("c1", &ip2), "c2 is back");

    // network disconnect / connect on node2 (no agent there).
    pm2.run(&["network", "disconnect", "podnet", "c3"])?;
    assert!(containers(n2)?.is_empty(), "{:?}", containers(n2)?);
    assert!(!pm1.pings("c1", &ip3));
    pm2.run(&["network", "connect", "podnet", "c3"])?;
    let ip3 = pm2.ip("c3")?;
    assert!(holds(n2, &pm2, "c3", &ip3)?);
    assert!(pm1.pings("c1", &ip3), "c3 is reachable again");

    // rm: detached and its address given back.
    pm1.run(&["rm", "-f", "-t", "0", "c1"])?;
    let left: Vec<String> = containers(n1)?.into_iter().map(|(_, ip)| ip).collect();
    assert_eq!(left, [ip2], "only c2 is left on node1");
    let held = std::fs::read_dir(format!("/var/lib/podnet/{}/ipam", n1.name))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<std::net::Ipv4Addr>().ok()))
        .count();
    assert_eq!(held, 3, "pod1, pod2 and c2 hold addresses on node1");
    // No iptables rule anywhere on the nodes: podman's CNI backend added none for podnet.
    for node in [n1, n2] {
        let rules = sh(&node.netns, "iptables-save", &[])?;
        assert!(!rules.lines().any(|l| l.starts_with("-A")), "rules on {}:\n{rules}", node.name);
    }
    Ok(())
}

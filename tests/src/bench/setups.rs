//! The setups compared on each path, built in a [`Lab`].

use std::path::PathBuf;

use serde::Serialize;

use crate::{Lab, Node, cluster, pings, sh};

/// A traffic path between a client and a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Path {
    /// Pod to pod on one node.
    SameNode,
    /// Pod to pod on two nodes joined by a switch.
    CrossNode,
    /// Pod to an external host on the node's wire, masqueraded behind the node IP.
    Nat,
}

impl Path {
    pub const ALL: [Path; 3] = [Path::SameNode, Path::CrossNode, Path::Nat];

    pub fn name(self) -> &'static str {
        match self {
            Path::SameNode => "same-node",
            Path::CrossNode => "cross-node",
            Path::Nat => "nat",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// What carries the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Setup {
    /// The kernel's limit: one direct veth pair between two namespaces (same node), or node to
    /// node (cross node) or node to external host (NAT) over the wire.
    Limit,
    /// The classic recipe as Kubernetes nodes run it: bridge, br_netfilter on, kernel routes,
    /// FORWARD accepts, MASQUERADE with kernel conntrack.
    Recipe,
    /// podnet's eBPF datapath on the same hardened node (tc only).
    Podnet,
    /// podnet with the XDP prefilter in native mode on the uplink (paths that cross it).
    #[serde(rename = "podnet+xdp")]
    PodnetXdp,
    /// podnet with the XDP prefilter in generic mode on the uplink.
    #[serde(rename = "podnet+xdp-generic")]
    PodnetXdpGeneric,
    /// podnet with `uplink_deliver` in generic mode: frames for local pods redirected at XDP
    /// (cross node only; NAT replies go to tc in every mode).
    #[serde(rename = "podnet+xdp-deliver")]
    PodnetXdpDeliver,
}

impl Setup {
    pub const ALL: [Setup; 6] = [
        Setup::Limit,
        Setup::Recipe,
        Setup::Podnet,
        Setup::PodnetXdp,
        Setup::PodnetXdpGeneric,
        Setup::PodnetXdpDeliver,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Setup::Limit => "limit",
            Setup::Recipe => "recipe",
            Setup::Podnet => "podnet",
            Setup::PodnetXdp => "podnet+xdp",
            Setup::PodnetXdpGeneric => "podnet+xdp-generic",
            Setup::PodnetXdpDeliver => "podnet+xdp-deliver",
        }
    }

    /// The node config's XDP mode (see `crate::XDP_MODES`) of a podnet setup with XDP.
    pub fn xdp_mode(self) -> Option<&'static str> {
        match self {
            Setup::PodnetXdp => Some("native"),
            Setup::PodnetXdpGeneric => Some("generic"),
            Setup::PodnetXdpDeliver => Some("generic+deliver"),
            Setup::Limit | Setup::Recipe | Setup::Podnet => None,
        }
    }
}

/// Where traffic goes from and to in one setup.
#[derive(Debug, Clone)]
pub struct Target {
    pub client_ns: String,
    /// The client's interface (where the packet-rate flood is sent from).
    pub client_if: String,
    pub server_ns: String,
    /// The server's interface (where the packet-rate flood is counted and dropped).
    pub server_if: String,
    pub server_ip: String,
    /// Pin directories of the setup's podnet nodes (their programs' run-time statistics).
    pub pins: Vec<PathBuf>,
}

const TWO_PODS: &str = "pod_cidr = \"10.1.1.0/24\"\n\n[[pod]]\nname = \"pod1\"\nip = \"10.1.1.2\"\n\n\
                        [[pod]]\nname = \"pod2\"\nip = \"10.1.1.3\"\n";

/// Builds `setup` for `path`, starts the measurement servers, and checks traffic flows; `None`
/// where the setup does not apply (XDP on the uplink for same-node traffic, XDP delivery for
/// NAT replies).
pub fn build(lab: &mut Lab, path: Path, setup: Setup) -> anyhow::Result<Option<Target>> {
    let xdp = setup.xdp_mode();
    let target = match (path, setup) {
        (Path::SameNode, Setup::PodnetXdp | Setup::PodnetXdpGeneric | Setup::PodnetXdpDeliver)
        | (Path::Nat, Setup::PodnetXdpDeliver) => return Ok(None),
        (Path::SameNode, Setup::Limit) => direct_pair(lab, "lim")?,
        (Path::SameNode, Setup::Recipe) => two_pod_node(lab, "rcp", false)?,
        (Path::SameNode, Setup::Podnet) => two_pod_node(lab, "pn", true)?,
        (Path::CrossNode, Setup::Limit) => {
            let nodes = cluster(lab, "xl", &[&[], &[]], "off")?.nodes;
            Target {
                client_ns: nodes[0].netns.clone(),
                client_if: "eth0".into(),
                server_ns: nodes[1].netns.clone(),
                server_if: "eth0".into(),
                server_ip: "192.168.50.2".into(),
                pins: Vec::new(),
            }
        }
        (Path::CrossNode, Setup::Recipe) => two_nodes(lab, "xr", None)?,
        (Path::CrossNode, _) => two_nodes(lab, &format!("x{}", setup as u8), Some(xdp.unwrap_or("off")))?,
        (Path::Nat, Setup::Limit) => {
            // The node's own sockets connect: no NAT range reserved from them.
            let (node, ext) = node_and_external(lab, "nl", "off", false)?;
            Target {
                client_ns: node.netns,
                client_if: "eth0".into(),
                server_ns: ext,
                server_if: "eth0".into(),
                server_ip: EXTERNAL.into(),
                pins: Vec::new(),
            }
        }
        (Path::Nat, Setup::Recipe) => masquerading_node(lab, "nr", None)?,
        (Path::Nat, _) => masquerading_node(lab, &format!("n{}", setup as u8), Some(xdp.unwrap_or("off")))?,
    };
    anyhow::ensure!(
        pings(&target.client_ns, &target.server_ip, 1),
        "{} / {}: the client cannot reach {}",
        path.name(),
        setup.name(),
        target.server_ip
    );
    crate::bench::tools::start_servers(lab, &target)?;
    Ok(Some(target))
}

/// Two namespaces joined by one veth pair: nothing between them but the veth.
fn direct_pair(lab: &mut Lab, tag: &str) -> anyhow::Result<Target> {
    let a = lab.netns(&format!("{tag}-a"))?;
    let b = lab.netns(&format!("{tag}-b"))?;
    sh(&a, "ip", &["link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", &b])?;
    for (ns, ip) in [(&a, "10.9.0.1/24"), (&b, "10.9.0.2/24")] {
        sh(ns, "ip", &["addr", "add", ip, "dev", "veth0"])?;
        sh(ns, "ip", &["link", "set", "veth0", "up"])?;
    }
    Ok(Target {
        client_ns: a,
        client_if: "veth0".into(),
        server_ns: b,
        server_if: "veth0".into(),
        server_ip: "10.9.0.2".into(),
        pins: Vec::new(),
    })
}

/// A node with two pods (see [`harden`]); client pod1, server pod2.
fn two_pod_node(lab: &mut Lab, tag: &str, ebpf: bool) -> anyhow::Result<Target> {
    let node = lab.node(tag, TWO_PODS)?;
    node.run_podnet(&["up"])?;
    harden(&node, ebpf)?;
    Ok(Target {
        client_ns: node.pod_ns("pod1"),
        client_if: "veth_pod1".into(),
        server_ns: node.pod_ns("pod2"),
        server_if: "veth_pod2".into(),
        server_ip: "10.1.1.3".into(),
        pins: if ebpf { vec![node.pin_dir()] } else { Vec::new() },
    })
}

/// Two nodes on a switch (see [`harden`]); client pod1 on node1, server pod1 on node2. `xdp` is
/// podnet's uplink XDP mode, or `None` for the recipe (programs detached).
fn two_nodes(lab: &mut Lab, tag: &str, xdp: Option<&str>) -> anyhow::Result<Target> {
    let nodes = cluster(lab, tag, &[&[2], &[1]], xdp.unwrap_or("off"))?.nodes;
    for node in &nodes {
        harden(node, xdp.is_some())?;
    }
    Ok(Target {
        client_ns: nodes[0].pod_ns("pod1"),
        client_if: "veth_pod1".into(),
        server_ns: nodes[1].pod_ns("pod1"),
        server_if: "veth_pod1".into(),
        server_ip: "10.1.2.2".into(),
        pins: if xdp.is_some() { nodes.iter().map(Node::pin_dir).collect() } else { Vec::new() },
    })
}

/// The external host's address, on the nodes' wire.
const EXTERNAL: &str = "192.168.50.100";

/// A node (up; with `nat`, podnet NAT over the whole port range 1024-65535 so connection-rate
/// runs do not exhaust it, which leaves the node's own sockets no ephemeral port) and an external
/// host on its wire; the external host has no route to pod addresses.
pub fn node_and_external(lab: &mut Lab, tag: &str, xdp: &str, nat: bool) -> anyhow::Result<(Node, String)> {
    let switch = lab.switch(&format!("{tag}sw"))?;
    let nat = if nat { "ports = \"1024-65535\"" } else { "enabled = false" };
    let config = format!("{}\n[nat]\n{nat}\n", crate::node_config(1, &[], xdp));
    let node = lab.node(&format!("{tag}node1"), &config)?;
    lab.plug(&switch, &node.netns, "port1", "192.168.50.1/24")?;
    let ext = lab.netns(&format!("{tag}ext"))?;
    lab.plug(&switch, &ext, "portx", &format!("{EXTERNAL}/24"))?;
    node.run_podnet(&["up"])?;
    Ok((node, ext))
}

/// Pod to external host through a hardened node: podnet's masquerade with uplink XDP mode `xdp`,
/// or (`None`) the recipe's iptables MASQUERADE with kernel conntrack (programs detached).
fn masquerading_node(lab: &mut Lab, tag: &str, xdp: Option<&str>) -> anyhow::Result<Target> {
    let (node, ext) = node_and_external(lab, tag, xdp.unwrap_or("off"), true)?;
    harden(&node, xdp.is_some())?;
    if xdp.is_none() {
        let ns = &node.netns;
        sh(
            ns,
            "iptables",
            &["-t", "nat", "-A", "POSTROUTING", "-s", "10.1.0.0/16", "-o", "eth0", "-j", "MASQUERADE"],
        )?;
        sh(ns, "iptables", &["-A", "FORWARD", "-i", "br0", "-o", "eth0", "-j", "ACCEPT"])?;
    }
    Ok(Target {
        client_ns: node.pod_ns("pod1"),
        client_if: "veth_pod1".into(),
        server_ns: ext,
        server_if: "eth0".into(),
        server_ip: EXTERNAL.into(),
        pins: if xdp.is_some() { vec![node.pin_dir()] } else { Vec::new() },
    })
}

/// Hardens a node like a Kubernetes node: br_netfilter sends bridged IPv4 through iptables,
/// FORWARD policy DROP with conntrack and pod-range accepts. The plumbing is podnet's (the same
/// bridge, veths, addresses and routes as the recipe's); for the recipe (`ebpf` false) the
/// programs are detached, so the bridge, the routing table and netfilter carry the traffic.
fn harden(node: &Node, ebpf: bool) -> anyhow::Result<()> {
    if !ebpf {
        for link in std::fs::read_dir(node.pin_dir().join("links"))? {
            std::fs::remove_file(link?.path())?;
        }
    }
    node.forward_drop()?;
    let ns = &node.netns;
    sh(
        ns,
        "iptables",
        &["-A", "FORWARD", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
    )?;
    sh(ns, "iptables", &["-A", "FORWARD", "-s", "10.1.0.0/16", "-j", "ACCEPT"])?;
    sh(ns, "iptables", &["-A", "FORWARD", "-d", "10.1.0.0/16", "-j", "ACCEPT"])?;
    Ok(())
}

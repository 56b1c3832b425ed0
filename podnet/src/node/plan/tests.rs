//! Convergence, case by case, without a system: a config and what `up` found go in, the steps
//! come out.

use std::net::Ipv4Addr;

use super::*;
use crate::{
    config::Draft,
    model::{Origin, Source},
    node::{ipam::Held, record::RecordedPeer},
};

const BASE: &str = "[node]\nname = \"node1\"\npod_cidr = \"10.1.1.0/24\"\n\
    [uplink]\ninterface = \"eth0\"\nip = \"192.168.50.1\"\n\
    [[pod]]\nname = \"pod1\"\nip = \"10.1.1.2\"\n\
    [[pod]]\nname = \"pod2\"\nip = \"10.1.1.3\"\n\
    [[peer]]\nname = \"node2\"\nip = \"192.168.50.2\"\npod_cidr = \"10.1.2.0/24\"\n";

fn config_of(text: &str) -> Config {
    Draft::parse(text.to_owned(), Source::File("node.toml".into())).unwrap().resolve(None).unwrap()
}

fn config() -> Config {
    config_of(BASE)
}

fn iface(name: &str, index: u32) -> Iface {
    Iface {
        index,
        name: name.to_owned(),
        mac: [2, 0, 0, 0, 0, index as u8],
        is_veth: true,
        is_bridge: false,
        mtu: 1500,
        peer: None,
    }
}

fn eth0() -> Iface {
    iface("eth0", 2)
}

/// A node nothing was done to: its uplink addressed, IPv4 forwarding off.
fn fresh() -> Observed {
    Observed {
        uplink: Some(FoundUplink {
            iface: eth0(),
            addresses: vec![Ipv4Addr::new(192, 168, 50, 1)],
            networks: vec!["192.168.50.0/24".parse().unwrap()],
        }),
        ..Observed::default()
    }
}

fn held(pod: &Pod, ip: &str, owns_netns: bool) -> Held {
    let ip: Ipv4Addr = ip.parse().unwrap();
    Held { ip, pod: Pod { ip: Some(ip), ..pod.clone() }, owns_netns }
}

/// A node `up` brought up with `config` (and nothing else).
fn after_up(config: &Config) -> Observed {
    let node = &config.node;
    let held: Vec<Held> = config.pods.iter().map(|p| held(p, &p.ip.unwrap().to_string(), true)).collect();
    Observed {
        up_before: true,
        record: NodeRecord {
            bridge: Some(node.bridge.clone()),
            gateway: Some((node.bridge.clone(), node.gateway)),
            ip_forward: true,
            reserved_ports: Some((config.nat.port_min, config.nat.port_max)),
            config_peers: config.peers.iter().map(RecordedPeer::from).collect(),
            cluster_peers: Vec::new(),
            uplink: Some("eth0".to_owned()),
        },
        bridge: Some(FoundBridge { is_bridge: true, has_gateway: true }),
        ip_forward: true,
        ports_reserved: true,
        links: held.iter().map(|h| h.pod.host_ifname.clone()).chain(["eth0".to_owned()]).collect(),
        pod_namespaces: config.pods.iter().map(|p| p.netns.clone()).collect(),
        held,
        ..fresh()
    }
}

fn planned(config: &Config, found: &Observed) -> Plan {
    plan(config, found, EbpfLog::Off).unwrap_or_else(|e| panic!("{e}"))
}

/// The steps' names, in order (for the shape of a plan).
fn names(plan: &Plan) -> Vec<&'static str> {
    plan.steps
        .iter()
        .map(|s| match s {
            Step::DiscardStaleRecord => "DiscardStaleRecord",
            Step::EnsureBridge { .. } => "EnsureBridge",
            Step::EnableIpForward => "EnableIpForward",
            Step::ReleasePorts { .. } => "ReleasePorts",
            Step::ReservePorts { .. } => "ReservePorts",
            Step::LoadDatapath { .. } => "LoadDatapath",
            Step::SetNat(_) => "SetNat",
            Step::SetPodDeny(_) => "SetPodDeny",
            Step::SetUplinkAllow { .. } => "SetUplinkAllow",
            Step::AttachUplink { .. } => "AttachUplink",
            Step::AttachUplinkXdp { .. } => "AttachUplinkXdp",
            Step::DetachUplinkXdp { .. } => "DetachUplinkXdp",
            Step::ForgetConfigPeer { .. } => "ForgetConfigPeer",
            Step::AddConfigPeer { .. } => "AddConfigPeer",
            Step::DetachPod(_) => "DetachPod",
            Step::RemoveStrayEndpoints { .. } => "RemoveStrayEndpoints",
            Step::CreateNetns(_) => "CreateNetns",
            Step::RemovePodVeth(_) => "RemovePodVeth",
            Step::DetachLink(_) => "DetachLink",
            Step::AttachPod { .. } => "AttachPod",
            Step::RefreshContainer(_) => "RefreshContainer",
            Step::NarrowToPodCidr(_) => "NarrowToPodCidr",
            Step::RetireGateway { .. } => "RetireGateway",
            Step::RetireBridge(_) => "RetireBridge",
            Step::FinishMigration => "FinishMigration",
            Step::ForgetStaleTranslations(_) => "ForgetStaleTranslations",
        })
        .collect()
}

/// The endpoints a plan keeps (every other goes).
fn keeps(plan: &Plan) -> &[Ipv4Addr] {
    plan.steps
        .iter()
        .find_map(|s| match s {
            Step::RemoveStrayEndpoints { keep } => Some(keep.as_slice()),
            _ => None,
        })
        .expect("a node that was up has its stray endpoints removed")
}

fn error(config: &Config, found: &Observed) -> String {
    plan(config, found, EbpfLog::Off).unwrap_err().to_string()
}

#[test]
fn a_first_up_builds_everything_and_can_undo_it() {
    let config = config();
    let plan = planned(&config, &fresh());
    assert_eq!(
        names(&plan),
        [
            "EnsureBridge",
            "EnableIpForward",
            "ReservePorts",
            "LoadDatapath",
            "SetNat",
            "SetPodDeny",
            "SetUplinkAllow",
            "AttachUplink",
            "DetachUplinkXdp",
            "AddConfigPeer",
            "CreateNetns",
            "AttachPod",
            "CreateNetns",
            "AttachPod",
            "NarrowToPodCidr",
            "FinishMigration",
            "ForgetStaleTranslations",
        ]
    );
    let s = &plan.steps;
    assert_eq!(
        s[0],
        Step::EnsureBridge {
            bridge: "br0".into(),
            gateway: Ipv4Addr::new(10, 1, 1, 1),
            create: true,
            add_gateway: true
        }
    );
    assert_eq!(s[2], Step::ReservePorts { min: 61000, max: 65535 });
    assert!(matches!(s[3], Step::LoadDatapath { first_up: true, .. }));
    let Step::SetNat(nat) = &s[4] else { unreachable!() };
    assert_eq!((nat.enabled, nat.node_ip, nat.uplink_ifindex), (1, [192, 168, 50, 1], 2));
    assert_eq!(nat.pod_mask, [0; 4], "local pods anywhere until the pods are in place");
    assert_eq!(s[5], Step::SetPodDeny(Vec::new()), "no control endpoints, nothing denied");
    assert!(matches!(&s[9], Step::AddConfigPeer { peer, undo_route: true, .. } if peer.name == "node2"));
    assert_eq!(s[10], Step::CreateNetns("node1-pod1".into()));
    assert!(matches!(&s[11], Step::AttachPod { pod, new: true } if pod.id == "pod1"
            && pod.netns == "node1-pod1" && pod.ip == Some(Ipv4Addr::new(10, 1, 1, 2))));
    assert_eq!(s[14], Step::NarrowToPodCidr("10.1.1.0/24".parse().unwrap()));
    assert!(plan.warnings.is_empty());
}

#[test]
fn an_unchanged_node_only_re_ensures_what_is_there() {
    let config = config();
    let plan = planned(&config, &after_up(&config));
    assert_eq!(
        names(&plan),
        [
            "EnsureBridge",
            "LoadDatapath",
            "SetNat",
            "SetPodDeny",
            "SetUplinkAllow",
            "AttachUplink",
            "DetachUplinkXdp",
            "AddConfigPeer",
            "RemoveStrayEndpoints",
            "AttachPod",
            "AttachPod",
            "NarrowToPodCidr",
            "FinishMigration",
            "ForgetStaleTranslations",
        ]
    );
    assert!(matches!(plan.steps[0], Step::EnsureBridge { create: false, add_gateway: false, .. }));
    assert!(matches!(plan.steps[1], Step::LoadDatapath { first_up: false, .. }));
    assert!(matches!(plan.steps[7], Step::AddConfigPeer { undo_route: false, .. }));
    assert!(plan.steps.iter().all(|s| !matches!(s, Step::AttachPod { new: true, .. })));
    assert!(!names(&plan).contains(&"CreateNetns"), "the namespaces are there");
}

#[test]
fn a_pod_removed_from_the_config_is_detached_and_the_others_stay() {
    let before = config();
    let found = after_up(&before);
    let after = config_of(&BASE.replace("[[pod]]\nname = \"pod2\"\nip = \"10.1.1.3\"\n", ""));
    let plan = planned(&after, &found);
    let detached: Vec<&Held> =
        plan.steps.iter().filter_map(|s| if let Step::DetachPod(h) = s { Some(h) } else { None }).collect();
    assert_eq!(detached.len(), 1);
    assert_eq!((detached[0].pod.id.as_str(), detached[0].ip), ("pod2", Ipv4Addr::new(10, 1, 1, 3)));
    let attached: Vec<&str> = plan
        .steps
        .iter()
        .filter_map(|s| if let Step::AttachPod { pod, .. } = s { Some(pod.id.as_str()) } else { None })
        .collect();
    assert_eq!(attached, ["pod1"]);
    // Its veth goes with the pod (DetachPod), not as an orphan.
    assert!(!names(&plan).contains(&"RemovePodVeth"));
    // Its endpoint too: DetachPod removes it, so the stray sweep that follows must not fail on it.
    assert!(keeps(&plan).contains(&Ipv4Addr::new(10, 1, 1, 3)));
}

#[test]
fn a_re_addressed_pod_is_attached_with_its_new_address() {
    let before = config();
    let found = after_up(&before);
    let after = config_of(&BASE.replace("ip = \"10.1.1.3\"", "ip = \"10.1.1.30\""));
    let plan = planned(&after, &found);
    let pod2 = plan
        .steps
        .iter()
        .find_map(|s| match s {
            Step::AttachPod { pod, new, .. } if pod.id == "pod2" => Some((pod.ip, *new)),
            _ => None,
        })
        .unwrap();
    assert_eq!(pod2, (Some(Ipv4Addr::new(10, 1, 1, 30)), false), "IPAM moves it; it is not new");
    assert!(!names(&plan).contains(&"DetachPod"), "the pod stays");
}

#[test]
fn a_moved_pod_cidr_moves_the_gateway_and_waits_for_containers_outside_it() {
    let before = config();
    let mut found = after_up(&before);
    let container = Pod::container("podnet", "c1", "/run/netns/c1", "eth0", None);
    found.held.push(held(&container, "10.1.1.9", false));
    found.links.push(container.host_ifname.clone());
    found.bridge = Some(FoundBridge { is_bridge: true, has_gateway: false });
    let after = config_of(
        &BASE
            .replace("10.1.1.0/24", "10.1.9.0/24")
            .replace("10.1.1.2", "10.1.9.2")
            .replace("10.1.1.3", "10.1.9.3"),
    );
    let plan = planned(&after, &found);
    assert!(matches!(
        &plan.steps[0],
        Step::EnsureBridge { create: false, add_gateway: true, gateway, .. } if *gateway == Ipv4Addr::new(10, 1, 9, 1)
    ));
    assert!(
        plan.steps
            .contains(&Step::RetireGateway { bridge: "br0".into(), gateway: Ipv4Addr::new(10, 1, 1, 1) })
    );
    assert!(plan.steps.iter().any(|s| matches!(s, Step::RefreshContainer(h) if h.pod.id == "c1")));
    assert!(!names(&plan).contains(&"NarrowToPodCidr"), "c1 is still in the old CIDR");
    assert_eq!(plan.warnings.len(), 1);
    assert!(plan.warnings[0].starts_with("pod(s) 10.1.1.9 are outside node.pod_cidr 10.1.9.0/24"));
    assert!(!names(&plan).contains(&"RemovePodVeth"));
    assert!(keeps(&plan).contains(&Ipv4Addr::new(10, 1, 1, 9)), "c1's endpoint stays");
}

#[test]
fn only_the_configs_own_peers_follow_the_config() {
    let before = config();
    let mut found = after_up(&before);
    // A peer from the cluster and one added with `node add` are in the map too.
    let cluster = PeerNode {
        name: "node3".into(),
        ip: "192.168.60.3".parse().unwrap(),
        pod_cidr: "10.1.3.0/24".parse().unwrap(),
    };
    let cli = PeerNode {
        name: "node4".into(),
        ip: "192.168.60.4".parse().unwrap(),
        pod_cidr: "10.1.4.0/24".parse().unwrap(),
    };
    found.record.cluster_peers.push(RecordedPeer::from(&cluster));
    let after = config_of(&BASE[..BASE.find("[[peer]]").unwrap()]);
    let plan = planned(&after, &found);
    let node2 = before.peers[0].clone();
    assert!(plan.steps.contains(&Step::ForgetConfigPeer { peer: node2, uplink: Some(eth0()) }));
    for step in &plan.steps {
        if let Step::ForgetConfigPeer { peer, .. } | Step::AddConfigPeer { peer, .. } = step {
            assert_ne!(peer, &cluster);
            assert_ne!(peer, &cli);
        }
    }
    assert!(!names(&plan).contains(&"AddConfigPeer"));
}

#[test]
fn a_new_bridge_takes_the_pods_and_the_old_one_goes() {
    let before = config();
    let mut found = after_up(&before);
    found.bridge = None;
    let after = config_of(
        &BASE.replace("pod_cidr = \"10.1.1.0/24\"\n", "pod_cidr = \"10.1.1.0/24\"\nbridge = \"br1\"\n"),
    );
    let plan = planned(&after, &found);
    assert!(
        matches!(&plan.steps[0], Step::EnsureBridge { bridge, create: true, add_gateway: true, .. } if bridge == "br1")
    );
    let tail = &plan.steps[plan.steps.len() - 4..];
    assert_eq!(
        tail,
        [
            Step::RetireGateway { bridge: "br0".into(), gateway: Ipv4Addr::new(10, 1, 1, 1) },
            Step::RetireBridge("br0".into()),
            Step::FinishMigration,
            Step::ForgetStaleTranslations(nat_settings(&after, Some(&eth0()))),
        ]
    );
}

#[test]
fn what_no_pod_owns_goes_and_what_is_not_podnets_is_only_detached() {
    let config = config();
    let mut found = after_up(&config);
    // An endpoint and a veth left by a pod gone in a crash; the link of an old uplink.
    found.links.extend([
        "brveth_gone".to_owned(),
        "pn0123456789ab".to_owned(),
        "eth1".to_owned(),
        "eth1@xdp-generic".to_owned(),
    ]);
    let plan = planned(&config, &found);
    assert_eq!(keeps(&plan), [Ipv4Addr::new(10, 1, 1, 2), Ipv4Addr::new(10, 1, 1, 3)], "10.1.1.77 goes");
    assert!(plan.steps.contains(&Step::RemovePodVeth("brveth_gone".into())));
    assert!(plan.steps.contains(&Step::RemovePodVeth("pn0123456789ab".into())));
    assert!(plan.steps.contains(&Step::DetachLink("eth1".into())));
    assert!(plan.steps.contains(&Step::DetachLink("eth1@xdp-generic".into())));
    assert!(!plan.steps.contains(&Step::DetachLink("eth0".into())), "the uplink stays");
}

#[test]
fn containers_are_refreshed_not_detached() {
    let config = config();
    let mut found = after_up(&config);
    let container = Pod::container("podnet", "c1", "/run/netns/c1", "eth0", None);
    found.held.push(held(&container, "10.1.1.9", false));
    found.links.push(container.host_ifname.clone());
    let plan = planned(&config, &found);
    assert!(plan.steps.iter().any(
        |s| matches!(s, Step::RefreshContainer(h) if h.pod.origin == Origin::Cni { network: "podnet".into() })
    ));
    assert!(!names(&plan).contains(&"DetachPod") && !names(&plan).contains(&"RemovePodVeth"));
    assert!(names(&plan).contains(&"NarrowToPodCidr"));
}

#[test]
fn nat_turned_off_gives_the_ports_back_and_a_new_range_takes_the_new_ones() {
    let config = config();
    let found = after_up(&config);
    let off = config_of(&format!("{BASE}[nat]\nenabled = false\n"));
    let plan = planned(&off, &found);
    assert!(plan.steps.contains(&Step::ReleasePorts { min: 61000, max: 65535 }));
    assert!(!names(&plan).contains(&"ReservePorts"));
    let Step::SetNat(nat) =
        &plan.steps[plan.steps.iter().position(|s| matches!(s, Step::SetNat(_))).unwrap()]
    else {
        unreachable!()
    };
    assert_eq!(nat.enabled, 0);
    let moved = config_of(&format!("{BASE}[nat]\nports = \"62000-63000\"\n"));
    let plan = planned(&moved, &found);
    let ports: Vec<&Step> = plan
        .steps
        .iter()
        .filter(|s| matches!(s, Step::ReleasePorts { .. } | Step::ReservePorts { .. }))
        .collect();
    assert_eq!(
        ports,
        [&Step::ReleasePorts { min: 61000, max: 65535 }, &Step::ReservePorts { min: 62000, max: 63000 }],
        "the new range is reserved although the old one covered it"
    );
}

#[test]
fn xdp_settings_pick_the_program() {
    let config = config_of(&BASE.replace(
        "ip = \"192.168.50.1\"\n",
        "ip = \"192.168.50.1\"\nxdp = \"generic\"\nxdp_deliver = true\n",
    ));
    let plan = planned(&config, &fresh());
    assert!(plan.steps.contains(&Step::AttachUplinkXdp {
        program: UPLINK_DELIVER,
        iface: eth0(),
        mode: XdpMode::Generic
    }));
    let config =
        config_of(&BASE.replace("ip = \"192.168.50.1\"\n", "ip = \"192.168.50.1\"\nxdp = \"native\"\n"));
    let plan = planned(&config, &fresh());
    assert!(plan.steps.contains(&Step::AttachUplinkXdp {
        program: UPLINK_FILTER,
        iface: eth0(),
        mode: XdpMode::Native
    }));
}

#[test]
fn a_reboot_discards_the_old_record_first() {
    let found = Observed { stale_record: true, ..fresh() };
    assert_eq!(planned(&config(), &found).steps[0], Step::DiscardStaleRecord);
}

#[test]
fn what_cannot_hold_on_this_node_is_refused_before_anything_changes() {
    let config = config();
    let missing = Observed { uplink: None, ..fresh() };
    assert_eq!(
        error(&config, &missing),
        "node.toml: uplink.interface: eth0 does not exist in the node's network namespace; create and address it first"
    );
    let mut unaddressed = fresh();
    unaddressed.uplink.as_mut().unwrap().addresses.clear();
    assert!(
        error(&config, &unaddressed)
            .starts_with("node.toml: uplink.ip: 192.168.50.1 is not an address of eth0")
    );
    let native =
        config_of(&BASE.replace(
            "ip = \"192.168.50.1\"\n",
            "ip = \"192.168.50.1\"\nxdp = \"native\"\nxdp_deliver = true\n",
        ));
    assert!(error(&native, &fresh()).starts_with("node.toml: uplink.xdp_deliver: eth0 is a veth"));
    let mut crowded = fresh();
    crowded.uplink.as_mut().unwrap().networks.push("10.1.0.0/16".parse().unwrap());
    assert_eq!(
        error(&config, &crowded),
        "node.toml: peer[0].pod_cidr: 10.1.2.0/24 overlaps 10.1.0.0/16, a network of the uplink eth0"
    );
    let not_a_bridge =
        Observed { bridge: Some(FoundBridge { is_bridge: false, has_gateway: false }), ..fresh() };
    assert_eq!(
        error(&config, &not_a_bridge),
        "node.toml: node.bridge: br0 exists and is not a bridge; name a bridge, or a device that does not exist"
    );
}

#[test]
fn pods_take_the_uplinks_mtu_unless_the_config_says_otherwise() {
    assert_eq!(veth_settings(&config(), Some(&Iface { mtu: 1400, ..eth0() })).mtu, 1400);
    assert_eq!(veth_settings(&config(), None).mtu, 1500);
    let small =
        config_of(&BASE.replace("pod_cidr = \"10.1.1.0/24\"\n", "pod_cidr = \"10.1.1.0/24\"\nmtu = 1300\n"));
    assert_eq!(veth_settings(&small, Some(&eth0())).mtu, 1300);
}

/// The deny map's entries of a plan.
fn denied(plan: &Plan) -> Vec<(String, u8, Vec<u16>)> {
    let entries = plan
        .steps
        .iter()
        .find_map(|s| match s {
            Step::SetPodDeny(entries) => Some(entries.clone()),
            _ => None,
        })
        .expect("a plan sets the deny map");
    entries
        .into_iter()
        .map(|(net, d)| {
            (net.to_string(), d.all, d.ports.iter().filter(|&&p| p != 0).map(|p| u16::from_be(*p)).collect())
        })
        .collect()
}

#[test]
fn pods_never_reach_the_control_plane_unless_the_operator_says_so() {
    let text = format!(
        "{BASE}\n[agent]\nmetrics = \"0.0.0.0:9101\"\n\
         [isolation]\npods_never_reach = [\"169.254.169.254\", \"192.168.50.250:2380\", \"10.9.0.0/16:443\"]\n"
    );
    let config = config_of(&text);
    let mut found = after_up(&config);
    found.etcd = vec!["192.168.50.250:2379".parse().unwrap()];
    // An address of the node on another link (a management NIC): metrics answer there too.
    found.node_addresses = vec!["172.30.0.1".parse().unwrap(), "127.0.0.1".parse().unwrap()];
    let plan = planned(&config, &found);
    assert_eq!(
        denied(&plan),
        [
            ("10.1.1.1/32".to_owned(), 0, vec![9101]),
            ("10.9.0.0/16".to_owned(), 0, vec![443]),
            ("169.254.169.254/32".to_owned(), 1, vec![]),
            ("172.30.0.1/32".to_owned(), 0, vec![9101]),
            ("192.168.50.1/32".to_owned(), 0, vec![9101]),
            ("192.168.50.250/32".to_owned(), 0, vec![2379, 2380]),
        ]
    );
    let open = config_of(&text.replace("[isolation]\n", "[isolation]\npods_reach_control_plane = true\n"));
    assert_eq!(
        denied(&planned(&open, &found)),
        [
            ("10.9.0.0/16".to_owned(), 0, vec![443]),
            ("169.254.169.254/32".to_owned(), 1, vec![]),
            ("192.168.50.250/32".to_owned(), 0, vec![2380]),
        ]
    );
}

#[test]
fn what_a_network_denies_holds_for_the_addresses_in_it() {
    // etcd on this node, metrics on [::] (IPv4 too), and the operator's networks around them:
    // the trie answers with the longest prefix, so each entry carries what covers it.
    let text = format!(
        "{BASE}\n[agent]\nmetrics = \"[::]:9101\"\n\
         [isolation]\npods_never_reach = [\"192.168.50.0/24:22\", \"172.30.0.0/16\"]\n"
    );
    let config = config_of(&text);
    let mut found = after_up(&config);
    found.etcd = vec!["127.0.0.1:2379".parse().unwrap()];
    found.node_addresses = vec!["172.30.0.1".parse().unwrap()];
    assert_eq!(
        denied(&planned(&config, &found)),
        [
            ("10.1.1.1/32".to_owned(), 0, vec![2379, 9101]),
            ("172.30.0.0/16".to_owned(), 1, vec![]),
            ("172.30.0.1/32".to_owned(), 1, vec![]),
            ("192.168.50.0/24".to_owned(), 0, vec![22]),
            ("192.168.50.1/32".to_owned(), 0, vec![22, 2379, 9101]),
        ]
    );
}

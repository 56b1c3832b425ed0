//! The config's validation, error by error: the messages are part of the interface.

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use ipnet::Ipv4Net;

use super::*;
use crate::model::{Uplink, XdpMode};

/// The config `text` (from "test.toml") describes, with no lease.
fn resolved(text: &str, source: Source) -> Result<Config, ConfigError> {
    Draft::parse(text.to_owned(), source)?.resolve(None)
}

fn parse(text: &str) -> Result<Config, String> {
    resolved(text, Source::File("test.toml".into())).map_err(|e| e.to_string())
}

const NODE: &str = "[node]\nname = \"n1\"\npod_cidr = \"10.1.1.0/24\"\n";

#[test]
fn builtin_is_the_two_pod_recipe() {
    let c = Draft::load(None).unwrap().resolve(None).unwrap();
    assert_eq!(c.node.name, "node1");
    assert_eq!(c.node.bridge, "br0");
    assert_eq!(c.node.gateway, Ipv4Addr::new(10, 1, 1, 1));
    let pods: Vec<_> = c.pods.iter().map(|p| (p.id.as_str(), p.ip, p.netns.as_str())).collect();
    assert_eq!(
        pods,
        [
            ("pod1", Some(Ipv4Addr::new(10, 1, 1, 2)), "node1-pod1"),
            ("pod2", Some(Ipv4Addr::new(10, 1, 1, 3)), "node1-pod2")
        ]
    );
    assert_eq!(c.node.state(), PathBuf::from("/var/lib/podnet/node1"));
    assert_eq!(c.pods[0].host_ifname, "brveth_pod1");
    assert_eq!(c.pods[0].ifname, "veth_pod1");
}

#[test]
fn bad_cidr_names_field() {
    let err = parse("[node]\nname = \"n1\"\npod_cidr = \"10.1.1.0/33\"\n").unwrap_err();
    assert_eq!(err, "test.toml: node.pod_cidr: \"10.1.1.0/33\" is not an IPv4 CIDR like 10.1.1.0/24");
    let err = parse("[node]\nname = \"n1\"\npod_cidr = \"10.1.1.7/24\"\n").unwrap_err();
    assert_eq!(err, "test.toml: node.pod_cidr: 10.1.1.7/24 has host bits set; did you mean 10.1.1.0/24?");
}

#[test]
fn duplicate_ip_is_rejected() {
    let err = parse(&format!(
        "{NODE}[[pod]]\nname = \"a\"\nip = \"10.1.1.2\"\n[[pod]]\nname = \"b\"\nip = \"10.1.1.2\"\n"
    ))
    .unwrap_err();
    assert_eq!(err, "test.toml: pod[1].ip: duplicate pod IP 10.1.1.2");
}

#[test]
fn pod_outside_node_cidr_is_rejected() {
    let err = parse(&format!("{NODE}[[pod]]\nname = \"a\"\nip = \"10.1.2.2\"\n")).unwrap_err();
    assert_eq!(err, "test.toml: pod[0].ip: 10.1.2.2 is outside node.pod_cidr 10.1.1.0/24");
}

#[test]
fn pod_on_gateway_or_broadcast_is_rejected() {
    let err = parse(&format!("{NODE}[[pod]]\nname = \"a\"\nip = \"10.1.1.1\"\n")).unwrap_err();
    assert_eq!(err, "test.toml: pod[0].ip: 10.1.1.1 is the node gateway");
    let err = parse(&format!("{NODE}[[pod]]\nname = \"a\"\nip = \"10.1.1.255\"\n")).unwrap_err();
    assert_eq!(err, "test.toml: pod[0].ip: 10.1.1.255 is the network or broadcast address of 10.1.1.0/24");
}

#[test]
fn unknown_field_is_rejected_with_its_location() {
    let err = parse(&format!("{NODE}jumbo = 9000\n")).unwrap_err();
    assert!(err.starts_with("test.toml: TOML parse error at line 4, column 1"), "{err}");
    assert!(err.contains("unknown field `jumbo`"), "{err}");
}

#[test]
fn pod_name_must_fit_an_interface_name() {
    let err = parse(&format!("{NODE}[[pod]]\nname = \"frontend-1\"\nip = \"10.1.1.2\"\n")).unwrap_err();
    assert_eq!(err, "test.toml: pod[0].name: \"frontend-1\" must be 1 to 8 characters long");
}

const UPLINK: &str = "[uplink]\ninterface = \"eth0\"\nip = \"192.168.50.1\"\n";

#[test]
fn nat_defaults_follow_the_uplink() {
    assert!(!parse(NODE).unwrap().nat.enabled);
    let c = parse(&format!("{NODE}{UPLINK}")).unwrap();
    assert!(c.nat.enabled);
    assert_eq!((c.nat.port_min, c.nat.port_max), (61000, 65535));
    assert_eq!(c.nat.timeouts.tcp_established, Duration::from_secs(21600));
    let err = parse(&format!("{NODE}[nat]\nenabled = true\n")).unwrap_err();
    assert_eq!(err, "test.toml: nat.enabled: masquerading needs an [uplink] (its ip is the source)");
}

#[test]
fn nat_port_range_is_checked() {
    let c = parse(&format!("{NODE}{UPLINK}[nat]\nports = \"61000-61003\"\nudp_timeout = 2\n")).unwrap();
    assert_eq!((c.nat.port_min, c.nat.port_max, c.nat.timeouts.udp), (61000, 61003, Duration::from_secs(2)));
    let err = parse(&format!("{NODE}{UPLINK}[nat]\nports = \"65000-61000\"\n")).unwrap_err();
    assert_eq!(err, "test.toml: nat.ports: \"65000-61000\" is not a port range like 61000-65535");
}

#[test]
fn peers_are_parsed() {
    let c = parse(&format!(
        "{NODE}{UPLINK}[[peer]]\nname = \"n2\"\nip = \"192.168.50.2\"\npod_cidr = \"10.1.2.0/24\"\n"
    ))
    .unwrap();
    assert_eq!(
        c.uplink,
        Some(Uplink {
            interface: "eth0".into(),
            ip: Ipv4Addr::new(192, 168, 50, 1),
            xdp: XdpMode::Off,
            xdp_deliver: false,
            allow_from: Vec::new(),
        })
    );
    assert_eq!(c.peers[0].pod_cidr.to_string(), "10.1.2.0/24");
}

#[test]
fn xdp_mode_is_checked() {
    let c = parse(&format!("{NODE}{UPLINK}xdp = \"generic\"\n")).unwrap();
    assert_eq!(c.uplink.unwrap().xdp, XdpMode::Generic);
    let err = parse(&format!("{NODE}{UPLINK}xdp = \"fast\"\n")).unwrap_err();
    assert_eq!(err, "test.toml: uplink.xdp: \"fast\" is not one of off, native, generic");
    let c = parse(&format!("{NODE}{UPLINK}xdp = \"generic\"\nxdp_deliver = true\n")).unwrap();
    assert!(c.uplink.unwrap().xdp_deliver);
    let err = parse(&format!("{NODE}{UPLINK}xdp_deliver = true\n")).unwrap_err();
    assert_eq!(
        err,
        "test.toml: uplink.xdp_deliver: needs the XDP program: set uplink.xdp = \"generic\" or \"native\""
    );
}

#[test]
fn peer_cidr_overlapping_the_node_is_rejected() {
    let err = parse(&format!(
        "{NODE}{UPLINK}[[peer]]\nname = \"n2\"\nip = \"192.168.50.2\"\npod_cidr = \"10.1.0.0/16\"\n"
    ))
    .unwrap_err();
    assert_eq!(err, "test.toml: peer[0].pod_cidr: 10.1.0.0/16 overlaps this node's pod_cidr 10.1.1.0/24");
}

#[test]
fn peers_need_an_uplink_and_distinct_addresses() {
    let peer = "[[peer]]\nname = \"n2\"\nip = \"192.168.50.1\"\npod_cidr = \"10.1.2.0/24\"\n";
    let err = parse(&format!("{NODE}{peer}")).unwrap_err();
    assert_eq!(err, "test.toml: peer[0].name: peers need an [uplink] section (interface and node IP)");
    let err = parse(&format!("{NODE}{UPLINK}{peer}")).unwrap_err();
    assert_eq!(err, "test.toml: peer[0].ip: 192.168.50.1 is already another node's address");
}

#[test]
fn configs_that_would_break_the_node_are_refused() {
    let uplink = "[uplink]\ninterface = \"eth0\"\nip = \"192.168.50.1\"\n";
    let peer =
        |ip: &str, cidr: &str| format!("[[peer]]\nname = \"n2\"\nip = \"{ip}\"\npod_cidr = \"{cidr}\"\n");
    for (config, error) in [
        (
            format!("[node]\nname = \"n1\"\npod_cidr = \"10.1.1.0/24\"\nbridge = \"eth0\"\n{uplink}"),
            "test.toml: node.bridge: \"eth0\" is the uplink interface; the node bridge is a device of its own",
        ),
        (
            "[node]\nname = \"n1\"\npod_cidr = \"192.168.50.0/24\"\n".to_owned() + uplink,
            "test.toml: uplink.ip: 192.168.50.1 lies in node.pod_cidr 192.168.50.0/24",
        ),
        (
            format!("{NODE}{uplink}{}", peer("10.1.1.9", "10.1.2.0/24")),
            "test.toml: peer[0].ip: 10.1.1.9 lies in this node's pod_cidr 10.1.1.0/24",
        ),
        (
            format!("{NODE}{uplink}{}", peer("192.168.50.2", "192.168.0.0/16")),
            "test.toml: peer[0].pod_cidr: 192.168.0.0/16 holds the peer's own address 192.168.50.2: it would be routed via itself",
        ),
        (
            format!("{NODE}{uplink}{}", peer("172.16.0.2", "192.168.0.0/16")),
            "test.toml: peer[0].pod_cidr: 192.168.0.0/16 holds this node's uplink address 192.168.50.1",
        ),
    ] {
        assert_eq!(parse(&config).unwrap_err(), error);
    }
}

#[test]
fn allow_from_is_checked() {
    let c = parse(&format!("{NODE}{UPLINK}allow_from = [\"192.168.60.0/24\", \"0.0.0.0/0\"]\n")).unwrap();
    let allowed: Vec<String> = c.uplink.unwrap().allow_from.iter().map(ToString::to_string).collect();
    assert_eq!(allowed, ["192.168.60.0/24", "0.0.0.0/0"]);
    let err = parse(&format!("{NODE}{UPLINK}allow_from = [\"10.1.1.0/25\"]\n")).unwrap_err();
    assert_eq!(
        err,
        "test.toml: uplink.allow_from[0]: 10.1.1.0/25 lies in 10.1.1.0/24, which no genuine packet \
         from the uplink comes from (this node's pods and address, 0/8, loopback, multicast, reserved)"
    );
    let err = parse(&format!("{NODE}{UPLINK}allow_from = [\"127.0.0.1/32\"]\n")).unwrap_err();
    assert!(err.starts_with("test.toml: uplink.allow_from[0]: 127.0.0.1/32 lies in 127.0.0.0/8"), "{err}");
    let err = parse(&format!("{NODE}{UPLINK}allow_from = [\"nope\"]\n")).unwrap_err();
    assert_eq!(err, "test.toml: uplink.allow_from[0]: \"nope\" is not an IPv4 CIDR like 10.1.1.0/24");
}

#[test]
fn parse_errors_do_not_echo_huge_lines() {
    let huge = format!("{NODE}x = \"{}\"\n", "a".repeat(10 << 20));
    let err = parse(&huge).unwrap_err();
    assert!(err.len() < 2000, "{} bytes of error", err.len());
    assert!(err.contains("more bytes)"), "{}", &err[..err.len().min(500)]);
}

#[test]
fn pod_ip_is_optional() {
    let c = parse(&format!("{NODE}[[pod]]\nname = \"a\"\n[[pod]]\nname = \"b\"\n")).unwrap();
    assert_eq!(c.pods.iter().map(|p| p.ip).collect::<Vec<_>>(), [None, None]);
    let err = parse(&format!("{NODE}state_dir = \"rel\"\n")).unwrap_err();
    assert_eq!(err, "test.toml: node.state_dir: rel is not an absolute path");
}

#[test]
fn mtu_is_optional_and_checked() {
    assert_eq!(parse(NODE).unwrap().node.mtu, None);
    assert_eq!(parse(&format!("{NODE}mtu = 1400\n")).unwrap().node.mtu, Some(1400));
    let err = parse(&format!("{NODE}mtu = 100\n")).unwrap_err();
    assert_eq!(err, "test.toml: node.mtu: 100 is not an MTU from 576 to 65535");
}

#[test]
fn explicit_gateway_and_netns_are_kept() {
    let c = parse(
        "[node]\nname = \"n1\"\npod_cidr = \"10.1.1.0/24\"\ngateway = \"10.1.1.254\"\n\
         [[pod]]\nname = \"a\"\nip = \"10.1.1.2\"\nnetns = \"ns_a\"\n",
    )
    .unwrap();
    assert_eq!(c.node.gateway, Ipv4Addr::new(10, 1, 1, 254));
    assert_eq!(c.pods[0].netns, "ns_a");
}

const CLUSTER: &str =
    "[cluster]\netcd = [\"http://192.168.50.250:2379\"]\ncluster_cidr = \"10.1.0.0/16\"\nnode_prefix = 24\n";

#[test]
fn a_cluster_node_leases_its_pod_cidr() {
    let text = format!("[node]\nname = \"n1\"\n{UPLINK}{CLUSTER}[[pod]]\nname = \"a\"\n");
    let draft = Draft::parse(text, Source::File("test.toml".into())).unwrap();
    let member = draft.membership().unwrap();
    assert_eq!(member.pod_cidr, None);
    assert_eq!(member.cluster.lease_ttl, Duration::from_secs(30));
    assert_eq!(member.cluster.prefix, "/podnet");
    assert_eq!(member.cluster.subnets().count(), 256);
    let leased: Ipv4Net = "10.1.7.0/24".parse().unwrap();
    let config = draft.resolve(Some(leased)).unwrap();
    assert_eq!((config.node.pod_cidr, config.node.gateway), (leased, Ipv4Addr::new(10, 1, 7, 1)));
    assert!(config.pod_cidr_leased());
    // Configured: claimed as it is.
    let text = format!("{NODE}{UPLINK}{CLUSTER}");
    let config = resolved(&text, Source::BuiltIn).unwrap();
    assert!(!config.pod_cidr_leased());
    assert_eq!(config.membership().unwrap().pod_cidr, Some("10.1.1.0/24".parse().unwrap()));
}

#[test]
fn cluster_settings_are_checked() {
    let node = "[node]\nname = \"n1\"\n";
    let cluster = |body: &str| format!("[cluster]\n{body}");
    let base = "cluster_cidr = \"10.1.0.0/16\"\nnode_prefix = 24\n";
    let etcd = "etcd = [\"http://192.168.50.250:2379\"]\n";
    for (config, error) in [
        (
            format!("{node}{UPLINK}"),
            "test.toml: node.pod_cidr: missing: set the node's pod address range, or add a [cluster] to lease one",
        ),
        (
            format!("{node}{UPLINK}{}", cluster(&format!("etcd = []\n{base}"))),
            "test.toml: cluster.etcd: no endpoint: list etcd's client URLs",
        ),
        (
            format!("{node}{UPLINK}{}", cluster(&format!("etcd = [\"192.168.50.250:2379\"]\n{base}"))),
            "test.toml: cluster.etcd[0]: \"192.168.50.250:2379\" is not an etcd client URL like http://192.168.50.250:2379",
        ),
        (
            format!(
                "{node}{UPLINK}{}",
                cluster(&format!("etcd = [\"https://a:1\", \"http://b:2\"]\n{base}ca = \"/ca\"\n"))
            ),
            "test.toml: cluster.etcd[1]: \"http://b:2\": all endpoints use one scheme (https:// here)",
        ),
        (
            format!("{node}{UPLINK}{}", cluster(&format!("etcd = [\"https://a:1\"]\n{base}"))),
            "test.toml: cluster.ca: missing: https:// endpoints need the CA that signed etcd's certificate",
        ),
        (
            format!(
                "{node}{UPLINK}{}",
                cluster(&format!("etcd = [\"https://a:1\"]\n{base}ca = \"/ca\"\ncert = \"/c\"\n"))
            ),
            "test.toml: cluster.cert: a client certificate needs both cert and key",
        ),
        (
            format!("{node}{UPLINK}{}", cluster(&format!("{etcd}{base}ca = \"/ca\"\n"))),
            "test.toml: cluster.ca: ca, cert and key are for https:// endpoints",
        ),
        (
            format!(
                "{node}{UPLINK}{}",
                cluster(&format!("{etcd}cluster_cidr = \"10.1.0.0/16\"\nnode_prefix = 8\n"))
            ),
            "test.toml: cluster.node_prefix: 8 is not a prefix length from 16 (cluster_cidr's own) to 30",
        ),
        (
            format!("{node}{UPLINK}{}", cluster(&format!("{etcd}{base}lease_ttl = 1\n"))),
            "test.toml: cluster.lease_ttl: 1 is not a TTL from 2 to 3600 seconds",
        ),
        (
            format!("{node}{UPLINK}{}", cluster(&format!("{etcd}{base}prefix = \"podnet/\"\n"))),
            "test.toml: cluster.prefix: \"podnet/\" is not a key prefix like \"/podnet\" (a leading '/', no trailing one, at most 64 of a-z, A-Z, 0-9, '/', '-', '_', '.')",
        ),
        (
            format!("{node}{}", cluster(&format!("{etcd}{base}"))),
            "test.toml: cluster: a cluster node needs an [uplink]: its ip is the node's address in the cluster",
        ),
        (
            format!(
                "{node}[uplink]\ninterface = \"eth0\"\nip = \"10.1.200.1\"\n{}",
                cluster(&format!("{etcd}{base}"))
            ),
            "test.toml: uplink.ip: 10.1.200.1 lies in cluster.cluster_cidr 10.1.0.0/16",
        ),
        (
            format!("{node}{UPLINK}{CLUSTER}[[pod]]\nname = \"a\"\nip = \"10.1.0.5\"\n"),
            "test.toml: pod[0].ip: the node's pod CIDR is leased from the cluster, so pods get their addresses from IPAM: leave ip out, or set node.pod_cidr",
        ),
        (
            format!("{node}gateway = \"10.1.0.1\"\n{UPLINK}{CLUSTER}"),
            "test.toml: node.gateway: the pod CIDR is leased from the cluster, so the gateway is its first address: leave gateway out, or set node.pod_cidr",
        ),
        (
            format!("{node}{UPLINK}allow_from = [\"10.1.9.0/24\"]\n{CLUSTER}"),
            "test.toml: uplink.allow_from[0]: 10.1.9.0/24 overlaps cluster.cluster_cidr 10.1.0.0/16: other nodes' pods reach pods as peers",
        ),
        (
            format!(
                "{NODE}{UPLINK}[[peer]]\nname = \"n2\"\nip = \"192.168.50.2\"\npod_cidr = \"10.1.2.0/24\"\n{CLUSTER}"
            ),
            "test.toml: peer[0].pod_cidr: 10.1.2.0/24 overlaps cluster.cluster_cidr 10.1.0.0/16: the cluster's nodes are peers through etcd",
        ),
    ] {
        assert_eq!(parse(&config).unwrap_err(), error, "{config}");
    }
}

#[test]
fn a_leased_node_without_a_lease_says_what_to_run() {
    let dir = std::env::temp_dir().join(format!("podnet-config-test-{}", std::process::id()));
    let text = format!("[node]\nname = \"n1\"\nstate_dir = \"{}\"\n{UPLINK}{CLUSTER}", dir.display());
    let err = resolved(&text, Source::File("test.toml".into())).unwrap_err().to_string();
    assert_eq!(
        err,
        "test.toml: node.pod_cidr is not set and node \"n1\" holds no lease from the cluster yet: start \
         `podnet agent`, which leases one from [cluster] etcd"
    );
}

#[test]
fn isolation_destinations_are_checked() {
    let with = |list: &str| parse(&format!("{NODE}[isolation]\npods_never_reach = [{list}]\n"));
    let c = with("\"169.254.169.254\", \"172.16.0.0/12:443\", \"192.168.50.250:2379\"").unwrap();
    assert!(!c.isolation.pods_reach_control_plane, "pods are kept off the control plane by default");
    assert_eq!(c.isolation.pods_never_reach.len(), 3);
    assert_eq!(c.isolation.pods_never_reach[1].port, Some(443));
    for (list, problem) in [
        ("\"example.com\"", "is not a destination like"),
        ("\"10.0.0.1/8\"", "is not a destination like"),
        ("\"10.0.0.1:0\"", "is not a destination like"),
        ("\"10.1.0.0/16\"", "overlaps node.pod_cidr 10.1.1.0/24"),
        (
            &(1..=9).map(|p| format!("\"10.9.9.9:{p}\"")).collect::<Vec<_>>().join(", "),
            "pods_never_reach[8]: more than 8 ports of 10.9.9.9/32",
        ),
    ] {
        let err = with(list).unwrap_err();
        assert!(err.contains(problem), "{list}: {err}");
    }
}

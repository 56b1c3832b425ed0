//! Checks a raw config field by field and makes the [`crate::model`] from it; every error names
//! the file, the field path and the problem (`node.toml: pod[1].ip: 10.1.2.7 is outside ...`).

use std::{collections::HashSet, net::Ipv4Addr, path::PathBuf, time::Duration};

use ipnet::Ipv4Net;
use podnet_common::{DENIED_PORTS_MAX, maps::POD_DENY_MAX};

use super::{
    ConfigError, DEFAULT_STATE_DIR,
    raw::{RawCluster, RawConfig, RawIsolation, RawNat, RawNode, RawPod, RawUplink},
};
use crate::model::{
    AgentSettings, Cluster, Config, Destination, EtcdTls, Isolation, Nat, Node, POD_NAME_MAX, PeerNode, Pod,
    Source, Timeouts, Uplink, XdpMode, check_peer,
    names::{check_host_in, check_ifname, check_name, parse_cidr},
    overlaps, refused_sources,
};

/// Shortest and longest lease TTL, in seconds.
const LEASE_TTL_MIN: u64 = 2;
const LEASE_TTL_MAX: u64 = 3600;
/// Smallest and largest translation table.
const TABLE_MIN: u32 = 1024;
const TABLE_MAX: u32 = 1 << 20;
/// Shortest and longest idle timeout, in seconds.
const TIMEOUT_MIN: u64 = 2;
const TIMEOUT_MAX: u64 = 7 * 24 * 3600;

/// A pod CIDR the cluster could lease, to check a config against before the node has one.
fn stand_in(cluster: &Cluster) -> Ipv4Net {
    cluster.subnets().next().expect("node_prefix is at least cluster_cidr's")
}

pub(super) struct Validator {
    pub(super) source: Source,
}

impl Validator {
    fn invalid(&self, field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            source_name: self.source.clone(),
            field: field.into(),
            problem: cut_lines(&problem.into(), QUOTED_MAX),
        }
    }

    pub(super) fn validate(self, raw: RawConfig, leased: Option<Ipv4Net>) -> Result<Config, ConfigError> {
        let configured = raw.node.pod_cidr.is_some();
        let cluster = raw.cluster.map(|c| self.cluster(c, configured)).transpose()?;
        let leased = match (&cluster, leased) {
            (Some(cluster), None) if !configured => Some(stand_in(cluster)),
            (_, leased) => leased,
        };
        let node = self.node(raw.node, leased)?;
        let mut pods = Vec::with_capacity(raw.pods.len());
        let (mut names, mut ips, mut namespaces) = (HashSet::new(), HashSet::new(), HashSet::new());
        for (i, raw_pod) in raw.pods.into_iter().enumerate() {
            let pod = self.pod(i, raw_pod, &node)?;
            if !names.insert(pod.id.clone()) {
                return Err(
                    self.invalid(format!("pod[{i}].name"), format!("duplicate pod name {:?}", pod.id))
                );
            }
            if let Some(ip) = pod.ip.filter(|ip| !ips.insert(*ip)) {
                return Err(self.invalid(format!("pod[{i}].ip"), format!("duplicate pod IP {ip}")));
            }
            if !namespaces.insert(pod.netns.clone()) {
                return Err(
                    self.invalid(format!("pod[{i}].netns"), format!("duplicate namespace {:?}", pod.netns))
                );
            }
            pods.push(pod);
        }
        let uplink = raw.uplink.map(|u| self.uplink(u, &node)).transpose()?;
        let mut peers: Vec<PeerNode> = Vec::with_capacity(raw.peers.len());
        for (i, raw_peer) in raw.peers.into_iter().enumerate() {
            let field = |f: &str| format!("peer[{i}].{f}");
            let ip = self.ipv4(&field("ip"), &raw_peer.ip)?;
            let pod_cidr = self.cidr(&field("pod_cidr"), &raw_peer.pod_cidr)?;
            let peer = PeerNode { name: raw_peer.name, ip, pod_cidr };
            check_peer(&node, uplink.as_ref(), &peers, &[], &peer)
                .map_err(|(f, p)| self.invalid(field(f), p))?;
            if let Some(cluster) = cluster.as_ref().filter(|c| overlaps(c.cluster_cidr, peer.pod_cidr)) {
                return Err(self.invalid(
                    field("pod_cidr"),
                    format!(
                        "{} overlaps cluster.cluster_cidr {}: the cluster's nodes are peers through etcd",
                        peer.pod_cidr, cluster.cluster_cidr
                    ),
                ));
            }
            peers.push(peer);
        }
        if let Some(cluster) = &cluster {
            self.check_cluster_node(cluster, &pods, uplink.as_ref())?;
        }
        let nat = self.nat(raw.nat, uplink.is_some())?;
        let metrics = raw
            .agent
            .metrics
            .map(|text| {
                text.parse().map_err(|_| {
                    self.invalid(
                        "agent.metrics",
                        format!("{text:?} is not an address and port like \"192.168.50.1:9101\""),
                    )
                })
            })
            .transpose()?;
        let isolation = self.isolation(raw.isolation, &node)?;
        Ok(Config {
            source: self.source,
            node,
            pods,
            uplink,
            peers,
            nat,
            cluster,
            agent: AgentSettings { metrics },
            isolation,
        })
    }

    fn isolation(&self, raw: RawIsolation, node: &Node) -> Result<Isolation, ConfigError> {
        if raw.pods_never_reach.len() > POD_DENY_MAX {
            return Err(self.invalid(
                "isolation.pods_never_reach",
                format!("{} destinations: at most {POD_DENY_MAX}", raw.pods_never_reach.len()),
            ));
        }
        let mut never = Vec::with_capacity(raw.pods_never_reach.len());
        for (i, text) in raw.pods_never_reach.iter().enumerate() {
            let field = format!("isolation.pods_never_reach[{i}]");
            let destination = Destination::parse(text).ok_or_else(|| {
                self.invalid(
                    &field,
                    format!(
                        "{text:?} is not a destination like \"169.254.169.254\", \"10.0.0.0/8\" or \
                         \"192.168.50.250:2379\" (a network without host bits, a port above 0)"
                    ),
                )
            })?;
            if overlaps(destination.net, node.pod_cidr) {
                return Err(self.invalid(
                    &field,
                    format!(
                        "{} overlaps node.pod_cidr {}: pods of this node reach each other before this check",
                        destination.net, node.pod_cidr
                    ),
                ));
            }
            let ports =
                |net| never.iter().filter(|d: &&Destination| d.net == net && d.port.is_some()).count();
            if destination.port.is_some() && ports(destination.net) >= DENIED_PORTS_MAX {
                return Err(self.invalid(
                    &field,
                    format!(
                        "more than {DENIED_PORTS_MAX} ports of {}: deny the whole address instead",
                        destination.net
                    ),
                ));
            }
            never.push(destination);
        }
        Ok(Isolation { pods_reach_control_plane: raw.pods_reach_control_plane, pods_never_reach: never })
    }

    fn cluster(&self, raw: RawCluster, pod_cidr_configured: bool) -> Result<Cluster, ConfigError> {
        if raw.etcd.is_empty() {
            return Err(self.invalid("cluster.etcd", "no endpoint: list etcd's client URLs"));
        }
        let tls = raw.etcd.iter().any(|e| e.starts_with("https://"));
        for (i, endpoint) in raw.etcd.iter().enumerate() {
            check_endpoint(endpoint, tls).map_err(|p| self.invalid(format!("cluster.etcd[{i}]"), p))?;
        }
        let tls = match (tls, raw.ca, raw.cert, raw.key) {
            (false, None, None, None) => None,
            (false, ..) => {
                return Err(self.invalid("cluster.ca", "ca, cert and key are for https:// endpoints"));
            }
            (true, None, ..) => {
                return Err(self.invalid(
                    "cluster.ca",
                    "missing: https:// endpoints need the CA that signed etcd's certificate",
                ));
            }
            (true, Some(ca), Some(cert), Some(key)) => Some(EtcdTls { ca, identity: Some((cert, key)) }),
            (true, Some(ca), None, None) => Some(EtcdTls { ca, identity: None }),
            (true, Some(_), ..) => {
                return Err(self.invalid("cluster.cert", "a client certificate needs both cert and key"));
            }
        };
        let cluster_cidr = self.cidr("cluster.cluster_cidr", &raw.cluster_cidr)?;
        if !(cluster_cidr.prefix_len()..=30).contains(&raw.node_prefix) {
            return Err(self.invalid(
                "cluster.node_prefix",
                format!(
                    "{} is not a prefix length from {} (cluster_cidr's own) to 30",
                    raw.node_prefix,
                    cluster_cidr.prefix_len()
                ),
            ));
        }
        let lease_ttl = match raw.lease_ttl.unwrap_or(30) {
            s @ LEASE_TTL_MIN..=LEASE_TTL_MAX => Duration::from_secs(s),
            s => {
                return Err(self.invalid(
                    "cluster.lease_ttl",
                    format!("{s} is not a TTL from {LEASE_TTL_MIN} to {LEASE_TTL_MAX} seconds"),
                ));
            }
        };
        let prefix = raw.prefix.unwrap_or_else(|| "/podnet".to_owned());
        let plain = |b: u8| b.is_ascii_alphanumeric() || b"/-_.".contains(&b);
        if !prefix.starts_with('/')
            || prefix.ends_with('/')
            || prefix.len() > 64
            || !prefix.bytes().all(plain)
        {
            return Err(self.invalid(
                "cluster.prefix",
                format!(
                    "{prefix:?} is not a key prefix like \"/podnet\" (a leading '/', no trailing one, \
                     at most 64 of a-z, A-Z, 0-9, '/', '-', '_', '.')"
                ),
            ));
        }
        Ok(Cluster {
            etcd: raw.etcd,
            tls,
            cluster_cidr,
            node_prefix: raw.node_prefix,
            lease_ttl,
            prefix,
            pod_cidr_configured,
        })
    }

    /// What a cluster node needs: an uplink outside the cluster range, and, when its pod CIDR is
    /// leased, nothing in the file that depends on which one it gets.
    fn check_cluster_node(
        &self,
        cluster: &Cluster,
        pods: &[Pod],
        uplink: Option<&Uplink>,
    ) -> Result<(), ConfigError> {
        let Some(uplink) = uplink else {
            return Err(self.invalid(
                "cluster",
                "a cluster node needs an [uplink]: its ip is the node's address in the cluster",
            ));
        };
        if cluster.cluster_cidr.contains(&uplink.ip) {
            return Err(self.invalid(
                "uplink.ip",
                format!("{} lies in cluster.cluster_cidr {}", uplink.ip, cluster.cluster_cidr),
            ));
        }
        if cluster.pod_cidr_configured {
            return Ok(());
        }
        if let Some(i) = pods.iter().position(|p| p.ip.is_some()) {
            return Err(self.invalid(
                format!("pod[{i}].ip"),
                "the node's pod CIDR is leased from the cluster, so pods get their addresses from IPAM: \
                 leave ip out, or set node.pod_cidr",
            ));
        }
        if let Some(i) = uplink.allow_from.iter().position(|a| overlaps(*a, cluster.cluster_cidr)) {
            return Err(self.invalid(
                format!("uplink.allow_from[{i}]"),
                format!(
                    "{} overlaps cluster.cluster_cidr {}: other nodes' pods reach pods as peers",
                    uplink.allow_from[i], cluster.cluster_cidr
                ),
            ));
        }
        Ok(())
    }

    fn nat(&self, raw: RawNat, has_uplink: bool) -> Result<Nat, ConfigError> {
        let enabled = raw.enabled.unwrap_or(has_uplink);
        if enabled && !has_uplink {
            return Err(self.invalid("nat.enabled", "masquerading needs an [uplink] (its ip is the source)"));
        }
        let (port_min, port_max) = match raw.ports {
            None => (61000, 65535),
            Some(text) => parse_port_range(&text).map_err(|p| self.invalid("nat.ports", p))?,
        };
        if raw.tcp_closing_timeout.is_some() {
            return Err(self.invalid(
                "nat.tcp_closing_timeout",
                "replaced: tcp_time_wait_timeout (after FINs both ways, default 120) and \
                 tcp_reset_timeout (after an RST, default 10)",
            ));
        }
        let secs = |field: &str, v: Option<u64>, default: Duration| match v {
            None => Ok(default),
            // Idle times are known to within a second (busy entries note the time once a second).
            Some(s @ TIMEOUT_MIN..=TIMEOUT_MAX) => Ok(Duration::from_secs(s)),
            Some(s) => Err(self
                .invalid(field, format!("{s} is not a timeout from {TIMEOUT_MIN} to {TIMEOUT_MAX} seconds"))),
        };
        let d = Timeouts::default();
        let timeouts = Timeouts {
            tcp_syn: secs("nat.tcp_syn_timeout", raw.tcp_syn_timeout, d.tcp_syn)?,
            tcp_established: secs(
                "nat.tcp_established_timeout",
                raw.tcp_established_timeout,
                d.tcp_established,
            )?,
            tcp_time_wait: secs("nat.tcp_time_wait_timeout", raw.tcp_time_wait_timeout, d.tcp_time_wait)?,
            tcp_reset: secs("nat.tcp_reset_timeout", raw.tcp_reset_timeout, d.tcp_reset)?,
            udp: secs("nat.udp_timeout", raw.udp_timeout, d.udp)?,
            icmp: secs("nat.icmp_timeout", raw.icmp_timeout, d.icmp)?,
        };
        let table = |field: &str, v: Option<u32>| match v.unwrap_or(podnet_common::maps::CT_MAX as u32) {
            n @ TABLE_MIN..=TABLE_MAX => Ok(n),
            n => Err(self.invalid(field, format!("{n} is not a table size from {TABLE_MIN} to {TABLE_MAX}"))),
        };
        let tcp_table = table("nat.tcp_table", raw.tcp_table)?;
        let udp_icmp_table = table("nat.udp_icmp_table", raw.udp_icmp_table)?;
        Ok(Nat { enabled, port_min, port_max, timeouts, tcp_table, udp_icmp_table })
    }

    fn uplink(&self, raw: RawUplink, node: &Node) -> Result<Uplink, ConfigError> {
        check_ifname(&raw.interface).map_err(|p| self.invalid("uplink.interface", p))?;
        if raw.interface == node.bridge {
            return Err(self.invalid(
                "node.bridge",
                format!("{:?} is the uplink interface; the node bridge is a device of its own", node.bridge),
            ));
        }
        let ip = self.ipv4("uplink.ip", &raw.ip)?;
        if node.pod_cidr.contains(&ip) {
            return Err(self.invalid("uplink.ip", format!("{ip} lies in node.pod_cidr {}", node.pod_cidr)));
        }
        let xdp = match raw.xdp.as_deref() {
            None => XdpMode::Off,
            Some(name) => XdpMode::parse(name).ok_or_else(|| {
                self.invalid("uplink.xdp", format!("{name:?} is not one of off, native, generic"))
            })?,
        };
        let xdp_deliver = raw.xdp_deliver.unwrap_or(false);
        if xdp_deliver && xdp == XdpMode::Off {
            return Err(self.invalid(
                "uplink.xdp_deliver",
                "needs the XDP program: set uplink.xdp = \"generic\" or \"native\"",
            ));
        }
        let mut allow_from = Vec::with_capacity(raw.allow_from.len());
        for (i, text) in raw.allow_from.iter().enumerate() {
            let field = format!("uplink.allow_from[{i}]");
            let cidr = self.cidr(&field, text)?;
            if let Some(refused) = refused_sources(node.pod_cidr, ip).into_iter().find(|r| r.contains(&cidr))
            {
                return Err(self.invalid(
                    field,
                    format!(
                        "{cidr} lies in {refused}, which no genuine packet from the uplink comes from \
                         (this node's pods and address, 0/8, loopback, multicast, reserved)"
                    ),
                ));
            }
            allow_from.push(cidr);
        }
        Ok(Uplink { interface: raw.interface, ip, xdp, xdp_deliver, allow_from })
    }

    fn cidr(&self, field: &str, text: &str) -> Result<Ipv4Net, ConfigError> {
        parse_cidr(text).map_err(|p| self.invalid(field, p))
    }

    fn node(&self, raw: RawNode, leased: Option<Ipv4Net>) -> Result<Node, ConfigError> {
        check_name(&raw.name, 32).map_err(|p| self.invalid("node.name", p))?;
        check_ifname(&raw.bridge).map_err(|p| self.invalid("node.bridge", p))?;
        let pod_cidr = match (&raw.pod_cidr, leased) {
            (Some(text), _) => self.cidr("node.pod_cidr", text)?,
            (None, Some(leased)) => leased,
            (None, None) => {
                return Err(self.invalid(
                    "node.pod_cidr",
                    "missing: set the node's pod address range, or add a [cluster] to lease one",
                ));
            }
        };
        if raw.pod_cidr.is_none() && raw.gateway.is_some() {
            return Err(self.invalid(
                "node.gateway",
                "the pod CIDR is leased from the cluster, so the gateway is its first address: \
                 leave gateway out, or set node.pod_cidr",
            ));
        }
        if pod_cidr.prefix_len() > 30 {
            return Err(
                self.invalid("node.pod_cidr", format!("{pod_cidr} is too small: use a /30 or larger"))
            );
        }
        let gateway = match raw.gateway {
            None => pod_cidr.hosts().next().expect("a /30 or larger has hosts"),
            Some(gw) => self.ipv4("node.gateway", &gw)?,
        };
        check_host_in(gateway, pod_cidr).map_err(|p| self.invalid("node.gateway", p))?;
        if let Some(mtu) = raw.mtu.filter(|m| !(MTU_MIN..=MTU_MAX).contains(m)) {
            return Err(self.invalid("node.mtu", format!("{mtu} is not an MTU from {MTU_MIN} to {MTU_MAX}")));
        }
        let state_dir = raw.state_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        if !state_dir.is_absolute() {
            return Err(
                self.invalid("node.state_dir", format!("{} is not an absolute path", state_dir.display()))
            );
        }
        Ok(Node { name: raw.name, pod_cidr, bridge: raw.bridge, gateway, mtu: raw.mtu, state_dir })
    }

    fn pod(&self, i: usize, raw: RawPod, node: &Node) -> Result<Pod, ConfigError> {
        check_name(&raw.name, POD_NAME_MAX).map_err(|p| self.invalid(format!("pod[{i}].name"), p))?;
        let ip = raw.ip.map(|text| self.ipv4(&format!("pod[{i}].ip"), &text)).transpose()?;
        if let Some(ip) = ip {
            check_host_in(ip, node.pod_cidr).map_err(|p| self.invalid(format!("pod[{i}].ip"), p))?;
            if ip == node.gateway {
                return Err(self.invalid(format!("pod[{i}].ip"), format!("{ip} is the node gateway")));
            }
        }
        let netns = raw.netns.unwrap_or_else(|| format!("{}-{}", node.name, raw.name));
        check_name(&netns, 64).map_err(|p| self.invalid(format!("pod[{i}].netns"), p))?;
        Ok(Pod::configured(&raw.name, ip, &netns))
    }

    fn ipv4(&self, field: &str, text: &str) -> Result<Ipv4Addr, ConfigError> {
        text.parse().map_err(|_| self.invalid(field, format!("{text:?} is not an IPv4 address")))
    }
}

/// Smallest and largest pod MTU accepted (IPv4's minimum datagram size; the largest a veth
/// takes).
const MTU_MIN: u32 = 576;
const MTU_MAX: u32 = 65535;

/// Longest line of the config an error message quotes.
pub(super) const QUOTED_MAX: usize = 160;

/// `text` with every line cut to `max` characters: errors quote the offending line or value, and
/// a config of one 10 MB line must not come back as 10 MB of error.
pub(super) fn cut_lines(text: &str, max: usize) -> String {
    text.lines()
        .map(|line| match line.char_indices().nth(max) {
            Some((at, _)) => format!("{}... ({} more bytes)", &line[..at], line.len() - at),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parses "FIRST-LAST", a non-empty range of ports 1-65535.
fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{text:?} is not a port range like 61000-65535");
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok((a, b))
}

/// Checks an etcd client URL: `http://HOST:PORT` (or `https://` when `tls`), nothing after.
fn check_endpoint(endpoint: &str, tls: bool) -> Result<(), String> {
    let scheme = if tls { "https://" } else { "http://" };
    let bad = || format!("{endpoint:?} is not an etcd client URL like {scheme}192.168.50.250:2379");
    let Some(rest) = endpoint.strip_prefix(scheme) else {
        return Err(if endpoint.starts_with("http") {
            format!("{endpoint:?}: all endpoints use one scheme ({scheme} here)")
        } else {
            bad()
        });
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b));
    if !host_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(())
}

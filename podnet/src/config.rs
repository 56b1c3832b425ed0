//! The node configuration: a TOML file (or the built-in default), parsed and validated into a
//! [`Config`] whose every field is already checked and defaulted.

use std::{
    collections::HashSet,
    fmt,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::Ipv4Net;
use serde::Deserialize;

/// The built-in configuration: two pods on one node, like the classic recipe.
pub const DEFAULT_TOML: &str = include_str!("../default.toml");

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;
/// Prefix of the pod-side veth, inside the pod namespace.
const POD_IF_PREFIX: &str = "veth_";
/// Prefix of the host-side veth, in the node namespace and the bridge.
pub const HOST_IF_PREFIX: &str = "brveth_";
/// Longest pod name: the host-side veth name must fit in IFNAMSIZ.
pub const POD_NAME_MAX: usize = IFNAME_MAX - HOST_IF_PREFIX.len();

/// Where a configuration came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    BuiltIn,
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::BuiltIn => f.write_str("built-in config"),
            Source::File(path) => write!(f, "{}", path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{source_name}: {message}")]
    Parse { source_name: Source, message: String },
    #[error("{source_name}: {field}: {problem}")]
    Invalid { source_name: Source, field: String, problem: String },
    #[error(
        "{source_name}: node.pod_cidr is not set and node {node:?} holds no lease from the cluster yet: \
         start `podnet agent`, which leases one from [cluster] etcd"
    )]
    NotLeased { source_name: Source, node: String },
    #[error("cannot read the node's lease record")]
    LeaseRecord(#[source] Box<crate::discovery::DiscoveryError>),
}

/// A validated node configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub source: Source,
    pub node: Node,
    pub pods: Vec<Pod>,
    /// The node's link to other nodes; `None` for a single-node setup.
    pub uplink: Option<Uplink>,
    /// Other nodes whose pods this node routes to.
    pub peers: Vec<PeerNode>,
    /// Masquerading of pod traffic to the outside.
    pub nat: Nat,
    /// Membership of a cluster through etcd: a leased pod CIDR and peers learned from it.
    pub cluster: Option<Cluster>,
    /// What `podnet agent` serves besides its socket.
    pub agent: Agent,
}

/// `[agent]`: the node daemon's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Agent {
    /// Where the agent serves `/metrics` (Prometheus text format); `None`: nowhere.
    pub metrics: Option<std::net::SocketAddr>,
}

/// A cluster whose nodes find each other through etcd (see [`crate::discovery`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Client URLs of the etcd members, all `http://` or all `https://`.
    pub etcd: Vec<String>,
    /// TLS for `https://` endpoints.
    pub tls: Option<EtcdTls>,
    /// Pod CIDRs are leased out of this range.
    pub cluster_cidr: Ipv4Net,
    /// Prefix length of every node's pod CIDR.
    pub node_prefix: u8,
    /// How long a node's lease outlives its agent.
    pub lease_ttl: Duration,
    /// Key prefix in etcd, e.g. "/podnet".
    pub prefix: String,
    /// `node.pod_cidr` was set: the node claims that one instead of leasing any.
    pub pod_cidr_configured: bool,
}

/// Files for TLS to etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA that signed the etcd servers' certificates.
    pub ca: PathBuf,
    /// A client certificate and its key, when etcd asks for one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Shortest and longest lease TTL, in seconds.
const LEASE_TTL_MIN: u64 = 2;
const LEASE_TTL_MAX: u64 = 3600;

/// Masquerade settings: on by default when the node has an uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nat {
    pub enabled: bool,
    /// Node ports for translations, inclusive. The default, 61000-65535, stays clear of Linux's
    /// default ephemeral range (32768-60999) so the node's own connections never collide.
    pub port_min: u16,
    pub port_max: u16,
    pub timeouts: Timeouts,
    /// Translations each table holds: TCP, and UDP with ICMP (separate, so a flood of one
    /// cannot crowd out the other).
    pub tcp_table: u32,
    pub udp_icmp_table: u32,
}

/// Smallest and largest translation table.
const TABLE_MIN: u32 = 1024;
const TABLE_MAX: u32 = 1 << 20;
/// Shortest and longest idle timeout, in seconds.
const TIMEOUT_MIN: u64 = 2;
const TIMEOUT_MAX: u64 = 7 * 24 * 3600;

/// Idle time after which `podnet agent` removes a translation, per protocol and TCP state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP that has not seen a reply yet.
    pub tcp_syn: Duration,
    pub tcp_established: Duration,
    /// TCP after a FIN in both directions: the TIME_WAIT hold, during which the node port is
    /// not reused toward the same remote.
    pub tcp_time_wait: Duration,
    /// TCP after an RST.
    pub tcp_reset: Duration,
    pub udp: Duration,
    pub icmp: Duration,
}

impl Default for Timeouts {
    /// Linux conntrack's defaults, but for UDP (60 s, Linux has 30 s unreplied / 120 s stream).
    fn default() -> Self {
        Self {
            tcp_syn: Duration::from_secs(60),
            tcp_established: Duration::from_secs(21600),
            tcp_time_wait: Duration::from_secs(120),
            tcp_reset: Duration::from_secs(10),
            udp: Duration::from_secs(60),
            icmp: Duration::from_secs(30),
        }
    }
}

/// The interface that joins this node to the others, and the node's address on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    pub interface: String,
    pub ip: Ipv4Addr,
    /// How the XDP prefilter (deny list, malformed drops) attaches to the uplink.
    pub xdp: XdpMode,
    /// Whether the uplink's XDP program also delivers frames from other nodes to local pods
    /// itself (XDP_REDIRECT to the pod's veth) instead of leaving them to tc. Needs `xdp` on.
    pub xdp_deliver: bool,
    /// Sources besides peer nodes and their pods that may reach pods from the uplink (routed
    /// setups: a router that sends the pod CIDR to this node).
    pub allow_from: Vec<Ipv4Net>,
}

impl Uplink {
    /// Whether native XDP delivers to pods: frames then reach the pods' veths as XDP frames,
    /// which needs GRO on their pod ends and finished checksums (never from a veth uplink).
    pub fn native_delivery(&self) -> bool {
        self.xdp == XdpMode::Native && self.xdp_deliver
    }
}

/// XDP attachment of the uplink prefilter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// No XDP program; the deny list has no effect.
    Off,
    /// In the driver (veth and most NICs support it); `up` fails where it is not supported.
    Native,
    /// In the stack (works everywhere, after the skb is built).
    Generic,
}

impl XdpMode {
    pub fn name(self) -> &'static str {
        match self {
            XdpMode::Off => "off",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }

    /// The mode called `name`.
    pub fn parse(name: &str) -> Option<Self> {
        [XdpMode::Off, XdpMode::Native, XdpMode::Generic].into_iter().find(|m| m.name() == name)
    }
}

/// Another node: where its pods live and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct PeerNode {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Names the pin directory and prefixes pod namespace names.
    pub name: String,
    /// The node's pod address range.
    pub pod_cidr: Ipv4Net,
    /// The node bridge.
    pub bridge: String,
    /// Pods' default gateway, an address on the bridge.
    pub gateway: Ipv4Addr,
    /// MTU of the pods' veths; `None`: the uplink's MTU (1500 without an uplink).
    pub mtu: Option<u32>,
    /// Where the node keeps state across restarts (IPAM): `<state_dir>/<name>/`.
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    /// `None`: an address from the node's IPAM (kept across `up`s).
    pub ip: Option<Ipv4Addr>,
    /// The pod's network namespace (a name under /run/netns).
    pub netns: String,
}

impl Pod {
    /// The pod end of the veth pair, inside the pod namespace.
    pub fn pod_ifname(&self) -> String {
        format!("{POD_IF_PREFIX}{}", self.name)
    }

    /// The host end of the veth pair, in the node namespace and the bridge.
    pub fn host_ifname(&self) -> String {
        format!("{HOST_IF_PREFIX}{}", self.name)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: RawNode,
    #[serde(default, rename = "pod")]
    pods: Vec<RawPod>,
    uplink: Option<RawUplink>,
    #[serde(default, rename = "peer")]
    peers: Vec<RawPeer>,
    #[serde(default)]
    nat: RawNat,
    cluster: Option<RawCluster>,
    #[serde(default)]
    agent: RawAgent,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    metrics: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    etcd: Vec<String>,
    cluster_cidr: String,
    node_prefix: u8,
    lease_ttl: Option<u64>,
    prefix: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNat {
    enabled: Option<bool>,
    ports: Option<String>,
    tcp_syn_timeout: Option<u64>,
    tcp_established_timeout: Option<u64>,
    tcp_time_wait_timeout: Option<u64>,
    tcp_reset_timeout: Option<u64>,
    /// Replaced by `tcp_time_wait_timeout` and `tcp_reset_timeout`; refused with a message.
    tcp_closing_timeout: Option<u64>,
    tcp_table: Option<u32>,
    udp_icmp_table: Option<u32>,
    udp_timeout: Option<u64>,
    icmp_timeout: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUplink {
    interface: String,
    ip: String,
    xdp: Option<String>,
    xdp_deliver: Option<bool>,
    #[serde(default)]
    allow_from: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: String,
    ip: String,
    pod_cidr: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    pod_cidr: Option<String>,
    #[serde(default = "default_bridge")]
    bridge: String,
    gateway: Option<String>,
    mtu: Option<u32>,
    state_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPod {
    name: String,
    ip: Option<String>,
    netns: Option<String>,
}

fn default_bridge() -> String {
    "br0".to_owned()
}

impl Config {
    /// Reads and validates `path`, or the built-in config when `path` is `None`. A node of a
    /// `[cluster]` without `node.pod_cidr` gets the pod CIDR its agent leased (see [`Draft`]).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Draft::load(path)?.resolve(None)
    }

    /// Parses and validates TOML text whose `node.pod_cidr` is set.
    pub fn parse(text: &str, source: Source) -> Result<Self, ConfigError> {
        Draft::parse(text.to_owned(), source)?.resolve(None)
    }

    /// Whether the pod CIDR came from the cluster rather than the file.
    pub fn pod_cidr_leased(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| !c.pod_cidr_configured)
    }
}

/// A config file checked as far as it can be before its node has a pod CIDR: a `[cluster]` node
/// without `node.pod_cidr` leases one (`podnet agent` does, see [`crate::discovery`]). Every check
/// that depends on the pod CIDR holds for any CIDR the cluster can lease (pods then have no
/// fixed addresses, `allow_from` stays out of `cluster_cidr`, ...), so a draft that loads
/// resolves with any lease.
#[derive(Debug, Clone)]
pub struct Draft {
    text: String,
    source: Source,
    /// The config with the configured pod CIDR, or a stand-in from the cluster range.
    checked: Config,
}

impl Draft {
    /// Reads and checks `path`, or the built-in config when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            None => Self::parse(DEFAULT_TOML.to_owned(), Source::BuiltIn),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                Self::parse(text, Source::File(path.to_owned()))
            }
        }
    }

    fn parse(text: String, source: Source) -> Result<Self, ConfigError> {
        let checked = Self::validate(&text, &source, None)?;
        Ok(Self { text, source, checked })
    }

    fn validate(text: &str, source: &Source, leased: Option<Ipv4Net>) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            source_name: source.clone(),
            message: cut_lines(e.to_string().trim_end(), QUOTED_MAX),
        })?;
        Validator { source: source.clone() }.validate(raw, leased)
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.checked.node.name
    }

    /// What the node needs to join its cluster; `None` without `[cluster]`.
    pub fn membership(&self) -> Option<Membership> {
        self.checked.membership()
    }

    /// The config for taking the node down, which needs no pod CIDR: `down` removes what the
    /// node holds, whatever its CIDR, so a node whose lease record is lost still comes down.
    pub fn for_teardown(&self) -> Config {
        self.checked.clone()
    }

    /// The node's config with its pod CIDR: the configured one; else `leased`, or the one the
    /// node's agent leased last (its lease record), if the cluster still leases it.
    pub fn resolve(&self, leased: Option<Ipv4Net>) -> Result<Config, ConfigError> {
        let Some(cluster) = self.checked.cluster.as_ref().filter(|c| !c.pod_cidr_configured) else {
            return Ok(self.checked.clone());
        };
        let leased = match leased {
            Some(cidr) => Some(cidr),
            None => crate::discovery::LeaseRecord::load(&self.checked.node.state())
                .map_err(|e| ConfigError::LeaseRecord(Box::new(e)))?
                .map(|record| record.pod_cidr),
        };
        let leased = leased.filter(|c| cluster.leases(*c)).ok_or_else(|| ConfigError::NotLeased {
            source_name: self.source.clone(),
            node: self.node_name().to_owned(),
        })?;
        Self::validate(&self.text, &self.source, Some(leased))
    }
}

/// What a node needs to join its cluster, known before it has a pod CIDR.
#[derive(Debug, Clone)]
pub struct Membership {
    pub cluster: Cluster,
    pub node: String,
    /// The node's address in the cluster: its uplink IP.
    pub node_ip: Ipv4Addr,
    /// The node's state directory (its lease record is kept there).
    pub state: PathBuf,
    /// `node.pod_cidr`, when the file sets it: the node claims that one.
    pub pod_cidr: Option<Ipv4Net>,
}

impl Config {
    /// What the node needs to join its cluster; `None` without `[cluster]`.
    pub fn membership(&self) -> Option<Membership> {
        let (cluster, uplink) = (self.cluster.as_ref()?, self.uplink.as_ref()?);
        Some(Membership {
            cluster: cluster.clone(),
            node: self.node.name.clone(),
            node_ip: uplink.ip,
            state: self.node.state(),
            pod_cidr: cluster.pod_cidr_configured.then_some(self.node.pod_cidr),
        })
    }
}

struct Validator {
    source: Source,
}

impl Validator {
    fn invalid(&self, field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            source_name: self.source.clone(),
            field: field.into(),
            problem: cut_lines(&problem.into(), QUOTED_MAX),
        }
    }

    fn validate(self, raw: RawConfig, leased: Option<Ipv4Net>) -> Result<Config, ConfigError> {
        let configured = raw.node.pod_cidr.is_some();
        let cluster = raw.cluster.map(|c| self.cluster(c, configured)).transpose()?;
        let leased = match (&cluster, leased) {
            (Some(cluster), None) if !configured => Some(cluster.stand_in()),
            (_, leased) => leased,
        };
        let node = self.node(raw.node, leased)?;
        let mut pods = Vec::with_capacity(raw.pods.len());
        let (mut names, mut ips, mut namespaces) = (HashSet::new(), HashSet::new(), HashSet::new());
        for (i, raw_pod) in raw.pods.into_iter().enumerate() {
            let pod = self.pod(i, raw_pod, &node)?;
            if !names.insert(pod.name.clone()) {
                return Err(
                    self.invalid(format!("pod[{i}].name"), format!("duplicate pod name {:?}", pod.name))
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
            check_peer(&node, uplink.as_ref(), &peers, &peer).map_err(|(f, p)| self.invalid(field(f), p))?;
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
        Ok(Config { source: self.source, node, pods, uplink, peers, nat, cluster, agent: Agent { metrics } })
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
        Ok(Pod { name: raw.name, ip, netns })
    }

    fn ipv4(&self, field: &str, text: &str) -> Result<Ipv4Addr, ConfigError> {
        text.parse().map_err(|_| self.invalid(field, format!("{text:?} is not an IPv4 address")))
    }
}

/// Where nodes keep their state unless `[node] state_dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/podnet";

impl Node {
    /// This node's own state directory.
    pub fn state(&self) -> PathBuf {
        self.state_dir.join(&self.name)
    }
}

/// Smallest and largest pod MTU accepted (IPv4's minimum datagram size; the largest a veth
/// takes).
const MTU_MIN: u32 = 576;
const MTU_MAX: u32 = 65535;

/// Sources that can only be forged when they arrive on the uplink: this node's pod CIDR and
/// address, "this network", loopback, multicast and reserved. They never reach pods, even when
/// `allow_from` covers them, and `allow_from` may not lie inside them.
pub fn refused_sources(pod_cidr: Ipv4Net, node_ip: Ipv4Addr) -> Vec<Ipv4Net> {
    let net = |a, b, c, d, len| Ipv4Net::new(Ipv4Addr::new(a, b, c, d), len).expect("valid prefix");
    vec![
        pod_cidr,
        Ipv4Net::from(node_ip),
        net(0, 0, 0, 0, 8),
        net(127, 0, 0, 0, 8),
        net(224, 0, 0, 0, 4),
        net(240, 0, 0, 0, 4),
    ]
}

/// Longest line of the config an error message quotes.
const QUOTED_MAX: usize = 160;

/// `text` with every line cut to `max` characters: errors quote the offending line or value, and
/// a config of one 10 MB line must not come back as 10 MB of error.
fn cut_lines(text: &str, max: usize) -> String {
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

/// Parses a CIDR that must name a network (no host bits).
pub fn parse_cidr(text: &str) -> Result<Ipv4Net, String> {
    let cidr: Ipv4Net = text.parse().map_err(|_| format!("{text:?} is not an IPv4 CIDR like 10.1.1.0/24"))?;
    if cidr != cidr.trunc() {
        return Err(format!("{cidr} has host bits set; did you mean {}?", cidr.trunc()));
    }
    Ok(cidr)
}

/// Checks `peer` against this node and the peers already known; on failure returns the field
/// (`name`, `ip`, `pod_cidr`) and the problem. Used for the config and for `podnet node add`.
pub fn check_peer(
    node: &Node,
    uplink: Option<&Uplink>,
    known: &[PeerNode],
    peer: &PeerNode,
) -> Result<(), (&'static str, String)> {
    let Some(uplink) = uplink else {
        return Err(("name", "peers need an [uplink] section (interface and node IP)".to_owned()));
    };
    check_name(&peer.name, podnet_common::PEER_NAME_MAX).map_err(|p| ("name", p))?;
    if peer.name == node.name || known.iter().any(|k| k.name == peer.name) {
        return Err(("name", format!("node name {:?} is already in use", peer.name)));
    }
    if peer.ip == uplink.ip || known.iter().any(|k| k.ip == peer.ip) {
        return Err(("ip", format!("{} is already another node's address", peer.ip)));
    }
    if node.pod_cidr.contains(&peer.ip) {
        return Err(("ip", format!("{} lies in this node's pod_cidr {}", peer.ip, node.pod_cidr)));
    }
    if peer.pod_cidr.contains(&peer.ip) {
        return Err((
            "pod_cidr",
            format!(
                "{} holds the peer's own address {}: it would be routed via itself",
                peer.pod_cidr, peer.ip
            ),
        ));
    }
    if peer.pod_cidr.contains(&uplink.ip) {
        return Err((
            "pod_cidr",
            format!("{} holds this node's uplink address {}", peer.pod_cidr, uplink.ip),
        ));
    }
    if overlaps(peer.pod_cidr, node.pod_cidr) {
        return Err((
            "pod_cidr",
            format!("{} overlaps this node's pod_cidr {}", peer.pod_cidr, node.pod_cidr),
        ));
    }
    if let Some(k) = known.iter().find(|k| overlaps(k.pod_cidr, peer.pod_cidr)) {
        return Err(("pod_cidr", format!("{} overlaps {} of node {:?}", peer.pod_cidr, k.pod_cidr, k.name)));
    }
    Ok(())
}

/// Whether two networks share an address.
pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

impl Cluster {
    /// Pod CIDRs the cluster leases, in order.
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> {
        self.cluster_cidr.subnets(self.node_prefix).into_iter().flatten()
    }

    /// Whether `cidr` is one the cluster leases (a network: no host bits).
    pub fn leases(&self, cidr: Ipv4Net) -> bool {
        cidr.prefix_len() == self.node_prefix && cidr == cidr.trunc() && self.cluster_cidr.contains(&cidr)
    }

    /// A pod CIDR the cluster could lease, to check a config against before the node has one.
    fn stand_in(&self) -> Ipv4Net {
        self.subnets().next().expect("node_prefix is at least cluster_cidr's")
    }
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

/// Names end up in interface names, namespace names and bpffs paths: keep them plain.
pub fn check_name(name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() || name.len() > max {
        return Err(format!("{name:?} must be 1 to {max} characters long"));
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
        return Err(format!("{name:?} may only use a-z, 0-9, '-' and '_'"));
    }
    Ok(())
}

fn check_ifname(name: &str) -> Result<(), String> {
    check_name(name, IFNAME_MAX)
}

fn check_host_in(ip: Ipv4Addr, cidr: Ipv4Net) -> Result<(), String> {
    if !cidr.contains(&ip) {
        return Err(format!("{ip} is outside node.pod_cidr {cidr}"));
    }
    if ip == cidr.network() || ip == cidr.broadcast() {
        return Err(format!("{ip} is the network or broadcast address of {cidr}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Source::File("test.toml".into())).map_err(|e| e.to_string())
    }

    const NODE: &str = "[node]\nname = \"n1\"\npod_cidr = \"10.1.1.0/24\"\n";

    #[test]
    fn builtin_is_the_two_pod_recipe() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.node.name, "node1");
        assert_eq!(c.node.bridge, "br0");
        assert_eq!(c.node.gateway, Ipv4Addr::new(10, 1, 1, 1));
        let pods: Vec<_> = c.pods.iter().map(|p| (p.name.as_str(), p.ip, p.netns.as_str())).collect();
        assert_eq!(
            pods,
            [
                ("pod1", Some(Ipv4Addr::new(10, 1, 1, 2)), "node1-pod1"),
                ("pod2", Some(Ipv4Addr::new(10, 1, 1, 3)), "node1-pod2")
            ]
        );
        assert_eq!(c.node.state(), PathBuf::from("/var/lib/podnet/node1"));
        assert_eq!(c.pods[0].host_ifname(), "brveth_pod1");
        assert_eq!(c.pods[0].pod_ifname(), "veth_pod1");
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
        assert_eq!(
            err,
            "test.toml: pod[0].ip: 10.1.1.255 is the network or broadcast address of 10.1.1.0/24"
        );
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
        assert_eq!(
            (c.nat.port_min, c.nat.port_max, c.nat.timeouts.udp),
            (61000, 61003, Duration::from_secs(2))
        );
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
        assert!(
            err.starts_with("test.toml: uplink.allow_from[0]: 127.0.0.1/32 lies in 127.0.0.0/8"),
            "{err}"
        );
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

    const CLUSTER: &str = "[cluster]\netcd = [\"http://192.168.50.250:2379\"]\ncluster_cidr = \"10.1.0.0/16\"\nnode_prefix = 24\n";

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
        let config = Config::parse(&text, Source::BuiltIn).unwrap();
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
        let err = Config::parse(&text, Source::File("test.toml".into())).unwrap_err().to_string();
        assert_eq!(
            err,
            "test.toml: node.pod_cidr is not set and node \"n1\" holds no lease from the cluster yet: start \
             `podnet agent`, which leases one from [cluster] etcd"
        );
    }
}

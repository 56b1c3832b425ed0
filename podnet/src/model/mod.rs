//! The node as podnet means it: its pods (from the config or attached by a runtime), its uplink,
//! the other nodes it routes to, NAT, the cluster it may belong to, and what the agent serves.
//! Every value here is already checked (see [`crate::config`], which makes them from TOML); no
//! layer below reads files or formats, and none of these types is a wire format.

mod cluster;
pub mod names;
mod peer;
mod pod;

use std::{fmt, net::Ipv4Addr, path::PathBuf, time::Duration};

use ipnet::Ipv4Net;
use podnet_common::CtState;

pub use self::{
    cluster::{Cluster, EtcdTls, Membership},
    peer::{PeerNode, PeerOrigin, check_peer, overlaps, refused_sources},
    pod::{Origin, POD_NAME_MAX, Pod, is_pod_veth_name},
};

/// Where a node's desired state came from, for messages that name it.
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

/// A node as its config describes it, every field checked and defaulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub source: Source,
    pub node: Node,
    /// The `[[pod]]`s (origin [`Origin::Config`]).
    pub pods: Vec<Pod>,
    /// The node's link to other nodes; `None` for a single-node setup.
    pub uplink: Option<Uplink>,
    /// Other nodes whose pods this node routes to (origin [`PeerOrigin::Config`]).
    pub peers: Vec<PeerNode>,
    /// Masquerading of pod traffic to the outside.
    pub nat: Nat,
    /// Membership of a cluster through etcd: a leased pod CIDR and peers learned from it.
    pub cluster: Option<Cluster>,
    /// What `podnet agent` serves besides its socket.
    pub agent: AgentSettings,
    /// Where pods may never send.
    pub isolation: Isolation,
}

impl Config {
    /// Whether the pod CIDR came from the cluster rather than the file.
    pub fn pod_cidr_leased(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| !c.pod_cidr_configured)
    }

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

/// The node itself.
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
    /// Where the node keeps state across restarts (IPAM, its record): `<state_dir>/<name>/`.
    pub state_dir: PathBuf,
}

impl Node {
    /// This node's own state directory.
    pub fn state(&self) -> PathBuf {
        self.state_dir.join(&self.name)
    }
}

/// `[agent]`: the node daemon's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentSettings {
    /// Where the agent serves `/metrics` (Prometheus text format); `None`: nowhere.
    pub metrics: Option<std::net::SocketAddr>,
}

/// `[isolation]`: where pods may never send (enforced by `from_pod` before routing and NAT).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Isolation {
    /// Pods may reach the node's control endpoints (`[agent] metrics`, `[cluster] etcd`); they
    /// may not unless the operator says so.
    pub pods_reach_control_plane: bool,
    /// Destinations no pod may reach.
    pub pods_never_reach: Vec<Destination>,
}

/// A destination pods may not reach: a network, and one TCP and UDP port of it (`None`: every
/// packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    pub net: Ipv4Net,
    pub port: Option<u16>,
}

impl Destination {
    /// `"169.254.169.254"`, `"10.0.0.0/8"`, `"192.168.50.250:2379"` or `"10.0.0.0/8:443"`.
    pub fn parse(text: &str) -> Option<Self> {
        let (net, port) = match text.rsplit_once(':') {
            Some((net, port)) => (net, Some(port.parse::<u16>().ok().filter(|&p| p != 0)?)),
            None => (text, None),
        };
        let net = match net.split_once('/') {
            Some(_) => net.parse::<Ipv4Net>().ok().filter(|n| n.trunc() == *n)?,
            None => Ipv4Net::from(net.parse::<Ipv4Addr>().ok()?),
        };
        Some(Self { net, port })
    }
}

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

impl Timeouts {
    /// How long a translation in `state` may stay idle.
    pub fn of(&self, state: CtState) -> Duration {
        match state {
            CtState::TcpSynSent => self.tcp_syn,
            CtState::TcpEstablished => self.tcp_established,
            CtState::TcpTimeWait => self.tcp_time_wait,
            CtState::TcpReset => self.tcp_reset,
            CtState::Udp => self.udp,
            CtState::Icmp => self.icmp,
        }
    }

    /// The timeouts in whole seconds, indexed by state, as the datapath reads them.
    pub fn seconds(&self) -> [u32; CtState::COUNT] {
        CtState::ALL.map(|state| u32::try_from(self.of(state).as_secs()).unwrap_or(u32::MAX))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_by_state() {
        let t =
            Timeouts { udp: Duration::from_secs(30), icmp: Duration::from_secs(5), ..Timeouts::default() };
        assert_eq!(t.of(CtState::TcpSynSent), Duration::from_secs(60));
        assert_eq!(t.of(CtState::TcpEstablished), Duration::from_secs(21600));
        assert_eq!(t.of(CtState::TcpTimeWait), Duration::from_secs(120));
        assert_eq!(t.of(CtState::Icmp), Duration::from_secs(5));
        assert_eq!(t.seconds(), [60, 21600, 120, 10, 30, 5]);
    }
}

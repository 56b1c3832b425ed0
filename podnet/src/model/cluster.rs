//! A cluster whose nodes find each other through etcd (see [`crate::discovery`]).

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use ipnet::Ipv4Net;

/// `[cluster]`: where the cluster's store is and how it leases pod CIDRs.
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

impl Cluster {
    /// Pod CIDRs the cluster leases, in order.
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> {
        self.cluster_cidr.subnets(self.node_prefix).into_iter().flatten()
    }

    /// Whether `cidr` is one the cluster leases (a network: no host bits).
    pub fn leases(&self, cidr: Ipv4Net) -> bool {
        cidr.prefix_len() == self.node_prefix && cidr == cidr.trunc() && self.cluster_cidr.contains(&cidr)
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

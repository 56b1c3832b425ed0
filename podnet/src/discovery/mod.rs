//! How a node finds the others. A [`PeerSource`] gives the node its pod CIDR ([`PeerSource::join`])
//! and then follows the cluster ([`PeerSource::follow`]), sending the agent complete views of
//! the other nodes; the agent makes the peer map and the kernel routes hold each view
//! (`node::peers`). A view is never a delta: a source that lost its store
//! and came back sends a fresh one, and only what changed is touched, so an outage flaps
//! nothing. etcd is the source today ([`etcd`]); a Kubernetes source (Node objects'
//! `spec.podCIDRs` and InternalIP) would be another implementation of the same trait.

pub mod etcd;
mod record;
mod view;

use std::{net::Ipv4Addr, path::PathBuf};

use ipnet::Ipv4Net;
use tokio::sync::mpsc;

pub use self::{record::LeaseRecord, view::Member};
use crate::{
    config::{ConfigError, Draft},
    model::{Config, PeerNode},
};

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("etcd at {endpoints}: {reason}")]
    Etcd { endpoints: String, reason: String },
    #[error("etcd at {endpoints} gave no answer within {secs} s")]
    Timeout { endpoints: String, secs: u64 },
    #[error("the node's lease {lease:x} is gone from etcd (it expired or was revoked)")]
    LeaseLost { lease: i64 },
    #[error("etcd stopped the watch of {prefix} ({reason}); listing again")]
    WatchEnded { prefix: String, reason: String },
    #[error(
        "cluster_cidr {cluster_cidr} has no free /{node_prefix} left for node {node:?}: all {count} are \
         leased (see `etcdctl get --prefix {prefix}/subnets/`; widen cluster_cidr, or remove nodes that are gone)"
    )]
    Exhausted { node: String, cluster_cidr: Ipv4Net, node_prefix: u8, count: usize, prefix: String },
    #[error(
        "node.pod_cidr {cidr} is leased by node {holder:?} ({holder_ip}): choose another, or leave \
         node.pod_cidr out to lease a free one"
    )]
    CidrTaken { cidr: Ipv4Net, holder: String, holder_ip: String },
    #[error(
        "node name {name:?} is held by a live lease of the node at {holder_ip} (this node is {node_ip}): \
         give this node another name, or stop that node and wait up to {ttl} s for its lease to expire"
    )]
    NameHeld { name: String, holder_ip: String, node_ip: Ipv4Addr, ttl: u64 },
    #[error(
        "node name key {key} has no lease (was it written by hand?): no podnet node holds it that \
         way; remove it with `etcdctl del {key}`"
    )]
    NameKeyWithoutLease { key: String },
    #[error("cluster.{field}: cannot read {}", path.display())]
    TlsFile {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lease record {}", path.display())]
    Record {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("lease record {} is not podnet's (remove it; the agent leases again)", path.display())]
    RecordCorrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl DiscoveryError {
    /// Whether trying again later may succeed (the store was out of reach), as opposed to an
    /// answer that needs a person (a name or a CIDR taken, the range full, a bad file).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Etcd { .. } | Self::Timeout { .. } | Self::LeaseLost { .. } | Self::WatchEnded { .. }
        )
    }
}

/// This node's place in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    pub pod_cidr: Ipv4Net,
    /// The lease was taken by this join (not resumed): nothing was built on it yet.
    pub fresh: bool,
}

/// What a source tells the agent while it follows the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// This node's pod CIDR changed: the old lease was lost and another CIDR leased.
    PodCidr(Ipv4Net),
    /// Every other node of the cluster, now.
    Peers(Vec<PeerNode>),
}

/// A store of cluster membership.
pub trait PeerSource {
    /// Takes this node's place in the cluster and returns its pod CIDR. Waits (retrying) while
    /// the store is out of reach, unless the node holds a lease from before: it then goes on
    /// with that CIDR and [`PeerSource::follow`] renews the lease once the store answers.
    fn join(&mut self) -> impl Future<Output = Result<Joined, DiscoveryError>>;

    /// Follows the cluster until `updates` is closed: keeps the node's lease alive and sends a
    /// view whenever the other nodes change. Retries with backoff while the store is out of
    /// reach, and sends nothing meanwhile (peers stay as they are).
    fn follow(self, updates: mpsc::Sender<Update>) -> impl Future<Output = ()>;

    /// Gives the node's place up (its lease and keys), for `down` or a failed first `up`.
    fn leave(&mut self) -> impl Future<Output = Result<(), DiscoveryError>>;
}

/// The config of the node `draft` describes, with its pod CIDR: the configured one, or the one
/// its agent leased last (the node's lease record), if the cluster still leases it.
pub fn resolve(draft: &Draft) -> Result<Config, DiscoveryError> {
    let leased = match draft.needs_lease() {
        true => LeaseRecord::load(&draft.state())?.map(|r| r.pod_cidr),
        false => None,
    };
    Ok(draft.resolve(leased)?)
}

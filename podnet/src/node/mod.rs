//! What a node does. `up` reads what is there ([`observe`]), plans the steps that make the node
//! what its config says ([`plan`]: pure, unit-tested) and carries them out ([`apply`], over the
//! [`apply::Host`] the [`system`] implements with netlink, sysctls and the datapath), undoing
//! what a failed run made ([`undo`]). Beside it: `down` ([`down`]), peers at runtime
//! ([`peers`]), the status query ([`status`]), one pod's plumbing ([`pod`]), addresses
//! ([`ipam`]), the per-node lock ([`lock`]), the record of what podnet made ([`record`]) and the
//! operations the CLI, the CNI plugin and the agent share ([`op`]).

pub mod apply;
mod down;
pub mod ipam;
pub mod lock;
mod observe;
pub mod op;
mod peers;
pub mod plan;
pub mod pod;
pub mod record;
mod status;
mod system;
pub mod undo;

use ipnet::Ipv4Net;

pub use self::{
    down::{Teardown, down},
    peers::{add_peer, del_peer, set_cluster_peers},
    status::{
        ClusterStatus, CounterStatus, EndpointStatus, PeerStatus, ProgramStatus, Status, Traffic, status,
    },
    system::{node_net, up},
};
use self::{ipam::IpamError, lock::LockError, record::RecordError};
use crate::{
    api::{ApiError, ErrorKind, client::ClientError},
    datapath::{self, DatapathError, PinDir, maps::MapsError},
    discovery::DiscoveryError,
    host::{netlink::NetlinkError, netns, plumbing::PlumbingError, sysctl::SysctlError},
    model::Source,
};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error(transparent)]
    Plumbing(#[from] PlumbingError),
    #[error("podnet is not up on node {node:?}: {path} does not exist (run `podnet up`)")]
    NotUp { node: String, path: String },
    #[error("pod {pod}")]
    Pod {
        pod: String,
        #[source]
        source: Box<NodeError>,
    },
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("{what}: {problem}")]
    InvalidContainer { what: String, problem: String },
    /// The agent answered with an error.
    #[error("the node's agent: {0}")]
    Agent(ApiError),
    #[error(transparent)]
    AgentSocket(#[from] ClientError),
    /// Asked of the wrong party (see [`ErrorKind::Refused`]).
    #[error("{message}")]
    Refused { message: String },
    #[error("{cidr} is not on the deny list (see `podnet deny list`)")]
    NotDenied { cidr: Ipv4Net },
    #[error("{}", problems.join("; "))]
    Check { problems: Vec<String> },
    #[error(
        "the agent is running on this node ({socket} answers): stop it first, or it would keep \
         serving a node that is gone"
    )]
    AgentRunning { socket: String },
    /// What the config says does not hold on this node (checked when `up` runs): the file,
    /// the field and what is wrong, as config errors read.
    #[error("{source_name}: {field}: {problem}")]
    NotAsConfigured { source_name: Source, field: String, problem: String },
    #[error("this node has no [uplink] in its config; peers need one")]
    NoUplinkConfigured,
    #[error("peer {field}: {problem}")]
    InvalidPeer { field: &'static str, problem: String },
    #[error("no peer node called {name:?} (see `podnet status`)")]
    UnknownPeer { name: String },
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
}

impl NodeError {
    /// What kind of failure this is, for callers across the agent's socket.
    pub fn kind(&self) -> ErrorKind {
        match self {
            NodeError::InvalidContainer { .. } => ErrorKind::InvalidContainer,
            NodeError::NotUp { .. } => ErrorKind::NotUp,
            NodeError::Lock(LockError::Busy { .. }) => ErrorKind::Busy,
            NodeError::Agent(e) => e.kind,
            NodeError::Check { .. } => ErrorKind::Check,
            NodeError::Refused { .. } | NodeError::AgentRunning { .. } => ErrorKind::Refused,
            NodeError::NotDenied { .. }
            | NodeError::NotAsConfigured { .. }
            | NodeError::NoUplinkConfigured
            | NodeError::InvalidPeer { .. }
            | NodeError::UnknownPeer { .. } => ErrorKind::Invalid,
            NodeError::Pod { source, .. } => source.kind(),
            _ => ErrorKind::Failed,
        }
    }

    /// This error as it crosses the agent's socket.
    pub fn to_api(&self) -> ApiError {
        match self {
            NodeError::Agent(e) => e.clone(),
            e => ApiError::new(e.kind(), e),
        }
    }
}

/// The pin directory of the node that must be up.
pub fn pins_of_running_node(node: &str) -> Result<PinDir, NodeError> {
    let pins = PinDir::for_node(node);
    if !pins.path().exists() {
        // Under `ip netns exec` the host's bpffs is out of sight: say so, not "not up".
        datapath::bpffs_mounted()?;
        return Err(NodeError::NotUp { node: node.to_owned(), path: pins.path().display().to_string() });
    }
    Ok(pins)
}

//! The agent's protocol, shared by the CLI, the CNI plugin and the agent: a request is a
//! versioned operation ([`Request`]: [`PROTOCOL`] and an [`Op`]), answered by a typed [`Reply`]
//! or a typed [`ApiError`] (a [`ErrorKind`] the CNI plugin maps to CNI error codes, the message,
//! and its chain of causes). Nothing untyped crosses the socket: a client and an agent of
//! different protocol versions refuse each other with a message, rather than misreading a field.
//!
//! On the wire: one JSON line each way per connection on `/run/podnet/<node>.sock` (root only);
//! [`client`] is the calling side.

pub mod client;

use std::{net::Ipv4Addr, path::PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::{
    datapath::EbpfLog,
    model::{PeerNode, Pod},
};

/// The protocol version this podnet speaks. Raised whenever a request or reply changes meaning.
pub const PROTOCOL: u32 = 1;

/// One request: the protocol version the client speaks, and the operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub protocol: u32,
    pub op: Op,
}

/// One change to a node, as the CLI and the CNI plugin ask for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Converge the node to its config file `config` (`podnet up`; `None`: the built-in one).
    Up {
        config: Option<PathBuf>,
    },
    /// Reload the programs with log lines up to `level`, printed by the agent (only the agent
    /// reads them, so only the agent runs it).
    EbpfLog {
        level: EbpfLog,
    },
    AddPeer {
        peer: Peer,
    },
    DelPeer {
        name: String,
    },
    DenyAdd {
        cidr: Ipv4Net,
    },
    DenyDel {
        cidr: Ipv4Net,
    },
    NatFlush,
    /// Remove expired translations; under `pressure` (a table filled up) also drop unanswered
    /// ones until each table is three quarters full.
    NatGc {
        #[serde(default)]
        pressure: bool,
    },
    /// Attach a container (CNI ADD), with address `ip` or one from IPAM.
    PodAdd {
        container: Container,
        ip: Option<Ipv4Addr>,
    },
    /// Detach it (CNI DEL); fine when it is not there.
    PodDel {
        container: Container,
    },
    /// Verify it (CNI CHECK).
    PodCheck {
        container: Container,
    },
    /// Detach every attachment to `network` not in `keep`, as (container id, interface) (CNI GC).
    PodGc {
        network: String,
        keep: Vec<(String, String)>,
    },
}

/// A peer node, as `podnet node add` sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
}

impl From<Peer> for PeerNode {
    fn from(p: Peer) -> Self {
        Self { name: p.name, ip: p.ip, pod_cidr: p.pod_cidr }
    }
}

impl From<PeerNode> for Peer {
    fn from(p: PeerNode) -> Self {
        Self { name: p.name, ip: p.ip, pod_cidr: p.pod_cidr }
    }
}

/// A container's attachment, as the runtime names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// The CNI network (`name` of the network config).
    pub network: String,
    pub id: String,
    /// Its network namespace, a path.
    pub netns: String,
    /// Its interface.
    pub ifname: String,
}

impl Container {
    /// The pod this attachment is, asking for address `ip`.
    pub fn pod(&self, ip: Option<Ipv4Addr>) -> Pod {
        Pod::container(&self.network, &self.id, &self.netns, &self.ifname, ip)
    }
}

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// Done; nothing to report.
    Done,
    /// `nat flush`: translations removed.
    Flushed { removed: usize },
    /// `nat gc`: what one collection removed.
    Collected { expired: usize, orphans: usize, early: usize },
    /// CNI ADD: the container's attachment.
    PodAdded(PodAdded),
    /// CNI GC: the addresses given back.
    Released { ips: Vec<Ipv4Addr> },
}

/// A container as ADD attached it: what the CNI result reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodAdded {
    pub ip: Ipv4Addr,
    /// The pod CIDR's prefix length, and its gateway (the default route).
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub host_ifname: String,
    pub host_mac: String,
    /// The container interface's MAC.
    pub mac: String,
}

/// What kind of failure an operation met, so a caller can act on it (the CNI plugin maps it to
/// a CNI error code) without reading the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request or its arguments are wrong (a bad peer, a CIDR not denied, ...).
    Invalid,
    /// A container's identity or namespace, as the runtime passed it, is not acceptable.
    InvalidContainer,
    /// The node is not up: try again once it is.
    NotUp,
    /// Another change holds the node: try again.
    Busy,
    /// Asked of the wrong party: an agent serving another config, a verb only the agent runs.
    Refused,
    /// The client and the agent speak different protocol versions.
    Protocol,
    /// CNI CHECK found the attachment not as it should be.
    Check,
    /// Anything else: a step on the node failed (the message names it).
    Failed,
}

/// A failed operation, as it crosses the socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}", chain.join(": "))]
pub struct ApiError {
    pub kind: ErrorKind,
    /// The error and its causes, outermost first.
    pub chain: Vec<String>,
}

impl ApiError {
    /// An error of `kind` from `e` and its causes.
    pub fn new(kind: ErrorKind, e: &dyn std::error::Error) -> Self {
        let mut chain = vec![e.to_string()];
        let mut source = e.source();
        while let Some(cause) = source {
            chain.push(cause.to_string());
            source = cause.source();
        }
        Self { kind, chain }
    }

    /// An error of `kind` with one message.
    pub fn message(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, chain: vec![message.into()] }
    }
}

/// One answer on the wire.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Ok(Reply),
    Error(ApiError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_keep_their_shape() {
        let request = Request {
            protocol: PROTOCOL,
            op: Op::PodAdd {
                container: Container {
                    network: "podnet".into(),
                    id: "c1".into(),
                    netns: "/run/netns/x".into(),
                    ifname: "eth0".into(),
                },
                ip: None,
            },
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(
            text,
            r#"{"protocol":1,"op":{"op":"pod_add","container":{"network":"podnet","id":"c1","netns":"/run/netns/x","ifname":"eth0"},"ip":null}}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
        let answer = serde_json::to_string(&Answer::Ok(Reply::Flushed { removed: 3 })).unwrap();
        assert_eq!(answer, r#"{"ok":{"reply":"flushed","removed":3}}"#);
        let error = ApiError::message(ErrorKind::NotUp, "podnet is not up");
        let answer = serde_json::to_string(&Answer::Error(error.clone())).unwrap();
        assert_eq!(answer, r#"{"error":{"kind":"not_up","chain":["podnet is not up"]}}"#);
        assert_eq!(error.to_string(), "podnet is not up");
    }

    #[test]
    fn a_request_without_a_version_is_not_a_request() {
        assert!(serde_json::from_str::<Request>(r#"{"op":"nat_flush"}"#).is_err());
    }
}

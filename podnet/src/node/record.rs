//! What `up` changed on the node outside its pods and pins, so that `down` and a rollback undo
//! exactly that and nothing the node had before: a bridge podnet created, the gateway address it
//! added, IPv4 forwarding it turned on, the NAT ports it reserved, and the peers the config and
//! the cluster gave (a peer the config drops goes on the next `up`, one the cluster drops when
//! the agent hears of it; one added at runtime with `podnet node add` stays), and the uplink.
//! Kept as `<state>/node.json`, rewritten atomically after every change. A record is trusted
//! only beside the node's pins: one without them predates a reboot or a lost pin directory, and
//! podnet claims nothing it cannot prove it made.

use std::{
    io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::model::PeerNode;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("node state {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("node state {path} is not podnet's record of the node (remove it if the node is down)")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// What podnet made or changed on the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node bridge podnet created.
    #[serde(default)]
    pub bridge: Option<String>,
    /// The gateway address podnet added, and the bridge it is on.
    #[serde(default)]
    pub gateway: Option<(String, Ipv4Addr)>,
    /// IPv4 forwarding was off and podnet turned it on.
    #[serde(default)]
    pub ip_forward: bool,
    /// The NAT port range podnet reserved from the node's sockets.
    #[serde(default)]
    pub reserved_ports: Option<(u16, u16)>,
    /// The `[[peer]]`s of the config at the last `up`.
    #[serde(default)]
    pub config_peers: Vec<RecordedPeer>,
    /// The peers the cluster gave (see [`crate::discovery`]), as the agent last set them.
    #[serde(default)]
    pub cluster_peers: Vec<RecordedPeer>,
    /// The uplink the last `up` attached to: where `down` finds the peers' routes, with or
    /// without a config.
    #[serde(default)]
    pub uplink: Option<String>,
}

/// A peer as the record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedPeer {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
}

impl From<&PeerNode> for RecordedPeer {
    fn from(p: &PeerNode) -> Self {
        Self { name: p.name.clone(), ip: p.ip, pod_cidr: p.pod_cidr }
    }
}

impl From<&RecordedPeer> for PeerNode {
    fn from(p: &RecordedPeer) -> Self {
        Self { name: p.name.clone(), ip: p.ip, pod_cidr: p.pod_cidr }
    }
}

impl NodeRecord {
    /// The config's peers as recorded.
    pub fn config_peers(&self) -> Vec<PeerNode> {
        self.config_peers.iter().map(PeerNode::from).collect()
    }

    /// The cluster's peers as recorded.
    pub fn cluster_peers(&self) -> Vec<PeerNode> {
        self.cluster_peers.iter().map(PeerNode::from).collect()
    }
}

/// A node's record on disk.
#[derive(Debug, Clone)]
pub struct RecordFile(PathBuf);

impl RecordFile {
    /// The record of the node whose state directory is `state`.
    pub fn of(state: &Path) -> Self {
        Self(state.join("node.json"))
    }

    /// The record; an empty one when there is none (podnet made nothing yet).
    pub fn load(&self) -> Result<NodeRecord, RecordError> {
        match std::fs::read(&self.0) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| RecordError::Corrupt { path: self.0.clone(), source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(NodeRecord::default()),
            Err(source) => Err(RecordError::Io { path: self.0.clone(), source }),
        }
    }

    /// Writes `record` (write to a temporary file, sync, rename).
    pub fn save(&self, record: &NodeRecord) -> Result<(), RecordError> {
        let io_err = |source| RecordError::Io { path: self.0.clone(), source };
        let dir = self.0.parent().expect("node.json is in a directory");
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let tmp = self.0.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(record).expect("a node record serializes");
        std::fs::write(&tmp, body)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &self.0))
            .map_err(io_err)
    }

    /// Changes the record with `change` and saves it.
    pub fn update(&self, change: impl FnOnce(&mut NodeRecord)) -> Result<(), RecordError> {
        let mut record = self.load()?;
        change(&mut record);
        self.save(&record)
    }

    /// Whether the node has a record (podnet changed something on it).
    pub fn exists(&self) -> bool {
        self.0.exists()
    }

    /// Removes the record, and the temporary file of a save that was killed before its rename.
    pub fn remove(&self) -> Result<(), RecordError> {
        for path in [self.0.with_extension("json.tmp"), self.0.clone()] {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(RecordError::Io { path, source: e });
                }
                _ => {}
            }
        }
        Ok(())
    }
}

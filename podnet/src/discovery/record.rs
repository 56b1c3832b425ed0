//! The node's memory of its lease: `<state>/lease.json`, so that a restarted agent takes back its
//! pod CIDR (and the CLI and the CNI plugin know it without asking etcd).

use std::{
    io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::DiscoveryError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The pod CIDR the node leased.
    pub pod_cidr: Ipv4Net,
    /// The etcd lease holding it.
    pub lease: i64,
    /// The node's address when it leased it (`None` in an older podnet's record): a node whose
    /// address changes takes a new lease, so that its peers see a new claim, not a rewrite.
    #[serde(default)]
    pub node_ip: Option<Ipv4Addr>,
}

impl LeaseRecord {
    fn path(state: &Path) -> PathBuf {
        state.join("lease.json")
    }

    /// The node's record, if it leased a CIDR.
    pub fn load(state: &Path) -> Result<Option<Self>, DiscoveryError> {
        let path = Self::path(state);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| DiscoveryError::RecordCorrupt { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(DiscoveryError::Record { path, source }),
        }
    }

    /// Writes the record (write to a temporary file, sync, rename).
    pub fn save(&self, state: &Path) -> Result<(), DiscoveryError> {
        let path = Self::path(state);
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(self).expect("a lease record serializes");
        std::fs::create_dir_all(state)
            .and_then(|()| std::fs::write(&tmp, body))
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| DiscoveryError::Record { path, source })
    }

    pub fn remove(state: &Path) -> Result<(), DiscoveryError> {
        let path = Self::path(state);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(DiscoveryError::Record { path, source: e }),
            _ => Ok(()),
        }
    }
}

//! The node configuration file: TOML ([`raw`]) checked field by field ([`validate`]) into the
//! [`crate::model`]. A `[cluster]` node without `node.pod_cidr` gets its pod CIDR from the
//! cluster: its file loads as a [`Draft`], which [`Draft::resolve`] completes with the leased
//! CIDR (see [`crate::discovery::resolve`]).

mod raw;
mod salvage;
#[cfg(test)]
mod tests;
mod validate;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;

pub use self::salvage::{Salvaged, salvage};
use self::validate::{QUOTED_MAX, Validator, cut_lines};
use crate::model::{Config, Membership, Source};

/// The built-in configuration: two pods on one node, like the classic recipe.
pub const DEFAULT_TOML: &str = include_str!("../../default.toml");

/// Where nodes keep their state unless `[node] state_dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/podnet";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{source_name}: {message}")]
    Parse {
        source_name: Source,
        message: String,
        /// Where, and nothing of the file's text (the parser's messages quote values): for
        /// callers that must not quote a file someone named (the CNI plugin's `config`).
        summary: String,
    },
    #[error("{}: {problem}", path.display())]
    NotAConfigFile { path: PathBuf, problem: String },
    #[error("{source_name}: {field}: {problem}")]
    Invalid { source_name: Source, field: String, problem: String },
    #[error(
        "{source_name}: node.pod_cidr is not set and node {node:?} holds no lease from the cluster yet: \
         start `podnet agent`, which leases one from [cluster] etcd"
    )]
    NotLeased { source_name: Source, node: String },
}

/// Largest config file podnet reads.
const FILE_MAX: u64 = 1 << 20;

/// The text of config file `path`: a regular file (anything else is refused before it is read:
/// a FIFO would block, a device may act) of at most [`FILE_MAX`] bytes.
fn read(path: &Path) -> Result<String, ConfigError> {
    use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
    let refused =
        |problem: &str| ConfigError::NotAConfigFile { path: path.to_owned(), problem: problem.to_owned() };
    let read_err = |source| ConfigError::Read { path: path.to_owned(), source };
    if !std::fs::metadata(path).map_err(read_err)?.is_file() {
        return Err(refused("not a regular file: name the node's TOML config"));
    }
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(refused("not a regular file: name the node's TOML config"));
    }
    if meta.len() > FILE_MAX {
        return Err(refused(&format!("{} bytes; a node config is at most {FILE_MAX}", meta.len())));
    }
    let mut text = String::new();
    file.take(FILE_MAX + 1).read_to_string(&mut text).map_err(read_err)?;
    Ok(text)
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
    /// The config with the configured pod CIDR, or a stand-in from the cluster range: only for
    /// what does not depend on the CIDR.
    checked: Config,
}

impl Draft {
    /// Reads and checks `path`, or the built-in config when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            None => Self::parse(DEFAULT_TOML.to_owned(), Source::BuiltIn),
            Some(path) => Self::parse(read(path)?, Source::File(path.to_owned())),
        }
    }

    /// Checks config text that came from `source`.
    pub fn parse(text: String, source: Source) -> Result<Self, ConfigError> {
        let checked = Self::validate(&text, &source, None)?;
        Ok(Self { text, source, checked })
    }

    fn validate(text: &str, source: &Source, leased: Option<Ipv4Net>) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |span| text[..span.start.min(text.len())].lines().count().max(1));
            ConfigError::Parse {
                source_name: source.clone(),
                message: cut_lines(e.to_string().trim_end(), QUOTED_MAX),
                summary: format!("line {line}"),
            }
        })?;
        Validator { source: source.clone() }.validate(raw, leased)
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.checked.node.name
    }

    /// The node's state directory, `<state_dir>/<name>`.
    pub fn state(&self) -> PathBuf {
        self.checked.node.state()
    }

    /// The uplink interface the file names, if any.
    pub fn uplink_interface(&self) -> Option<&str> {
        self.checked.uplink.as_ref().map(|u| u.interface.as_str())
    }

    /// The node's address on the uplink, if it has one.
    pub fn uplink_ip(&self) -> Option<Ipv4Addr> {
        self.checked.uplink.as_ref().map(|u| u.ip)
    }

    /// What the node needs to join its cluster; `None` without `[cluster]`.
    pub fn membership(&self) -> Option<Membership> {
        self.checked.membership()
    }

    /// Whether the node's pod CIDR is leased from its cluster (not in the file).
    pub fn needs_lease(&self) -> bool {
        self.checked.pod_cidr_leased()
    }

    /// The node's config with its pod CIDR: the configured one, else `leased` (which must be
    /// one the cluster leases).
    pub fn resolve(&self, leased: Option<Ipv4Net>) -> Result<Config, ConfigError> {
        let Some(cluster) = self.checked.cluster.as_ref().filter(|c| !c.pod_cidr_configured) else {
            return Ok(self.checked.clone());
        };
        let leased = leased.filter(|c| cluster.leases(*c)).ok_or_else(|| ConfigError::NotLeased {
            source_name: self.source.clone(),
            node: self.node_name().to_owned(),
        })?;
        Self::validate(&self.text, &self.source, Some(leased))
    }
}

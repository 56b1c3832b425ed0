//! podnet's userspace, in layers that each use only the ones before them:
//! - [`model`]: the node as podnet means it (pods, peers, uplink, NAT, cluster), no formats;
//! - [`config`]: the TOML file, checked into the model;
//! - [`host`]: the kernel plumbing (netlink, namespaces, sysctls) and [`datapath`]: the eBPF
//!   programs and maps as typed objects;
//! - [`discovery`]: cluster membership (etcd); [`api`]: the agent's protocol;
//! - [`node`]: what a node does (plan and apply `up`, `down`, pods, peers, status);
//! - [`agent`], [`cni`], [`monitor`], [`metrics`], [`status`]: the daemon, the CNI plugin and
//!   what they show.
//!
//! The `podnet` binary is a thin CLI over them.

pub mod agent;
pub mod api;
pub mod cni;
pub mod config;
pub mod datapath;
pub mod discovery;
pub mod host;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod node;
pub mod status;

/// An error and its causes on one line, as the CLI prints them (`error: a: b: c`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

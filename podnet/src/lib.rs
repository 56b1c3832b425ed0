//! podnet's userspace: the node configuration ([`config`]), the kernel plumbing ([`host`]), the
//! eBPF datapath as typed objects ([`datapath`]), what a node does ([`node`]: up, down, pods,
//! IPAM, the per-node lock), the node agent ([`agent`]) and the CNI plugin ([`cni`]). The
//! `podnet` binary is a thin CLI over them.

pub mod agent;
pub mod cni;
pub mod config;
pub mod datapath;
pub mod discovery;
pub mod host;
pub mod metrics;
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

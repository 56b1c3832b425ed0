//! podnet's userspace: configuration, netlink plumbing, the eBPF datapath loader and typed map
//! views. The `podnet` binary is a thin CLI over [`node`].

pub mod config;
pub mod datapath;
pub mod maps;
pub mod nat;
pub mod netlink;
pub mod node;
pub mod plumbing;
pub mod status;
pub mod sysctl;

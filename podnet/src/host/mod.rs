//! The node's kernel plumbing, without policy: links, addresses and routes over rtnetlink,
//! named and path-addressed network namespaces, sysctls, GRO, and the pod recipe built from them.

pub mod gro;
pub mod netlink;
pub mod netns;
pub mod plumbing;
pub mod sysctl;

//! The config file as TOML has it: every field optional where the file may leave it out,
//! unknown fields refused. [`super::validate`] turns it into the [`crate::model`].

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) node: RawNode,
    #[serde(default, rename = "pod")]
    pub(super) pods: Vec<RawPod>,
    pub(super) uplink: Option<RawUplink>,
    #[serde(default, rename = "peer")]
    pub(super) peers: Vec<RawPeer>,
    #[serde(default)]
    pub(super) nat: RawNat,
    pub(super) cluster: Option<RawCluster>,
    #[serde(default)]
    pub(super) agent: RawAgent,
    #[serde(default)]
    pub(super) isolation: RawIsolation,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIsolation {
    #[serde(default)]
    pub(super) pods_reach_control_plane: bool,
    #[serde(default)]
    pub(super) pods_never_reach: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub(super) metrics: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) etcd: Vec<String>,
    pub(super) cluster_cidr: String,
    pub(super) node_prefix: u8,
    pub(super) lease_ttl: Option<u64>,
    pub(super) prefix: Option<String>,
    pub(super) ca: Option<PathBuf>,
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNat {
    pub(super) enabled: Option<bool>,
    pub(super) ports: Option<String>,
    pub(super) tcp_syn_timeout: Option<u64>,
    pub(super) tcp_established_timeout: Option<u64>,
    pub(super) tcp_time_wait_timeout: Option<u64>,
    pub(super) tcp_reset_timeout: Option<u64>,
    /// Replaced by `tcp_time_wait_timeout` and `tcp_reset_timeout`; refused with a message.
    pub(super) tcp_closing_timeout: Option<u64>,
    pub(super) tcp_table: Option<u32>,
    pub(super) udp_icmp_table: Option<u32>,
    pub(super) udp_timeout: Option<u64>,
    pub(super) icmp_timeout: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUplink {
    pub(super) interface: String,
    pub(super) ip: String,
    pub(super) xdp: Option<String>,
    pub(super) xdp_deliver: Option<bool>,
    #[serde(default)]
    pub(super) allow_from: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeer {
    pub(super) name: String,
    pub(super) ip: String,
    pub(super) pod_cidr: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    pub(super) name: String,
    pub(super) pod_cidr: Option<String>,
    #[serde(default = "default_bridge")]
    pub(super) bridge: String,
    pub(super) gateway: Option<String>,
    pub(super) mtu: Option<u32>,
    pub(super) state_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPod {
    pub(super) name: String,
    pub(super) ip: Option<String>,
    pub(super) netns: Option<String>,
}

fn default_bridge() -> String {
    "br0".to_owned()
}

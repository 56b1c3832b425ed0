//! The CNI protocol as podnet speaks it (spec 1.1.0, 1.0.0, and 0.4.0 configs): the network
//! configuration a runtime sends on stdin, the success result of ADD, and the error object.

use std::{net::Ipv4Addr, path::PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Versions podnet answers, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
/// The version podnet speaks when the runtime names none.
pub const LATEST: &str = "1.1.0";

/// CNI's well-known error codes (spec "Error codes").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
}

/// The plugin's network configuration, as the runtime passes it on stdin. Only what podnet
/// reads; the rest (`prevResult`, `args`, runtime config) is ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// The node config file (TOML) of the node this plugin attaches containers to.
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// GC: the attachments the runtime still has.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// A container attachment, as GC names it.
#[derive(Debug, Clone, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// A failure, as the runtime is told (on stdout, with a non-zero exit).
#[derive(Debug, Clone, Serialize)]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self { cni_version: LATEST.to_owned(), code, msg: msg.into(), details: details.into() }
    }
}

/// What ADD attached, to be reported.
#[derive(Debug, Clone)]
pub struct AddResult {
    pub host_ifname: String,
    pub host_mac: String,
    pub ifname: String,
    pub mac: String,
    pub sandbox: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

impl AddResult {
    /// The result object in `version`'s format. 0.4.0 wants `version` on each IP (podman 4.3
    /// converts every result to it and needs the container interface's `sandbox` and `mac`).
    pub fn to_json(&self, version: &str) -> Value {
        let mut ip = json!({
            "address": format!("{}/{}", self.ip, self.prefix),
            "gateway": self.gateway,
            "interface": 1,
        });
        if version == "0.4.0" {
            ip["version"] = json!("4");
        }
        json!({
            "cniVersion": version,
            "interfaces": [
                { "name": self.host_ifname, "mac": self.host_mac },
                { "name": self.ifname, "mac": self.mac, "sandbox": self.sandbox },
            ],
            "ips": [ip],
            "routes": [{ "dst": "0.0.0.0/0", "gw": self.gateway }],
            "dns": {},
        })
    }
}

/// `KEY=VALUE;...` from CNI_ARGS: the value of `key`, if given.
pub fn cni_arg<'a>(args: &'a str, key: &str) -> Option<&'a str> {
    args.split(';').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_are_split() {
        let args = "IgnoreUnknown=1;K8S_POD_NAME=c1;IP=10.1.1.9";
        assert_eq!(cni_arg(args, "IP"), Some("10.1.1.9"));
        assert_eq!(cni_arg(args, "K8S_POD_NAME"), Some("c1"));
        assert_eq!(cni_arg(args, "MAC"), None);
        assert_eq!(cni_arg("", "IP"), None);
    }

    #[test]
    fn results_follow_the_version() {
        let r = AddResult {
            host_ifname: "pn0123456789ab".into(),
            host_mac: "02:00:00:00:00:01".into(),
            ifname: "eth0".into(),
            mac: "02:00:00:00:00:02".into(),
            sandbox: "/run/netns/x".into(),
            ip: Ipv4Addr::new(10, 1, 1, 5),
            prefix: 24,
            gateway: Ipv4Addr::new(10, 1, 1, 1),
        };
        let v1 = r.to_json("1.0.0");
        assert_eq!(v1["ips"][0], json!({"address": "10.1.1.5/24", "gateway": "10.1.1.1", "interface": 1}));
        assert_eq!(v1["interfaces"][1]["sandbox"], "/run/netns/x");
        let v04 = r.to_json("0.4.0");
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(v04["cniVersion"], "0.4.0");
    }

    #[test]
    fn gc_config_names_attachments() {
        let conf: NetConf = serde_json::from_str(
            r#"{"cniVersion":"1.1.0","name":"podnet","type":"podnet","config":"/etc/podnet/node.toml",
                "cni.dev/valid-attachments":[{"containerID":"abc","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(conf.valid_attachments.unwrap()[0].container_id, "abc");
    }
}

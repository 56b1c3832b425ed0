//! The podnet binary as a CNI plugin, called as a runtime calls it: environment variables and
//! the network config on stdin, inside the node's network namespace (`nsenter --net`, which
//! keeps the host's mounts, so the pins under /sys/fs/bpf stay visible).

use std::process::Command;

use anyhow::Context as _;

use crate::{Node, podnet_bin};

/// What the plugin answered.
#[derive(Debug, Clone)]
pub struct Reply {
    pub success: bool,
    /// stdout as JSON (`Null` when empty).
    pub json: serde_json::Value,
    pub stderr: String,
}

/// The network config a runtime would pass for `node` in CNI version `version`, with `extra`
/// fields merged in.
pub fn net_conf(node: &Node, version: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut conf = serde_json::json!({
        "cniVersion": version,
        "name": "podnet",
        "type": "podnet",
        "config": node.config,
    });
    if let (Some(conf), Some(extra)) = (conf.as_object_mut(), extra.as_object()) {
        conf.extend(extra.clone());
    }
    conf
}

/// Longest a plugin call may take (an ADD waits for the node lock behind others).
const PLUGIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs `CNI_COMMAND=command` for container `id` (interface `ifname`, namespace path `netns`)
/// on `node` with `conf` on stdin and extra `args` (CNI_ARGS).
pub fn call(
    node: &Node,
    command: &str,
    container: (&str, &str, &str),
    args: &str,
    conf: &serde_json::Value,
) -> anyhow::Result<Reply> {
    call_with_env(node, command, container, conf, &[("CNI_ARGS", args)])
}

/// [`call`] with more variables in the plugin's environment (CNI_ARGS among them).
pub fn call_with_env(
    node: &Node,
    command: &str,
    (id, netns, ifname): (&str, &str, &str),
    conf: &serde_json::Value,
    env: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    let mut plugin = Command::new("nsenter");
    plugin
        .arg(format!("--net=/run/netns/{}", node.netns))
        .arg(podnet_bin())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", podnet_bin().parent().context("bin dir")?)
        .envs(env.iter().copied());
    let out = crate::output_within(&mut plugin, conf.to_string().as_bytes(), PLUGIN_DEADLINE)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = if stdout.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&stdout).with_context(|| format!("plugin stdout is not JSON: {stdout}"))?
    };
    Ok(Reply {
        success: out.status.success(),
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

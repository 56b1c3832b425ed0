//! podnet as a CNI plugin: the `podnet` binary acts as one when `CNI_COMMAND` is set. The
//! runtime's network config names the node's podnet config:
//!
//! ```json
//! { "cniVersion": "1.0.0", "name": "podnet",
//!   "plugins": [ { "type": "podnet", "config": "/etc/podnet/node.toml" } ] }
//! ```
//!
//! ADD attaches the container through the same code path as the config's `[[pod]]`s (veth
//! pair, address from podnet's IPAM, default route, endpoint, `from_pod`), DEL detaches it, CHECK
//! verifies it, STATUS says whether the node's datapath is up, GC detaches containers the runtime
//! no longer has, VERSION answers without side effects. Changes go through the node's agent when
//! it runs, else straight to the pinned datapath under the node lock.

pub mod spec;

use std::{
    io::{Read as _, Write as _},
    net::Ipv4Addr,
    process::ExitCode,
};

use serde_json::json;

use self::spec::{AddResult, CniError, LATEST, NetConf, SUPPORTED_VERSIONS, cni_arg, code};
use crate::{
    api::{Container, ErrorKind, Op, Reply},
    config::{ConfigError, Draft},
    datapath::PinDir,
    discovery, error_chain as chain,
    model::Config,
    node::{NodeError, op},
};

/// Runs the plugin for the command in `CNI_COMMAND`: the answer on stdout, exit 0 on success.
pub fn main() -> ExitCode {
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    let command = env("CNI_COMMAND");
    let mut stdin = String::new();
    let conf = std::io::stdin()
        .read_to_string(&mut stdin)
        .map_err(|e| {
            CniError::new(code::IO_FAILURE, "could not read the network config on stdin", e.to_string())
        })
        .and_then(|_| {
            serde_json::from_str::<NetConf>(&stdin).map_err(|e| {
                CniError::new(
                    code::DECODING_FAILURE,
                    "the network config on stdin is not valid JSON",
                    e.to_string(),
                )
            })
        });
    let version = conf.as_ref().ok().and_then(|c| c.cni_version.clone()).unwrap_or_else(|| LATEST.to_owned());
    let outcome = conf.and_then(|conf| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CniError::new(code::IO_FAILURE, "could not start", e.to_string()))?;
        rt.block_on(dispatch(&command, &conf, &version))
    });
    let (text, code) = match outcome {
        Ok(Some(answer)) => (answer.to_string(), ExitCode::SUCCESS),
        Ok(None) => (String::new(), ExitCode::SUCCESS),
        Err(mut e) => {
            e.cni_version = version;
            (serde_json::to_string(&e).expect("an error serializes"), ExitCode::FAILURE)
        }
    };
    if !text.is_empty() {
        let _ = writeln!(std::io::stdout(), "{text}");
    }
    code
}

async fn dispatch(
    command: &str,
    conf: &NetConf,
    version: &str,
) -> Result<Option<serde_json::Value>, CniError> {
    if command == "VERSION" {
        return Ok(Some(json!({ "cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS })));
    }
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("podnet does not speak CNI {version}"),
            format!("set \"cniVersion\" to one of {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    let config = node_config(conf)?;
    let network = conf.name.clone().filter(|n| !n.is_empty()).ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "the network config has no \"name\"",
            "name the network, e.g. \"podnet\"",
        )
    })?;
    let env = |name: &'static str| -> Result<String, CniError> {
        std::env::var(name).ok().filter(|v| !v.is_empty()).ok_or_else(|| {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("{name} is not set"),
                "the runtime must set it for this command",
            )
        })
    };
    let container = |netns: String| -> Result<Container, CniError> {
        Ok(Container {
            network: network.clone(),
            id: env("CNI_CONTAINERID")?,
            netns,
            ifname: env("CNI_IFNAME")?,
        })
    };
    match command {
        "ADD" => {
            let container = container(env("CNI_NETNS")?)?;
            let args = std::env::var("CNI_ARGS").unwrap_or_default();
            let ip = cni_arg(&args, "IP")
                .map(|text| {
                    text.parse::<Ipv4Addr>().map_err(|_| {
                        CniError::new(
                            code::INVALID_CONFIG,
                            format!("CNI_ARGS IP={text} is not an IPv4 address"),
                            "",
                        )
                    })
                })
                .transpose()?;
            let (netns, ifname) = (container.netns.clone(), container.ifname.clone());
            let added = match op::run(&config, &Op::PodAdd { container, ip }).await.map_err(failed)? {
                Reply::PodAdded(added) => added,
                other => {
                    return Err(CniError::new(
                        code::IO_FAILURE,
                        "the node did not report the container's attachment",
                        format!("it answered {other:?}; is the agent of another podnet version?"),
                    ));
                }
            };
            let result = AddResult {
                host_ifname: added.host_ifname,
                host_mac: added.host_mac,
                ifname,
                mac: added.mac,
                sandbox: netns,
                ip: added.ip,
                prefix: added.prefix,
                gateway: added.gateway,
            };
            Ok(Some(result.to_json(version)))
        }
        "DEL" => {
            // DEL must succeed whatever is left: no netns (container gone), no prevResult, twice.
            let container = container(std::env::var("CNI_NETNS").unwrap_or_default())?;
            op::run(&config, &Op::PodDel { container }).await.map_err(failed)?;
            Ok(None)
        }
        "CHECK" => {
            let container = container(env("CNI_NETNS")?)?;
            op::run(&config, &Op::PodCheck { container }).await.map_err(failed)?;
            Ok(None)
        }
        "STATUS" => {
            let pins = PinDir::for_node(&config.node.name);
            if !pins.program(podnet_common::programs::FROM_POD).exists() {
                return Err(CniError::new(
                    code::NOT_AVAILABLE,
                    format!("podnet is not up on node {:?}", config.node.name),
                    "run `podnet up` or `podnet agent` on the node",
                ));
            }
            Ok(None)
        }
        "GC" => {
            // Without the list, GC would detach every container: refuse rather than guess.
            let Some(valid) = &conf.valid_attachments else {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    "GC without \"cni.dev/valid-attachments\"",
                    "the runtime must list the attachments it still has (CNI 1.1.0)",
                ));
            };
            let keep = valid.iter().map(|a| (a.container_id.clone(), a.ifname.clone())).collect();
            op::run(&config, &Op::PodGc { network, keep }).await.map_err(failed)?;
            Ok(None)
        }
        other => Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("unknown CNI_COMMAND {other:?}"),
            "podnet handles ADD, DEL, CHECK, STATUS, GC and VERSION",
        )),
    }
}

/// A node's failure as the runtime is told it, by its kind (the same whether the agent or the
/// plugin itself ran the operation): bad input is the runtime's to fix, a node that is not up is
/// worth a retry, the rest names the step that failed.
fn failed(e: NodeError) -> CniError {
    let (code, details) = match e.kind() {
        ErrorKind::InvalidContainer => (code::INVALID_ENVIRONMENT, "fix what the runtime passes"),
        ErrorKind::NotUp => (code::TRY_AGAIN_LATER, "run `podnet up` or `podnet agent` on the node"),
        ErrorKind::Busy => (code::TRY_AGAIN_LATER, "another change holds the node; try again"),
        ErrorKind::Protocol => {
            (code::INCOMPATIBLE_VERSION, "the plugin and the node's agent are of different podnet versions")
        }
        ErrorKind::Invalid | ErrorKind::Refused | ErrorKind::Check | ErrorKind::Failed => {
            (code::IO_FAILURE, "the message names the step that failed; `podnet status` shows the node")
        }
    };
    CniError::new(code, chain(&e), details)
}

/// The node config the network config names in `config`.
fn node_config(conf: &NetConf) -> Result<Config, CniError> {
    let path = conf.config.as_deref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "the network config has no \"config\" field",
            "add \"config\": \"/etc/podnet/node.toml\" (the node's podnet config) to the plugin's entry",
        )
    })?;
    // A file that does not parse is quoted nowhere: the runtime's network config may name any.
    let draft = Draft::load(Some(path)).map_err(|e| {
        let msg = match &e {
            ConfigError::Parse { source_name, summary, .. } => format!(
                "{source_name} is not a podnet node config ({summary}; `podnet --config {source_name} status` says why)"
            ),
            e => chain(e),
        };
        CniError::new(code::INVALID_CONFIG, msg, "name the node's podnet config (TOML) in \"config\"")
    })?;
    discovery::resolve(&draft)
        .map_err(|e| CniError::new(code::INVALID_CONFIG, chain(&e), "fix the node config"))
}

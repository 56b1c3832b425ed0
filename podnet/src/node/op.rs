//! The operations that change a node, as values. The CLI, the CNI plugin and the agent run the
//! same ones: [`run`] hands an operation to the node's agent when one is listening (it is then
//! the single writer of the node's maps), and otherwise executes it here, under the node lock.

use std::{net::Ipv4Addr, path::PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::info;

use super::{
    NodeError,
    ipam::{Ipam, PodKind, PodRecord},
    lock::NodeLock,
    pod,
};
use crate::{
    agent::api,
    config::{Config, PeerNode},
    datapath::{EbpfLog, PodProgram, maps::Deny, nat},
    host::netlink::{Netlink, fmt_mac},
};

/// One change to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Converge the node to its config file `config` (`podnet up`; `None`: the built-in one).
    Up {
        config: Option<PathBuf>,
    },
    /// Reload the programs with log lines up to `level`, printed by the agent (only the agent
    /// reads them, so only the agent runs it).
    EbpfLog {
        level: EbpfLog,
    },
    AddPeer {
        peer: PeerNode,
    },
    DelPeer {
        name: String,
    },
    DenyAdd {
        cidr: Ipv4Net,
    },
    DenyDel {
        cidr: Ipv4Net,
    },
    NatFlush,
    /// Remove expired translations; under `pressure` (a table filled up) also drop unanswered
    /// ones until each table is three quarters full.
    NatGc {
        #[serde(default)]
        pressure: bool,
    },
    /// Attach a container (CNI ADD), with address `ip` or one from IPAM.
    PodAdd {
        container: Container,
        ip: Option<Ipv4Addr>,
    },
    /// Detach it (CNI DEL); fine when it is not there.
    PodDel {
        container: Container,
    },
    /// Verify it (CNI CHECK).
    PodCheck {
        container: Container,
    },
    /// Detach every attachment to `network` not in `keep`, as (container id, interface) (CNI GC).
    PodGc {
        network: String,
        keep: Vec<(String, String)>,
    },
}

/// A container's attachment, as the runtime names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// The CNI network (`name` of the network config).
    pub network: String,
    pub id: String,
    /// Its network namespace, a path.
    pub netns: String,
    /// Its interface.
    pub ifname: String,
}

impl Container {
    fn record(&self) -> PodRecord {
        PodRecord::container(&self.network, &self.id, &self.netns, &self.ifname)
    }
}

/// Runs `op` on the node `config` describes: through its agent if one is listening, else here
/// under the node lock. Returns what the operation reports.
pub async fn run(config: &Config, op: &Op) -> Result<Value, NodeError> {
    if let Some(answer) = api::call(&config.node.name, op).await? {
        return answer.map_err(|message| NodeError::Agent { message });
    }
    let _lock = NodeLock::acquire(&config.node.name)?;
    execute(config, op).await
}

/// Executes `op`; the caller holds the node lock.
pub async fn execute(config: &Config, op: &Op) -> Result<Value, NodeError> {
    let pins = || super::pins_of_running_node(config);
    Ok(match op {
        // Without the agent nobody reads the programs' log lines: they are loaded without any.
        Op::Up { .. } => {
            super::up(config, EbpfLog::Off).await?;
            Value::Null
        }
        Op::EbpfLog { .. } => {
            return Err(NodeError::Agent {
                message:
                    "is not running: log lines from the programs are printed by `podnet agent`; start it, \
                          with --ebpf-log LEVEL"
                        .to_owned(),
            });
        }
        Op::AddPeer { peer } => {
            super::add_peer(config, peer.clone()).await?;
            Value::Null
        }
        Op::DelPeer { name } => {
            super::del_peer(config, name).await?;
            Value::Null
        }
        Op::DenyAdd { cidr } => {
            Deny::open(&pins()?)?.insert(*cidr)?;
            Value::Null
        }
        Op::DenyDel { cidr } => {
            let mut deny = Deny::open(&pins()?)?;
            if !deny.list().contains(cidr) {
                return Err(NodeError::NotDenied { cidr: *cidr });
            }
            deny.remove(*cidr)?;
            Value::Null
        }
        Op::NatFlush => json!({ "removed": nat::flush(&pins()?)? }),
        Op::NatGc { pressure } => {
            let collected = nat::gc(&pins()?, &config.nat.timeouts, *pressure)?;
            json!({
                "removed": collected.expired + collected.orphans + collected.early,
                "expired": collected.expired,
                "orphans": collected.orphans,
                "early": collected.early,
            })
        }
        Op::PodAdd { container, ip } => {
            let record = container.record();
            record.check_container()?;
            let net = super::node_net(config, Netlink::current()?).await?;
            let mut program = PodProgram::open(&net.pins)?;
            let attached = pod::attach(&net, &mut program, &record, *ip).await?;
            info!("container {}: {} on {} via {}", record.id, attached.ip, record.ifname, record.host_ifname);
            json!({
                "ip": attached.ip,
                "host_ifname": attached.host.name,
                "host_mac": fmt_mac(&attached.host.mac),
                "mac": fmt_mac(&attached.pod_if.mac),
            })
        }
        Op::PodDel { container } => {
            let ipam = Ipam::of(config);
            pod::detach(&Netlink::current()?, &super::pin_dir(config), &ipam, &container.record()).await?;
            Value::Null
        }
        Op::PodCheck { container } => {
            let record = container.record();
            record.check_container()?;
            let net = super::node_net(config, Netlink::current()?).await?;
            let problems = pod::check(&net, &record).await?;
            if !problems.is_empty() {
                return Err(NodeError::Check { problems });
            }
            Value::Null
        }
        Op::PodGc { network, keep } => {
            let ipam = Ipam::of(config);
            let (nl, pins) = (Netlink::current()?, super::pin_dir(config));
            let mut released = Vec::new();
            for (ip, record) in ipam.held()? {
                let kept = keep.iter().any(|(id, ifname)| *id == record.id && *ifname == record.ifname);
                if record.kind == PodKind::Cni && record.network.as_ref() == Some(network) && !kept {
                    info!("gc: container {} ({ip}) is gone", record.id);
                    pod::detach(&nl, &pins, &ipam, &record).await?;
                    released.push(ip);
                }
            }
            json!({ "released": released })
        }
    })
}

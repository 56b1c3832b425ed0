//! The operations that change a node, as values. The CLI, the CNI plugin and the agent run the
//! same ones: [`run`] hands an operation to the node's agent when one is listening (it is then
//! the single writer of the node's maps), and otherwise executes it here, under the node lock.

use std::net::Ipv4Addr;

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
    datapath::{PodProgram, maps::Deny, nat},
    host::netlink::{Netlink, fmt_mac},
};

/// One change to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Converge the node to its config file (`podnet up`).
    Up,
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
    NatGc,
    /// Attach container `id`'s interface `ifname` in namespace `netns` (CNI ADD).
    PodAdd {
        id: String,
        netns: String,
        ifname: String,
        ip: Option<Ipv4Addr>,
    },
    /// Detach it (CNI DEL); fine when it is not there.
    PodDel {
        id: String,
        netns: String,
        ifname: String,
    },
    /// Verify it (CNI CHECK).
    PodCheck {
        id: String,
        netns: String,
        ifname: String,
    },
    /// Detach every container attachment not in `keep`, as (container id, interface) (CNI GC).
    PodGc {
        keep: Vec<(String, String)>,
    },
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
        Op::Up => {
            super::up(config).await?;
            Value::Null
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
        Op::NatGc => json!({ "removed": nat::gc(&pins()?, &config.nat.timeouts)? }),
        Op::PodAdd { id, netns, ifname, ip } => {
            let net = super::node_net(config, Netlink::current()?).await?;
            let mut program = PodProgram::open(&net.pins)?;
            let record = PodRecord::container(id, netns, ifname);
            let attached = pod::attach(&net, &mut program, &record, *ip).await?;
            info!("container {id}: {} on {ifname} via {}", attached.ip, record.host_ifname);
            json!({
                "ip": attached.ip,
                "prefix": config.node.pod_cidr.prefix_len(),
                "gateway": config.node.gateway,
                "host_ifname": attached.host.name,
                "host_mac": fmt_mac(&attached.host.mac),
                "mac": fmt_mac(&attached.pod_if.mac),
            })
        }
        Op::PodDel { id, netns, ifname } => {
            let record = PodRecord::container(id, netns, ifname);
            let ipam = Ipam::of(&config.node);
            pod::detach(&Netlink::current()?, &super::pin_dir(config), &ipam, &record).await?;
            Value::Null
        }
        Op::PodCheck { id, netns, ifname } => {
            let net = super::node_net(config, Netlink::current()?).await?;
            let problems = pod::check(&net, &PodRecord::container(id, netns, ifname)).await?;
            if !problems.is_empty() {
                return Err(NodeError::Check { problems });
            }
            Value::Null
        }
        Op::PodGc { keep } => {
            let ipam = Ipam::of(&config.node);
            let (nl, pins) = (Netlink::current()?, super::pin_dir(config));
            let mut released = Vec::new();
            for (ip, record) in ipam.held()? {
                let kept = keep.iter().any(|(id, ifname)| *id == record.id && *ifname == record.ifname);
                if record.kind == PodKind::Cni && !kept {
                    info!("gc: container {} ({ip}) is gone", record.id);
                    pod::detach(&nl, &pins, &ipam, &record).await?;
                    released.push(ip);
                }
            }
            json!({ "released": released })
        }
    })
}

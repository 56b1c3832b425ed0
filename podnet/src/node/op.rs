//! The operations that change a node ([`Op`]), run by the CLI, the CNI plugin and the agent
//! alike: [`run`] hands an operation to the node's agent when one is listening (it is then the
//! single writer of the node's maps), and otherwise executes it here, under the node lock.

use tracing::info;

use super::{NodeError, ipam::Records, lock::NodeLock, node_net, pins_of_running_node, pod};
use crate::{
    api::{Op, PodAdded, Reply, client},
    datapath::{EbpfLog, PinDir, PodProgram, maps::Deny, nat},
    host::netlink::{Netlink, fmt_mac},
    model::Config,
};

/// Runs `op` on the node `config` describes: through its agent if one is listening, else here
/// under the node lock. Returns what the operation reports.
pub async fn run(config: &Config, op: &Op) -> Result<Reply, NodeError> {
    if let Some(answer) = client::call(&config.node.name, op).await? {
        return answer.map_err(NodeError::Agent);
    }
    let _lock = NodeLock::acquire(&config.node.name)?;
    execute(config, op).await
}

/// Executes `op`; the caller holds the node lock.
pub async fn execute(config: &Config, op: &Op) -> Result<Reply, NodeError> {
    let node = &config.node;
    let pins = || pins_of_running_node(&node.name);
    Ok(match op {
        // Without the agent nobody reads the programs' log lines: they are loaded without any.
        Op::Up { .. } => {
            super::up(config, EbpfLog::Off).await?;
            Reply::Done
        }
        Op::EbpfLog { .. } => {
            return Err(NodeError::Refused {
                message: "the node's agent is not running: log lines from the programs are printed by \
                          `podnet agent`; start it, with --ebpf-log LEVEL"
                    .to_owned(),
            });
        }
        Op::AddPeer { peer } => {
            super::add_peer(config, peer.clone().into()).await?;
            Reply::Done
        }
        Op::DelPeer { name } => {
            super::del_peer(config, name).await?;
            Reply::Done
        }
        Op::DenyAdd { cidr } => {
            Deny::open(&pins()?)?.insert(*cidr)?;
            Reply::Done
        }
        Op::DenyDel { cidr } => {
            let mut deny = Deny::open(&pins()?)?;
            if !deny.list().contains(cidr) {
                return Err(NodeError::NotDenied { cidr: *cidr });
            }
            deny.remove(*cidr)?;
            Reply::Done
        }
        Op::NatFlush => Reply::Flushed { removed: nat::flush(&pins()?)? },
        Op::NatGc { pressure } => {
            let collected = nat::gc(&pins()?, &config.nat.timeouts, *pressure)?;
            Reply::Collected {
                expired: collected.expired,
                orphans: collected.orphans,
                early: collected.early,
            }
        }
        Op::PodAdd { container, ip } => {
            let pod = container.pod(*ip);
            pod::check_container(&pod)?;
            let net = node_net(config, Netlink::current()?).await?;
            let mut program = PodProgram::open(&net.pins)?;
            let attached = pod::attach(&net, &mut program, &pod, false).await?;
            info!("container {}: {} on {} via {}", pod.id, attached.ip, pod.ifname, pod.host_ifname);
            Reply::PodAdded(PodAdded {
                ip: attached.ip,
                prefix: node.pod_cidr.prefix_len(),
                gateway: node.gateway,
                host_ifname: attached.host.name,
                host_mac: fmt_mac(&attached.host.mac),
                mac: fmt_mac(&attached.pod_if.mac),
            })
        }
        Op::PodDel { container } => {
            let records = Records::of(&node.state());
            pod::detach(&Netlink::current()?, &PinDir::for_node(&node.name), &records, &container.pod(None))
                .await?;
            Reply::Done
        }
        Op::PodCheck { container } => {
            let pod = container.pod(None);
            pod::check_container(&pod)?;
            let net = node_net(config, Netlink::current()?).await?;
            let problems = pod::check(&net, &pod).await?;
            if !problems.is_empty() {
                return Err(NodeError::Check { problems });
            }
            Reply::Done
        }
        Op::PodGc { network, keep } => {
            let records = Records::of(&node.state());
            let (nl, pins) = (Netlink::current()?, PinDir::for_node(&node.name));
            let mut released = Vec::new();
            for held in records.held()? {
                let pod = &held.pod;
                let kept = keep.iter().any(|(id, ifname)| *id == pod.id && *ifname == pod.ifname);
                if pod.network() == Some(network.as_str()) && !kept {
                    info!("gc: container {} ({}) is gone", pod.id, held.ip);
                    pod::detach(&nl, &pins, &records, pod).await?;
                    released.push(held.ip);
                }
            }
            Reply::Released { ips: released }
        }
    })
}

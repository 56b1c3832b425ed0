//! Carrying out a [`Plan`] over a [`Host`]: each step in turn, the node's record kept in step
//! with what was made, and everything this run made undone (newest first) when a step fails.
//! The host is the system (netlink, sysctls, the datapath: [`super::system`]) in production and
//! a recording fake in the unit tests below.

use std::future::Future;

use tracing::warn;

use super::{
    NodeError,
    plan::{Plan, Step},
    record::{NodeRecord, RecordedPeer},
    undo::Made,
};
use crate::error_chain;

/// What `up` changes things through.
pub trait Host {
    /// Carries out one step, saying whether it changed anything.
    fn perform(&mut self, step: &Step) -> impl Future<Output = Result<Done, NodeError>>;
    /// Removes one thing a step of this run made.
    fn undo(&mut self, made: &Made) -> impl Future<Output = Result<(), NodeError>>;
    /// Writes the node's record.
    fn save_record(&mut self, record: &NodeRecord) -> Result<(), NodeError>;
    /// Removes the node's record.
    fn remove_record(&mut self) -> Result<(), NodeError>;
}

/// What a step found when it ran: only what it changed is recorded and undone on failure (a
/// namespace or a port reservation that was there already is someone else's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    Changed,
    Unchanged,
}

/// Carries out `plan` on `host`, starting from the node's `record` as found; `up_before`: the
/// node was up before this run (else a failed run leaves no empty record behind).
pub async fn apply<H: Host>(
    host: &mut H,
    plan: &Plan,
    mut record: NodeRecord,
    up_before: bool,
) -> Result<(), NodeError> {
    let mut made = Vec::new();
    for step in &plan.steps {
        let done = match host.perform(step).await {
            Ok(done) => {
                let before = record.clone();
                made.extend(note(step, done, &mut record, &before));
                if record != before { host.save_record(&record) } else { Ok(()) }
            }
            Err(e) => {
                made.extend(left_by_failure(step));
                Err(match step {
                    Step::AttachPod { pod, .. } => {
                        NodeError::Pod { pod: pod.id.clone(), source: Box::new(e) }
                    }
                    _ => e,
                })
            }
        };
        if let Err(e) = done {
            if !made.is_empty() {
                warn!("`up` failed; undoing the {} change(s) it made", made.len());
                rollback(host, &mut record, made).await;
            }
            if !up_before && record == NodeRecord::default() {
                let _ = host.remove_record();
            }
            return Err(e);
        }
    }
    Ok(())
}

/// What a step that failed part-way may have left that is this run's to remove.
fn left_by_failure(step: &Step) -> Option<Made> {
    match step {
        // Some maps may be pinned already.
        Step::LoadDatapath { first_up: true, .. } => Some(Made::PinDir),
        _ => None,
    }
}

/// How the record changes once `step` is done, and what it made that a failure undoes.
fn note(step: &Step, done: Done, record: &mut NodeRecord, before: &NodeRecord) -> Vec<Made> {
    let mut made = Vec::new();
    match step {
        Step::DiscardStaleRecord => *record = NodeRecord::default(),
        Step::EnsureBridge { bridge, gateway, create, add_gateway } => {
            if *create {
                record.bridge = Some(bridge.clone());
                made.push(Made::Bridge(bridge.clone(), before.bridge.clone()));
            }
            if *add_gateway {
                record.gateway = Some((bridge.clone(), *gateway));
                made.push(Made::GatewayAddress(bridge.clone(), *gateway, before.gateway.clone()));
            }
        }
        Step::EnableIpForward => {
            record.ip_forward = true;
            made.push(Made::IpForward);
        }
        Step::ReleasePorts { .. } => record.reserved_ports = None,
        Step::ReservePorts { min, max } if done == Done::Changed => {
            record.reserved_ports = Some((*min, *max));
            made.push(Made::ReservedPorts(*min, *max));
        }
        Step::LoadDatapath { first_up: true, .. } => made.push(Made::PinDir),
        Step::AttachUplink { iface } => record.uplink = Some(iface.name.clone()),
        Step::ForgetConfigPeer { peer, .. } => record.config_peers.retain(|p| *p != RecordedPeer::from(peer)),
        Step::AddConfigPeer { peer, uplink, undo_route } => {
            let recorded = RecordedPeer::from(peer);
            if !record.config_peers.contains(&recorded) {
                record.config_peers.push(recorded);
            }
            if *undo_route {
                made.push(Made::Route { peer: peer.clone(), uplink: uplink.name.clone() });
            }
        }
        Step::CreateNetns(name) if done == Done::Changed => made.push(Made::Netns(name.clone())),
        Step::AttachPod { pod, new: true } => made.push(Made::Pod(pod.clone())),
        Step::RetireGateway { bridge, gateway } if record.gateway == Some((bridge.clone(), *gateway)) => {
            record.gateway = None;
        }
        Step::RetireBridge(bridge) if record.bridge.as_ref() == Some(bridge) => record.bridge = None,
        _ => {}
    }
    made
}

/// Undoes `made`, newest first; what cannot be undone is said and left.
async fn rollback<H: Host>(host: &mut H, record: &mut NodeRecord, made: Vec<Made>) {
    for m in made.into_iter().rev() {
        match host.undo(&m).await {
            Ok(()) => {
                let before = record.clone();
                m.forget(record);
                if *record != before
                    && let Err(e) = host.save_record(record)
                {
                    warn!("rollback: could not record that {m:?} was undone: {}", error_chain(&e));
                }
            }
            Err(e) => warn!("rollback: could not undo {m:?}: {}", error_chain(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        datapath::{EbpfLog, TableSizes},
        host::netlink::Iface,
        model::{PeerNode, Pod},
    };

    /// A host that records what it is asked, fails the step numbered `fail_at` (and the undos
    /// `refuse`, and saving the record from the `fail_save`th save on), finds what `there` names
    /// done already, and keeps the record in memory.
    #[derive(Default)]
    struct Fake {
        fail_at: Option<usize>,
        refuse: Vec<Made>,
        fail_save: Option<usize>,
        there: Vec<Step>,
        performed: Vec<Step>,
        undone: Vec<Made>,
        saves: usize,
        record: Option<NodeRecord>,
        removed: bool,
    }

    impl Host for Fake {
        async fn perform(&mut self, step: &Step) -> Result<Done, NodeError> {
            if self.fail_at == Some(self.performed.len()) {
                return Err(NodeError::Refused { message: format!("{step:?} failed") });
            }
            self.performed.push(step.clone());
            Ok(if self.there.contains(step) { Done::Unchanged } else { Done::Changed })
        }

        async fn undo(&mut self, made: &Made) -> Result<(), NodeError> {
            if self.refuse.contains(made) {
                return Err(NodeError::Refused { message: "busy".into() });
            }
            self.undone.push(made.clone());
            Ok(())
        }

        fn save_record(&mut self, record: &NodeRecord) -> Result<(), NodeError> {
            self.saves += 1;
            if self.fail_save.is_some_and(|n| self.saves >= n) {
                return Err(NodeError::Refused { message: "disk full".into() });
            }
            self.record = Some(record.clone());
            Ok(())
        }

        fn remove_record(&mut self) -> Result<(), NodeError> {
            self.removed = true;
            Ok(())
        }
    }

    fn eth0() -> Iface {
        Iface {
            index: 2,
            name: "eth0".into(),
            mac: [2; 6],
            is_veth: true,
            is_bridge: false,
            mtu: 1500,
            peer: None,
        }
    }

    fn node2() -> PeerNode {
        PeerNode {
            name: "node2".into(),
            ip: Ipv4Addr::new(192, 168, 50, 2),
            pod_cidr: "10.1.2.0/24".parse().unwrap(),
        }
    }

    fn pod(name: &str) -> Pod {
        Pod::configured(name, None, &format!("node1-{name}"))
    }

    /// What a first `up` of a node with one peer and two pods does.
    fn first_up() -> Plan {
        let gateway = Ipv4Addr::new(10, 1, 1, 1);
        Plan {
            steps: vec![
                Step::EnsureBridge { bridge: "br0".into(), gateway, create: true, add_gateway: true },
                Step::EnableIpForward,
                Step::ReservePorts { min: 61000, max: 65535 },
                Step::LoadDatapath { tables: TableSizes::default(), log: EbpfLog::Off, first_up: true },
                Step::AttachUplink { iface: eth0() },
                Step::AddConfigPeer { peer: node2(), uplink: eth0(), undo_route: true },
                Step::CreateNetns("node1-pod1".into()),
                Step::AttachPod { pod: pod("pod1"), new: true },
                Step::CreateNetns("node1-pod2".into()),
                Step::AttachPod { pod: pod("pod2"), new: true },
                Step::FinishMigration,
            ],
            warnings: Vec::new(),
        }
    }

    fn run(host: &mut Fake, plan: &Plan, record: NodeRecord, up_before: bool) -> Result<(), NodeError> {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(apply(host, plan, record, up_before))
    }

    #[test]
    fn a_run_records_what_it_made() {
        let mut host = Fake::default();
        run(&mut host, &first_up(), NodeRecord::default(), false).unwrap();
        assert_eq!(host.performed, first_up().steps);
        assert!(host.undone.is_empty());
        assert_eq!(
            host.record.unwrap(),
            NodeRecord {
                bridge: Some("br0".into()),
                gateway: Some(("br0".into(), Ipv4Addr::new(10, 1, 1, 1))),
                ip_forward: true,
                reserved_ports: Some((61000, 65535)),
                config_peers: vec![RecordedPeer::from(&node2())],
                cluster_peers: Vec::new(),
                uplink: Some("eth0".into()),
            }
        );
    }

    #[test]
    fn a_failed_first_run_undoes_everything_newest_first_and_leaves_no_record() {
        let mut host = Fake { fail_at: Some(9), ..Fake::default() };
        let err = run(&mut host, &first_up(), NodeRecord::default(), false).unwrap_err();
        assert_eq!(err.to_string(), "pod pod2");
        assert_eq!(
            host.undone,
            [
                Made::Netns("node1-pod2".into()),
                Made::Pod(pod("pod1")),
                Made::Netns("node1-pod1".into()),
                Made::Route { peer: node2(), uplink: "eth0".into() },
                Made::PinDir,
                Made::ReservedPorts(61000, 65535),
                Made::IpForward,
                Made::GatewayAddress("br0".into(), Ipv4Addr::new(10, 1, 1, 1), None),
                Made::Bridge("br0".into(), None),
            ]
        );
        assert_eq!(host.record.as_ref().map(|r| (r.bridge.clone(), r.ip_forward)), Some((None, false)));
        assert!(host.removed, "an empty record goes");
    }

    #[test]
    fn a_failed_later_run_gives_the_record_back_its_old_values() {
        let old = NodeRecord {
            bridge: Some("br0".into()),
            gateway: Some(("br0".into(), Ipv4Addr::new(10, 1, 1, 1))),
            ..NodeRecord::default()
        };
        let plan = Plan {
            steps: vec![
                Step::EnsureBridge {
                    bridge: "br1".into(),
                    gateway: Ipv4Addr::new(10, 1, 9, 1),
                    create: true,
                    add_gateway: true,
                },
                Step::LoadDatapath { tables: TableSizes::default(), log: EbpfLog::Off, first_up: false },
                Step::RetireBridge("br0".into()),
            ],
            warnings: Vec::new(),
        };
        let mut host = Fake { fail_at: Some(1), ..Fake::default() };
        run(&mut host, &plan, old.clone(), true).unwrap_err();
        assert_eq!(host.record, Some(old), "br0 and its gateway are the node's again");
        assert!(!host.removed);
    }

    #[test]
    fn what_cannot_be_undone_stays_recorded() {
        let mut host = Fake { fail_at: Some(3), refuse: vec![Made::IpForward], ..Fake::default() };
        run(&mut host, &first_up(), NodeRecord::default(), false).unwrap_err();
        let record = host.record.unwrap();
        assert!(record.ip_forward, "still on, so `down` turns it off");
        assert_eq!((record.bridge, record.reserved_ports), (None, None));
        assert!(!host.removed);
    }

    #[test]
    fn what_was_there_already_is_neither_recorded_nor_undone() {
        let mut host = Fake {
            fail_at: Some(9),
            there: vec![
                Step::ReservePorts { min: 61000, max: 65535 },
                Step::CreateNetns("node1-pod1".into()),
            ],
            ..Fake::default()
        };
        run(&mut host, &first_up(), NodeRecord::default(), false).unwrap_err();
        assert!(!host.undone.contains(&Made::ReservedPorts(61000, 65535)), "someone else's reservation");
        assert!(!host.undone.contains(&Made::Netns("node1-pod1".into())), "someone else's namespace");
        assert!(host.undone.contains(&Made::Netns("node1-pod2".into())));
    }

    #[test]
    fn a_datapath_that_fails_to_load_on_a_first_run_leaves_no_pins() {
        let mut host = Fake { fail_at: Some(3), ..Fake::default() };
        run(&mut host, &first_up(), NodeRecord::default(), false).unwrap_err();
        assert_eq!(host.undone[0], Made::PinDir, "the maps pinned before the failure go");
    }

    #[test]
    fn a_record_that_cannot_be_saved_fails_the_run_and_undoes_it() {
        let mut host = Fake { fail_save: Some(2), ..Fake::default() };
        let err = run(&mut host, &first_up(), NodeRecord::default(), false).unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(host.performed.len(), 2, "nothing runs after the failed save");
        assert_eq!(
            host.undone,
            [
                Made::IpForward,
                Made::GatewayAddress("br0".into(), Ipv4Addr::new(10, 1, 1, 1), None),
                Made::Bridge("br0".into(), None),
            ]
        );
    }
}

//! podnet's address management, and the record of the node's pods.
//!
//! Each address of the node's pod CIDR that a pod holds is a file `<state>/ipam/<ip>` whose
//! content names the pod ([`PodRecord`]: a `[[pod]]` of the config or a container the CNI plugin
//! attached, with its interfaces). A reservation is made atomically: the record is written to a
//! temporary file, synced, then hard-linked to the address's name, which fails if the address is
//! taken. So a crash at any point never hands one address to two pods (at worst an address stays
//! reserved until `DEL` or `GC` releases it), and the state survives restarts of the agent and of
//! the node's processes. Callers hold the node lock; the link makes even unlocked use safe.

use std::{
    fs::File,
    io::{self, Write as _},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::config;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free address left in {cidr} (every address is held; see `podnet status`)")]
    Exhausted { cidr: Ipv4Net },
    #[error("{ip} is already held by {holder}")]
    InUse { ip: Ipv4Addr, holder: String },
    #[error(
        "{ip} is not an address pods can have in {cidr} (outside it, its network or broadcast address, or the gateway)"
    )]
    NotAssignable { ip: Ipv4Addr, cidr: Ipv4Net },
    #[error("IPAM state {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("IPAM state {path} is not a pod record")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Who made a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodKind {
    /// A `[[pod]]` of the node's config: podnet made its namespace too.
    Config,
    /// A container a runtime attached through the CNI plugin.
    Cni,
}

/// A pod as the node remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub kind: PodKind,
    /// The `[[pod]]` name, or the container id.
    pub id: String,
    /// The pod's network namespace: a name under /run/netns or a path.
    pub netns: String,
    /// The interface inside the pod.
    pub ifname: String,
    /// The host end of its veth pair.
    pub host_ifname: String,
    /// The CNI network a container was attached to (`name` of the network config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Whether podnet created the namespace (a `[[pod]]`'s, when it did not exist before):
    /// podnet deletes only namespaces it made.
    #[serde(default)]
    pub owns_netns: bool,
}

impl PodRecord {
    /// Whether `self` and `other` are the same attachment (a runtime identifies one by network,
    /// container id and interface name).
    pub fn same_attachment(&self, other: &PodRecord) -> bool {
        self.kind == other.kind
            && self.id == other.id
            && self.ifname == other.ifname
            && self.network == other.network
    }

    /// How `podnet status` names it: the `[[pod]]` name, or the container id's first 12 characters.
    pub fn display_name(&self) -> String {
        match self.kind {
            PodKind::Config => self.id.clone(),
            PodKind::Cni => format!("cni:{}", self.id.chars().take(12).collect::<String>()),
        }
    }
}

/// The address a pod holds after [`Ipam::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub ip: Ipv4Addr,
    /// The address it held before, given back: the pod moved to `ip`.
    pub moved_from: Option<Ipv4Addr>,
}

/// The node's pod addresses.
#[derive(Debug, Clone)]
pub struct Ipam {
    dir: PathBuf,
    cidr: Ipv4Net,
    gateway: Ipv4Addr,
    /// Addresses `[[pod]]`s of the config name: never handed out to anyone else.
    kept: Vec<Ipv4Addr>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IpamError + use<> {
    let path = path.to_owned();
    move |source| IpamError::Io { path, source }
}

impl Ipam {
    /// The IPAM of the node `config` describes (its directory is made on first use); the
    /// addresses its `[[pod]]`s name are kept for them.
    pub fn of(config: &config::Config) -> Self {
        let node = &config.node;
        Self {
            dir: node.state().join("ipam"),
            cidr: node.pod_cidr,
            gateway: node.gateway,
            kept: config.pods.iter().filter_map(|p| p.ip).collect(),
        }
    }

    /// The address `pod` holds, reserving one if it holds none: `requested` if given (it must be
    /// free or already the pod's), else the next free one after the last reserved. A pod that
    /// holds another address than `requested` moves: `requested` is reserved, then the old one
    /// is given back (see [`Reservation::moved_from`]).
    pub fn reserve(&self, pod: &PodRecord, requested: Option<Ipv4Addr>) -> Result<Reservation, IpamError> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let held = self.held()?;
        let mine: Vec<Ipv4Addr> =
            held.iter().filter(|(_, r)| r.same_attachment(pod)).map(|(ip, _)| *ip).collect();
        // A crash in the middle of a move leaves the pod two: keep the one asked for (or the
        // first) and give back the rest.
        let holds = requested.filter(|r| mine.contains(r)).or(mine.first().copied());
        for extra in mine.iter().filter(|ip| Some(**ip) != holds) {
            self.remove_file(*extra)?;
        }
        match (holds, requested) {
            (Some(ip), None) if self.assignable(ip) => Ok(Reservation { ip, moved_from: None }),
            (Some(ip), Some(want)) if ip == want => Ok(Reservation { ip, moved_from: None }),
            // The pod CIDR changed under it: a new address from the new one.
            (Some(old), None) => {
                let ip = self.reserve_new(&held, pod, None)?;
                self.remove_file(old)?;
                Ok(Reservation { ip, moved_from: Some(old) })
            }
            (Some(old), Some(want)) => {
                let ip = self.reserve_free(&held, pod, want)?;
                self.remove_file(old)?;
                Ok(Reservation { ip, moved_from: Some(old) })
            }
            (None, requested) => {
                Ok(Reservation { ip: self.reserve_new(&held, pod, requested)?, moved_from: None })
            }
        }
    }

    fn reserve_new(
        &self,
        held: &[(Ipv4Addr, PodRecord)],
        pod: &PodRecord,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = requested {
            return self.reserve_free(held, pod, ip);
        }
        let hosts: Vec<Ipv4Addr> = self.cidr.hosts().filter(|ip| self.assignable(*ip)).collect();
        let last: Option<Ipv4Addr> =
            std::fs::read_to_string(self.dir.join("last")).ok().and_then(|t| t.trim().parse().ok());
        let start = last.and_then(|l| hosts.iter().position(|ip| *ip == l)).map_or(0, |i| i + 1);
        for ip in hosts.iter().cycle().skip(start).take(hosts.len()) {
            if held.iter().any(|(h, _)| h == ip) || self.kept.contains(ip) {
                continue;
            }
            if self.try_reserve(*ip, pod)? {
                // Round robin: a released address is not handed out again at once.
                let _ = std::fs::write(self.dir.join("last"), ip.to_string());
                return Ok(*ip);
            }
        }
        Err(IpamError::Exhausted { cidr: self.cidr })
    }

    /// Reserves `ip`, which must be assignable and free, for `pod`.
    fn reserve_free(
        &self,
        held: &[(Ipv4Addr, PodRecord)],
        pod: &PodRecord,
        ip: Ipv4Addr,
    ) -> Result<Ipv4Addr, IpamError> {
        if !self.assignable(ip) {
            return Err(IpamError::NotAssignable { ip, cidr: self.cidr });
        }
        if let Some((_, holder)) = held.iter().find(|(held_ip, _)| *held_ip == ip) {
            return Err(IpamError::InUse { ip, holder: holder.display_name() });
        }
        if self.try_reserve(ip, pod)? {
            Ok(ip)
        } else {
            Err(IpamError::InUse { ip, holder: "another pod".to_owned() })
        }
    }

    fn assignable(&self, ip: Ipv4Addr) -> bool {
        self.cidr.contains(&ip)
            && ip != self.cidr.network()
            && ip != self.cidr.broadcast()
            && ip != self.gateway
    }

    /// Writes `pod`'s record as `ip` unless that name exists; whether it did.
    fn try_reserve(&self, ip: Ipv4Addr, pod: &PodRecord) -> Result<bool, IpamError> {
        let tmp = self.dir.join(format!(".{ip}.{}", std::process::id()));
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        let body = serde_json::to_vec(pod).expect("a pod record serializes");
        file.write_all(&body).and_then(|()| file.sync_all()).map_err(io_err(&tmp))?;
        let target = self.dir.join(ip.to_string());
        let linked = std::fs::hard_link(&tmp, &target);
        std::fs::remove_file(&tmp).map_err(io_err(&tmp))?;
        match linked {
            Ok(()) => {
                File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err(&target)(e)),
        }
    }

    /// Gives back the address `pod` holds, if any, and returns it.
    pub fn release(&self, pod: &PodRecord) -> Result<Option<Ipv4Addr>, IpamError> {
        let Some((ip, _)) = self.held()?.into_iter().find(|(_, r)| r.same_attachment(pod)) else {
            return Ok(None);
        };
        self.remove_file(ip).map(|()| Some(ip))
    }

    fn remove_file(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let path = self.dir.join(ip.to_string());
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Every held address and its pod, sorted by address.
    pub fn held(&self) -> Result<Vec<(Ipv4Addr, PodRecord)>, IpamError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let mut held = Vec::new();
        for entry in entries.flatten() {
            let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let path = entry.path();
            let text = std::fs::read(&path).map_err(io_err(&path))?;
            let record =
                serde_json::from_slice(&text).map_err(|source| IpamError::Corrupt { path, source })?;
            held.push((ip, record));
        }
        held.sort_by_key(|(ip, _)| *ip);
        Ok(held)
    }

    /// Forgets every reservation (`down`).
    pub fn remove_all(&self) -> Result<(), IpamError> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&self.dir)(e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(tag: &str) -> Ipam {
        let dir = std::env::temp_dir().join(format!("podnet-ipam-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Ipam {
            dir,
            cidr: "10.9.0.0/29".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 9, 0, 1),
            kept: Vec::new(),
        }
    }

    fn pod(id: &str) -> PodRecord {
        PodRecord {
            kind: PodKind::Cni,
            id: id.into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            host_ifname: format!("pn{id}"),
            network: Some("podnet".into()),
            owns_netns: false,
        }
    }

    #[test]
    fn reserves_round_robin_and_idempotently() {
        let ipam = ipam("rr");
        let a = ipam.reserve(&pod("a"), None).unwrap().ip;
        assert_eq!(a, Ipv4Addr::new(10, 9, 0, 2), "the gateway .1 is skipped");
        assert_eq!(ipam.reserve(&pod("a"), None).unwrap().ip, a, "the same pod gets the same address");
        let b = ipam.reserve(&pod("b"), None).unwrap().ip;
        assert_eq!(b, Ipv4Addr::new(10, 9, 0, 3));
        assert_eq!(ipam.release(&pod("a")).unwrap(), Some(a));
        assert_eq!(ipam.release(&pod("a")).unwrap(), None, "releasing twice is fine");
        assert_eq!(
            ipam.reserve(&pod("c"), None).unwrap().ip,
            Ipv4Addr::new(10, 9, 0, 4),
            "not .2 again at once"
        );
        ipam.remove_all().unwrap();
    }

    #[test]
    fn requested_addresses_and_exhaustion() {
        let ipam = ipam("req");
        assert_eq!(
            ipam.reserve(&pod("a"), Some(Ipv4Addr::new(10, 9, 0, 6))).unwrap().ip,
            Ipv4Addr::new(10, 9, 0, 6)
        );
        let err = ipam.reserve(&pod("b"), Some(Ipv4Addr::new(10, 9, 0, 6))).unwrap_err().to_string();
        assert_eq!(err, "10.9.0.6 is already held by cni:a");
        let err = ipam.reserve(&pod("b"), Some(Ipv4Addr::new(10, 9, 0, 1))).unwrap_err().to_string();
        assert!(err.starts_with("10.9.0.1 is not an address pods can have in 10.9.0.0/29"), "{err}");
        // .2 .3 .4 .5 are left.
        for id in ["b", "c", "d", "e"] {
            ipam.reserve(&pod(id), None).unwrap();
        }
        let err = ipam.reserve(&pod("f"), None).unwrap_err().to_string();
        // A pod that asks for another address moves to it, and only to a free one.
        let moved = ipam.reserve(&pod("a"), Some(Ipv4Addr::new(10, 9, 0, 2)));
        assert!(matches!(moved, Err(IpamError::InUse { .. })), "{moved:?}");
        ipam.release(&pod("b")).unwrap();
        let moved = ipam.reserve(&pod("a"), Some(Ipv4Addr::new(10, 9, 0, 2))).unwrap();
        assert_eq!(
            moved,
            Reservation { ip: Ipv4Addr::new(10, 9, 0, 2), moved_from: Some(Ipv4Addr::new(10, 9, 0, 6)) }
        );
        assert!(ipam.reserve(&pod("g"), Some(Ipv4Addr::new(10, 9, 0, 6))).is_ok(), "the old address is free");
        ipam.release(&pod("g")).unwrap();
        // Two records of one pod (a move cut short): the one asked for stays.
        std::fs::copy(ipam.dir.join("10.9.0.2"), ipam.dir.join("10.9.0.6")).unwrap();
        let kept = ipam.reserve(&pod("a"), Some(Ipv4Addr::new(10, 9, 0, 6))).unwrap();
        assert_eq!(kept, Reservation { ip: Ipv4Addr::new(10, 9, 0, 6), moved_from: None });
        assert!(!ipam.dir.join("10.9.0.2").exists());
        // Outside the pod CIDR (it changed): a new address.
        let narrow = Ipam { cidr: "10.9.0.0/30".parse().unwrap(), ..ipam.clone() };
        let moved = narrow.reserve(&pod("a"), None).unwrap();
        assert_eq!(
            moved,
            Reservation { ip: Ipv4Addr::new(10, 9, 0, 2), moved_from: Some(Ipv4Addr::new(10, 9, 0, 6)) }
        );
        assert_eq!(err, "no free address left in 10.9.0.0/29 (every address is held; see `podnet status`)");
        assert_eq!(ipam.held().unwrap().len(), 4);
        ipam.remove_all().unwrap();
    }
}

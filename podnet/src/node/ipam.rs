//! podnet's address management, and the record of the node's pods.
//!
//! Each address of the node's pod CIDR that a pod holds is a file `<state>/ipam/<ip>` whose
//! content names the pod (a `[[pod]]` of the config or a container the CNI plugin attached,
//! with its interfaces, and whether podnet made its namespace): [`Held`]. A reservation is made
//! atomically: the record is written to a temporary file, synced, then hard-linked to the
//! address's name, which fails if the address is taken. So a crash at any point never hands one
//! address to two pods (at worst an address stays reserved until `DEL` or `GC` releases it), and
//! the state survives restarts of the agent and of the node's processes. Callers hold the node lock; the link makes even unlocked use safe.

use std::{
    fs::File,
    io::{self, Write as _},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::model::{Config, Origin, Pod};

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

/// A pod's address as the node holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub ip: Ipv4Addr,
    pub pod: Pod,
    /// Whether podnet created the pod's namespace (a `[[pod]]`'s, when it did not exist
    /// before): podnet deletes only namespaces it made.
    pub owns_netns: bool,
}

/// Who made a pod, as the file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Config,
    Cni,
}

/// The file of a held address: the pod, as podnet 0.1 wrote it already.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PodFile {
    kind: Kind,
    id: String,
    netns: String,
    ifname: String,
    host_ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network: Option<String>,
    #[serde(default)]
    owns_netns: bool,
}

impl PodFile {
    fn of(pod: &Pod, owns_netns: bool) -> Self {
        Self {
            kind: if pod.is_container() { Kind::Cni } else { Kind::Config },
            id: pod.id.clone(),
            netns: pod.netns.clone(),
            ifname: pod.ifname.clone(),
            host_ifname: pod.host_ifname.clone(),
            network: pod.network().map(str::to_owned),
            owns_netns,
        }
    }

    fn held(self, ip: Ipv4Addr) -> Held {
        let origin = match (self.kind, self.network) {
            (Kind::Cni, network) => Origin::Cni { network: network.unwrap_or_default() },
            (Kind::Config, _) => Origin::Config,
        };
        let pod = Pod {
            origin,
            id: self.id,
            netns: self.netns,
            ifname: self.ifname,
            host_ifname: self.host_ifname,
            ip: Some(ip),
        };
        Held { ip, pod, owns_netns: self.owns_netns }
    }
}

/// The address a pod holds after [`Ipam::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub ip: Ipv4Addr,
    /// The address it held before, given back: the pod moved to `ip`.
    pub moved_from: Option<Ipv4Addr>,
}

/// The node's held addresses on disk: what every pod holds, whatever the pod CIDR.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
}

/// The node's pod addresses: its [`Records`], and the range new ones come from.
#[derive(Debug, Clone)]
pub struct Ipam {
    records: Records,
    cidr: Ipv4Net,
    gateway: Ipv4Addr,
    /// Addresses `[[pod]]`s of the config name: never handed out to anyone else.
    kept: Vec<Ipv4Addr>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IpamError + use<> {
    let path = path.to_owned();
    move |source| IpamError::Io { path, source }
}

impl Records {
    /// The records of the node whose state directory is `state`.
    pub fn of(state: &Path) -> Self {
        Self { dir: state.join("ipam") }
    }

    /// Every held address and its pod, sorted by address.
    pub fn held(&self) -> Result<Vec<Held>, IpamError> {
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
            let file: PodFile =
                serde_json::from_slice(&text).map_err(|source| IpamError::Corrupt { path, source })?;
            held.push(file.held(ip));
        }
        held.sort_by_key(|h| h.ip);
        Ok(held)
    }

    /// What `pod` holds, if anything.
    pub fn of_pod(&self, pod: &Pod) -> Result<Option<Held>, IpamError> {
        Ok(self.held()?.into_iter().find(|h| h.pod.same_attachment(pod)))
    }

    /// Gives back the address `pod` holds, if any, and returns it.
    pub fn release(&self, pod: &Pod) -> Result<Option<Ipv4Addr>, IpamError> {
        let Some(held) = self.of_pod(pod)? else {
            return Ok(None);
        };
        self.remove_file(held.ip).map(|()| Some(held.ip))
    }

    fn remove_file(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let path = self.dir.join(ip.to_string());
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Forgets every reservation (`down`).
    pub fn remove_all(&self) -> Result<(), IpamError> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&self.dir)(e)),
            _ => Ok(()),
        }
    }

    /// Writes `pod`'s record as `ip` unless that name exists; whether it did.
    fn try_reserve(&self, ip: Ipv4Addr, pod: &Pod, owns_netns: bool) -> Result<bool, IpamError> {
        let tmp = self.dir.join(format!(".{ip}.{}", std::process::id()));
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        let body = serde_json::to_vec(&PodFile::of(pod, owns_netns)).expect("a pod record serializes");
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
}

impl std::ops::Deref for Ipam {
    type Target = Records;

    fn deref(&self) -> &Records {
        &self.records
    }
}

impl Ipam {
    /// The IPAM of the node `config` describes (its directory is made on first use); the
    /// addresses its `[[pod]]`s name are kept for them.
    pub fn of(config: &Config) -> Self {
        let node = &config.node;
        Self {
            records: Records::of(&node.state()),
            cidr: node.pod_cidr,
            gateway: node.gateway,
            kept: config.pods.iter().filter_map(|p| p.ip).collect(),
        }
    }

    /// The address `pod` holds, reserving one if it holds none: the one it asks for (`pod.ip`:
    /// it must be free or already the pod's), else the next free one after the last reserved.
    /// A pod that holds another address than it asks for moves: the new one is reserved, then
    /// the old one is given back (see [`Reservation::moved_from`]). `owns_netns`: podnet made
    /// the pod's namespace (a pod that moves keeps what its old record said).
    pub fn reserve(&self, pod: &Pod, owns_netns: bool) -> Result<Reservation, IpamError> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let held = self.held()?;
        let mine: Vec<&Held> = held.iter().filter(|h| h.pod.same_attachment(pod)).collect();
        let owns_netns = owns_netns || mine.iter().any(|h| h.owns_netns);
        let requested = pod.ip;
        // A crash in the middle of a move leaves the pod two: keep the one asked for (or the
        // first) and give back the rest.
        let holds = requested.filter(|r| mine.iter().any(|h| h.ip == *r)).or(mine.first().map(|h| h.ip));
        for extra in mine.iter().filter(|h| Some(h.ip) != holds) {
            self.remove_file(extra.ip)?;
        }
        match (holds, requested) {
            (Some(ip), None) if self.assignable(ip) => Ok(Reservation { ip, moved_from: None }),
            (Some(ip), Some(want)) if ip == want => Ok(Reservation { ip, moved_from: None }),
            // The pod CIDR changed under it: a new address from the new one.
            (Some(old), None) => {
                let ip = self.reserve_new(&held, pod, owns_netns)?;
                self.remove_file(old)?;
                Ok(Reservation { ip, moved_from: Some(old) })
            }
            (Some(old), Some(want)) => {
                let ip = self.reserve_free(&held, pod, want, owns_netns)?;
                self.remove_file(old)?;
                Ok(Reservation { ip, moved_from: Some(old) })
            }
            (None, Some(want)) => {
                Ok(Reservation { ip: self.reserve_free(&held, pod, want, owns_netns)?, moved_from: None })
            }
            (None, None) => {
                Ok(Reservation { ip: self.reserve_new(&held, pod, owns_netns)?, moved_from: None })
            }
        }
    }

    /// The next free address after the last one handed out.
    fn reserve_new(&self, held: &[Held], pod: &Pod, owns_netns: bool) -> Result<Ipv4Addr, IpamError> {
        let hosts: Vec<Ipv4Addr> = self.cidr.hosts().filter(|ip| self.assignable(*ip)).collect();
        let last: Option<Ipv4Addr> =
            std::fs::read_to_string(self.dir.join("last")).ok().and_then(|t| t.trim().parse().ok());
        let start = last.and_then(|l| hosts.iter().position(|ip| *ip == l)).map_or(0, |i| i + 1);
        for ip in hosts.iter().cycle().skip(start).take(hosts.len()) {
            if held.iter().any(|h| h.ip == *ip) || self.kept.contains(ip) {
                continue;
            }
            if self.try_reserve(*ip, pod, owns_netns)? {
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
        held: &[Held],
        pod: &Pod,
        ip: Ipv4Addr,
        owns_netns: bool,
    ) -> Result<Ipv4Addr, IpamError> {
        if !self.assignable(ip) {
            return Err(IpamError::NotAssignable { ip, cidr: self.cidr });
        }
        if let Some(holder) = held.iter().find(|h| h.ip == ip) {
            return Err(IpamError::InUse { ip, holder: holder.pod.to_string() });
        }
        if self.try_reserve(ip, pod, owns_netns)? {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(tag: &str) -> Ipam {
        let dir = std::env::temp_dir().join(format!("podnet-ipam-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Ipam {
            records: Records { dir },
            cidr: "10.9.0.0/29".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 9, 0, 1),
            kept: Vec::new(),
        }
    }

    fn pod(id: &str) -> Pod {
        Pod::container("podnet", id, "/run/netns/x", "eth0", None)
    }

    fn asking(id: &str, ip: Ipv4Addr) -> Pod {
        Pod { ip: Some(ip), ..pod(id) }
    }

    #[test]
    fn reserves_round_robin_and_idempotently() {
        let ipam = ipam("rr");
        let a = ipam.reserve(&pod("a"), false).unwrap().ip;
        assert_eq!(a, Ipv4Addr::new(10, 9, 0, 2), "the gateway .1 is skipped");
        assert_eq!(ipam.reserve(&pod("a"), false).unwrap().ip, a, "the same pod gets the same address");
        let b = ipam.reserve(&pod("b"), false).unwrap().ip;
        assert_eq!(b, Ipv4Addr::new(10, 9, 0, 3));
        assert_eq!(ipam.release(&pod("a")).unwrap(), Some(a));
        assert_eq!(ipam.release(&pod("a")).unwrap(), None, "releasing twice is fine");
        assert_eq!(
            ipam.reserve(&pod("c"), false).unwrap().ip,
            Ipv4Addr::new(10, 9, 0, 4),
            "not .2 again at once"
        );
        ipam.remove_all().unwrap();
    }

    #[test]
    fn requested_addresses_and_exhaustion() {
        let ipam = ipam("req");
        assert_eq!(
            ipam.reserve(&asking("a", Ipv4Addr::new(10, 9, 0, 6)), false).unwrap().ip,
            Ipv4Addr::new(10, 9, 0, 6)
        );
        let err = ipam.reserve(&asking("b", Ipv4Addr::new(10, 9, 0, 6)), false).unwrap_err().to_string();
        assert_eq!(err, "10.9.0.6 is already held by cni:a");
        let err = ipam.reserve(&asking("b", Ipv4Addr::new(10, 9, 0, 1)), false).unwrap_err().to_string();
        assert!(err.starts_with("10.9.0.1 is not an address pods can have in 10.9.0.0/29"), "{err}");
        // .2 .3 .4 .5 are left.
        for id in ["b", "c", "d", "e"] {
            ipam.reserve(&pod(id), false).unwrap();
        }
        let err = ipam.reserve(&pod("f"), false).unwrap_err().to_string();
        // A pod that asks for another address moves to it, and only to a free one.
        let moved = ipam.reserve(&asking("a", Ipv4Addr::new(10, 9, 0, 2)), false);
        assert!(matches!(moved, Err(IpamError::InUse { .. })), "{moved:?}");
        ipam.release(&pod("b")).unwrap();
        let moved = ipam.reserve(&asking("a", Ipv4Addr::new(10, 9, 0, 2)), false).unwrap();
        assert_eq!(
            moved,
            Reservation { ip: Ipv4Addr::new(10, 9, 0, 2), moved_from: Some(Ipv4Addr::new(10, 9, 0, 6)) }
        );
        assert!(
            ipam.reserve(&asking("g", Ipv4Addr::new(10, 9, 0, 6)), false).is_ok(),
            "the old address is free"
        );
        ipam.release(&pod("g")).unwrap();
        // Two records of one pod (a move cut short): the one asked for stays.
        std::fs::copy(ipam.records.dir.join("10.9.0.2"), ipam.records.dir.join("10.9.0.6")).unwrap();
        let kept = ipam.reserve(&asking("a", Ipv4Addr::new(10, 9, 0, 6)), false).unwrap();
        assert_eq!(kept, Reservation { ip: Ipv4Addr::new(10, 9, 0, 6), moved_from: None });
        assert!(!ipam.records.dir.join("10.9.0.2").exists());
        // Outside the pod CIDR (it changed): a new address.
        let narrow = Ipam { cidr: "10.9.0.0/30".parse().unwrap(), ..ipam.clone() };
        let moved = narrow.reserve(&pod("a"), false).unwrap();
        assert_eq!(
            moved,
            Reservation { ip: Ipv4Addr::new(10, 9, 0, 2), moved_from: Some(Ipv4Addr::new(10, 9, 0, 6)) }
        );
        assert_eq!(err, "no free address left in 10.9.0.0/29 (every address is held; see `podnet status`)");
        assert_eq!(ipam.held().unwrap().len(), 4);
        ipam.remove_all().unwrap();
    }
}

//! A pod on this node, however it came: a `[[pod]]` of the config, or a container a runtime
//! attached through the CNI plugin. Both get the same plumbing and the same datapath; they
//! differ in who names them and who owns their namespace.

use std::{fmt, net::Ipv4Addr};

use super::names::IFNAME_MAX;

/// Prefix of a `[[pod]]`'s veth inside its namespace.
const POD_IF_PREFIX: &str = "veth_";
/// Prefix of a `[[pod]]`'s host veth, in the node namespace and the bridge.
const HOST_IF_PREFIX: &str = "brveth_";
/// Prefix of a container's host veth (`pn` and 12 hex digits).
const CONTAINER_IF_PREFIX: &str = "pn";
/// Longest `[[pod]]` name: its host veth's name must fit in IFNAMSIZ.
pub const POD_NAME_MAX: usize = IFNAME_MAX - HOST_IF_PREFIX.len();

/// Who made a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A `[[pod]]` of the node's config: podnet makes its namespace if it does not exist.
    Config,
    /// A container a runtime attached through the CNI plugin, on CNI network `network` (the
    /// network config's `name`).
    Cni { network: String },
}

/// A pod: who made it, its names, and the address it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub origin: Origin,
    /// The `[[pod]]` name, or the container id.
    pub id: String,
    /// The pod's network namespace: a name under /run/netns, or a path (containers).
    pub netns: String,
    /// The interface inside the pod.
    pub ifname: String,
    /// The host end of its veth pair.
    pub host_ifname: String,
    /// The address it asks for (`[[pod]] ip`, CNI_ARGS `IP=`); `None`: one from IPAM.
    pub ip: Option<Ipv4Addr>,
}

impl Pod {
    /// `[[pod]]` `name` with address `ip` (or one from IPAM) in namespace `netns`: veths
    /// `veth_<name>` inside, `brveth_<name>` on the node.
    pub fn configured(name: &str, ip: Option<Ipv4Addr>, netns: &str) -> Self {
        Self {
            origin: Origin::Config,
            id: name.to_owned(),
            netns: netns.to_owned(),
            ifname: format!("{POD_IF_PREFIX}{name}"),
            host_ifname: format!("{HOST_IF_PREFIX}{name}"),
            ip,
        }
    }

    /// A runtime's container `id` with interface `ifname` in namespace `netns` (a path) on CNI
    /// network `network`, asking for `ip`. Its host veth is `pn` and 12 hex digits of a hash of
    /// id and interface: unique per attachment and within the 15 bytes of an interface name.
    pub fn container(network: &str, id: &str, netns: &str, ifname: &str, ip: Option<Ipv4Addr>) -> Self {
        // FNV-1a, 64 bits: stable across builds, unlike std's hasher.
        let hash = format!("{id}/{ifname}")
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        Self {
            origin: Origin::Cni { network: network.to_owned() },
            id: id.to_owned(),
            netns: netns.to_owned(),
            ifname: ifname.to_owned(),
            host_ifname: format!("{CONTAINER_IF_PREFIX}{:012x}", hash >> 16),
            ip,
        }
    }

    /// Whether this is a container a runtime attached.
    pub fn is_container(&self) -> bool {
        matches!(self.origin, Origin::Cni { .. })
    }

    /// The CNI network a container was attached to.
    pub fn network(&self) -> Option<&str> {
        match &self.origin {
            Origin::Cni { network } => Some(network),
            Origin::Config => None,
        }
    }

    /// Whether `self` and `other` are the same attachment (a runtime identifies one by network,
    /// container id and interface name; a `[[pod]]` by its name).
    pub fn same_attachment(&self, other: &Pod) -> bool {
        self.origin == other.origin && self.id == other.id && self.ifname == other.ifname
    }

    /// Refuses what a runtime (or anyone who can run the plugin) must not make podnet do: an
    /// interface name the kernel would reject or misread, a container id that is no id, a
    /// namespace that is not an absolute path. Returns the CNI variable at fault and why.
    pub fn check_container(&self) -> Result<(), (&'static str, String)> {
        let bad_byte = |b: u8| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control();
        if self.ifname.is_empty()
            || self.ifname.len() > IFNAME_MAX
            || [".", ".."].contains(&self.ifname.as_str())
            || self.ifname.bytes().any(bad_byte)
        {
            let problem =
                format!("{:?} is not an interface name (1-15 bytes, no '/', ':' or spaces)", self.ifname);
            return Err(("CNI_IFNAME", problem));
        }
        if self.id.is_empty()
            || self.id.len() > 256
            || !self.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err((
                "CNI_CONTAINERID",
                format!("{:?} is not a container id (1-256 of a-z A-Z 0-9 _ . -)", self.id),
            ));
        }
        if !self.netns.starts_with('/') || self.netns.split('/').any(|part| part == "..") {
            return Err((
                "CNI_NETNS",
                format!("{:?} is not an absolute path to a network namespace", self.netns),
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Pod {
    /// How `podnet status` names it: the `[[pod]]` name, or `cni:` and the container id's first
    /// 12 characters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.origin {
            Origin::Config => f.write_str(&self.id),
            Origin::Cni { .. } => write!(f, "cni:{}", self.id.chars().take(12).collect::<String>()),
        }
    }
}

/// Whether `ifname` is a name podnet gives host veths (`brveth_<pod>`, `pn<hash>`): podnet
/// deletes no interface it did not name.
pub fn is_pod_veth_name(ifname: &str) -> bool {
    ifname.starts_with(HOST_IF_PREFIX) || (ifname.len() == 14 && ifname.starts_with(CONTAINER_IF_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_host_names_are_unique_and_short() {
        let id = "8653d84b4e7512ce293ef1e1222be529";
        let a = Pod::container("podnet", id, "/run/netns/x", "eth0", None);
        let b = Pod::container("podnet", id, "/run/netns/x", "eth1", None);
        let c = Pod::container("podnet", "8653d84b4e7512ce293ef1e1222be52a", "/run/netns/x", "eth0", None);
        assert_eq!(a.host_ifname.len(), 14);
        assert!(a.host_ifname.starts_with("pn") && is_pod_veth_name(&a.host_ifname));
        assert_ne!(a.host_ifname, b.host_ifname);
        assert_ne!(a.host_ifname, c.host_ifname);
        assert_eq!(a, Pod::container("podnet", id, "/run/netns/x", "eth0", None));
        assert_eq!(a.to_string(), "cni:8653d84b4e75");
    }

    #[test]
    fn configured_pods_are_named_by_their_veths() {
        let p = Pod::configured("pod1", None, "node1-pod1");
        assert_eq!((p.ifname.as_str(), p.host_ifname.as_str()), ("veth_pod1", "brveth_pod1"));
        assert_eq!(p.to_string(), "pod1");
        assert!(is_pod_veth_name(&p.host_ifname) && !is_pod_veth_name("eth0"));
        assert!(!p.same_attachment(&Pod::container("podnet", "pod1", "/x", "veth_pod1", None)));
    }

    #[test]
    fn hostile_container_names_are_refused() {
        for (id, netns, ifname, field) in [
            ("c1", "/run/netns/x", "", "CNI_IFNAME"),
            ("c1", "/run/netns/x", "a-very-long-ifname", "CNI_IFNAME"),
            ("c1", "/run/netns/x", "a/b", "CNI_IFNAME"),
            ("c1", "/run/netns/x", "..", "CNI_IFNAME"),
            ("c1", "/run/netns/x", "eth 0", "CNI_IFNAME"),
            ("", "/run/netns/x", "eth0", "CNI_CONTAINERID"),
            ("../x", "/run/netns/x", "eth0", "CNI_CONTAINERID"),
            ("c1", "netns-x", "eth0", "CNI_NETNS"),
            ("c1", "/run/netns/../../proc/1/ns/net", "eth0", "CNI_NETNS"),
        ] {
            let err = Pod::container("podnet", id, netns, ifname, None).check_container();
            assert_eq!(err.map_err(|(f, _)| f), Err(field), "{id:?} {netns:?} {ifname:?}");
        }
    }
}

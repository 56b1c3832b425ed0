//! Links, addresses and routes over rtnetlink, in the current namespace or a named one.

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        address::{AddressAttribute, AddressMessage},
        link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage},
        route::{RouteAddress, RouteAttribute, RouteMessage},
    },
};

use super::{
    gro,
    netns::{self, NetnsError},
};

/// errno values as netlink reports them (negated).
const ENODEV: i32 = -19;
const EEXIST: i32 = -17;
const ESRCH: i32 = -3;
const EADDRNOTAVAIL: i32 = -99;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("could not open a netlink socket in {ns}")]
    Connect {
        ns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink: could not {op} {object}")]
    Request {
        op: &'static str,
        object: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Gro(#[from] gro::GroError),
}

/// A network interface as podnet needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    /// Whether it is one end of a veth pair.
    pub is_veth: bool,
    pub is_bridge: bool,
    pub mtu: u32,
    /// For one end of a veth pair: the other end's ifindex (in the other end's namespace).
    pub peer: Option<u32>,
}

/// An rtnetlink connection bound to one network namespace.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
    ns: String,
}

fn code(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get()),
        _ => None,
    }
}

impl Netlink {
    /// A connection in the calling thread's namespace. Needs a tokio runtime.
    pub fn current() -> Result<Self, NetlinkError> {
        Self::connect("the current namespace".to_owned())
    }

    /// A connection inside the named namespace, usable from any thread: a netlink socket stays
    /// bound to the namespace it was created in.
    pub fn in_netns(name: &str) -> Result<Self, NetlinkError> {
        let rt = tokio::runtime::Handle::current();
        netns::run_in(name, || {
            let _runtime = rt.enter();
            Self::connect(format!("namespace {name:?}"))
        })?
    }

    fn connect(ns: String) -> Result<Self, NetlinkError> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|source| NetlinkError::Connect { ns: ns.clone(), source })?;
        tokio::spawn(conn);
        Ok(Self { handle, ns })
    }

    fn request(
        &self,
        op: &'static str,
        object: impl Into<String>,
    ) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
        let object = format!("{} in {}", object.into(), self.ns);
        move |source| NetlinkError::Request { op, object, source }
    }

    /// The interface called `name`, if there is one.
    pub async fn link(&self, name: &str) -> Result<Option<Iface>, NetlinkError> {
        let mut links = self.handle.link().get().match_name(name.to_owned()).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(iface(&msg))),
            Ok(None) => Ok(None),
            Err(e) if code(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(self.request("look up link", name)(e)),
        }
    }

    /// Like [`Self::link`], but the interface must exist.
    pub async fn existing_link(&self, name: &str) -> Result<Iface, NetlinkError> {
        self.link(name).await?.ok_or_else(|| NetlinkError::Request {
            op: "find link",
            object: format!("{name} in {}", self.ns),
            source: rtnetlink::Error::RequestFailed,
        })
    }

    /// Creates a bridge (down; see [`Self::set_up`]).
    pub async fn add_bridge(&self, name: &str) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .map_err(self.request("create bridge", name))
    }

    /// Creates a veth pair `host` <-> `peer`, with `peer` created directly inside namespace
    /// `peer_ns`.
    pub async fn add_veth(&self, host: &str, peer: &str, peer_ns: &str) -> Result<(), NetlinkError> {
        let ns_fd = netns::open(peer_ns)?;
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_owned())
            .setns_by_fd(ns_fd.as_raw_fd())
            .build();
        let msg = LinkVeth::new(host, peer).set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg))).build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(self.request("create veth pair", format!("{host} <-> {peer} (in {peer_ns})")))
    }

    /// Sets a link administratively up.
    pub async fn set_up(&self, link: &Iface) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(link.index).up().build())
            .execute()
            .await
            .map_err(self.request("set up link", &link.name))
    }

    /// Sets a link's MTU, unless it already has it.
    pub async fn set_mtu(&self, link: &Iface, mtu: u32) -> Result<(), NetlinkError> {
        if link.mtu == mtu {
            return Ok(());
        }
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(link.index).mtu(mtu).build())
            .execute()
            .await
            .map_err(self.request("set MTU of", format!("{} to {mtu}", link.name)))
    }

    /// Enslaves `link` to the bridge `bridge`.
    pub async fn set_controller(&self, link: &Iface, bridge: &Iface) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(link.index).controller(bridge.index).build())
            .execute()
            .await
            .map_err(self.request("attach link to bridge", format!("{} -> {}", link.name, bridge.name)))
    }

    /// Deletes a link if it exists (deleting one end of a veth deletes both).
    pub async fn del_link(&self, name: &str) -> Result<(), NetlinkError> {
        let Some(link) = self.link(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(link.index).execute().await {
            Err(e) if code(&e) != Some(ENODEV) => Err(self.request("delete link", name)(e)),
            _ => Ok(()),
        }
    }

    /// Adds `ip/prefix` to a link; already present is fine.
    pub async fn add_address(&self, link: &Iface, ip: Ipv4Addr, prefix: u8) -> Result<(), NetlinkError> {
        match self.handle.address().add(link.index, ip.into(), prefix).execute().await {
            Err(e) if code(&e) != Some(EEXIST) => {
                Err(self.request("add address", format!("{ip}/{prefix} to {}", link.name))(e))
            }
            _ => Ok(()),
        }
    }

    /// Adds a default route via `gateway`; an existing default route is fine.
    pub async fn add_default_route(&self, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).build();
        match self.handle.route().add(route).execute().await {
            Err(e) if code(&e) != Some(EEXIST) => {
                Err(self.request("add default route", format!("via {gateway}"))(e))
            }
            _ => Ok(()),
        }
    }
}

impl Netlink {
    /// The IPv4 addresses on `link`, each with its netlink message.
    async fn ipv4_address_messages(
        &self,
        link: &Iface,
    ) -> Result<Vec<(Ipv4Addr, AddressMessage)>, NetlinkError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute()
            .try_collect()
            .await
            .map_err(self.request("list addresses of", &link.name))?;
        Ok(with_ipv4(msgs))
    }

    /// Every IPv4 address of the namespace, on any link.
    pub async fn all_ipv4_addresses(&self) -> Result<Vec<Ipv4Addr>, NetlinkError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(self.request("list addresses of", "the node"))?;
        Ok(with_ipv4(msgs).into_iter().map(|(ip, _)| ip).collect())
    }

    /// The IPv4 addresses on `link`.
    pub async fn ipv4_addresses(&self, link: &Iface) -> Result<Vec<Ipv4Addr>, NetlinkError> {
        Ok(self.ipv4_address_messages(link).await?.into_iter().map(|(ip, _)| ip).collect())
    }

    /// The IPv4 networks `link` is on (its addresses with their prefixes, host bits cleared).
    pub async fn ipv4_networks(&self, link: &Iface) -> Result<Vec<Ipv4Net>, NetlinkError> {
        Ok(self
            .ipv4_address_messages(link)
            .await?
            .into_iter()
            .filter_map(|(ip, m)| Ipv4Net::new(ip, m.header.prefix_len).ok().map(|n| n.trunc()))
            .collect())
    }

    /// Removes the IPv4 addresses of `link` that `keep` refuses; returns them.
    pub async fn del_addresses_except(
        &self,
        link: &Iface,
        keep: impl Fn(Ipv4Addr) -> bool,
    ) -> Result<Vec<Ipv4Addr>, NetlinkError> {
        let mut removed = Vec::new();
        for (ip, msg) in self.ipv4_address_messages(link).await? {
            if keep(ip) {
                continue;
            }
            match self.handle.address().del(msg).execute().await {
                Err(e) if code(&e) != Some(EADDRNOTAVAIL) => {
                    return Err(self.request("delete address", format!("{ip} from {}", link.name))(e));
                }
                _ => removed.push(ip),
            }
        }
        Ok(removed)
    }

    /// Every IPv4 route, of every table.
    async fn ipv4_routes(&self) -> Result<Vec<RouteMessage>, NetlinkError> {
        self.handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(self.request("list routes", "IPv4"))
    }

    /// Whether the main table has a default route via `gateway`.
    pub async fn has_default_route_via(&self, gateway: Ipv4Addr) -> Result<bool, NetlinkError> {
        Ok(self
            .ipv4_routes()
            .await?
            .iter()
            .any(|r| r.header.destination_prefix_length == 0 && route_gateway(r) == Some(gateway)))
    }

    /// The gateway and output device of the main table's route to exactly `cidr`, if it has one.
    pub async fn route_to(
        &self,
        cidr: Ipv4Net,
    ) -> Result<Option<(Option<Ipv4Addr>, Option<u32>)>, NetlinkError> {
        const MAIN: u8 = 254;
        Ok(self.ipv4_routes().await?.iter().find_map(|r| {
            let destination = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let device = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            });
            let exact = r.header.table == MAIN
                && r.header.destination_prefix_length == cidr.prefix_len()
                && destination.unwrap_or(Ipv4Addr::UNSPECIFIED) == cidr.network();
            exact.then(|| (route_gateway(r), device))
        }))
    }

    /// `cidr via gateway dev link`, as podnet installs for every peer node's pods.
    fn peer_route(cidr: Ipv4Net, gateway: Ipv4Addr, link: &Iface) -> RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(cidr.network(), cidr.prefix_len())
            .gateway(gateway)
            .output_interface(link.index)
            .build()
    }

    /// Installs (or replaces) the route to a peer's pod CIDR.
    pub async fn add_peer_route(
        &self,
        cidr: Ipv4Net,
        gateway: Ipv4Addr,
        link: &Iface,
    ) -> Result<(), NetlinkError> {
        self.handle
            .route()
            .add(Self::peer_route(cidr, gateway, link))
            .replace()
            .execute()
            .await
            .map_err(self.request("add route", format!("{cidr} via {gateway} dev {}", link.name)))
    }

    /// Removes the route to a peer's pod CIDR; already gone is fine.
    pub async fn del_peer_route(
        &self,
        cidr: Ipv4Net,
        gateway: Ipv4Addr,
        link: &Iface,
    ) -> Result<(), NetlinkError> {
        match self.handle.route().del(Self::peer_route(cidr, gateway, link)).execute().await {
            Err(e) if code(&e) != Some(ESRCH) => {
                Err(self.request("delete route", format!("{cidr} via {gateway} dev {}", link.name))(e))
            }
            _ => Ok(()),
        }
    }
}

fn iface(msg: &LinkMessage) -> Iface {
    let mut iface = Iface {
        index: msg.header.index,
        name: String::new(),
        mac: [0; 6],
        is_veth: false,
        is_bridge: false,
        mtu: 0,
        peer: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => iface.name.clone_from(name),
            LinkAttribute::Address(mac) if mac.len() == 6 => iface.mac.copy_from_slice(mac),
            LinkAttribute::Mtu(mtu) => iface.mtu = *mtu,
            LinkAttribute::Link(peer) => iface.peer = Some(*peer),
            LinkAttribute::LinkInfo(info) => {
                iface.is_veth = info.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
                iface.is_bridge = info.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge)));
            }
            _ => {}
        }
    }
    iface
}

/// Formats a MAC address the usual way.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// The gateway of route `r`, if it has one.
fn route_gateway(r: &RouteMessage) -> Option<Ipv4Addr> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(gw)) => Some(*gw),
        _ => None,
    })
}

/// The address messages that carry an IPv4 address, with it.
fn with_ipv4(msgs: Vec<AddressMessage>) -> Vec<(Ipv4Addr, AddressMessage)> {
    msgs.into_iter()
        .filter_map(|m| {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            })?;
            Some((ip, m))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn mac_is_colon_hex() {
        assert_eq!(super::fmt_mac(&[0x02, 0xab, 0, 1, 0x10, 0xff]), "02:ab:00:01:10:ff");
    }

    #[test]
    fn errno_constants_are_negated() {
        assert_eq!(super::ENODEV, -libc::ENODEV);
        assert_eq!(super::EEXIST, -libc::EEXIST);
        assert_eq!(super::ESRCH, -libc::ESRCH);
        assert_eq!(super::EADDRNOTAVAIL, -libc::EADDRNOTAVAIL);
    }
}

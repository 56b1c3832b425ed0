//! What `up` finds on the node before it changes anything: the [`Observed`] that
//! [`super::plan`] plans from. Only reads.

use std::net::{SocketAddr, SocketAddrV4, ToSocketAddrs as _};

use tracing::warn;

use super::{
    NodeError,
    ipam::Ipam,
    plan::{FoundBridge, FoundUplink, Observed},
    record::{NodeRecord, RecordFile},
};
use crate::{
    datapath::PinDir,
    host::{netlink::Netlink, netns, sysctl},
    model::Config,
};

/// Reads the node `config` describes, as it is now.
pub async fn observe(config: &Config, nl: &Netlink) -> Result<Observed, NodeError> {
    let node = &config.node;
    let pins = PinDir::for_node(&node.name);
    let up_before = pins.path().exists();
    let records = RecordFile::of(&node.state());
    let record = if up_before { records.load()? } else { NodeRecord::default() };
    let uplink = match &config.uplink {
        None => None,
        Some(settings) => match nl.link(&settings.interface).await? {
            None => None,
            Some(iface) => Some(FoundUplink {
                addresses: nl.ipv4_addresses(&iface).await?,
                networks: nl.ipv4_networks(&iface).await?,
                iface,
            }),
        },
    };
    let bridge = match nl.link(&node.bridge).await? {
        None => None,
        Some(found) => Some(FoundBridge {
            is_bridge: found.is_bridge,
            has_gateway: found.is_bridge && nl.ipv4_addresses(&found).await?.contains(&node.gateway),
        }),
    };
    let ports_reserved = match config.nat.enabled {
        true => sysctl::ports_reserved(config.nat.port_min, config.nat.port_max)?,
        false => false,
    };
    Ok(Observed {
        up_before,
        stale_record: !up_before && records.exists(),
        record,
        uplink,
        bridge,
        ip_forward: sysctl::ip_forward_enabled()?,
        ports_reserved,
        held: Ipam::of(config).held()?,
        links: pins.linked_interfaces(),
        pod_namespaces: config
            .pods
            .iter()
            .filter(|p| netns::exists(&p.netns))
            .map(|p| p.netns.clone())
            .collect(),
        etcd: config.cluster.as_ref().map(|c| etcd_addresses(&c.etcd)).unwrap_or_default(),
        node_addresses: nl.all_ipv4_addresses().await?,
    })
}

/// The IPv4 addresses of etcd client URLs (`http://192.168.50.250:2379`); a name that does not
/// resolve now is said and skipped.
fn etcd_addresses(urls: &[String]) -> Vec<SocketAddrV4> {
    let mut addresses = Vec::new();
    for url in urls {
        let authority = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        match authority.to_socket_addrs() {
            Ok(found) => addresses.extend(found.filter_map(|a| match a {
                SocketAddr::V4(a) => Some(a),
                SocketAddr::V6(_) => None,
            })),
            Err(e) => warn!("cluster.etcd {url}: {e}; pods are not kept from it"),
        }
    }
    addresses
}

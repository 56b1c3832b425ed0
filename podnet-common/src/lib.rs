//! Types and constants shared by podnet's kernel programs (`podnet-ebpf`) and its loader
//! (`podnet`). Everything here is `no_std`, `#[repr(C)]`, `Copy` and free of implicit padding, so
//! both sides agree on the bytes and `bpftool` can print the maps with field names from BTF.
//!
//! - [`maps`]: map names, capacities and layouts (checked against the built object);
//! - [`abi`]: the keys and values, one module per family;
//! - [`reason`]: why a packet was dropped, passed or forwarded (the counters' index);
//! - [`checksum`], [`ports`], [`ipv4`]: arithmetic both sides do the same way.
#![cfg_attr(not(test), no_std)]

pub mod abi;
pub mod checksum;
pub mod ipv4;
pub mod maps;
pub mod ports;
pub mod programs;
pub mod reason;
#[cfg(feature = "user")]
mod user;

pub use abi::{
    conntrack::{CtEntry, CtKey, CtState, FragEntry, FragKey, ct_flags},
    endpoint::{Endpoint, EndpointKey, PodSource, PodStats},
    event::{Event, EventBudget, Pending, events},
    nat::NatConfig,
    route::{
        CachedRoute, DENIED_PORTS_MAX, DeniedPorts, Ipv4LpmData, PEER_NAME_MAX, Peer, RouteKey, admission,
        route_slot,
    },
};
pub use checksum::{checksum_after_replace, checksum_after_ttl_decrement, inet_checksum};
pub use ipv4::{ipv4_lengths_consistent, is_martian_destination, l4_min_len, proto};
pub use maps::PIN_ROOT;
pub use ports::{port_search_offset, port_search_start};
pub use reason::{DropReason, Kind, PassReason, Reason, RedirectReason};

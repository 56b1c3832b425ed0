//! `aya::Pod` for the map types, so the loader can read and write maps with them (feature
//! `user`).

use crate::{
    CtEntry, CtKey, DeniedPorts, Endpoint, EndpointKey, Event, EventBudget, NatConfig, Peer, Pending,
    PodSource, PodStats,
};

// SAFETY: `EndpointKey` is `#[repr(C)]`, `Copy`, made only of `u8`s: every bit pattern is valid
// and there is no padding.
unsafe impl aya::Pod for EndpointKey {}
// SAFETY: `Endpoint` is `#[repr(C)]`, `Copy`, made of integers and byte arrays laid out without
// padding (see its layout note): every bit pattern is valid.
unsafe impl aya::Pod for Endpoint {}
// SAFETY: `PodSource` is `#[repr(C)]`, `Copy`, integers and bytes without padding.
unsafe impl aya::Pod for PodSource {}
// SAFETY: `PodStats` is `#[repr(C)]`, `Copy`, four `u64`s.
unsafe impl aya::Pod for PodStats {}
// SAFETY: `Event` is `#[repr(C)]`, `Copy`, integers and bytes with explicit padding.
unsafe impl aya::Pod for Event {}
// SAFETY: `EventBudget` is `#[repr(C)]`, `Copy`, two `u64`s.
unsafe impl aya::Pod for EventBudget {}
// SAFETY: `Pending` is `#[repr(C)]`, `Copy`, an `Event` and two 4-byte integers, no padding.
unsafe impl aya::Pod for Pending {}
// SAFETY: `Peer` is `#[repr(C)]`, `Copy`, made only of byte arrays: no padding, every bit
// pattern valid.
unsafe impl aya::Pod for Peer {}
// SAFETY: `DeniedPorts` is `#[repr(C)]`, `Copy`, eight `u16`s and two bytes, no padding: every
// bit pattern is valid.
unsafe impl aya::Pod for DeniedPorts {}
// SAFETY: `NatConfig` is `#[repr(C)]`, `Copy`, integers and bytes without padding.
unsafe impl aya::Pod for NatConfig {}
// SAFETY: `CtKey` is `#[repr(C)]`, `Copy`, integers and bytes with explicit padding.
unsafe impl aya::Pod for CtKey {}
// SAFETY: `CtEntry` is `#[repr(C)]`, `Copy`, integers and bytes with explicit padding.
unsafe impl aya::Pod for CtEntry {}

//! The bytes both sides agree on: one module per family of map keys and values. Every type is
//! `#[repr(C)]`, `Copy` and free of implicit padding (explicit `_pad` fields), with its size
//! asserted when this crate compiles, for the host and for BPF alike.

pub mod conntrack;
pub mod endpoint;
pub mod event;
pub mod nat;
pub mod route;

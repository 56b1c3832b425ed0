//! The checks `cargo xtask lint` runs beyond rustfmt and clippy, as a library so that the test
//! suite can show each one catching what it is for:
//! - [`abi`]: the built kernel object's pinned maps against podnet-common's layouts and the
//!   recorded fingerprints (a changed map needs a layout version bump);
//! - [`builtins`]: no memory-builtin calls in the kernel object;
//! - [`modules`]: no import cycles between podnet's top-level modules.

pub mod abi;
pub mod builtins;
pub mod modules;

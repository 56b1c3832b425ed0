//! Embeds the kernel programs built by `cargo xtask build-ebpf` into the podnet binary. Without
//! them (a unit-test build on a machine without the eBPF toolchain) an empty object is embedded,
//! with a warning: everything but loading the programs works, and loading says what to build.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = manifest.join("../target/ebpf/podnet.bpf.o");
    println!("cargo:rerun-if-changed={}", object.display());
    let embedded = if object.exists() {
        object
    } else {
        println!(
            "cargo:warning=the eBPF object {} is missing: this build embeds none and cannot load \
             the datapath (build it with `cargo xtask build-ebpf`, or `cargo xtask build`)",
            object.display()
        );
        let empty = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("no-ebpf.o");
        std::fs::write(&empty, []).expect("OUT_DIR is writable");
        empty
    };
    println!("cargo:rustc-env=PODNET_EBPF_OBJECT={}", embedded.display());
}

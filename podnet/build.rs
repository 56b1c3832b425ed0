//! Embeds the kernel programs built by `cargo xtask build-ebpf` into the podnet binary.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = manifest.join("../target/ebpf/podnet.bpf.o");
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.exists() {
        panic!(
            "\n\nThe eBPF object {} is missing.\nBuild it first with `cargo xtask build-ebpf` \
             (or run `cargo xtask build`).\n\n",
            object.display()
        );
    }
    println!("cargo:rustc-env=PODNET_EBPF_OBJECT={}", object.display());
}

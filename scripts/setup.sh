#!/usr/bin/env bash
# Installs everything podnet needs to build, test, demo and benchmark, and nothing twice.
# Idempotent: on a machine that already has it all it finishes in about a second.
#
#   - the pinned stable toolchain (userspace) and pinned nightly with rust-src (eBPF);
#   - bpf-linker, built against the nightly's own libLLVM;
#   - Debian packages used by tests, the demo and the benchmark.
set -euo pipefail

STABLE=1.99.1
NIGHTLY=nightly-2026-10-29
BPF_LINKER_VERSION=0.13.0
# podman (with runc, its CNI backend and busybox-static for an offline image): the CNI tests.
# etcd-server and etcd-client: the cluster tests (openssl makes their TLS certificates);
# protobuf-compiler: protoc, which the etcd client crate needs at build time; prometheus (with
# promtool): the metrics tests; netsniff-ng (trafgen): the benchmark's packet-rate flood.
APT_PACKAGES=(bpftool iperf3 sockperf iptables nftables iproute2 iputils-ping tcpdump ethtool conntrack curl python3
  podman runc busybox-static util-linux
  etcd-server etcd-client protobuf-compiler libprotobuf-dev openssl prometheus netsniff-ng)

say() { printf '\033[1msetup:\033[0m %s\n' "$*"; }

have_toolchain() { rustup toolchain list | grep -q "^$1"; }

if ! have_toolchain "$STABLE"; then
  say "installing Rust $STABLE (userspace)"
  rustup toolchain install "$STABLE" --profile minimal --component clippy,rustfmt
fi
if ! have_toolchain "$NIGHTLY" || ! rustup +"$NIGHTLY" component list --installed | grep -q '^rust-src'; then
  say "installing Rust $NIGHTLY with rust-src (eBPF)"
  rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src,rustfmt,clippy
fi

# bpf-linker links against libLLVM; the nightly ships one, found through a stable prefix whose
# lib/ points into the nightly's sysroot: libLLVM.so for the build, and the library's own soname
# for the binary at run time (it keeps an rpath to that lib/ folder).
cargo_home=${CARGO_HOME:-$HOME/.cargo}
llvm_prefix="$cargo_home/podnet-llvm/$NIGHTLY"
sysroot=$(rustc +"$NIGHTLY" --print sysroot)
libllvm=$(find "$sysroot/lib" -maxdepth 1 -name 'libLLVM.so.*' | head -n 1)
[ -n "$libllvm" ] || { echo "setup: no libLLVM in $sysroot/lib; is $NIGHTLY complete?" >&2; exit 1; }
mkdir -p "$llvm_prefix/lib"
ln -sfn "$libllvm" "$llvm_prefix/lib/libLLVM.so"
ln -sfn "$libllvm" "$llvm_prefix/lib/$(basename "$libllvm")"
if ! "$cargo_home/bin/bpf-linker" --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  say "building bpf-linker $BPF_LINKER_VERSION against $libllvm (about a minute)"
  LLVM_PREFIX="$llvm_prefix" cargo +"$NIGHTLY" install bpf-linker --version "$BPF_LINKER_VERSION" --locked --force
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bpffs: podnet pins its maps and links here.
if ! mountpoint -q /sys/fs/bpf; then
  say "mounting bpffs at /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi

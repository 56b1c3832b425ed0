//! podnet's build, test, demo and benchmark drivers: `cargo xtask --help`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// Developer tasks for podnet. `demo` and `test` install whatever is missing first
/// (scripts/setup.sh: pinned toolchains, bpf-linker, Debian packages, bpffs), so each is the one
/// command to run on a fresh machine. Run them as root: they build network namespaces.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what is missing: Rust toolchains, bpf-linker, Debian packages; mount bpffs.
    Setup,
    /// Build the kernel programs into target/ebpf/podnet.bpf.o (embedded by the podnet binary).
    BuildEbpf {
        /// Build with the release profile (both profiles are optimised; release has one codegen unit).
        #[arg(long)]
        release: bool,
    },
    /// Build the kernel programs and the podnet CLI.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// rustfmt check and clippy -D warnings on both halves (userspace and eBPF).
    Lint,
    /// Install, build, lint and run every test (unit, BPF_PROG_TEST_RUN, end-to-end).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install, build and run the demo: a node with pods in namespaces, traffic through podnet.
    Demo,
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned();
    match Cli::parse().task {
        Task::Setup => setup(&root),
        Task::BuildEbpf { release } => build_ebpf(&root, release),
        Task::Build { release } => build(&root, release),
        Task::Lint => {
            build_ebpf(&root, false)?;
            lint(&root)
        }
        Task::Test { args } => {
            setup(&root)?;
            build(&root, false)?;
            lint(&root)?;
            run(cargo(&root)
                .args(["test", "--workspace"])
                .args(&args)
                .env("PODNET_BIN", podnet_bin(&root, false)))
        }
        Task::Demo => {
            setup(&root)?;
            build(&root, false)?;
            run(cargo(&root)
                .args(["run", "--quiet", "-p", "podnet-tests", "--bin", "podnet-demo"])
                .env("PODNET_BIN", podnet_bin(&root, false)))
        }
    }
}

fn step(what: &str) {
    eprintln!("\x1b[1mxtask:\x1b[0m {what}");
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// `cargo` for the userspace workspace, on its pinned toolchain.
fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root);
    cmd
}

fn setup(root: &Path) -> anyhow::Result<()> {
    step("checking toolchains, bpf-linker and packages (scripts/setup.sh)");
    run(Command::new("bash").arg(root.join("scripts/setup.sh")))
}

/// `cargo` in podnet-ebpf, whose rust-toolchain.toml selects the pinned nightly. The variables
/// rustup and cargo set for this xtask process would force the userspace toolchain, so they go.
fn ebpf_cargo(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root.join("podnet-ebpf"));
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTDOC",
        "CARGO",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn build_ebpf(root: &Path, release: bool) -> anyhow::Result<()> {
    step("building the eBPF programs (podnet-ebpf)");
    let mut cmd = ebpf_cargo(root);
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    let profile = if release { "release" } else { "debug" };
    let built = root
        .join("podnet-ebpf/target/bpfel-unknown-none")
        .join(profile)
        .join("podnet");
    let object = root.join("target/ebpf/podnet.bpf.o");
    std::fs::create_dir_all(object.parent().expect("has a parent"))?;
    std::fs::copy(&built, &object)
        .with_context(|| format!("copy {} to {}", built.display(), object.display()))?;
    Ok(())
}

fn podnet_bin(root: &Path, release: bool) -> PathBuf {
    root.join("target")
        .join(if release { "release" } else { "debug" })
        .join("podnet")
}

fn build(root: &Path, release: bool) -> anyhow::Result<()> {
    build_ebpf(root, release)?;
    step("building podnet");
    let mut cmd = cargo(root);
    cmd.args(["build", "--workspace", "--all-targets"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)
}

fn lint(root: &Path) -> anyhow::Result<()> {
    step("rustfmt --check and clippy -D warnings (userspace)");
    run(cargo(root).args(["fmt", "--all", "--check"]))?;
    run(cargo(root).args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    step("rustfmt --check and clippy -D warnings (eBPF)");
    run(ebpf_cargo(root).args(["fmt", "--check"]))?;
    run(ebpf_cargo(root).args(["clippy", "--", "-D", "warnings"]))
}

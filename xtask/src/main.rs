//! podnet's build, test, demo and benchmark drivers: `cargo xtask --help`.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// Developer tasks for podnet. On a fresh machine run them through `./x TASK`, which first
/// installs what is missing (scripts/setup.sh: pinned toolchains, bpf-linker, Debian packages,
/// bpffs). Run as root: the demo, tests and benchmark build network namespaces.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
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
    /// rustfmt check and clippy -D warnings on both halves (userspace and eBPF); no calls to
    /// memset/memcpy/memmove/memcmp in the kernel object (byte loops on the fast path); the
    /// object's pinned maps as podnet-common's layouts and podnet-common/abi.txt say (a changed
    /// map needs a layout version bump); no import cycles between podnet's modules.
    Lint,
    /// Print the fingerprints of the kernel object's pinned maps (what `lint` checks against
    /// podnet-common/abi.txt); `--write` records them there, after a layout version bump.
    Abi {
        #[arg(long)]
        write: bool,
    },
    /// Build, lint and run every test (unit, BPF_PROG_TEST_RUN, end-to-end).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build and run the demo: a node with pods in namespaces, traffic through podnet.
    Demo,
    /// Benchmark podnet against the iptables/bridge recipe and the veth limit (release build).
    /// Arguments go to the harness: --quick, --paths, --reps, --seconds, --json, --svg.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let root =
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned();
    match Cli::parse().task {
        Task::BuildEbpf { release } => build_ebpf(&root, release),
        Task::Build { release } => build(&root, release),
        Task::Lint => {
            build_ebpf(&root, false)?;
            lint(&root)
        }
        Task::Abi { write } => {
            build_ebpf(&root, false)?;
            abi(&root, write)
        }
        Task::Test { args } => {
            build(&root, false)?;
            lint(&root)?;
            test(
                cargo(&root)
                    .args(["test", "--workspace", "--no-fail-fast"])
                    .args(&args)
                    .env("PODNET_BIN", podnet_bin(&root, false)),
            )
        }
        Task::Demo => {
            build(&root, false)?;
            run(cargo(&root)
                .args(["run", "--quiet", "-p", "podnet-tests", "--bin", "podnet-demo"])
                .env("PODNET_BIN", podnet_bin(&root, false)))
        }
        Task::Bench { args } => {
            build(&root, true)?;
            run(Command::new(root.join("target/release/podnet-bench"))
                .current_dir(&root)
                .args(&args)
                .env("PODNET_BIN", podnet_bin(&root, true)))
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

/// Runs `cargo test`, echoing its output, and closes with one line totalling every test binary's
/// "test result:" line, so the run ends on the whole suite's count rather than the last binary's.
fn test(cmd: &mut Command) -> anyhow::Result<()> {
    let mut child = cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("cannot start {cmd:?}"))?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            let count = |what: &str| {
                result
                    .split(';')
                    .find_map(|part| {
                        part.trim().strip_suffix(what)?.trim().rsplit(' ').next()?.parse::<u64>().ok()
                    })
                    .unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
            ignored += count("ignored");
        }
    }
    let status = child.wait()?;
    println!("\ntests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() || failed > 0 {
        bail!("tests failed ({status})");
    }
    Ok(())
}

/// `cargo` for the userspace workspace, on its pinned toolchain.
fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root);
    cmd
}

/// `cargo` in podnet-ebpf, whose rust-toolchain.toml selects the pinned nightly. The variables
/// rustup and cargo set for this xtask process would force the userspace toolchain, so they go.
fn ebpf_cargo(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root.join("podnet-ebpf"));
    for var in ["RUSTUP_TOOLCHAIN", "RUSTC", "RUSTC_WRAPPER", "RUSTDOC", "CARGO", "CARGO_TARGET_DIR"] {
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
    let built = root.join("podnet-ebpf/target/bpfel-unknown-none").join(profile).join("podnet");
    let object = root.join("target/ebpf/podnet.bpf.o");
    std::fs::create_dir_all(object.parent().expect("has a parent"))?;
    std::fs::copy(&built, &object)
        .with_context(|| format!("copy {} to {}", built.display(), object.display()))?;
    Ok(())
}

fn podnet_bin(root: &Path, release: bool) -> PathBuf {
    root.join("target").join(if release { "release" } else { "debug" }).join("podnet")
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
    run(ebpf_cargo(root).args(["clippy", "--", "-D", "warnings"]))?;
    step("no memory-builtin calls in the kernel object");
    let object = root.join(OBJECT);
    let calls = xtask::builtins::builtin_calls(
        &std::fs::read(&object).with_context(|| format!("read {}", object.display()))?,
    )?;
    if !calls.is_empty() {
        bail!(
            "{} calls a memory builtin (a byte loop in BPF), at:\n  {}\nWrite the fields one by one, \
             or use word-sized volatile stores (see `routing::zeroed`); \
             `llvm-objdump -dr target/ebpf/podnet.bpf.o` shows where",
            object.display(),
            calls.join("\n  ")
        );
    }
    step("the object's pinned maps against podnet-common's layouts and podnet-common/abi.txt");
    let problems = xtask::abi::check(&object, &root.join(xtask::abi::ABI_FILE))?;
    if !problems.is_empty() {
        bail!("the map ABI does not hold:\n  {}", problems.join("\n  "));
    }
    step("no import cycles between podnet's modules");
    let cycles = xtask::modules::cycles(&xtask::modules::graph(&root.join("podnet/src"))?);
    if !cycles.is_empty() {
        let cycles: Vec<String> = cycles.iter().map(|c| c.join(" -> ")).collect();
        bail!("podnet's modules import each other in a circle:\n  {}", cycles.join("\n  "));
    }
    Ok(())
}

/// The kernel object `build-ebpf` makes, relative to the workspace root.
const OBJECT: &str = "target/ebpf/podnet.bpf.o";

/// Prints the pinned maps' fingerprints; with `write`, records them in podnet-common/abi.txt.
fn abi(root: &Path, write: bool) -> anyhow::Result<()> {
    let maps = xtask::abi::object_maps(&root.join(OBJECT))?;
    let text = xtask::abi::record(&maps, &podnet_common::maps::LAYOUTS);
    if write {
        let path = root.join(xtask::abi::ABI_FILE);
        std::fs::write(&path, &text).with_context(|| format!("write {}", path.display()))?;
        step(&format!("recorded in {}", path.display()));
    } else {
        print!("{text}");
    }
    Ok(())
}

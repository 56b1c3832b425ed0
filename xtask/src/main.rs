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
    /// rustfmt check and clippy -D warnings on both halves (userspace and eBPF), and no calls to
    /// memset/memcpy/memmove/memcmp in the kernel object (byte loops on the fast path).
    Lint,
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
    let object = root.join("target/ebpf/podnet.bpf.o");
    let calls =
        builtin_calls(&std::fs::read(&object).with_context(|| format!("read {}", object.display()))?)?;
    if !calls.is_empty() {
        bail!(
            "{} calls a memory builtin (a byte loop in BPF), at:\n  {}\nWrite the fields one by one, \
             or use word-sized volatile stores (see `routing::zeroed`); \
             `llvm-objdump -dr target/ebpf/podnet.bpf.o` shows where",
            object.display(),
            calls.join("\n  ")
        );
    }
    Ok(())
}

/// The memory builtins LLVM calls for copies, fills and comparisons it does not unroll: in BPF
/// they are byte-at-a-time loops, and a call makes the verifier walk them once per byte.
const MEMORY_BUILTINS: [&str; 5] = ["memset", "memcpy", "memmove", "memcmp", "bcmp"];

/// Every relocation in the kernel object `elf` that calls a memory builtin, as
/// "program+offset -> builtin".
fn builtin_calls(elf: &[u8]) -> anyhow::Result<Vec<String>> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};
    let file = object::File::parse(elf).context("parse the kernel object")?;
    let mut calls = Vec::new();
    for section in file.sections().filter(|s| s.kind() == object::SectionKind::Text) {
        for (offset, relocation) in section.relocations() {
            let RelocationTarget::Symbol(index) = relocation.target() else {
                continue;
            };
            let name = file.symbol_by_index(index)?.name()?;
            if !MEMORY_BUILTINS.contains(&name) {
                continue;
            }
            // Named by the program (function symbol) the call sits in.
            let caller = file.symbols().find(|f| {
                f.section_index() == Some(section.index())
                    && f.kind() == object::SymbolKind::Text
                    && (f.address()..f.address() + f.size()).contains(&offset)
            });
            let (caller, at) = match caller {
                Some(f) => (f.name()?, offset - f.address()),
                None => (section.name()?, offset),
            };
            calls.push(format!("{caller}+{at:#x} -> {name}"));
        }
    }
    Ok(calls)
}

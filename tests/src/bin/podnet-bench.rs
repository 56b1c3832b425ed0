//! `cargo xtask bench`: podnet against the iptables/bridge recipe and the veth limit, in one run.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use podnet_tests::bench::{self, Path, Settings};

/// Builds the limit, the recipe and podnet side by side in namespaces, measures each with iperf3,
/// sockperf and conn-rate (repetitions interleaved), prints medians and ratios, and writes JSON
/// and an SVG chart. Run as root; it takes minutes (use --quick for a smoke run).
#[derive(Debug, Parser)]
#[command(name = "podnet-bench")]
struct Cli {
    /// Smoke run: 1 repetition of 1 s runs, fewer BPF_PROG_TEST_RUN repeats (about 3 minutes).
    #[arg(long)]
    quick: bool,
    /// Only the BPF_PROG_TEST_RUN per-packet costs of the programs (no paths, no flood; seconds).
    #[arg(long)]
    costs_only: bool,
    /// Only the BPF_PROG_TEST_RUN figures whose names contain this (e.g. "NAT established").
    #[arg(long, value_name = "TEXT")]
    case: Option<String>,
    /// Paths to measure, comma-separated: same-node, cross-node, nat.
    #[arg(long, value_delimiter = ',', default_value = "same-node,cross-node,nat")]
    paths: Vec<String>,
    /// Interleaved repetitions (default 3, or 1 with --quick).
    #[arg(long)]
    reps: Option<u32>,
    /// Seconds per tool run (default 5, or 1 with --quick).
    #[arg(long)]
    seconds: Option<u32>,
    /// Write the full report as JSON here.
    #[arg(long, default_value = "target/bench/bench.json")]
    json: PathBuf,
    /// Write the bar chart here.
    #[arg(long, default_value = "target/bench/bench.svg")]
    svg: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let paths = cli
        .paths
        .iter()
        .map(|p| {
            Path::parse(p).with_context(|| format!("unknown path {p:?}; known: same-node, cross-node, nat"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let settings = Settings {
        paths: if cli.costs_only { Vec::new() } else { paths },
        flood: !cli.costs_only,
        reps: cli.reps.unwrap_or(if cli.quick { 1 } else { 3 }),
        tcp_fast_runs: if cli.quick { 0 } else { 3 },
        seconds: cli.seconds.unwrap_or(if cli.quick { 1 } else { 5 }),
        cost_repeat: if cli.quick { 100_000 } else { 1_000_000 },
        cost_case: cli.case,
    };
    let report = bench::run(&settings)?;
    println!("{}", report.table());
    for (path, text) in [(&cli.json, serde_json::to_string_pretty(&report.json())?), (&cli.svg, report.svg())]
    {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    println!("took {:.0} s", report.elapsed_seconds);
    Ok(())
}

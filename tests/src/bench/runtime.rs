//! What podnet's programs cost per run under real load, not only in `BPF_PROG_TEST_RUN`: the
//! kernel's run-time statistics (`run_time_ns`, `run_cnt` per program), read before and after a
//! measured run. They are switched on for the benchmark with `BPF_ENABLE_STATS`, which holds
//! them on only while its file descriptor is open: no sysctl to set and restore, and a benchmark
//! that dies leaves them off.

use std::{collections::BTreeMap, os::fd::OwnedFd, path::PathBuf, process::Command};

use anyhow::Context as _;
use serde::Serialize;

use super::{Path, Setup};

/// Run-time statistics, on while this lives (closing the descriptor turns them off).
pub struct Enabled {
    _fd: OwnedFd,
}

/// Turns the kernel's BPF run-time statistics on until the returned value is dropped.
pub fn enable() -> anyhow::Result<Enabled> {
    Ok(Enabled { _fd: aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")? })
}

/// One program's runs during one measured run of one setup.
#[derive(Debug, Clone, Serialize)]
pub struct Runtime {
    pub path: Path,
    pub setup: Setup,
    pub program: String,
    pub runs: u64,
    pub ns_per_run: f64,
}

/// Run time (ns) and runs per program name, summed over the programs attached under `pin_dirs`
/// (the `links` pins of each podnet node of a setup).
pub fn snapshot(pin_dirs: &[PathBuf]) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    let mut totals: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for dir in pin_dirs {
        for link in
            std::fs::read_dir(dir.join("links")).with_context(|| format!("links of {}", dir.display()))?
        {
            let link = link?.path();
            let link = bpftool(&["link", "show", "pinned", link.to_str().context("utf-8 path")?])?;
            let id = link["prog_id"].as_u64().context("bpftool link: prog_id")?;
            let prog = bpftool(&["prog", "show", "id", &id.to_string()])?;
            let name = prog["name"].as_str().context("bpftool prog: name")?.to_owned();
            let entry = totals.entry(name).or_default();
            entry.0 += prog["run_time_ns"].as_u64().unwrap_or(0);
            entry.1 += prog["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    Ok(totals)
}

/// Per program: the runs between two snapshots and their mean run time.
pub fn between(
    path: Path,
    setup: Setup,
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
) -> Vec<Runtime> {
    after
        .iter()
        .filter_map(|(program, &(ns, runs))| {
            let (ns0, runs0) = before.get(program).copied().unwrap_or_default();
            let runs = runs.saturating_sub(runs0);
            (runs > 0).then(|| Runtime {
                path,
                setup,
                program: program.clone(),
                runs,
                ns_per_run: ns.saturating_sub(ns0) as f64 / runs as f64,
            })
        })
        .collect()
}

fn bpftool(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = crate::run(Command::new("bpftool").arg("-j").args(args))?;
    serde_json::from_slice(&out.stdout).with_context(|| format!("bpftool {args:?}: not JSON"))
}

//! `cargo xtask bench`: podnet against the classic iptables/bridge recipe and the kernel's limit,
//! all built in one run inside namespaces, measured with real tools, repetitions interleaved
//! (limit, recipe, podnet, limit, recipe, podnet, ...) so that drift on a shared machine hits
//! every setup alike. See ../../../BENCHMARKS.md for what the numbers mean and their traps.

pub mod cost;
pub mod flood;
pub mod report;
pub mod runtime;
pub mod setups;
pub mod tools;

use std::time::Instant;

use serde::Serialize;

use crate::Lab;
pub use report::Report;
pub use setups::{Path, Setup};
pub use tools::{Metric, Run};

/// The extra TCP 1 stream runs a setup may take for its fast-mode runs.
const FAST_MODE_ATTEMPTS: usize = 8;

/// How long and how often to measure.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub paths: Vec<Path>,
    /// Whether to measure the deny-listed flood.
    pub flood: bool,
    /// Interleaved repetitions of every (setup, metric).
    pub reps: u32,
    /// Fast-mode TCP 1 stream runs each setup should have: extra runs are made until it does
    /// (at most [`FAST_MODE_ATTEMPTS`]).
    pub tcp_fast_runs: usize,
    /// Length of each iperf3 / sockperf / connect-rate run.
    pub seconds: u32,
    /// `BPF_PROG_TEST_RUN` repetitions per program cost figure.
    pub cost_repeat: u32,
    /// Only the cost figures whose packet names contain this.
    pub cost_case: Option<String>,
}

/// Builds every setup of every path, measures, tears down, and returns the samples.
pub fn run(settings: &Settings) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut report = Report::new(settings.clone());
    let mut lab = Lab::new("bench")?;
    let mut targets = Vec::new();
    for &path in &settings.paths {
        for setup in Setup::ALL {
            eprintln!("bench: building {} / {}", path.name(), setup.name());
            if let Some(target) = setups::build(&mut lab, path, setup)? {
                targets.push((path, setup, target));
            }
        }
    }
    let runs = |path: Path| Run::ALL.into_iter().filter(move |run| run.applies_to(path));
    let total = settings.reps as usize * targets.iter().map(|(path, ..)| runs(*path).count()).sum::<usize>();
    let mut done = 0;
    for rep in 1..=settings.reps {
        for run in Run::ALL {
            for (path, setup, target) in targets.iter().filter(|(path, ..)| run.applies_to(*path)) {
                done += 1;
                let values = tools::measure(target, run, settings.seconds)?;
                // The run-time statistics cost two clock reads per program run, which would slow
                // the figure they describe: a flood of its own, with them on, is what they time.
                if run == Run::Flood && !target.pins.is_empty() {
                    let (_on, before) = (runtime::enable()?, runtime::snapshot(&target.pins)?);
                    tools::measure(target, run, settings.seconds)?;
                    let after = runtime::snapshot(&target.pins)?;
                    report.runtimes.extend(runtime::between(*path, *setup, &before, &after));
                }
                let shown: Vec<String> =
                    values.iter().map(|(m, v)| format!("{} {:.2} {}", m.name(), v, m.unit())).collect();
                eprintln!(
                    "bench: [{done}/{total}] rep {rep} {} {:<6} {}",
                    path.name(),
                    setup.name(),
                    shown.join(", ")
                );
                for (metric, value) in values {
                    report.add(*path, *setup, metric, value);
                }
            }
        }
    }
    // Single TCP streams are bimodal here: run more of them until every setup has enough
    // fast-mode runs for a median of its own (or the attempts run out).
    for (path, setup, target) in &targets {
        for _ in 0..FAST_MODE_ATTEMPTS {
            if report.count(*path, Metric::Tcp1StreamFast, *setup) >= settings.tcp_fast_runs {
                break;
            }
            let values = tools::measure(target, Run::Tcp1, settings.seconds)?;
            eprintln!("bench: extra TCP 1 stream run {} {:<6} {values:?}", path.name(), setup.name());
            // Only in the per-mode figures: the overall ones keep the interleaved runs alone.
            for (metric, value) in values {
                if matches!(metric, Metric::Tcp1StreamFast | Metric::Tcp1StreamSlow) {
                    report.add(*path, *setup, metric, value);
                }
            }
        }
    }
    if settings.flood {
        eprintln!("bench: deny-listed flood, {} s per dropper", settings.seconds);
        report.floods = flood::measure(&mut lab, settings.seconds)?;
    }
    drop(lab);
    eprintln!("bench: BPF_PROG_TEST_RUN per-packet cost ({} runs each)", settings.cost_repeat);
    report.costs = cost::measure(settings.cost_repeat, settings.cost_case.as_deref())?;
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

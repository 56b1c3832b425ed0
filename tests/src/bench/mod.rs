//! `cargo xtask bench`: podnet against the classic iptables/bridge recipe and the kernel's limit,
//! all built in one run inside namespaces, measured with real tools, repetitions interleaved
//! (limit, recipe, podnet, limit, recipe, podnet, ...) so that drift on a shared machine hits
//! every setup alike. See ../../../BENCHMARKS.md for what the numbers mean and their traps.

pub mod cost;
pub mod flood;
pub mod report;
pub mod setups;
pub mod tools;

use std::time::Instant;

use serde::Serialize;

use crate::Lab;
pub use report::Report;
pub use setups::{Path, Setup};
pub use tools::{Metric, Run};

/// How long and how often to measure.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub paths: Vec<Path>,
    /// Whether to measure the deny-listed flood.
    pub flood: bool,
    /// Interleaved repetitions of every (setup, metric).
    pub reps: u32,
    /// Length of each iperf3 / sockperf / connect-rate run.
    pub seconds: u32,
    /// `BPF_PROG_TEST_RUN` repetitions per program cost figure.
    pub cost_repeat: u32,
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
    if settings.flood {
        eprintln!("bench: deny-listed flood, {} s per dropper", settings.seconds);
        report.floods = flood::measure(&mut lab, settings.seconds)?;
    }
    drop(lab);
    eprintln!("bench: BPF_PROG_TEST_RUN per-packet cost ({} runs each)", settings.cost_repeat);
    report.costs = cost::measure(settings.cost_repeat)?;
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

//! Medians, ratios, the printed table, JSON and an SVG bar chart of one benchmark run.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use super::{Path, Settings, Setup, cost::Cost, flood::Flood, runtime::Runtime, tools::Metric};

/// Every sample of one run.
#[derive(Debug, Serialize)]
pub struct Report {
    pub settings: Settings,
    pub elapsed_seconds: f64,
    pub costs: Vec<Cost>,
    pub floods: Vec<Flood>,
    /// podnet's programs under the many-flow flood, one entry per program and run.
    pub runtimes: Vec<Runtime>,
    #[serde(skip)]
    samples: BTreeMap<(Path, Metric, Setup), Vec<f64>>,
}

/// Median and range of one (path, metric, setup).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

fn stat(values: &[f64]) -> Stat {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Stat { median, min: v[0], max: v[n - 1] }
}

impl Report {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            elapsed_seconds: 0.0,
            costs: Vec::new(),
            floods: Vec::new(),
            runtimes: Vec::new(),
            samples: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, path: Path, setup: Setup, metric: Metric, value: f64) {
        self.samples.entry((path, metric, setup)).or_default().push(value);
    }

    /// How many samples of (path, metric, setup) there are.
    pub fn count(&self, path: Path, metric: Metric, setup: Setup) -> usize {
        self.samples.get(&(path, metric, setup)).map_or(0, Vec::len)
    }

    pub fn stat(&self, path: Path, metric: Metric, setup: Setup) -> Option<Stat> {
        self.samples.get(&(path, metric, setup)).map(|v| stat(v))
    }

    fn metrics(&self, path: Path) -> Vec<Metric> {
        let mut metrics: Vec<Metric> = self.samples.keys().filter(|k| k.0 == path).map(|k| k.1).collect();
        metrics.dedup();
        metrics
    }

    /// `num / den` of the medians.
    pub fn ratio(&self, path: Path, metric: Metric, num: Setup, den: Setup) -> Option<f64> {
        let num = self.stat(path, metric, num)?.median;
        let den = self.stat(path, metric, den)?.median;
        (den != 0.0).then(|| num / den)
    }

    /// The human-readable report: per path, medians (min-max) and ratios.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let s = &self.settings;
        let _ = writeln!(
            out,
            "{} interleaved repetition(s) of {} s runs; TCP cubic; iperf3 (TCP and UDP) and ping-pong \
             with client and server pinned to CPU {}, connect rate unpinned; medians (min-max)\n",
            s.reps,
            s.seconds,
            super::tools::CPU
        );
        for &path in &s.paths {
            let setups: Vec<Setup> = Setup::ALL
                .into_iter()
                .filter(|&st| self.samples.keys().any(|k| k.0 == path && k.2 == st))
                .collect();
            let xdp: Vec<Setup> = setups.iter().copied().filter(|st| st.xdp_mode().is_some()).collect();
            let _ = writeln!(out, "path: {}", path.name());
            let mut header: Vec<String> = ["metric", "unit"].map(String::from).to_vec();
            header.extend(setups.iter().map(|st| st.name().to_owned()));
            header.extend(["podnet/recipe", "podnet/limit"].map(String::from));
            header.extend(xdp.iter().map(|st| format!("{}/podnet", st.name())));
            let _ = writeln!(out, "| {} |\n|{}", header.join(" | "), "---|".repeat(header.len()));
            for metric in self.metrics(path) {
                let mut row = vec![metric.name().to_owned(), metric.unit().to_owned()];
                row.extend(setups.iter().map(|&setup| {
                    self.stat(path, metric, setup)
                        .map(|st| format!("{:.2} ({:.2}-{:.2})", st.median, st.min, st.max))
                        .unwrap_or_else(|| "-".into())
                }));
                let ratio =
                    |num, den| self.ratio(path, metric, num, den).map_or("-".into(), |r| format!("{r:.2}x"));
                row.push(ratio(Setup::Podnet, Setup::Recipe));
                row.push(ratio(Setup::Podnet, Setup::Limit));
                row.extend(xdp.iter().map(|&st| ratio(st, Setup::Podnet)));
                let _ = writeln!(out, "| {} |", row.join(" | "));
            }
            out.push('\n');
        }
        if !self.floods.is_empty() {
            let _ = writeln!(
                out,
                "deny-listed flood (64 B UDP from one external host to a pod, {} s):\n| dropper | sent kpps | dropped kpps | CPU idle % |\n|---|---|---|---|",
                s.seconds
            );
            for f in &self.floods {
                let _ = writeln!(
                    out,
                    "| {} | {:.1} | {:.1} | {:.1} |",
                    f.dropper, f.sent_kpps, f.dropped_kpps, f.cpu_idle_percent
                );
            }
            out.push('\n');
        }
        if !self.runtimes.is_empty() {
            let _ = writeln!(
                out,
                "program run time under the 1000-flow flood (kernel BPF statistics, all runs):\n\
                 | path | setup | program | runs | ns/run |\n|---|---|---|---|---|"
            );
            let mut totals: BTreeMap<(Path, Setup, &str), (f64, u64)> = BTreeMap::new();
            for r in &self.runtimes {
                let t = totals.entry((r.path, r.setup, r.program.as_str())).or_default();
                t.0 += r.ns_per_run * r.runs as f64;
                t.1 += r.runs;
            }
            for ((path, setup, program), (ns, runs)) in totals {
                let _ = writeln!(
                    out,
                    "| {} | {} | {program} | {runs} | {:.1} |",
                    path.name(),
                    setup.name(),
                    ns / runs as f64
                );
            }
            out.push('\n');
        }
        let _ = writeln!(out, "BPF_PROG_TEST_RUN, {} runs each:", s.cost_repeat);
        for c in &self.costs {
            let _ = writeln!(out, "  {:<10} {:<28} {:>6.1} ns/packet", c.program, c.packet, c.ns_per_packet);
        }
        out
    }

    /// Everything, for machines: settings, per-metric stats and raw samples, costs.
    pub fn json(&self) -> serde_json::Value {
        let results: Vec<serde_json::Value> = self
            .samples
            .iter()
            .map(|((path, metric, setup), values)| {
                serde_json::json!({
                    "path": path, "metric": metric, "name": metric.name(), "unit": metric.unit(),
                    "setup": setup, "stat": stat(values), "samples": values,
                })
            })
            .collect();
        let mut json = serde_json::to_value(self).expect("report serializes");
        json["results"] = results.into();
        json
    }

    /// Grouped bars per metric, each setup's median relative to the recipe (recipe = 1.0), so
    /// that different units share one axis. Loss (the recipe's can be 0) and receiver CPU are left out.
    pub fn svg(&self) -> String {
        const BAR: f64 = 18.0;
        const GAP: f64 = 26.0;
        const TOP: f64 = 50.0;
        const LEFT: f64 = 60.0;
        const HEIGHT: f64 = 220.0;
        let colors = [
            (Setup::Limit, "#9e9e9e"),
            (Setup::Recipe, "#e07b39"),
            (Setup::Podnet, "#2a7ab9"),
            (Setup::PodnetXdp, "#5bb5a2"),
            (Setup::PodnetXdpGeneric, "#9c6ade"),
            (Setup::PodnetXdpDeliver, "#d4a017"),
        ];
        let groups: Vec<(Path, Metric)> = self
            .settings
            .paths
            .iter()
            .flat_map(|&p| self.metrics(p).into_iter().map(move |m| (p, m)))
            .filter(|(_, m)| {
                !matches!(
                    m,
                    Metric::Udp64LossPercent | Metric::UdpReply64LossPercent | Metric::Tcp1ReceiverCpu
                )
            })
            .collect();
        let rel = |p, m, s| -> Option<f64> {
            let base = self.stat(p, m, Setup::Recipe)?.median;
            (base > 0.0).then(|| self.stat(p, m, s).map(|st| st.median / base)).flatten()
        };
        let max = groups
            .iter()
            .flat_map(|&(p, m)| colors.iter().filter_map(move |&(s, _)| rel(p, m, s)))
            .fold(1.0_f64, f64::max)
            * 1.1;
        let group_w = colors.len() as f64 * BAR + GAP;
        let width = LEFT + group_w * groups.len() as f64 + 20.0;
        let total_h = TOP + HEIGHT + 90.0;
        let y = |v: f64| TOP + HEIGHT * (1.0 - v / max);
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{total_h:.0}\" \
             font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{LEFT}\" y=\"20\" font-size=\"14\">podnet vs the iptables/bridge recipe and the veth limit \
             (median, recipe = 1.0; up = faster for rates, up = slower for RTT)</text>\n"
        );
        for (i, (s, c)) in colors.iter().enumerate() {
            let x = LEFT + i as f64 * 90.0;
            let _ = writeln!(
                svg,
                "<rect x=\"{x}\" y=\"30\" width=\"10\" height=\"10\" fill=\"{c}\"/><text x=\"{}\" y=\"39\">{}</text>",
                x + 14.0,
                s.name()
            );
        }
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{width}\" y1=\"{0:.1}\" y2=\"{0:.1}\" stroke=\"#444\" stroke-dasharray=\"4 3\"/>\
             <text x=\"4\" y=\"{1:.1}\">1.0x</text>",
            y(1.0),
            y(1.0) + 4.0
        );
        for (g, &(p, m)) in groups.iter().enumerate() {
            let x0 = LEFT + g as f64 * group_w;
            for (i, &(s, c)) in colors.iter().enumerate() {
                if let Some(v) = rel(p, m, s) {
                    let x = x0 + i as f64 * BAR;
                    let _ = writeln!(
                        svg,
                        "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{}\" height=\"{:.1}\" fill=\"{c}\"><title>{} {} {}: {v:.2}x</title></rect>",
                        y(v),
                        BAR - 2.0,
                        TOP + HEIGHT - y(v),
                        p.name(),
                        m.name(),
                        s.name()
                    );
                }
            }
            let _ = writeln!(
                svg,
                "<text transform=\"translate({:.1},{:.1}) rotate(40)\">{} ({})</text>",
                x0 + 4.0,
                TOP + HEIGHT + 12.0,
                m.name(),
                p.name()
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range() {
        let s = stat(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(stat(&[4.0, 1.0]).median, 2.5);
    }

    #[test]
    fn ratios_compare_podnet_medians() {
        let settings = Settings {
            paths: vec![Path::SameNode],
            flood: true,
            reps: 1,
            tcp_fast_runs: 0,
            seconds: 1,
            cost_repeat: 1,
            cost_case: None,
        };
        let mut r = Report::new(settings);
        r.add(Path::SameNode, Setup::Recipe, Metric::Tcp1Stream, 20.0);
        r.add(Path::SameNode, Setup::Podnet, Metric::Tcp1Stream, 25.0);
        r.add(Path::SameNode, Setup::Limit, Metric::Tcp1Stream, 30.0);
        assert_eq!(r.ratio(Path::SameNode, Metric::Tcp1Stream, Setup::Podnet, Setup::Recipe), Some(1.25));
        let table = r.table();
        assert!(
            table.contains("| metric | unit | limit | recipe | podnet | podnet/recipe | podnet/limit |"),
            "{table}"
        );
        assert!(table.contains("| TCP 1 stream | Gbit/s | 30.00 (30.00-30.00) | 20.00"), "{table}");
        assert!(r.svg().starts_with("<svg"));
    }
}

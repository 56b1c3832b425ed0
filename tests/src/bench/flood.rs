//! A deny-listed flood: an external host sends 64-byte UDP to a pod as fast as one thread can,
//! while the node drops it at XDP (native or generic) or, as a recipe node would, in iptables'
//! raw table (podnet's programs detached). Reported: what was sent, what the node dropped, and
//! the CPU left idle on the whole machine (the flooder itself runs on it too).

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use super::setups;
use crate::{Lab, sh};

/// One way of dropping the flood.
#[derive(Debug, Clone, Serialize)]
pub struct Flood {
    pub dropper: &'static str,
    pub sent_kpps: f64,
    pub dropped_kpps: f64,
    /// Share of both CPUs' time left idle during the flood, in percent.
    pub cpu_idle_percent: f64,
}

const ATTACKER: &str = "192.168.50.100";

/// (idle, total) jiffies of all CPUs.
fn cpu_times() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .context("/proc/stat has a cpu line")?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    Ok((cpu[3] + cpu.get(4).copied().unwrap_or(0), cpu.iter().sum()))
}

/// Floods a pod behind each dropper for `seconds`.
pub fn measure(lab: &mut Lab, seconds: u32) -> anyhow::Result<Vec<Flood>> {
    let flooder = std::env::current_exe()?.parent().context("binary folder")?.join("conn-rate");
    let flooder = flooder.to_str().context("utf-8 path")?.to_owned();
    let mut results = Vec::new();
    for (dropper, xdp, tag) in
        [("xdp native", "native", "fn"), ("xdp generic", "generic", "fg"), ("iptables raw", "off", "fi")]
    {
        let (node, ext) = setups::node_and_external(lab, tag, xdp, true)?;
        sh(&ext, "ip", &["route", "add", "10.1.1.0/24", "via", "192.168.50.1"])?;
        let dropped = || -> anyhow::Result<u64> {
            if xdp == "off" {
                let rules =
                    sh(&node.netns, "iptables", &["-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"])?;
                let line = rules.lines().find(|l| l.contains(ATTACKER)).context("the raw DROP rule")?;
                line.split_whitespace().next().context("packet count")?.parse().context("packet count")
            } else {
                node.counter("xdp_drop_denied")
            }
        };
        if xdp == "off" {
            // The recipe's node: podnet's programs detached (tc would deliver before netfilter).
            for link in std::fs::read_dir(node.pin_dir().join("links"))? {
                std::fs::remove_file(link?.path())?;
            }
            sh(&node.netns, "iptables", &["-t", "raw", "-A", "PREROUTING", "-s", ATTACKER, "-j", "DROP"])?;
        } else {
            node.run_podnet(&["deny", "add", &format!("{ATTACKER}/32")])?;
        }
        let (before, (idle0, total0)) = (dropped()?, cpu_times()?);
        let out = sh(&ext, &flooder, &["flood", "10.1.1.2:9", &seconds.to_string()])?;
        let (after, (idle1, total1)) = (dropped()?, cpu_times()?);
        let report: serde_json::Value = serde_json::from_str(out.trim())?;
        let secs = report["seconds"].as_f64().context("flood seconds")?;
        results.push(Flood {
            dropper,
            sent_kpps: report["rate"].as_f64().context("flood rate")? / 1e3,
            dropped_kpps: (after - before) as f64 / secs / 1e3,
            cpu_idle_percent: 100.0 * (idle1 - idle0) as f64 / (total1 - total0).max(1) as f64,
        });
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(results)
}

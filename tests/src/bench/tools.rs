//! The measurements: iperf3, sockperf and conn-rate, each run from the client namespace, with
//! the traps of BENCH-NOTES avoided: cubic per socket, every iperf3 run (TCP and UDP) and
//! ping-pong with client and server pinned to one CPU; the connect rate runs unpinned.

use std::path::PathBuf;

use anyhow::Context as _;
use serde::Serialize;

use super::setups::{Path, Target};
use crate::{Lab, sh, wait_listening};

const IPERF_PORT: u16 = 5201;
const SOCKPERF_TCP_PORT: u16 = 11111;
const SOCKPERF_UDP_PORT: u16 = 11112;
const CONN_RATE_PORT: u16 = 12000;
/// Client and server share this CPU (BENCH-NOTES: cross-CPU veth traffic reorders). Not CPU 0:
/// here it also serves the machine's interrupts, and single TCP streams pinned to it swung
/// between 15 and 35 Gbit/s from run to run, where CPU 1 held 32-34.
pub const CPU: &str = "1";

/// One figure the benchmark reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    Tcp1Stream,
    /// Share of CPU the TCP 1 stream receiver used: ~45% when the sender's context does the
    /// receive processing, ~85% in the slow mode where the receiver does it (BENCHMARKS.md).
    Tcp1ReceiverCpu,
    Tcp2Streams,
    Udp64Kpps,
    Udp64LossPercent,
    TcpRttAvg,
    TcpRttP99,
    UdpRttAvg,
    UdpRttP99,
    ConnectRate,
    /// NAT path only: the external host sends to the pod (replies to the pod's connection).
    TcpReply1Stream,
    UdpReply64Kpps,
    UdpReply64LossPercent,
}

/// One tool run; some runs yield two metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    Tcp1,
    Tcp2,
    Udp64,
    TcpPingPong,
    UdpPingPong,
    Connect,
    /// iperf3 -R: the server sends (on the NAT path, through the reply translation).
    TcpReply1,
    UdpReply64,
}

impl Run {
    /// Every tool run, in the order each repetition performs them.
    pub const ALL: [Run; 8] = [
        Run::Tcp1,
        Run::Tcp2,
        Run::Udp64,
        Run::TcpPingPong,
        Run::UdpPingPong,
        Run::Connect,
        Run::TcpReply1,
        Run::UdpReply64,
    ];

    /// Whether this run is made on `path`: reply-direction streams only where the reply
    /// direction takes another path through the node (NAT's reverse translation).
    pub fn applies_to(self, path: Path) -> bool {
        !self.reply() || path == Path::Nat
    }

    /// Whether the server sends (`iperf3 -R`).
    fn reply(self) -> bool {
        matches!(self, Run::TcpReply1 | Run::UdpReply64)
    }
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Tcp1Stream => "TCP 1 stream",
            Metric::Tcp1ReceiverCpu => "TCP 1 stream, receiver CPU",
            Metric::Tcp2Streams => "TCP 2 streams",
            Metric::Udp64Kpps => "UDP 64 B rate",
            Metric::Udp64LossPercent => "UDP 64 B loss",
            Metric::TcpRttAvg => "TCP RTT avg",
            Metric::TcpRttP99 => "TCP RTT p99",
            Metric::UdpRttAvg => "UDP RTT avg",
            Metric::UdpRttP99 => "UDP RTT p99",
            Metric::ConnectRate => "TCP connect/close",
            Metric::TcpReply1Stream => "TCP 1 stream, reply",
            Metric::UdpReply64Kpps => "UDP 64 B rate, reply",
            Metric::UdpReply64LossPercent => "UDP 64 B loss, reply",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Metric::Tcp1Stream | Metric::Tcp2Streams | Metric::TcpReply1Stream => "Gbit/s",
            Metric::Udp64Kpps | Metric::UdpReply64Kpps => "kpps",
            Metric::Udp64LossPercent | Metric::UdpReply64LossPercent | Metric::Tcp1ReceiverCpu => "%",
            Metric::TcpRttAvg | Metric::TcpRttP99 | Metric::UdpRttAvg | Metric::UdpRttP99 => "us",
            Metric::ConnectRate => "conn/s",
        }
    }
}

/// conn-rate, built next to the benchmark binary.
fn conn_rate_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().context("binary has a folder")?.join("conn-rate"))
}

/// Starts iperf3, sockperf (TCP and UDP) and conn-rate servers in the server namespace.
pub fn start_servers(lab: &mut Lab, t: &Target) -> anyhow::Result<()> {
    let ns = &t.server_ns;
    lab.spawn(ns, "iperf3", &["-s", "-p", &IPERF_PORT.to_string()])?;
    for (proto, port) in [("--tcp", SOCKPERF_TCP_PORT), ("", SOCKPERF_UDP_PORT)] {
        let mut args = vec!["-c", CPU, "sockperf", "sr", "-i", &t.server_ip];
        let port = port.to_string();
        args.extend(["-p", &port]);
        if !proto.is_empty() {
            args.push(proto);
        }
        lab.spawn(ns, "taskset", &args)?;
    }
    let bin = conn_rate_bin()?;
    let addr = format!("{}:{CONN_RATE_PORT}", t.server_ip);
    lab.spawn(ns, bin.to_str().context("utf-8 path")?, &["server", &addr])?;
    for port in [IPERF_PORT, SOCKPERF_TCP_PORT, CONN_RATE_PORT] {
        wait_listening(ns, port)?;
    }
    Ok(())
}

fn json(text: &str) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))
}

/// Performs one tool run against `t` for `seconds` and returns its metrics.
pub fn measure(t: &Target, run: Run, seconds: u32) -> anyhow::Result<Vec<(Metric, f64)>> {
    let secs = seconds.to_string();
    let port = IPERF_PORT.to_string();
    let affinity = format!("{CPU},{CPU}");
    let iperf = |extra: &[&str]| -> anyhow::Result<serde_json::Value> {
        let mut args = vec!["-c", &t.server_ip, "-p", &port, "-t", &secs, "-A", &affinity, "-J"];
        args.extend(extra);
        if run.reply() {
            args.push("-R");
        }
        json(&sh(&t.client_ns, "iperf3", &args)?)
    };
    Ok(match run {
        Run::Tcp1 | Run::Tcp2 | Run::TcpReply1 => {
            let streams = if run == Run::Tcp2 { "2" } else { "1" };
            let out = iperf(&["-C", "cubic", "-P", streams])?;
            let bps = out["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3 TCP result")?;
            let metric = match run {
                Run::Tcp1 => Metric::Tcp1Stream,
                Run::Tcp2 => Metric::Tcp2Streams,
                _ => Metric::TcpReply1Stream,
            };
            let mut values = vec![(metric, bps / 1e9)];
            if run == Run::Tcp1 {
                let cpu = out["end"]["cpu_utilization_percent"]["remote_total"].as_f64();
                values.push((Metric::Tcp1ReceiverCpu, cpu.context("iperf3 receiver CPU")?));
            }
            values
        }
        Run::Udp64 | Run::UdpReply64 => {
            // Pinned like every iperf3 run: sender and receiver share CPU 1, so the flood's
            // rate is bounded by one CPU doing both (BENCHMARKS.md).
            let out = iperf(&["-u", "-b", "0", "-l", "64"])?;
            let rx = &out["end"]["sum_received"];
            let bytes = rx["bytes"].as_f64().context("iperf3 UDP bytes")?;
            let secs = rx["seconds"].as_f64().context("iperf3 UDP seconds")?;
            let loss = rx["lost_percent"].as_f64().unwrap_or(0.0);
            let (rate, lost) = if run.reply() {
                (Metric::UdpReply64Kpps, Metric::UdpReply64LossPercent)
            } else {
                (Metric::Udp64Kpps, Metric::Udp64LossPercent)
            };
            vec![(rate, bytes / 64.0 / secs / 1e3), (lost, loss)]
        }
        Run::TcpPingPong | Run::UdpPingPong => {
            let tcp = run == Run::TcpPingPong;
            let port = if tcp { SOCKPERF_TCP_PORT } else { SOCKPERF_UDP_PORT }.to_string();
            let mut args = vec!["-c", CPU, "sockperf", "pp", "-i", &t.server_ip, "-p", &port, "-t", &secs];
            if tcp {
                args.push("--tcp");
            }
            let (avg, p99) = parse_sockperf(&sh(&t.client_ns, "taskset", &args)?)?;
            if tcp {
                vec![(Metric::TcpRttAvg, avg), (Metric::TcpRttP99, p99)]
            } else {
                vec![(Metric::UdpRttAvg, avg), (Metric::UdpRttP99, p99)]
            }
        }
        Run::Connect => {
            let bin = conn_rate_bin()?;
            let addr = format!("{}:{CONN_RATE_PORT}", t.server_ip);
            let out = sh(&t.client_ns, bin.to_str().context("utf-8 path")?, &["client", &addr, &secs])?;
            vec![(Metric::ConnectRate, json(&out)?["rate"].as_f64().context("conn-rate result")?)]
        }
    })
}

/// sockperf reports one-way latency (half the round trip); the RTT is twice that.
fn parse_sockperf(out: &str) -> anyhow::Result<(f64, f64)> {
    let number_after = |marker: &str| -> Option<f64> {
        let line = out.lines().find(|l| l.contains(marker))?;
        let rest = &line[line.find(marker)? + marker.len()..];
        rest.trim_start().split(|c: char| !(c.is_ascii_digit() || c == '.')).next()?.parse().ok()
    };
    let avg = number_after("avg-latency=").context("sockperf: no avg-latency")?;
    let p99 = number_after("percentile 99.000 =").context("sockperf: no 99th percentile")?;
    Ok((2.0 * avg, 2.0 * p99))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sockperf_output_is_parsed_as_round_trips() {
        let out = "sockperf: \x1b[2;35m====> avg-latency=7.159 (std-dev=1.236)\x1b[0m\n\
                   sockperf: ---> percentile 99.000 =    9.709\n";
        assert_eq!(super::parse_sockperf(out).unwrap(), (14.318, 19.418));
    }
}

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

/// Receiver CPU (%) from which a TCP 1 stream run counts as slow mode: ~45% when the sender's
/// context does the receive processing, ~85% when the receiver does (BENCHMARKS.md).
pub const SLOW_MODE_CPU: f64 = 65.0;

/// One figure the benchmark reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    Tcp1Stream,
    /// The TCP 1 stream runs in the fast mode (receiver CPU below [`SLOW_MODE_CPU`]) and in the
    /// slow mode, apart: a ratio of medians compares like with like only within one mode.
    Tcp1StreamFast,
    Tcp1StreamSlow,
    /// Share of CPU the TCP 1 stream receiver used: ~45% when the sender's context does the
    /// receive processing, ~85% in the slow mode where the receiver does it (BENCHMARKS.md).
    Tcp1ReceiverCpu,
    Tcp2Streams,
    Udp64Kpps,
    Udp64LossPercent,
    /// 60-byte UDP frames over 1000 flows from trafgen, counted where they arrive (see
    /// [`flood`]).
    UdpFloodKpps,
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
    /// The many-flow packet-rate flood ([`flood`]).
    Flood,
    TcpPingPong,
    UdpPingPong,
    Connect,
    /// iperf3 -R: the server sends (on the NAT path, through the reply translation).
    TcpReply1,
    UdpReply64,
}

impl Run {
    /// Every tool run, in the order each repetition performs them.
    pub const ALL: [Run; 9] = [
        Run::Tcp1,
        Run::Tcp2,
        Run::Udp64,
        Run::Flood,
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
            Metric::Tcp1StreamFast => "TCP 1 stream, fast mode",
            Metric::Tcp1StreamSlow => "TCP 1 stream, slow mode",
            Metric::Tcp1ReceiverCpu => "TCP 1 stream, receiver CPU",
            Metric::Tcp2Streams => "TCP 2 streams",
            Metric::Udp64Kpps => "UDP 64 B rate",
            Metric::Udp64LossPercent => "UDP 64 B loss",
            Metric::UdpFloodKpps => "UDP 64 B flood, 1000 flows",
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
            Metric::Tcp1Stream
            | Metric::Tcp1StreamFast
            | Metric::Tcp1StreamSlow
            | Metric::Tcp2Streams
            | Metric::TcpReply1Stream => "Gbit/s",
            Metric::Udp64Kpps | Metric::UdpReply64Kpps | Metric::UdpFloodKpps => "kpps",
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
                let cpu = cpu.context("iperf3 receiver CPU")?;
                values.push((Metric::Tcp1ReceiverCpu, cpu));
                let mode = if cpu < SLOW_MODE_CPU { Metric::Tcp1StreamFast } else { Metric::Tcp1StreamSlow };
                values.push((mode, bps / 1e9));
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
        Run::Flood => vec![(Metric::UdpFloodKpps, flood(t, seconds)?)],
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

/// UDP source ports of the flood: 1000 flows.
const FLOOD_PORTS: (u16, u16) = (20000, 20999);

/// A flood of 60-byte UDP frames (64 on a wire) from `t`'s client over [`FLOOD_PORTS`], sent
/// by trafgen from a TX ring on CPU 0 as fast as it can, and counted where it arrives: an nft
/// netdev ingress chain on the server's interface counts and drops it before the stack. Returns
/// the forwarded rate in kpps.
///
/// On veths the whole path (trafgen's send, the datapath, the sink) runs in the sender's context
/// on CPU 0 (veth hands a frame to the receiving CPU's backlog, which is the sender's own), so
/// the rate is what one CPU can send and forward: the datapath's cost per packet decides the
/// difference between setups.
fn flood(t: &Target, seconds: u32) -> anyhow::Result<f64> {
    let (smac, sip) = address_of(&t.client_ns, &t.client_if)?;
    let dmac = next_hop_mac(&t.client_ns, &t.client_if, &t.server_ip)?;
    let config = format!(
        "{{\n  eth(da={dmac}, sa={smac}, type=0x0800),\n  ipv4(sa={sip}, da={}, ttl=64),\n  \
         udp(sp=dinc({}, {}), dp=9),\n  fill(0x41, 18)\n}}\n",
        t.server_ip, FLOOD_PORTS.0, FLOOD_PORTS.1
    );
    let file = std::env::temp_dir().join(format!("podnet-bench-flood-{}.cfg", std::process::id()));
    std::fs::write(&file, config)?;
    let counted = (|| {
        let sink = Sink::add(&t.server_ns, &t.server_if)?;
        let _sender = Trafgen::start(&t.client_ns, &t.client_if, &file)?;
        std::thread::sleep(std::time::Duration::from_millis(500));
        let (start, before) = (std::time::Instant::now(), sink.count()?);
        std::thread::sleep(std::time::Duration::from_secs(u64::from(seconds)));
        anyhow::Ok((sink.count()? - before) as f64 / start.elapsed().as_secs_f64())
    })();
    let _ = std::fs::remove_file(&file);
    Ok(counted? / 1e3)
}

/// The MAC and first IPv4 address of `ifname` in `ns`.
fn address_of(ns: &str, ifname: &str) -> anyhow::Result<(String, String)> {
    let link = json(&sh(ns, "ip", &["-j", "addr", "show", "dev", ifname])?)?;
    let mac = link[0]["address"].as_str().context("interface MAC")?.to_owned();
    let ip = link[0]["addr_info"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["family"] == "inet"))
        .and_then(|a| a["local"].as_str())
        .context("interface IPv4 address")?;
    Ok((mac, ip.to_owned()))
}

/// The MAC of the next hop toward `dst` from `ns` (the setup's check ping resolved it).
fn next_hop_mac(ns: &str, ifname: &str, dst: &str) -> anyhow::Result<String> {
    let route = json(&sh(ns, "ip", &["-j", "route", "get", dst])?)?;
    let hop = route[0]["gateway"].as_str().unwrap_or(dst).to_owned();
    let neigh = json(&sh(ns, "ip", &["-j", "neigh", "show", &hop, "dev", ifname])?)?;
    Ok(neigh[0]["lladdr"]
        .as_str()
        .with_context(|| format!("no neighbour entry for {hop} in {ns}"))?
        .to_owned())
}

/// An nft netdev ingress chain that counts and drops everything arriving on one interface;
/// removed on drop.
struct Sink {
    ns: String,
}

impl Sink {
    const TABLE: &str = "podnet_bench_sink";

    fn add(ns: &str, ifname: &str) -> anyhow::Result<Self> {
        let rules = format!(
            "table netdev {} {{\n  chain in {{\n    type filter hook ingress device \"{ifname}\" priority 0; \
             policy accept;\n    counter drop\n  }}\n}}\n",
            Self::TABLE
        );
        // A table a crashed run left behind would add its own counter: start afresh.
        let _ = sh(ns, "nft", &["delete", "table", "netdev", Self::TABLE]);
        let file = std::env::temp_dir().join(format!("podnet-bench-sink-{}.nft", std::process::id()));
        std::fs::write(&file, rules)?;
        let added = sh(ns, "nft", &["-f", file.to_str().context("utf-8 path")?]);
        let _ = std::fs::remove_file(&file);
        added?;
        Ok(Self { ns: ns.to_owned() })
    }

    fn count(&self) -> anyhow::Result<u64> {
        let out = sh(&self.ns, "nft", &["list", "chain", "netdev", Self::TABLE, "in"])?;
        let after = out.split("counter packets ").nth(1).context("nft counter")?;
        after.split_whitespace().next().context("nft counter")?.parse().context("nft counter")
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = sh(&self.ns, "nft", &["delete", "table", "netdev", Self::TABLE]);
    }
}

/// trafgen sending a config's frames on CPU 0 until dropped (it forks a worker per CPU it uses:
/// both are stopped).
struct Trafgen(std::process::Child);

impl Trafgen {
    fn start(ns: &str, ifname: &str, config: &std::path::Path) -> anyhow::Result<Self> {
        let config = config.to_str().context("utf-8 path")?;
        let child = crate::in_ns(ns, "taskset")
            .args(["-c", "0", "trafgen", "-o", ifname, "-i", config, "-P", "1", "--no-sock-mem", "-Q"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("start trafgen")?;
        Ok(Self(child))
    }
}

impl Drop for Trafgen {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        if let Ok(out) = std::process::Command::new("pgrep").args(["-P", &pid]).output() {
            for worker in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = std::process::Command::new("kill").args(["-TERM", worker]).status();
            }
        }
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..50 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // Stuck: the worker too.
        let _ = std::process::Command::new("pkill").args(["-KILL", "-P", &pid]).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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

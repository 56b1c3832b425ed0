//! Seeing what the datapath does: the agent's `/metrics` checked by `promtool` and scraped by a
//! real Prometheus, `podnet monitor` showing drops and new translations (and what its budget held
//! back), the programs' log lines in the agent's log, and `status --watch` with rates.

use std::{
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use podnet_tests::{
    Lab, Node, cluster, in_ns, link,
    packets::{send, udp4_checksummed, with_macs},
    pings, sh, wait_for,
};

const EXT: &str = "192.168.50.100";
const METRICS: &str = "192.168.50.1:9101";

/// One node (pods 10.1.1.2 and .3, NAT on) and an external host on its switch.
fn node_and_outside(lab: &mut Lab) -> anyhow::Result<(Node, String)> {
    let (node, ext, _) = node_outside_and_switch(lab)?;
    Ok((node, ext))
}

/// [`node_and_outside`], and the switch, to plug more hosts into.
fn node_outside_and_switch(lab: &mut Lab) -> anyhow::Result<(Node, String, String)> {
    let c = cluster(lab, "", &[&[]], "off")?;
    let ext = lab.netns("ext")?;
    lab.plug(&c.switch, &ext, "portx", &format!("{EXT}/24"))?;
    let node = c.nodes.into_iter().next().expect("one node");
    Ok((node, ext, c.switch))
}

/// `count` UDP frames from pod1 with a source address that is not its own (dropped as spoofed).
fn spoof(node: &Node, count: usize) -> anyhow::Result<()> {
    spoof_from(node, "10.1.1.99", count)
}

/// `count` UDP frames from pod1's veth to pod2 with source address `src`: dropped as spoofed
/// unless it is pod1's own, 10.1.1.2.
fn spoof_from(node: &Node, src: &str, count: usize) -> anyhow::Result<()> {
    let ns = node.pod_ns("pod1");
    let (_, mac) = link(&ns, "veth_pod1")?;
    let frame = with_macs(
        &udp4_checksummed((src.parse()?, 4242), ("10.1.1.3".parse()?, 53), b"spoofed"),
        [0xff; 6],
        mac,
    );
    let frames: Vec<&[u8]> = std::iter::repeat_n(&frame[..], count).collect();
    send(&ns, "veth_pod1", &frames)
}

fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn metrics_pass_promtool_and_a_real_prometheus_scrapes_them() -> anyhow::Result<()> {
    let mut lab = Lab::new("obm")?;
    let (node, ext, switch) = node_outside_and_switch(&mut lab)?;
    let mut config = std::fs::read_to_string(&node.config)?;
    config += &format!("\n[agent]\nmetrics = \"{METRICS}\"\n");
    std::fs::write(&node.config, config)?;
    lab.agent(&node)?;
    assert!(pings(&node.pod_ns("pod1"), "10.1.1.3", 3));
    assert!(pings(&node.pod_ns("pod2"), EXT, 2), "pod2 reaches the outside through NAT");

    let body = sh(&ext, "curl", &["-sS", "--fail", "--max-time", "5", &format!("http://{METRICS}/metrics")])?;
    // promtool reads the exposition from stdin and lints it (names, units, help, types).
    let mut promtool = in_ns(&ext, "promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(promtool.stdin.as_mut().expect("piped"), body.as_bytes())?;
    let checked = promtool.wait_with_output()?;
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        metric(&body, "podnet_packets_total{reason=\"redirect_local\"}").is_some_and(|v| v >= 3.0),
        "{body}"
    );
    let sent = "podnet_pod_packets_total{pod=\"pod1\",ip=\"10.1.1.2\",direction=\"from_pod\"}";
    assert!(metric(&body, sent).is_some_and(|v| v >= 3.0), "{body}");
    assert!(
        metric(&body, "podnet_nat_translations{protocol=\"icmp\",state=\"icmp\"}").is_some_and(|v| v >= 1.0)
    );
    assert!(
        metric(
            &body,
            "podnet_program_attached{program=\"from_pod\",hook=\"tcx ingress\",interface=\"brveth_pod1\"}"
        )
        .is_some(),
        "{body}"
    );
    assert!(body.contains("podnet_build_info{version=\""), "{body}");
    // Nothing else is served, and a client that sends junk gets nothing it can use.
    let other =
        sh(&ext, "curl", &["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{METRICS}/")])?;
    assert_eq!(other, "404");

    // A real Prometheus scrapes the agent and answers a podnet series through its query API.
    let dir = lab.dir().join("prometheus");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: podnet\n    static_configs:\n      - targets: [\"{METRICS}\"]\n"
        ),
    )?;
    let listen = format!("{EXT}:9090");
    let (config, data) = (config.display().to_string(), dir.join("data").display().to_string());
    lab.spawn(
        &ext,
        "prometheus",
        &[
            &format!("--config.file={config}"),
            &format!("--storage.tsdb.path={data}"),
            &format!("--web.listen-address={listen}"),
        ],
    )?;
    let query = format!(
        "http://{listen}/api/v1/query?query=podnet_pod_packets_total%7Bpod%3D%22pod1%22%2Cdirection%3D%22from_pod%22%7D"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let value = loop {
        let answer = in_ns(&ext, "curl").args(["-sS", "--max-time", "2", &query]).output()?;
        let json: serde_json::Value = serde_json::from_slice(&answer.stdout).unwrap_or_default();
        if let Some(v) = json["data"]["result"][0]["value"][1].as_str() {
            break v.parse::<f64>()?;
        }
        anyhow::ensure!(Instant::now() < deadline, "Prometheus had no podnet series after 30 s: {json}");
        thread::sleep(Duration::from_millis(500));
    };
    assert!(value >= 3.0, "Prometheus read {value} packets from pod1");

    // 200 connections that send half a request head and stall, from one host, kept up as the
    // agent drops them: scrapes from another host are answered every time.
    let stall = lab.netns("stall")?;
    lab.plug(&switch, &stall, "ports", "192.168.50.102/24")?;
    let netcat = lab.netcat()?;
    let (host, port) = METRICS.split_once(':').expect("host:port");
    let stalling =
        lab.child(in_ns(&stall, "python3").args([&netcat, "http-stall", host, port, "200", "60"]))?;
    let opened = || -> anyhow::Result<u64> {
        Ok(stalling.output()?.lines().last().map(str::parse).transpose()?.unwrap_or(0))
    };
    wait_for("the stalling host to open its 200 connections", Duration::from_secs(10), || {
        Ok((opened()? >= 200).then_some(()))
    })?;
    let url = format!("http://{METRICS}/metrics");
    for n in 0..24 {
        let out = in_ns(&ext, "curl")
            .args(["-sS", "--fail", "--max-time", "2", "-o", "/dev/null", &url])
            .output()?;
        assert!(
            out.status.success(),
            "scrape {n} during the stall: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        thread::sleep(Duration::from_millis(300));
    }
    anyhow::ensure!(stalling.running(), "the stalling host kept at it all through the scrapes");
    // The agent closed stalled connections (head timeout, or at once past the cap), and the
    // staller opened new ones in their place: the attack went on all along.
    wait_for("the stalling host to replace dropped connections", Duration::from_secs(10), || {
        Ok((opened()? > 200).then_some(()))
    })?;
    stalling.kill();
    Ok(())
}

#[test]
fn monitor_shows_drops_and_new_translations_and_counts_what_it_held_back() -> anyhow::Result<()> {
    let mut lab = Lab::new("obe")?;
    let (node, _ext) = node_and_outside(&mut lab)?;
    let monitor = lab.child(&mut node.podnet(&["monitor", "--json"]))?;
    // It says it listens (to the programs, and on stderr) once it reads the ring.
    wait_for("the monitor to listen", Duration::from_secs(10), || {
        Ok(monitor.errors()?.contains("listening for events").then_some(()))
    })?;
    let second = node.podnet(&["monitor"]).output()?;
    assert!(
        !second.status.success()
            && String::from_utf8_lossy(&second.stderr).contains("another `podnet monitor`"),
        "{second:?}"
    );
    spoof(&node, 1)?;
    assert!(pings(&node.pod_ns("pod2"), EXT, 1));
    let before = node.counter("drop_spoofed")?;
    // A flood: the budget (200 at once, then 1000/s per CPU) holds most of it back; the monitor
    // reports what was held back within its next tick.
    spoof(&node, 5000)?;
    assert_eq!(node.counter("drop_spoofed")? - before, 5000, "every packet is counted, shown or not");
    // Every whole line is an event (a line being written as the file is read is not whole yet).
    let events = |text: &str| -> Vec<serde_json::Value> {
        text.split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not an event ({e}): {l}")))
            .collect()
    };
    let held = |lines: &[serde_json::Value]| -> u64 {
        lines.iter().filter(|e| e["kind"] == "lost").filter_map(|e| e["rate_limited"].as_u64()).sum()
    };
    wait_for("the monitor to report the events held back", Duration::from_secs(10), || {
        Ok((held(&events(&monitor.output()?)) >= 4000).then_some(()))
    })?;
    anyhow::ensure!(Command::new("kill").args(["-INT", &monitor.pid.to_string()]).status()?.success());
    monitor.wait(Duration::from_secs(10))?;

    let lines = events(&monitor.output()?);
    let spoofed = lines
        .iter()
        .find(|e| e["kind"] == "drop")
        .ok_or_else(|| anyhow::anyhow!("no drop event in {lines:?}"))?;
    assert_eq!(spoofed["reason"], "drop_spoofed");
    assert_eq!((spoofed["src"].as_str(), spoofed["sport"].as_u64()), (Some("10.1.1.99"), Some(4242)));
    assert_eq!((spoofed["dst"].as_str(), spoofed["dport"].as_u64()), (Some("10.1.1.3"), Some(53)));
    assert_eq!((spoofed["pod"].as_str(), spoofed["interface"].as_str()), (Some("pod1"), Some("brveth_pod1")));
    let nat = lines
        .iter()
        .find(|e| e["kind"] == "nat_new")
        .ok_or_else(|| anyhow::anyhow!("no NAT event in {lines:?}"))?;
    assert_eq!((nat["src"].as_str(), nat["dst"].as_str()), (Some("10.1.1.3"), Some(EXT)));
    assert_eq!((nat["protocol"].as_str(), nat["nat_src"].as_str()), (Some("icmp"), Some("192.168.50.1")));
    assert!(nat["nat_sport"].as_u64().is_some_and(|p| p >= 61000), "{nat}");
    let drops = lines.iter().filter(|e| e["kind"] == "drop").count();
    let held_back = held(&lines);
    // The flood takes tens of milliseconds to send: a burst of 200 per CPU and a few more.
    assert!(drops <= 1000, "{drops} drop events shown");
    assert!(held_back >= 4000 && drops as u64 + held_back >= 5001, "{drops} shown, {held_back} held back");
    Ok(())
}

#[test]
fn the_programs_log_lines_reach_the_agents_log_when_asked() -> anyhow::Result<()> {
    let mut lab = Lab::new("obl")?;
    let (node, ext) = node_and_outside(&mut lab)?;
    // Without the agent nobody reads them: the command says so.
    let refused = node.podnet(&["ebpf-log", "info"]).output()?;
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("printed by `podnet agent`")
    );
    lab.agent_with(&node, &["--ebpf-log", "debug"])?;
    let link_ids = || -> anyhow::Result<Vec<serde_json::Value>> {
        Ok(node.status()?["programs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["link_id"].clone())
            .collect())
    };
    let links = link_ids()?;
    spoof(&node, 1)?;
    assert!(pings(&node.pod_ns("pod2"), EXT, 1));
    let log = lab.agent_log(&node);
    let logged = |needle: &str| -> anyhow::Result<String> {
        wait_for(&format!("{needle:?} in the agent's log"), Duration::from_secs(5), || {
            let text = std::fs::read_to_string(&log)?;
            Ok(text.contains(needle).then_some(text))
        })
    };
    logged("drop drop_spoofed on ifindex")?;
    logged("nat: new translation, protocol 1 10.1.1.3:")?;
    // Levels switched while spoofed frames flood in: every swap keeps every frame dropped.
    let pod2 = node.pod_ns("pod2");
    let pcap = lab.capture(&pod2, "veth_pod2", "udp")?;
    let done = std::sync::atomic::AtomicBool::new(false);
    thread::scope(|s| -> anyhow::Result<()> {
        // A steady trickle within the event budget: every frame gets logged, so every one goes
        // through the logger, the step a swap could break.
        let flood = s.spawn(|| -> anyhow::Result<()> {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                spoof(&node, 50)?;
            }
            Ok(())
        });
        let switched = ["info", "debug", "info", "debug", "info", "debug"]
            .iter()
            .try_for_each(|level| node.run_podnet(&["ebpf-log", level]).map(drop));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        flood.join().expect("no panic")?;
        switched
    })?;
    // Control: a frame with pod1's own address reaches pod2's capture.
    spoof_from(&node, "10.1.1.2", 1)?;
    assert_eq!(lab.wait_captured(&pod2, &pcap, "src host 10.1.1.2", 1)?, 1, "pod1's own frame arrived");
    assert_eq!(
        lab.count(&pod2, &pcap, "src host 10.1.1.99")?,
        0,
        "spoofed frames reached pod2 while the programs were swapped"
    );
    // Nor did an old program hand a new logger an event it could not see.
    let text = std::fs::read_to_string(&log)?;
    assert!(!text.contains("on ifindex 0:"), "a logger wrote an event it was not given:\n{text}");
    // Switched off at runtime: the same links, no more lines.
    node.run_podnet(&["ebpf-log", "off"])?;
    assert_eq!(link_ids()?, links, "the programs were swapped in their links");
    let lines = std::fs::read_to_string(&log)?.matches("drop drop_spoofed").count();
    spoof(&node, 3)?;
    // Control: switched on again, drops from another address are logged; the agent reads the
    // programs' lines in order, so lines of the three above would have come before them.
    node.run_podnet(&["ebpf-log", "info"])?;
    spoof_from(&node, "10.1.1.98", 1)?;
    let text = logged("10.1.1.98:4242")?;
    assert_eq!(text.matches("drop drop_spoofed").count(), lines + 1, "only the control was logged:\n{text}");
    let _ = ext;
    Ok(())
}

#[test]
fn status_watch_shows_rates() -> anyhow::Result<()> {
    let mut lab = Lab::new("obw")?;
    let (node, _ext) = node_and_outside(&mut lab)?;
    let watch = lab.child(&mut node.podnet(&["status", "--watch", "--json", "--interval", "1"]))?;
    let pinger =
        lab.child(in_ns(&node.pod_ns("pod1"), "ping").args(["-c", "30", "-i", "0.1", "-q", "10.1.1.3"]))?;
    pinger.wait(Duration::from_secs(20))?;
    anyhow::ensure!(Command::new("kill").args(["-INT", &watch.pid.to_string()]).status()?.success());
    let out = watch.wait_output(Duration::from_secs(10))?;
    let reports: Vec<serde_json::Value> = out.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert!(reports.len() >= 3, "{} reports", reports.len());
    assert!(reports[0]["rates"].is_null(), "the first report has nothing to compare with");
    let rate = reports[1]["rates"]["redirect_local"].as_f64().unwrap_or(0.0);
    // 10 pings a second, each an echo and a reply delivered by redirect_local.
    assert!((10.0..=30.0).contains(&rate), "redirect_local at {rate}/s");
    Ok(())
}

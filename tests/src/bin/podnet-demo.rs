//! The podnet demo (`cargo xtask demo`): a node with two pods, built entirely in network
//! namespaces, proving pod traffic rides the eBPF datapath. Everything is removed at the end.

use std::time::Instant;

use anyhow::{Context as _, ensure};
use podnet_tests::{Lab, http_get, iperf3_tcp, namespaces_with_prefix, sh};

const CONFIG: &str = r#"pod_cidr = "10.1.1.0/24"

[[pod]]
name = "pod1"
ip = "10.1.1.2"

[[pod]]
name = "pod2"
ip = "10.1.1.3"
"#;

fn title(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let prefix;
    {
        let mut lab = Lab::new("demo")?;
        prefix = lab.prefix().to_owned();
        title("A node in its own network namespace, two pods, built by `podnet up`");
        let node = lab.node("node1", CONFIG)?;
        println!("node namespace: {}  (config: {})", node.netns, node.config.display());
        let out = node.podnet(&["up"]).output()?;
        print!("{}", String::from_utf8_lossy(&out.stderr));
        ensure!(out.status.success(), "podnet up failed");

        title("The node is locked down like a Kubernetes node");
        node.forward_drop()?;
        println!("iptables FORWARD policy DROP, bridge-nf-call-iptables=1: bridged IPv4 would be dropped.");
        let (pod1, pod2) = (node.pod_ns("pod1"), node.pod_ns("pod2"));
        let redirected_before = node.counter("redirect_local")?;

        title("ping");
        for (from, to) in [(&pod1, "10.1.1.3"), (&pod2, "10.1.1.2")] {
            let out = sh(from, "ping", &["-c", "3", "-i", "0.2", "-W", "1", to])?;
            let summary =
                out.lines().filter(|l| l.contains("packets") || l.contains("rtt")).collect::<Vec<_>>();
            println!("{from} -> {to}: {}", summary.join(" | "));
        }

        title("HTTP");
        lab.http_server(&pod2, 8080, "hello from pod2\n")?;
        let body = http_get(&pod1, "http://10.1.1.3:8080/")?;
        println!("pod1 GET http://10.1.1.3:8080/ -> {:?}", body);
        ensure!(body == "hello from pod2\n", "unexpected body");

        title("iperf3, 3 s, one TCP stream (cubic)");
        lab.iperf3_server(&pod2, 5201)?;
        let iperf = iperf3_tcp(&pod1, "10.1.1.3", 5201, 3)?;
        println!(
            "pod1 -> pod2: {:.1} Gbit/s, {} MB, {} retransmits",
            iperf.bits_per_second / 1e9,
            iperf.bytes / 1_000_000,
            iperf.retransmits
        );

        title("What the datapath did (`podnet status`)");
        println!("{}", node.run_podnet(&["status"])?);
        let redirected = node.counter("redirect_local")? - redirected_before;
        println!("\n{redirected} packets were redirected pod-to-pod by eBPF during the demo,");
        println!("none crossed the bridge or iptables (FORWARD would have dropped them).");

        title("Inspect it yourself");
        println!("bpftool map dump pinned {}/ENDPOINTS", node.pin_dir().display());
        println!("bpftool map dump pinned {}/COUNTERS", node.pin_dir().display());
        let dump = std::process::Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(node.pin_dir().join("ENDPOINTS"))
            .output()
            .context("bpftool")?;
        print!("{}", String::from_utf8_lossy(&dump.stdout));

        title("Not in this demo yet");
        println!("cross-node routing, NAT to an external host and XDP are open issues; see README.");
        title("Cleaning up");
    }
    let left = namespaces_with_prefix(&prefix);
    ensure!(left.is_empty(), "namespaces left behind: {left:?}");
    println!("all namespaces, links and pins removed; demo took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

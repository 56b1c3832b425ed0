//! The node agent: it owns the node's changes while it runs, stops without detaching anything,
//! refuses to run twice, and a `kill -9` of it under traffic loses no flow (pod to pod across
//! nodes, and pod to the outside through NAT: every second of the streams moves data, and fast
//! pings alongside lose nothing): the datapath is pinned, and the next agent picks the pinned
//! state up without re-creating a link.

use std::{process::Command, thread, time::Duration};

use podnet_tests::{Lab, cluster, iperf3_tcp_at};

const EXT: &str = "192.168.50.100";

fn link_ids(status: &serde_json::Value) -> Vec<serde_json::Value> {
    status["programs"].as_array().into_iter().flatten().map(|p| p["link_id"].clone()).collect()
}

#[test]
fn kill_9_of_the_agent_loses_no_flow() -> anyhow::Result<()> {
    let mut lab = Lab::new("agent")?;
    let cluster = cluster(&mut lab, "", &[&[2], &[1]], "off")?;
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let ext = lab.netns("ext")?;
    lab.plug(&cluster.switch, &ext, "portx", &format!("{EXT}/24"))?;
    // FORWARD drops, as on a Kubernetes node: only the datapath carries pod traffic.
    n1.forward_drop()?;
    n2.forward_drop()?;
    let pid = lab.agent(n1)?;
    lab.agent(n2)?;
    let links_before = link_ids(&n1.status()?);

    // A second agent for the same node is refused.
    let second = n1.podnet(&["agent"]).output()?;
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("another agent already serves"), "{second:?}");

    lab.iperf3_server(&n2.pod_ns("pod1"), 5201)?;
    lab.iperf3_server(&ext, 5202)?;
    // Fast pings run alongside the streams, across nodes and through the NAT, from before the
    // kill until after the new agent is up.
    let pings =
        [lab.fast_ping(&n1.pod_ns("pod2"), "10.1.2.3", 10)?, lab.fast_ping(&n1.pod_ns("pod1"), EXT, 10)?];
    let (cross, nat, restarted) = thread::scope(|s| -> anyhow::Result<_> {
        let cross = s.spawn(|| iperf3_tcp_at(&n1.pod_ns("pod1"), "10.1.2.2", 5201, 6, "2G"));
        let nat = s.spawn(|| iperf3_tcp_at(&n1.pod_ns("pod2"), EXT, 5202, 6, "2G"));
        thread::sleep(Duration::from_secs(2));
        anyhow::ensure!(Command::new("kill").args(["-9", &pid.to_string()]).status()?.success());
        thread::sleep(Duration::from_millis(500));
        let restarted = lab.agent(n1)?;
        anyhow::ensure!(pings.iter().all(|p| p.running()), "the pings outlived the agent's restart");
        let joined = |t: thread::ScopedJoinHandle<'_, anyhow::Result<podnet_tests::Iperf>>| {
            t.join().unwrap_or_else(|_| Err(anyhow::anyhow!("iperf3 thread panicked")))
        };
        Ok((joined(cross)?, joined(nat)?, restarted))
    })?;
    // 6 s of TCP with the agent gone for part of it: the flows ran throughout, every second, and
    // the pings alongside lost nothing.
    cross.never_stalled("pod to pod across nodes", 10_000_000)?;
    nat.never_stalled("pod to the outside", 10_000_000)?;
    for (ping, what) in pings.iter().zip(["across nodes", "through the NAT"]) {
        let summary = ping.wait_output(Duration::from_secs(20))?;
        assert_eq!(podnet_tests::ping_loss(&summary), Some(0.0), "a ping {what} lost packets:\n{summary}");
    }
    assert_eq!(link_ids(&n1.status()?), links_before, "the new agent swapped programs in the same links");
    // Clients that never finish their request, or send a huge one, hold up nobody.
    let socket = n1.agent_socket();
    let idle: Vec<_> =
        (0..10).map(|_| std::os::unix::net::UnixStream::connect(&socket)).collect::<Result<_, _>>()?;
    let mut huge = std::os::unix::net::UnixStream::connect(&socket)?;
    std::io::Write::write_all(&mut huge, &vec![b'x'; 1 << 20]).ok();
    let started = std::time::Instant::now();
    n1.run_podnet(&["nat", "gc"])?;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a change waited {:?} behind idle clients",
        started.elapsed()
    );
    drop((idle, huge));
    // `up` of another file is refused while the agent serves this one.
    let other = lab.dir().join("other.toml");
    std::fs::copy(&n1.config, &other)?;
    let up = std::process::Command::new(podnet_tests::podnet_bin())
        .args(["--netns", &n1.netns, "--config", other.to_str().unwrap_or_default(), "up"])
        .output()?;
    assert!(
        !up.status.success() && String::from_utf8_lossy(&up.stderr).contains("run `up` with that file"),
        "{up:?}"
    );
    // The new agent serves changes; `down` waits for it to stop.
    n1.run_podnet(&["node", "add", "node3", "--ip", "192.168.50.3", "--pod-cidr", "10.1.3.0/24"])?;
    assert_eq!(n1.status()?["peers"].as_array().map(Vec::len), Some(2));
    let down = n1.podnet(&["down"]).output()?;
    assert!(
        !down.status.success() && String::from_utf8_lossy(&down.stderr).contains("stop it first"),
        "{down:?}"
    );

    // SIGTERM stops the agent and detaches nothing: its socket goes, the datapath stays.
    anyhow::ensure!(Command::new("kill").args(["-TERM", &restarted.to_string()]).status()?.success());
    for _ in 0..100 {
        if !n1.agent_socket().exists() {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(!n1.agent_socket().exists(), "the stopped agent removed its socket");
    assert_eq!(link_ids(&n1.status()?), links_before, "every link is still attached");
    assert!(podnet_tests::pings(&n1.pod_ns("pod1"), "10.1.2.2", 1), "pods still talk across nodes");
    Ok(())
}

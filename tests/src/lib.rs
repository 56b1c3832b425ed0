//! A lab of network namespaces for podnet's end-to-end tests and demo: node namespaces, the
//! `podnet` binary run as each node, processes inside pods, and teardown that runs even when a
//! test panics. Everything lives in namespaces the lab creates; the root namespace is never
//! touched.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub mod bench;
pub mod cni;
pub mod etcd;
pub mod packets;
pub mod podman;
pub mod test_run;

/// The podnet binary under test: `$PODNET_BIN` (set by `cargo xtask test`), else the debug build.
pub fn podnet_bin() -> PathBuf {
    std::env::var_os("PODNET_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/podnet"))
}

/// Runs `cmd`, returning its output; fails with its stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// A command run inside network namespace `ns` (`ip netns exec`).
pub fn in_ns(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]);
    cmd
}

/// Runs `program args..` in `ns` and returns its stdout; fails on a non-zero exit.
pub fn sh(ns: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = run(in_ns(ns, program).args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `ping` from `ns` to `ip` gets `count` answers (each waited for at most 1 s).
pub fn pings(ns: &str, ip: &str, count: u32) -> bool {
    in_ns(ns, "ping")
        .args(["-c", &count.to_string(), "-W", "1", "-i", "0.2", "-q", ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits until something listens on TCP `port` in `ns` (at most 10 s).
pub fn wait_listening(ns: &str, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let listening = sh(ns, "ss", &["-Hltn", &format!("sport = :{port}")])?;
        if !listening.trim().is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on port {port} in {ns} after 10 s")
}

/// GETs `url` from inside `ns` and returns the body.
pub fn http_get(ns: &str, url: &str) -> anyhow::Result<String> {
    sh(ns, "curl", &["-sS", "--fail", "--max-time", "5", url])
}

/// Summary of an iperf3 client run.
#[derive(Debug, Clone, Copy)]
pub struct Iperf {
    pub bytes: u64,
    pub bits_per_second: f64,
    pub retransmits: u64,
}

/// Runs an iperf3 TCP client in `ns` against `server:port` for `seconds` (cubic, as the
/// benchmark notes require) and parses its JSON report.
pub fn iperf3_tcp(ns: &str, server: &str, port: u16, seconds: u32) -> anyhow::Result<Iperf> {
    let out = sh(
        ns,
        "iperf3",
        &["-c", server, "-p", &port.to_string(), "-t", &seconds.to_string(), "-C", "cubic", "-J"],
    )?;
    let json: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    let sent = &json["end"]["sum_sent"];
    Ok(Iperf {
        bytes: sent["bytes"].as_u64().context("iperf3: no end.sum_sent.bytes")?,
        bits_per_second: sent["bits_per_second"].as_f64().unwrap_or(0.0),
        retransmits: sent["retransmits"].as_u64().unwrap_or(0),
    })
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One test's namespaces, files and processes, all named with a unique prefix and all removed
/// on drop (also when the test panics).
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    dir: PathBuf,
    namespaces: Vec<String>,
    nodes: Vec<Node>,
    children: Vec<Child>,
}

/// MAC of the known neighbour 192.168.50.2 in a [`FibFixture`].
pub const FIB_NEIGH_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x22];

/// See [`Lab::fib_fixture`].
#[derive(Debug, Clone)]
pub struct FibFixture {
    pub ns: String,
    pub eth0: u32,
    pub eth0_mac: [u8; 6],
}

/// A node the lab made: its namespace and podnet config.
#[derive(Debug, Clone)]
pub struct Node {
    pub netns: String,
    pub name: String,
    pub config: PathBuf,
}

impl Lab {
    /// A new lab; `tag` (a few letters) makes names recognisable, the pid and a counter unique.
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let prefix = format!("{tag}{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join("podnet-lab").join(&prefix);
        std::fs::create_dir_all(&dir)?;
        Ok(Self { prefix, dir, namespaces: Vec::new(), nodes: Vec::new(), children: Vec::new() })
    }

    /// The unique prefix of every name in this lab.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A scratch directory removed with the lab.
    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }

    /// A scratch directory `name` in memory (tmpfs), removed with the lab: for data a server
    /// syncs to disk on every write (etcd), whose fsyncs can stall for seconds on a busy disk.
    /// In [`Lab::dir`] where the machine has no `/dev/shm`.
    pub fn memory_dir(&self, name: &str) -> PathBuf {
        self.memory_root().unwrap_or_else(|| self.dir.clone()).join(name)
    }

    fn memory_root(&self) -> Option<PathBuf> {
        let shm = Path::new("/dev/shm");
        shm.is_dir().then(|| shm.join(format!("podnet-lab-{}", self.prefix)))
    }

    /// Creates a namespace `<prefix>-<name>` with `lo` up.
    pub fn netns(&mut self, name: &str) -> anyhow::Result<String> {
        let ns = format!("{}-{name}", self.prefix);
        run(Command::new("ip").args(["netns", "add", &ns]))?;
        self.namespaces.push(ns.clone());
        sh(&ns, "ip", &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Creates a node namespace and writes its podnet config. `body` is the TOML after the
    /// `[node]` name line: `pod_cidr`, pods, ... Pod namespaces default to `<node>-<pod>`, which
    /// carries the lab prefix.
    pub fn node(&mut self, name: &str, body: &str) -> anyhow::Result<Node> {
        let netns = self.netns(name)?;
        let config = self.dir.join(format!("{name}.toml"));
        std::fs::write(&config, format!("[node]\nname = \"{netns}\"\n{body}"))?;
        let node = Node { name: netns.clone(), netns, config };
        self.nodes.push(node.clone());
        Ok(node)
    }

    /// Creates a "switch" `<prefix>-<name>`: a namespace holding bridge `sw0`, the wire between
    /// nodes.
    pub fn switch(&mut self, name: &str) -> anyhow::Result<String> {
        let ns = self.netns(name)?;
        sh(&ns, "ip", &["link", "add", "sw0", "type", "bridge"])?;
        sh(&ns, "ip", &["link", "set", "sw0", "up"])?;
        Ok(ns)
    }

    /// Plugs namespace `ns` into `switch` with an uplink called `eth0` (inside `ns`, never the
    /// root namespace's) holding `ip_cidr`, e.g. "192.168.50.1/24".
    pub fn plug(&mut self, switch: &str, ns: &str, port: &str, ip_cidr: &str) -> anyhow::Result<()> {
        sh(switch, "ip", &["link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
        sh(switch, "ip", &["link", "set", port, "master", "sw0", "up"])?;
        sh(ns, "ip", &["addr", "add", ip_cidr, "dev", "eth0"])?;
        sh(ns, "ip", &["link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// A node namespace for running programs through `BPF_PROG_TEST_RUN` with real FIB lookups:
    /// uplink `eth0` (192.168.50.1/24, MTU 1400, forwarding on), permanent neighbours
    /// 192.168.50.2 (at [`FIB_NEIGH_MAC`]) and 192.168.50.3, and no neighbour for 192.168.50.4.
    pub fn fib_fixture(&mut self) -> anyhow::Result<FibFixture> {
        let ns = self.netns("fib")?;
        let wire = self.netns("fibwire")?;
        sh(&ns, "ip", &["link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &wire])?;
        sh(&ns, "ip", &["addr", "add", "192.168.50.1/24", "dev", "eth0"])?;
        sh(&ns, "ip", &["link", "set", "eth0", "up", "mtu", "1400"])?;
        sh(&wire, "ip", &["link", "set", "eth0", "up"])?;
        for (ip, mac) in [("192.168.50.2", "02:00:00:00:00:22"), ("192.168.50.3", "02:00:00:00:00:33")] {
            sh(&ns, "ip", &["neigh", "replace", ip, "lladdr", mac, "dev", "eth0", "nud", "permanent"])?;
        }
        sh(&ns, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        let (eth0, eth0_mac) = link(&ns, "eth0")?;
        Ok(FibFixture { ns, eth0, eth0_mac })
    }

    /// Packets in capture `pcap` (from [`Self::capture`], taken in `ns`) that match `filter`
    /// ("" for all), after a moment for what is in flight.
    pub fn captured(&self, ns: &str, pcap: &str, filter: &str) -> anyhow::Result<usize> {
        std::thread::sleep(Duration::from_millis(300));
        count_captured(ns, pcap, filter)
    }

    /// Waits (at most 10 s) until capture `pcap` holds `at_least` packets matching `filter`, and
    /// returns how many it holds. Frames sent before those have been captured too, so a test
    /// sends a control last and waits for it before it counts what must not have arrived.
    pub fn wait_captured(
        &self,
        ns: &str,
        pcap: &str,
        filter: &str,
        at_least: usize,
    ) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n = count_captured(ns, pcap, filter)?;
            if n >= at_least || Instant::now() > deadline {
                return Ok(n);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts tcpdump on `iface` in `ns`, writing packets matching `filter` to a file in the lab
    /// (unbuffered), and waits until it captures. Returns the file's path.
    pub fn capture(&mut self, ns: &str, iface: &str, filter: &str) -> anyhow::Result<String> {
        // Unique per capture: several may watch one interface.
        let path = self.dir.join(format!("{ns}-{iface}-{}.pcap", self.children.len()));
        let path = path.to_str().context("utf-8 path")?.to_owned();
        // --immediate-mode: packets reach the file as they come, not a buffer's worth later.
        self.spawn(ns, "tcpdump", &["-U", "--immediate-mode", "-n", "-i", iface, "-w", &path, filter])?;
        // tcpdump writes the file header once it captures.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::metadata(&path).is_ok_and(|m| m.len() >= 24) {
            anyhow::ensure!(Instant::now() < deadline, "tcpdump in {ns} did not start within 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(path)
    }

    /// Writes the lab's small TCP/UDP peer tool (src/netcat.py) and returns its path.
    pub fn netcat(&self) -> anyhow::Result<String> {
        let path = self.dir.join("netcat.py");
        std::fs::write(&path, include_str!("netcat.py"))?;
        Ok(path.to_str().context("utf-8 path")?.to_owned())
    }

    /// Starts `cmd` as is (no namespace switch: podnet's own `--netns`, say); it is killed when
    /// the lab is dropped. Returns its pid.
    pub fn spawn_command(&mut self, cmd: &mut Command) -> anyhow::Result<u32> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Starts `podnet agent` for `node` and waits (at most 20 s) until it answers on its socket.
    /// Returns its pid. Its log goes to [`Self::agent_log`].
    pub fn agent(&mut self, node: &Node) -> anyhow::Result<u32> {
        self.agent_with(node, &[])
    }

    /// [`Self::agent`] with more arguments to `podnet agent`.
    pub fn agent_with(&mut self, node: &Node, args: &[&str]) -> anyhow::Result<u32> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.agent_log(node))?;
        let mut cmd = node.podnet(&["agent", "--interval", "1"]);
        cmd.args(args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        let pid = child.id();
        self.children.push(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(node.agent_socket()).is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.agent_log(node)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                anyhow::bail!(
                    "the agent of {} did not listen within 20 s; its log ends:\n{}",
                    node.name,
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(pid)
    }

    /// Where the agents of `node` log (every run appends).
    pub fn agent_log(&self, node: &Node) -> PathBuf {
        self.dir.join(format!("{}.agent.log", node.name))
    }

    /// Starts a long-running process in `ns`; it is killed when the lab is dropped.
    pub fn spawn(&mut self, ns: &str, program: &str, args: &[&str]) -> anyhow::Result<()> {
        self.spawn_command(in_ns(ns, program).args(args)).map(drop)
    }

    /// Serves `body` over HTTP on `port` in `ns` (all addresses), as one "container".
    pub fn http_server(&mut self, ns: &str, port: u16, body: &str) -> anyhow::Result<()> {
        let root = self.dir.join(format!("www-{ns}-{port}"));
        std::fs::create_dir_all(&root)?;
        std::fs::write(root.join("index.html"), body)?;
        let root = root.to_str().context("utf-8 path")?.to_owned();
        self.spawn(ns, "python3", &["-m", "http.server", &port.to_string(), "--directory", &root])?;
        wait_listening(ns, port)
    }

    /// Starts an iperf3 server on `port` in `ns`.
    pub fn iperf3_server(&mut self, ns: &str, port: u16) -> anyhow::Result<()> {
        self.spawn(ns, "iperf3", &["-s", "-p", &port.to_string()])?;
        wait_listening(ns, port)
    }
}

impl Node {
    /// `podnet --netns <node> --config <config> args..`, as a command to adjust and run.
    pub fn podnet(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(podnet_bin());
        cmd.arg("--netns").arg(&self.netns).arg("--config").arg(&self.config).args(args);
        cmd
    }

    /// Runs podnet with `args` and returns stdout; fails with podnet's stderr on error.
    pub fn run_podnet(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = run(&mut self.podnet(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `podnet status --json`.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.run_podnet(&["status", "--json"])?)?)
    }

    /// One packet counter from `podnet status`.
    pub fn counter(&self, reason: &str) -> anyhow::Result<u64> {
        let status = self.status()?;
        status["counters"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["reason"] == reason))
            .and_then(|c| c["packets"].as_u64())
            .with_context(|| format!("no counter {reason} in {status}"))
    }

    /// The iptables/br_netfilter lockdown of a Kubernetes node: bridged IPv4 goes through
    /// iptables, and FORWARD drops by default, so only the eBPF datapath can carry pod traffic.
    pub fn forward_drop(&self) -> anyhow::Result<()> {
        sh(&self.netns, "iptables", &["-P", "FORWARD", "DROP"])?;
        sh(&self.netns, "sysctl", &["-qw", "net.bridge.bridge-nf-call-iptables=1"])?;
        Ok(())
    }

    /// Pod namespace name of pod `pod` under the default naming.
    pub fn pod_ns(&self, pod: &str) -> String {
        format!("{}-{pod}", self.name)
    }

    /// The node's pin directory.
    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from("/sys/fs/bpf/podnet").join(&self.name)
    }

    /// Where the node's agent listens.
    pub fn agent_socket(&self) -> PathBuf {
        PathBuf::from("/run/podnet").join(format!("{}.sock", self.name))
    }
}

/// The uplink XDP modes every cross-node and NAT scenario runs in: `[uplink] xdp`, and
/// "generic+deliver" for `xdp = "generic"` with `xdp_deliver = true` (native delivery is refused
/// on veth uplinks, which is all a lab has).
pub const XDP_MODES: [&str; 4] = ["off", "native", "generic", "generic+deliver"];

/// Runs `scenario` once in each of [`XDP_MODES`], naming the mode in any failure.
pub fn in_every_xdp_mode(scenario: impl Fn(&str) -> anyhow::Result<()>) -> anyhow::Result<()> {
    XDP_MODES.iter().try_for_each(|xdp| scenario(xdp).with_context(|| format!("uplink xdp = {xdp}")))
}

/// Config body of node `k` of a lab cluster: pods 10.1.k.2 and 10.1.k.3, uplink `eth0` with
/// 192.168.50.k and XDP mode `xdp` (one of [`XDP_MODES`]), peering with the nodes numbered in
/// `peers`.
pub fn node_config(k: u8, peers: &[u8], xdp: &str) -> String {
    let (xdp, deliver) = xdp.split_once("+deliver").map_or((xdp, false), |(mode, _)| (mode, true));
    let mut c = format!(
        "pod_cidr = \"10.1.{k}.0/24\"\n\n[uplink]\ninterface = \"eth0\"\nip = \"192.168.50.{k}\"\nxdp = \"{xdp}\"\n\
         xdp_deliver = {deliver}\n\n\
         [[pod]]\nname = \"pod1\"\nip = \"10.1.{k}.2\"\n\n[[pod]]\nname = \"pod2\"\nip = \"10.1.{k}.3\"\n"
    );
    for p in peers {
        c += &format!(
            "\n[[peer]]\nname = \"node{p}\"\nip = \"192.168.50.{p}\"\npod_cidr = \"10.1.{p}.0/24\"\n"
        );
    }
    c
}

/// Nodes on one switch, made by [`cluster`].
#[derive(Debug)]
pub struct Cluster {
    /// The switch namespace, to plug more hosts into.
    pub switch: String,
    pub nodes: Vec<Node>,
}

/// Nodes `<tag>node1`, `<tag>node2`, ... on one switch, node k peering with the nodes listed in
/// `peers[k - 1]`, uplink XDP in mode `xdp`, all up.
pub fn cluster(lab: &mut Lab, tag: &str, peers: &[&[u8]], xdp: &str) -> anyhow::Result<Cluster> {
    let switch = lab.switch(&format!("{tag}sw"))?;
    let mut nodes = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        let k = i as u8 + 1;
        let node = lab.node(&format!("{tag}node{k}"), &node_config(k, p, xdp))?;
        lab.plug(&switch, &node.netns, &format!("port{k}"), &format!("192.168.50.{k}/24"))?;
        node.run_podnet(&["up"])?;
        nodes.push(node);
    }
    Ok(Cluster { switch, nodes })
}

fn count_captured(ns: &str, pcap: &str, filter: &str) -> anyhow::Result<usize> {
    let out = in_ns(ns, "tcpdump")
        .args(["-n", "-r", pcap])
        .args((!filter.is_empty()).then_some(filter))
        .output()?;
    anyhow::ensure!(out.status.success(), "tcpdump -r {pcap}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).lines().count())
}

/// Index and MAC of interface `ifname` in namespace `ns`.
pub fn link(ns: &str, ifname: &str) -> anyhow::Result<(u32, [u8; 6])> {
    let json: serde_json::Value = serde_json::from_str(&sh(ns, "ip", &["-j", "link", "show", ifname])?)?;
    let mac: Vec<u8> = json[0]["address"]
        .as_str()
        .with_context(|| format!("{ifname} has a MAC"))?
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()?;
    let index = json[0]["ifindex"].as_u64().with_context(|| format!("{ifname} ifindex"))? as u32;
    Ok((index, mac.try_into().map_err(|_| anyhow::anyhow!("{ifname}: MAC length"))?))
}

/// Namespaces whose name starts with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let list = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    String::from_utf8_lossy(&list)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for node in &self.nodes {
            let _ = node.podnet(&["down"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
            let _ = std::fs::remove_dir_all(node.pin_dir());
            // A killed agent leaves its socket; lock files stay by design (removing a lock file
            // someone may be waiting on is a race), so the lab removes its nodes' ones.
            let _ = std::fs::remove_file(node.agent_socket());
            let _ = std::fs::remove_file(node.agent_socket().with_extension("lock"));
            let _ = std::fs::remove_file(node.agent_socket().with_extension("agent.lock"));
            let _ = std::fs::remove_file(node.agent_socket().with_extension("monitor.lock"));
        }
        for dir in ["/sys/fs/bpf/podnet", "/run/podnet", "/var/lib/podnet"] {
            // Only when no other lab's node is left in them.
            let _ = std::fs::remove_dir(dir);
        }
        for ns in namespaces_with_prefix(&self.prefix) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(memory) = self.memory_root() {
            let _ = std::fs::remove_dir_all(memory);
        }
    }
}

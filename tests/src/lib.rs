//! A lab of network namespaces for podnet's end-to-end tests and demo: node namespaces, the
//! `podnet` binary run as each node, processes inside pods, and teardown that runs even when a
//! test panics. Everything lives in namespaces the lab creates; the root namespace is never
//! touched.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
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

/// Runs `cmd` with `input` on its stdin and returns its output, killing it (and failing) when it
/// has not finished within `deadline`: a hung command fails its test instead of stalling the
/// suite.
pub fn output_within(cmd: &mut Command, input: &[u8], deadline: Duration) -> anyhow::Result<Output> {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    // Small inputs fit the pipe: written at once, then closed. The outputs are read as they
    // come, so a command that writes more than a pipe holds does not block on it.
    child.stdin.take().context("stdin")?.write_all(input)?;
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let until = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {deadline:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let joined =
        |t: std::thread::JoinHandle<Vec<u8>>| t.join().map_err(|_| anyhow::anyhow!("a reader panicked"));
    Ok(Output { status, stdout: joined(stdout)?, stderr: joined(stderr)? })
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

/// Whether `ping` from `ns` to `ip` gets an answer to every one of `count` requests (each waited
/// for at most 1 s): one lost is a failure.
pub fn pings(ns: &str, ip: &str, count: u32) -> bool {
    replies(ns, ip, count) == count
}

/// How many of `count` pings from `ns` to `ip` are answered (each waited for at most 1 s).
pub fn replies(ns: &str, ip: &str, count: u32) -> u32 {
    let Ok(out) =
        in_ns(ns, "ping").args(["-c", &count.to_string(), "-W", "1", "-i", "0.2", "-q", ip]).output()
    else {
        return 0;
    };
    // "3 packets transmitted, 2 received, 33% packet loss, time 402ms"
    let text = String::from_utf8_lossy(&out.stdout);
    let received = text.lines().find_map(|l| {
        let (sent, rest) = l.split_once(" packets transmitted, ")?;
        (sent.trim().parse::<u32>().ok()? == count).then_some(())?;
        rest.split(' ').next()?.parse().ok()
    });
    received.unwrap_or(0)
}

/// Waits until something listens on TCP `port` in `ns` (at most 10 s).
pub fn wait_listening(ns: &str, port: u16) -> anyhow::Result<()> {
    wait_socket(ns, "-Hltn", port)
}

/// Waits until a UDP socket is bound to `port` in `ns` (at most 10 s).
pub fn wait_udp_bound(ns: &str, port: u16) -> anyhow::Result<()> {
    wait_socket(ns, "-Hlun", port)
}

fn wait_socket(ns: &str, ss_flags: &str, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let listening = sh(ns, "ss", &[ss_flags, &format!("sport = :{port}")])?;
        if !listening.trim().is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing bound port {port} ({ss_flags}) in {ns} after 10 s")
}

/// Polls `check` every 50 ms until it gives a value, for at most `deadline`; `what` names what
/// was waited for when it never came.
pub fn wait_for<T>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let until = Instant::now() + deadline;
    loop {
        if let Some(found) = check()? {
            return Ok(found);
        }
        anyhow::ensure!(Instant::now() < until, "{what}: not within {deadline:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The packet loss a `ping -q` summary reports, in percent.
pub fn ping_loss(summary: &str) -> Option<f64> {
    // "400 packets transmitted, 400 received, 0% packet loss, time 4010ms"
    let line = summary.lines().find(|l| l.contains("% packet loss"))?;
    let field = line.split(", ").find(|f| f.ends_with("% packet loss"))?;
    field.trim_end_matches("% packet loss").trim().parse().ok()
}

/// GETs `url` from inside `ns` and returns the body.
pub fn http_get(ns: &str, url: &str) -> anyhow::Result<String> {
    sh(ns, "curl", &["-sS", "--fail", "--max-time", "5", url])
}

/// Summary of an iperf3 client run.
#[derive(Debug, Clone)]
pub struct Iperf {
    pub bytes: u64,
    pub bits_per_second: f64,
    pub retransmits: u64,
    /// Bytes sent in each interval and its length in seconds (one second, but for a short last
    /// one): a stall shows as an interval with (almost) nothing, which the total hides.
    pub intervals: Vec<(u64, f64)>,
}

/// Runs an iperf3 TCP client in `ns` against `server:port` for `seconds` (cubic, as the
/// benchmark notes require) and parses its JSON report.
pub fn iperf3_tcp(ns: &str, server: &str, port: u16, seconds: u32) -> anyhow::Result<Iperf> {
    iperf3_tcp_at(ns, server, port, seconds, "0")
}

/// [`iperf3_tcp`] at most at `bitrate` (iperf3's `-b`, e.g. "2G"; "0": as fast as it goes). A
/// stream that checks something else than speed leaves the CPUs to what it checks.
pub fn iperf3_tcp_at(
    ns: &str,
    server: &str,
    port: u16,
    seconds: u32,
    bitrate: &str,
) -> anyhow::Result<Iperf> {
    let (port, seconds) = (port.to_string(), seconds.to_string());
    let out =
        sh(ns, "iperf3", &["-c", server, "-p", &port, "-t", &seconds, "-b", bitrate, "-C", "cubic", "-J"])?;
    let json: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    let sent = &json["end"]["sum_sent"];
    let intervals = json["intervals"]
        .as_array()
        .context("iperf3: no intervals")?
        .iter()
        .map(|i| {
            let bytes = i["sum"]["bytes"].as_u64().context("iperf3: an interval without bytes")?;
            Ok((bytes, i["sum"]["seconds"].as_f64().context("iperf3: an interval without seconds")?))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Iperf {
        bytes: sent["bytes"].as_u64().context("iperf3: no end.sum_sent.bytes")?,
        bits_per_second: sent["bits_per_second"].as_f64().unwrap_or(0.0),
        retransmits: sent["retransmits"].as_u64().unwrap_or(0),
        intervals,
    })
}

impl Iperf {
    /// Fails unless every interval moved at least `min_bytes` a second: the flow never stopped,
    /// however long. A last interval shorter than half a second is too short to judge.
    pub fn never_stalled(&self, what: &str, min_bytes: u64) -> anyhow::Result<()> {
        let judged: Vec<&(u64, f64)> = self.intervals.iter().filter(|(_, secs)| *secs >= 0.5).collect();
        anyhow::ensure!(
            !judged.is_empty()
                && judged.iter().all(|&&(bytes, secs)| bytes as f64 >= min_bytes as f64 * secs),
            "{what}: a second moved less than {min_bytes} bytes: {:?} bytes a second, {} retransmits",
            self.intervals,
            self.retransmits
        );
        Ok(())
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);
/// Labs alive in this process (see the end of `Drop for Lab`).
static LIVE_LABS: Mutex<usize> = Mutex::new(0);

/// One test's namespaces, files and processes, all named with a unique prefix and all removed
/// on drop (also when the test panics).
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    dir: PathBuf,
    namespaces: Vec<String>,
    nodes: Vec<Node>,
    children: Vec<Proc>,
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
        *LIVE_LABS.lock().unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
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
    /// ("" for all) now. To show that something did not arrive, a test sends a control last on
    /// the same path and waits for it ([`Self::wait_captured`]) before it counts.
    pub fn count(&self, ns: &str, pcap: &str, filter: &str) -> anyhow::Result<usize> {
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
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        Ok(self.own(cmd, None)?.pid)
    }

    /// Starts `cmd` (in a namespace with [`in_ns`]) with its output going to a file of the lab,
    /// and returns a handle to watch it and collect its output; the lab kills it when it is
    /// dropped, whatever happens to the test.
    pub fn child(&mut self, cmd: &mut Command) -> anyhow::Result<Proc> {
        let n = self.children.len();
        let out = (self.dir.join(format!("proc-{n}.out")), self.dir.join(format!("proc-{n}.err")));
        cmd.stdout(std::fs::File::create(&out.0)?).stderr(std::fs::File::create(&out.1)?);
        self.own(cmd, Some(out))
    }

    fn own(&mut self, cmd: &mut Command, out: Option<(PathBuf, PathBuf)>) -> anyhow::Result<Proc> {
        let child = cmd.stdin(Stdio::null()).spawn().with_context(|| format!("cannot start {cmd:?}"))?;
        let proc = Proc { pid: child.id(), child: Arc::new(Mutex::new(child)), out };
        self.children.push(proc.clone());
        Ok(proc)
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
        cmd.args(args).stdout(Stdio::null()).stderr(log);
        let pid = self.own(&mut cmd, None)?.pid;
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

    /// Starts a fast ping (every 10 ms, for `seconds`) from `ns` to `ip`; its summary (see
    /// [`ping_loss`]) tells whether anything was lost while it ran.
    pub fn fast_ping(&mut self, ns: &str, ip: &str, seconds: u32) -> anyhow::Result<Proc> {
        let count = (seconds * 100).to_string();
        self.child(in_ns(ns, "ping").args(["-c", &count, "-i", "0.01", "-W", "1", "-q", ip]))
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

/// A process a [`Lab`] started and owns (see [`Lab::child`]).
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: u32,
    child: Arc<Mutex<Child>>,
    /// Where its stdout and its stderr go, when they are kept.
    out: Option<(PathBuf, PathBuf)>,
}

impl Proc {
    fn lock(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether it has not exited yet.
    pub fn running(&self) -> bool {
        matches!(self.lock().try_wait(), Ok(None))
    }

    /// Waits (at most `deadline`) until it exits; kills it and fails when it does not.
    pub fn wait(&self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.lock().try_wait()? {
                return Ok(status);
            }
            if Instant::now() > until {
                self.kill();
                bail!("process {} did not exit within {deadline:?}; killed", self.pid);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (at most `deadline`) until it exits, and returns what it wrote on stdout.
    pub fn wait_output(&self, deadline: Duration) -> anyhow::Result<String> {
        self.wait(deadline)?;
        self.output()
    }

    /// What it wrote on stdout so far.
    pub fn output(&self) -> anyhow::Result<String> {
        let (stdout, _) = self.out.as_ref().context("its output is not kept (see Lab::child)")?;
        Ok(std::fs::read_to_string(stdout)?)
    }

    /// What it wrote on stderr so far (its log, for podnet).
    pub fn errors(&self) -> anyhow::Result<String> {
        let (_, stderr) = self.out.as_ref().context("its output is not kept (see Lab::child)")?;
        Ok(std::fs::read_to_string(stderr)?)
    }

    /// Kills it (if it still runs) and reaps it.
    pub fn kill(&self) {
        let mut child = self.lock();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// How many CPUs the kernel has per-CPU map slots for (`/sys/devices/system/cpu/possible`).
pub fn possible_cpus() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    text.trim()
        .split(',')
        .map(|range| {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            Ok(b.parse::<u64>()? - a.parse::<u64>()? + 1)
        })
        .sum()
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

    /// `bpftool map dump` of the node's pinned map `name`, as bpftool's JSON.
    pub fn map_dump(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        let path = self.pin_dir().join(name);
        let path = path.to_str().context("utf-8 path")?;
        Ok(serde_json::from_str(&bpftool(&["-j", "map", "dump", "pinned", path])?)?)
    }

    /// Where the node's agent listens.
    pub fn agent_socket(&self) -> PathBuf {
        PathBuf::from("/run/podnet").join(format!("{}.sock", self.name))
    }
}

/// Runs bpftool (outside `ip netns exec`, whose private mount namespace hides bpffs) and returns
/// its output.
pub fn bpftool<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> anyhow::Result<String> {
    let out = run(Command::new("bpftool").args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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
        for proc in &self.children {
            proc.kill();
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
        // The shared parents go with the process's last lab only: another lab of this process
        // may be about to use them (a node's lock file, its pins), and removing an empty
        // directory under it would fail its next step.
        let mut live = LIVE_LABS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *live -= 1;
        if *live == 0 {
            for dir in ["/sys/fs/bpf/podnet", "/run/podnet", "/var/lib/podnet"] {
                let _ = std::fs::remove_dir(dir);
            }
        }
        drop(live);
        for ns in namespaces_with_prefix(&self.prefix) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(memory) = self.memory_root() {
            let _ = std::fs::remove_dir_all(memory);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lab's own checks can fail: a path that loses some pings fails `pings` (which a single
    /// answer used to satisfy), and a fast ping reports the loss.
    #[test]
    fn a_lossy_path_fails_pings() -> anyhow::Result<()> {
        let mut lab = Lab::new("lossy")?;
        let (a, b) = (lab.netns("a")?, lab.netns("b")?);
        sh(&a, "ip", &["link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", &b])?;
        for (ns, ip) in [(&a, "10.9.9.1/24"), (&b, "10.9.9.2/24")] {
            sh(ns, "ip", &["addr", "add", ip, "dev", "veth0"])?;
            sh(ns, "ip", &["link", "set", "veth0", "up"])?;
        }
        assert!(pings(&a, "10.9.9.2", 3), "a clean path answers every ping");
        // b drops half of the echo requests it gets.
        sh(
            &b,
            "iptables",
            &[
                "-A",
                "INPUT",
                "-p",
                "icmp",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                "0.5",
                "-j",
                "DROP",
            ],
        )?;
        let answered = replies(&a, "10.9.9.2", 20);
        assert!(answered > 0 && answered < 20, "{answered} of 20 answered");
        assert!(!pings(&a, "10.9.9.2", 20), "20 pings with losses are not 20 answers");
        let summary = lab.fast_ping(&a, "10.9.9.2", 1)?.wait_output(Duration::from_secs(10))?;
        assert!(ping_loss(&summary).is_some_and(|loss| loss > 0.0), "{summary}");
        Ok(())
    }
}

//! Command-line interface.

use std::{net::Ipv4Addr, path::PathBuf};

use clap::{Parser, Subcommand};
use ipnet::Ipv4Net;
use podnet::datapath::EbpfLog;

/// podnet: Kubernetes-style pod networking with an eBPF datapath.
///
/// podnet builds the classic pod plumbing over netlink (a namespace per pod, a veth pair into the
/// node bridge, addresses, a default route via the bridge gateway, routes to other nodes' pods,
/// ip_forward) and then forwards pod traffic in the kernel:
///   - a tc (tcx) program on every pod veth delivers to pods on the node with bpf_redirect_peer,
///     routes to pods on other nodes straight out of the uplink, and masquerades traffic to the
///     outside behind the node IP (its own connection tracking, no iptables);
///   - the same program first makes sure a pod can be only itself: its own IPv4 source and MAC,
///     its own ARP, nothing else (no IPv6, VLAN tags, malformed headers, martian destinations);
///   - a tc program on the uplink delivers NAT replies and traffic from peer nodes (and
///     [uplink] allow_from) into the pods, and drops what anyone else sends them;
///   - an optional XDP program on the uplink drops deny-listed sources early ([uplink] xdp), and
///     can deliver traffic from other nodes to local pods itself ([uplink] xdp_deliver); both
///     are off by default, because on veth uplinks tc is faster (BENCHMARKS.md).
///
/// State lives in BPF maps pinned under /sys/fs/bpf/podnet/<node>/, so the datapath keeps
/// running after `podnet up` exits.
///
/// Typical use on a node (see `podnet config` for the config format, with [uplink] and
/// [[peer]] for several nodes):
///
///   podnet config > node.toml      # start from the built-in two-pod config
///   podnet --config node.toml up   # build pods, attach the datapath
///   podnet --config node.toml status
///   podnet --config node.toml node add node3 --ip 192.168.50.3 --pod-cidr 10.1.3.0/24
///   podnet --config node.toml down
///
/// As a CNI plugin: put the binary (or a symlink named podnet) in the runtime's CNI bin dir and a
/// network config with {"type": "podnet", "config": "/etc/podnet/node.toml"}; the runtime runs
/// it with CNI_COMMAND set (ADD, DEL, CHECK, STATUS, GC, VERSION) and podnet attaches each
/// container like a [[pod]] of the config, with an address from its own IPAM. Run
/// `podnet agent` on the node (see `podnet agent --help`).
///
/// To drive a node that is itself a network namespace (tests, the demo), use `--netns NODE`
/// rather than `ip netns exec NODE podnet ...`: `ip netns exec` gives the command a private
/// /sys, and pins made there would vanish with it.
#[derive(Debug, Parser)]
#[command(name = "podnet", version, verbatim_doc_comment)]
pub struct Cli {
    /// Node configuration (TOML). Default: the built-in config printed by `podnet config`.
    #[arg(long, short, global = true, value_name = "FILE", env = "PODNET_CONFIG")]
    pub config: Option<PathBuf>,

    /// Run inside the named network namespace (/run/netns/NODE) as the node.
    #[arg(long, global = true, value_name = "NODE", env = "PODNET_NETNS")]
    pub netns: Option<String>,

    /// More log output (-v: debug, -vv: trace). Also RUST_LOG.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the node's pods and attach the eBPF datapath; make a running node match its config.
    ///
    /// Creates what is missing (bridge with the gateway address, pod namespaces without IPv6,
    /// veth pairs with the pods' MTU, addresses, default routes), enables ip_forward, reserves the
    /// NAT port range from the node's sockets, mounts bpffs if needed, loads the programs,
    /// attaches `from_pod` at tcx ingress of every host-side pod veth, fills the endpoint map and
    /// pins maps and links under /sys/fs/bpf/podnet/<node>/. Safe to re-run: with the same config
    /// nothing changes; programs are swapped atomically inside their existing links. With a
    /// changed config the node follows it: removed pods and peers go, a pod's new address
    /// replaces its old one, translations made under an old node IP or port range go. Maps pinned
    /// by an older podnet are migrated in place while traffic flows. If a step fails, everything
    /// this run created is removed again.
    Up,
    /// Remove everything `up` and the CNI plugin made, and nothing else.
    ///
    /// Every pod's veth (containers lose their podnet interface), the namespaces podnet made,
    /// pinned links (detaching the programs) and maps, peer routes and the IPAM state; the bridge
    /// (or only the gateway address, on a bridge podnet found), ip_forward and the NAT port
    /// reservation only where `up` made or changed them (recorded in <state_dir>/<node>/node.json).
    /// Safe to run twice, after a failed `up`, or on a node never up. Refused while the agent
    /// runs: stop it first.
    ///
    /// It needs only the node's name and state. A config that no longer loads (an upgrade
    /// renamed a field) is used as far as it can be: its [node], [uplink] and [cluster] alone
    /// (to give the etcd lease back), or just [node] name and state_dir; podnet says what it
    /// ignored. With --node NAME no config is read at all (a [cluster] node's lease then runs
    /// out by itself within lease_ttl).
    Down {
        /// Take down the node called NAME from its state alone, without a config.
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        /// With --node: the node's state_dir.
        #[arg(long, value_name = "DIR", requires = "node", default_value = podnet::config::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Show endpoints (with each pod's traffic), peers, attached programs, per-reason packet
    /// counters and NAT table use.
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Refresh every --interval seconds, with each counter's rate (packets/s) beside it;
        /// with --json, one JSON object a line. Ctrl-C stops it.
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes with --watch.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval: u64,
    },
    /// Live events from the datapath: every dropped packet (reason, interface or pod, protocol,
    /// addresses and ports) and the first packet of every new NAT translation.
    ///
    /// Read from the datapath's EVENTS ring buffer, one reader at a time. The programs write
    /// events only while a monitor runs, at most 1000 a second per CPU (so a flood of drops
    /// cannot swamp the ring or this reader); events held back or lost are counted and reported
    /// ("lost N event(s)"). Counters in `podnet status` count every packet regardless.
    ///
    ///   podnet monitor                 # everything, one line per event
    ///   podnet monitor --drops --pod pod1
    ///   podnet monitor --json | jq .   # JSON lines
    #[command(verbatim_doc_comment)]
    Monitor {
        /// Only drops (no new translations).
        #[arg(long)]
        drops: bool,
        /// Only events of this pod (as `status` names it, or its IP): on its veth, or from or to
        /// its address.
        #[arg(long, value_name = "NAME|IP")]
        pod: Option<String>,
        /// JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Reload the programs with log lines up to LEVEL (drops at info, new NAT translations at
    /// debug), printed by the running agent (target "ebpf" in its log).
    ///
    /// The level is fixed when the programs load (a constant, so logging that is off costs
    /// nothing); this swaps freshly loaded programs into the existing links, as `up` does, with
    /// no gap. Lines are rate-limited like monitor events. Needs the agent: it is the one that
    /// prints them.
    EbpfLog {
        #[arg(value_enum)]
        level: EbpfLog,
    },
    /// Print the built-in configuration, a commented template for `--config`.
    Config,
    /// Add or remove peer nodes at runtime (peer map and kernel route; nothing restarts).
    ///
    /// Peers added here last until `down`; put them in the config's [[peer]] list to keep them
    /// across `down`/`up`.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Inspect and clear masquerade translations (pod traffic to the outside, SNAT to the node IP).
    #[command(subcommand)]
    Nat(NatCommand),
    /// Manage the uplink's deny list: sources dropped by the XDP prefilter before any other work
    /// (needs [uplink] xdp = "native" or "generic").
    #[command(subcommand)]
    Deny(DenyCommand),
    /// The node daemon: bring the node up, then serve the node's changes and expire idle NAT
    /// translations until SIGTERM.
    ///
    /// Brings the node up from its config as `up` does, then listens on
    /// /run/podnet/<node>.sock: while it runs, the CLI's state-changing verbs (up, node add|del,
    /// deny add|del, nat flush|gc) and the CNI plugin hand their changes to it, and it applies
    /// them one at a time under the node lock (it is the single writer of the node's maps).
    /// `up` through the agent re-reads the agent's own config file. Every --interval seconds it
    /// removes translations idle longer than the config's [nat] timeouts. SIGTERM or SIGINT stops
    /// it without detaching anything: the pinned datapath keeps forwarding, and the next agent
    /// (after a crash or an upgrade) picks the pinned state up. Run it under your service manager
    /// on every node; without it the CLI and the CNI plugin change the pinned state directly.
    ///
    /// With [agent] metrics = "ADDR:PORT" it serves GET /metrics in the Prometheus text format:
    /// packets by reason, per-pod packets and bytes, NAT translations, table and port use, its
    /// sweeps, peers, attached programs, events (README, "Metrics").
    ///
    /// With a [cluster] section it first joins the cluster through etcd: it leases the node's
    /// pod CIDR (node.pod_cidr, or a free one of cluster_cidr, kept across restarts in
    /// <state_dir>/<node>/lease.json) under an etcd lease it keeps alive, then follows the other
    /// nodes' leases: a node that joins becomes a peer, one whose lease runs out goes. While etcd
    /// is unreachable nothing is removed and it retries. Keys and values: see README, "A cluster
    /// through etcd"; inspect them with `etcdctl get --prefix /podnet`.
    Agent {
        /// Seconds between NAT sweeps.
        #[arg(long, default_value_t = 5)]
        interval: u64,
        /// Log lines from the programs up to this level, in the agent's log (see `ebpf-log`).
        #[arg(long, value_enum, default_value = "off", value_name = "LEVEL")]
        ebpf_log: EbpfLog,
    },
}

#[derive(Debug, Subcommand)]
pub enum DenyCommand {
    /// Drop everything from CIDR on the uplink: `podnet deny add 203.0.113.0/24`.
    Add {
        #[arg(value_name = "CIDR", value_parser = parse_cidr)]
        cidr: Ipv4Net,
    },
    /// Stop dropping CIDR.
    Del {
        #[arg(value_name = "CIDR", value_parser = parse_cidr)]
        cidr: Ipv4Net,
    },
    /// The denied CIDRs.
    List {
        /// Print JSON instead of one CIDR a line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum NatCommand {
    /// Live translations: protocol, pod ip:port, node ip:port, remote, state, age, idle time.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove every translation now (connections through them break).
    Flush,
    /// Remove idle translations once, by the config's [nat] timeouts (what the agent does).
    Gc,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Route NAME's pod CIDR to it: `podnet node add node3 --ip 192.168.50.3 --pod-cidr 10.1.3.0/24`.
    Add {
        /// The peer's name (shown by `status`, used by `node del`).
        name: String,
        /// The peer's address on the network shared with this node's uplink.
        #[arg(long)]
        ip: Ipv4Addr,
        /// The peer's pod range.
        #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
        pod_cidr: Ipv4Net,
    },
    /// Stop routing to NAME's pods.
    Del {
        /// The peer's name.
        name: String,
    },
}

fn parse_cidr(text: &str) -> Result<Ipv4Net, String> {
    podnet::model::names::parse_cidr(text)
}

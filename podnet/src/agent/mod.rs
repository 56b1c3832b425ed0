//! `podnet agent`: the node daemon. It brings the node up from its config as `up` does, then
//! serves the node's operations ([`Op`]) on a unix socket ([`crate::api`]) one at a time, each under
//! the node lock, so while it runs it is the single writer of the node's maps: the CLI's
//! state-changing verbs and the CNI plugin hand their operations to it. Between requests it
//! expires idle NAT translations. A node of a `[cluster]` first joins it (leasing its pod CIDR)
//! and then follows it: peers come and go as the cluster's store says ([`crate::discovery`]).
//! It serves `/metrics` when `[agent] metrics` says where ([`http`], [`crate::metrics`]), and
//! prints the programs' log lines when they are loaded with a level ([`EbpfLog`]). SIGTERM or
//! SIGINT stops it without detaching anything: the datapath is pinned and keeps forwarding, the
//! node's lease runs out after its TTL unless the next agent renews it, and the next agent picks
//! the pinned state up.

mod http;

use std::{
    path::{Path, PathBuf},
    rc::Rc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::{Mutex, mpsc},
    task::LocalSet,
};
use tracing::{info, warn};

use crate::{
    api::{
        Answer, ApiError, ErrorKind, Op, PROTOCOL, Reply, Request,
        client::{RUN_DIR, socket_path},
    },
    config::{ConfigError, Draft},
    datapath::{EbpfLog, logs::LogReader, nat},
    discovery::{self, DiscoveryError, PeerSource as _, Update, etcd::Etcd},
    error_chain as chain,
    metrics::AgentCounts,
    model::{Config, PeerNode},
    node::{
        self, NodeError,
        lock::{LockError, NodeLock},
        op,
    },
};

/// How long the agent waits for a client to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request the agent reads.
const REQUEST_MAX: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("another agent already serves node {node:?} (it holds {}.agent.lock in {RUN_DIR})", node)]
    AlreadyRunning { node: String },
    #[error("could not listen on {}", socket.display())]
    Listen {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not bring the node up")]
    Up(#[source] NodeError),
    #[error("could not join the cluster")]
    Join(#[source] DiscoveryError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("could not watch for signals")]
    Signals(#[source] std::io::Error),
    #[error("could not serve metrics on {addr} (agent.metrics)")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the agent serves from: its config and the file it came from, the level the programs log
/// at and the reader of their lines, and what it counts itself.
struct Served {
    path: Option<PathBuf>,
    config: Config,
    ebpf_log: EbpfLog,
    logs: Option<LogReader>,
    counts: AgentCounts,
    /// The cluster's last view, while some peer of it is still to be set up.
    cluster_retry: Option<Vec<PeerNode>>,
}

impl Served {
    /// `up` with the programs logging at the agent's level; then follows their log lines.
    async fn up(&mut self) -> Result<(), NodeError> {
        let _lock = node_lock(&self.config.node.name).await?;
        let result = node::up(&self.config, self.ebpf_log).await;
        // Also after a failed `up`: programs already swapped log through the logger pinned now.
        self.logs = None;
        if self.ebpf_log != EbpfLog::Off {
            let pins = crate::datapath::PinDir::for_node(&self.config.node.name);
            match LogReader::open(&pins) {
                Ok(reader) => self.logs = Some(reader),
                Err(e) => warn!("agent: the programs' log lines cannot be read: {}", chain(&e)),
            }
        }
        result
    }
}

/// Runs the agent for the node in `draft` (loaded from `path`, re-read on every `up`) until
/// SIGTERM or SIGINT, sweeping NAT translations every `interval`, the programs logging up to
/// `ebpf_log`. A `[cluster]` node joins its cluster first and follows it while it runs.
pub async fn run(
    path: Option<&Path>,
    draft: Draft,
    interval: Duration,
    ebpf_log: EbpfLog,
) -> Result<(), AgentError> {
    let node = draft.node_name().to_owned();
    // Held until the agent exits (the kernel drops it on kill -9): one agent per node.
    let _agent = NodeLock::agent(&node)
        .map_err(|e| AgentError::Up(e.into()))?
        .ok_or_else(|| AgentError::AlreadyRunning { node: node.clone() })?;
    let mut source = draft.membership().map(Etcd::of).transpose().map_err(AgentError::Join)?;
    let joined = match &mut source {
        Some(source) => Some(source.join().await.map_err(AgentError::Join)?),
        None => None,
    };
    let config = draft.resolve(joined.map(|j| j.pod_cidr))?;
    let mut served = Served {
        path: path.map(Path::to_path_buf),
        config,
        ebpf_log,
        logs: None,
        counts: AgentCounts::default(),
        cluster_retry: None,
    };
    if let Err(e) = served.up().await {
        // A lease taken for this run and never used: give it back rather than hold a CIDR.
        if let (Some(source), Some(joined)) = (&mut source, joined)
            && joined.fresh
            && let Err(left) = source.leave().await
        {
            warn!("agent: could not give the new lease back (it runs out by itself): {}", chain(&left));
        }
        return Err(AgentError::Up(e));
    }
    // After `up`: the address may be one `up` makes (the gateway on the bridge). Bound once: a
    // new `[agent] metrics` takes a restart of the agent.
    let metrics = match served.config.agent.metrics {
        Some(addr) => {
            Some(TcpListener::bind(addr).await.map_err(|source| AgentError::Metrics { addr, source })?)
        }
        None => None,
    };
    let scrapes = Rc::new(http::Clients::default());
    let socket = socket_path(&node);
    let listener = listen(&socket)?;
    let (mut term, mut int) = (
        signal(SignalKind::terminate()).map_err(AgentError::Signals)?,
        signal(SignalKind::interrupt()).map_err(AgentError::Signals)?,
    );
    let served = Rc::new(Mutex::new(served));
    let (cluster_updates, mut updates) = mpsc::channel(16);
    let mut log_tick = tokio::time::interval(LOG_FLUSH);
    let mut sweep = tokio::time::interval(interval);
    // A translation table that fills up is collected at once, not at the next sweep.
    let mut watch = tokio::time::interval(PRESSURE_WATCH);
    let (mut pressure_seen, mut last_pressure_sweep) = (0, 0);
    info!(
        "agent for node {node}: serving {}, expiring idle translations every {interval:?}",
        socket.display()
    );
    // Connections are served side by side (a slow client holds up nobody); the changes they ask
    // for run one at a time.
    LocalSet::new()
        .run_until(async {
            // Without a cluster the channel closes at once and its branch below never fires.
            if let Some(source) = source {
                drop(tokio::task::spawn_local(source.follow(cluster_updates)));
            } else {
                drop(cluster_updates);
            }
            loop {
                tokio::select! {
                    Some(update) = updates.recv() => follow_cluster(update, &mut *served.lock().await).await,
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = sweep.tick() => {
                        let mut served = served.lock().await;
                        sweep_nat(&mut served, false).await;
                        if let Some(view) = served.cluster_retry.take() {
                            follow_cluster(Update::Peers(view), &mut served).await;
                        }
                    }
                    _ = log_tick.tick() => {
                        if let Some(logs) = &mut served.lock().await.logs {
                            logs.flush();
                        }
                    }
                    accepted = accept(metrics.as_ref()) => match accepted {
                        Ok((stream, peer)) => http::serve(stream, peer, served.clone(), scrapes.clone()),
                        Err(e) => accept_failed("the metrics address", &e).await,
                    },
                    _ = watch.tick() => {
                        let mut served = served.lock().await;
                        let latest = node::pins_of_running_node(&served.config.node.name)
                            .ok()
                            .and_then(|pins| nat::pressure(&pins).ok())
                            .unwrap_or(pressure_seen);
                        // At most once per PRESSURE_GAP_NS: a table that stays full (nothing
                        // droppable in it) must not keep the agent scanning.
                        if latest > pressure_seen.max(last_pressure_sweep + PRESSURE_GAP_NS) {
                            pressure_seen = latest;
                            last_pressure_sweep = latest;
                            warn!("agent: a NAT translation table is full; collecting now");
                            served.counts.pressure_sweeps += 1;
                            sweep_nat(&mut served, true).await;
                        }
                    }
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => drop(tokio::task::spawn_local(serve(stream, served.clone()))),
                        Err(e) => accept_failed(&socket.display().to_string(), &e).await,
                    },
                }
            }
        })
        .await;
    // Ours: the agent lock kept any other agent from binding it.
    let _ = std::fs::remove_file(&socket);
    info!("agent for node {node} stopped; the datapath stays attached");
    Ok(())
}

/// Binds the socket, replacing a stale one (a killed agent's: the agent lock says none runs).
fn listen(socket: &Path) -> Result<UnixListener, AgentError> {
    let err = |source| AgentError::Listen { socket: socket.to_owned(), source };
    std::fs::create_dir_all(RUN_DIR).map_err(err)?;
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let listener = UnixListener::bind(socket).map_err(err)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Answers one connection's request (at most [`REQUEST_MAX`] bytes within [`REQUEST_TIMEOUT`]).
async fn serve(mut stream: UnixStream, served: Rc<Mutex<Served>>) {
    let mut line = String::new();
    let mut reader = BufReader::new(&mut stream).take(REQUEST_MAX);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        return; // a probe (`agent_listens`), a client that gave up, or one that never wrote
    }
    let answer = match serde_json::from_str::<Request>(&line) {
        Ok(Request { protocol, .. }) if protocol != PROTOCOL => Answer::Error(ApiError::message(
            ErrorKind::Protocol,
            format!(
                "this agent speaks protocol {PROTOCOL}, the request protocol {protocol}: run the \
                 podnet that matches the agent, or restart the agent after an upgrade"
            ),
        )),
        Ok(Request { op, .. }) => {
            info!("agent: {}", line.trim());
            match handle(&op, &mut *served.lock().await).await {
                Ok(reply) => Answer::Ok(reply),
                Err(e) => Answer::Error(e),
            }
        }
        Err(e) => Answer::Error(ApiError::message(
            ErrorKind::Protocol,
            format!("not a podnet request of protocol {PROTOCOL} (at most {REQUEST_MAX} bytes of JSON): {e}"),
        )),
    };
    let Ok(mut out) = serde_json::to_vec(&answer) else {
        warn!("agent: could not write its answer as JSON");
        return;
    };
    out.push(b'\n');
    if let Err(e) = stream.write_all(&out).await {
        warn!("agent: could not answer: {e}");
    }
}

/// Runs `op` under the node lock; `up` first re-reads the agent's config file, and refuses
/// another file than the one the agent serves; `ebpf-log` reloads the programs at a new level.
async fn handle(op: &Op, served: &mut Served) -> Result<Reply, ApiError> {
    if let Op::EbpfLog { level } = op {
        let before = std::mem::replace(&mut served.ebpf_log, *level);
        if let Err(e) = served.up().await {
            served.ebpf_log = before;
            return Err(e.to_api());
        }
        info!("agent: the programs now log up to {level:?}");
        return Ok(Reply::Done);
    }
    if let Op::Up { config: asked } = op {
        let canonical =
            |p: &Option<PathBuf>| p.as_ref().map(|p| p.canonicalize().unwrap_or_else(|_| p.clone()));
        if canonical(asked) != canonical(&served.path) {
            let serving =
                served.path.as_ref().map_or("the built-in config".to_owned(), |p| p.display().to_string());
            return Err(ApiError::message(
                ErrorKind::Refused,
                format!(
                    "it serves node {} from {serving}: run `up` with that file, or restart it with \
                     the new one",
                    served.config.node.name
                ),
            ));
        }
        served.config = load(served.path.as_deref()).map_err(|e| ApiError::new(ErrorKind::Invalid, &e))?;
        served.up().await.map_err(|e| e.to_api())?;
        return Ok(Reply::Done);
    }
    let _lock = node_lock(&served.config.node.name).await.map_err(|e| e.to_api())?;
    op::execute(&served.config, op).await.map_err(|e| e.to_api())
}

/// The config at `path` (or the built-in one), with the pod CIDR the node leased.
fn load(path: Option<&Path>) -> Result<Config, DiscoveryError> {
    discovery::resolve(&Draft::load(path)?)
}

/// A failed accept (out of file descriptors, say): said, then a pause, or the loop would spin
/// on it.
async fn accept_failed(what: &str, e: &std::io::Error) {
    warn!("agent: accept on {what}: {e}; pausing accepts for {ACCEPT_PAUSE:?}");
    tokio::time::sleep(ACCEPT_PAUSE).await;
}

const ACCEPT_PAUSE: Duration = Duration::from_millis(500);

/// The next connection to the metrics address; never, without one.
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Makes the node what the cluster says: its peers, or (after its lease was lost and another
/// CIDR leased) its pod CIDR. A view some peer of which could not be set up for now is tried
/// again at the next sweep.
async fn follow_cluster(update: Update, served: &mut Served) {
    let result = async {
        match update {
            Update::Peers(view) => {
                let _lock = node_lock(&served.config.node.name).await?;
                let retry = node::set_cluster_peers(&served.config, &view).await?;
                served.cluster_retry = retry.then_some(view);
                Ok(())
            }
            Update::PodCidr(cidr) => {
                let config = Draft::load(served.path.as_deref()).and_then(|draft| draft.resolve(Some(cidr)));
                served.config =
                    config.map_err(|e| NodeError::Agent(ApiError::new(ErrorKind::Invalid, &e)))?;
                served.up().await
            }
        }
    };
    if let Err(e) = result.await {
        warn!("agent: following the cluster: {}", chain(&e));
    }
}

/// The node lock, waited for off the runtime's thread.
async fn node_lock(node: &str) -> Result<NodeLock, NodeError> {
    let node = node.to_owned();
    let waited = tokio::task::spawn_blocking(move || NodeLock::acquire(&node)).await;
    Ok(waited.map_err(|source| LockError::Wait { source })??)
}

/// How often the agent looks whether the datapath found a translation table full.
const PRESSURE_WATCH: Duration = Duration::from_millis(200);
/// Least time between two collections for pressure (`bpf_ktime_get_ns` units).
const PRESSURE_GAP_NS: u64 = 1_000_000_000;

/// How often the agent prints the programs' log lines.
const LOG_FLUSH: Duration = Duration::from_millis(200);

async fn sweep_nat(served: &mut Served, pressure: bool) {
    let config = &served.config;
    if !config.nat.enabled {
        return;
    }
    let result = async {
        let _lock = node_lock(&config.node.name).await?;
        let pins = node::pins_of_running_node(&config.node.name)?;
        Ok::<_, NodeError>(nat::gc(&pins, &config.nat.timeouts, pressure)?)
    };
    match result.await {
        Ok(collected) => {
            let counts = &mut served.counts;
            counts.gc_runs += 1;
            counts.gc_expired += collected.expired as u64;
            counts.gc_orphans += collected.orphans as u64;
            counts.gc_early += collected.early as u64;
            if collected.expired + collected.orphans + collected.early > 0 {
                info!(
                    "agent: removed {} expired, {} orphaned and {} unanswered (under pressure) translation(s)",
                    collected.expired, collected.orphans, collected.early
                );
            }
        }
        Err(e) => warn!("agent: NAT sweep: {}", chain(&e)),
    }
}

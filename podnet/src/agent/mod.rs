//! `podnet agent`: the node daemon. It brings the node up from its config as `up` does, then
//! serves the node's operations ([`Op`]) on a unix socket ([`api`]) one at a time, each under
//! the node lock, so while it runs it is the single writer of the node's maps: the CLI's
//! state-changing verbs and the CNI plugin hand their operations to it. Between requests it
//! expires idle NAT translations. SIGTERM or SIGINT stops it without detaching anything: the
//! datapath is pinned and keeps forwarding, and the next agent picks the pinned state up.

pub mod api;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
};
use tracing::{info, warn};

use self::api::{Answer, socket_path};
use crate::{
    config::Config,
    error_chain as chain,
    node::{
        NodeError,
        lock::{NodeLock, RUN_DIR},
        op::{self, Op},
    },
};

/// How long the agent waits for a client to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("another agent already serves node {node:?} on {}", socket.display())]
    AlreadyRunning { node: String, socket: PathBuf },
    #[error("could not listen on {}", socket.display())]
    Listen {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not bring the node up")]
    Up(#[source] NodeError),
    #[error("could not watch for signals")]
    Signals(#[source] std::io::Error),
}

/// Runs the agent for the node in `config` (loaded from `path`, re-read on every `up`) until
/// SIGTERM or SIGINT, sweeping NAT translations every `interval`.
pub async fn run(path: Option<&Path>, config: Config, interval: Duration) -> Result<(), AgentError> {
    let node = config.node.name.clone();
    let socket = socket_path(&node);
    if api::agent_listens(&node).await {
        return Err(AgentError::AlreadyRunning { node, socket });
    }
    {
        let _lock = NodeLock::acquire(&node).map_err(|e| AgentError::Up(e.into()))?;
        op::execute(&config, &Op::Up).await.map_err(AgentError::Up)?;
    }
    let listener = listen(&socket)?;
    let mut config = config;
    let (mut term, mut int) = (
        signal(SignalKind::terminate()).map_err(AgentError::Signals)?,
        signal(SignalKind::interrupt()).map_err(AgentError::Signals)?,
    );
    let mut sweep = tokio::time::interval(interval);
    info!(
        "agent for node {node}: serving {}, expiring idle translations every {interval:?}",
        socket.display()
    );
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = sweep.tick() => sweep_nat(&config).await,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => serve(stream, path, &mut config).await,
                Err(e) => warn!("agent: accept on {}: {e}", socket.display()),
            },
        }
    }
    // Only our own socket: a newer agent may have replaced it.
    let _ = std::fs::remove_file(&socket);
    info!("agent for node {node} stopped; the datapath stays attached");
    Ok(())
}

/// Binds the socket, replacing a stale one (a killed agent's) but never a live agent's.
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

/// Answers one connection's request.
async fn serve(mut stream: UnixStream, path: Option<&Path>, config: &mut Config) {
    let mut line = String::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, BufReader::new(&mut stream).read_line(&mut line)).await;
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        return; // a probe (`agent_listens`) or a client that gave up
    }
    let answer = match serde_json::from_str::<Op>(&line) {
        Ok(op) => {
            info!("agent: {}", line.trim());
            match handle(&op, path, config).await {
                Ok(value) => Answer::Ok(value),
                Err(e) => Answer::Error(chain(&e)),
            }
        }
        Err(e) => Answer::Error(format!("not a podnet request: {e}")),
    };
    let mut out = serde_json::to_vec(&answer).expect("an answer serializes");
    out.push(b'\n');
    if let Err(e) = stream.write_all(&out).await {
        warn!("agent: could not answer: {e}");
    }
}

/// Runs `op` under the node lock; `up` first re-reads the config file.
async fn handle(op: &Op, path: Option<&Path>, config: &mut Config) -> Result<Value, NodeError> {
    if *op == Op::Up {
        match Config::load(path) {
            Ok(fresh) => *config = fresh,
            Err(e) => return Err(NodeError::Agent { message: chain(&e) }),
        }
    }
    let _lock = NodeLock::acquire(&config.node.name)?;
    op::execute(config, op).await
}

async fn sweep_nat(config: &Config) {
    if !config.nat.enabled {
        return;
    }
    let result = async {
        let _lock = NodeLock::acquire(&config.node.name)?;
        op::execute(config, &Op::NatGc).await
    };
    match result.await {
        Ok(value) if value["removed"].as_u64().unwrap_or(0) > 0 => {
            info!("agent: removed {} idle translation(s)", value["removed"]);
        }
        Ok(_) => {}
        Err(e) => warn!("agent: NAT sweep: {}", chain(&e)),
    }
}

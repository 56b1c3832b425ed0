//! The per-node lock. Every operation that changes a node (`up`, `down`, a pod added or
//! removed by the CNI plugin, peers, the deny list, NAT flushes and sweeps) holds it, whether it
//! runs in the CLI, the CNI plugin or the agent, so two of them never interleave and neither
//! undoes the other's work. It is an `flock` on `/run/podnet/<node>.lock`: the kernel releases
//! it when its holder exits, even on `kill -9`. A waiter gives up after [`LOCK_WAIT`] with an
//! error that says so, so one change that hangs cannot hold up every other for ever.

use std::{
    fs::File,
    io,
    path::PathBuf,
    time::{Duration, Instant},
};

use nix::fcntl::{Flock, FlockArg};

use crate::api::client::RUN_DIR;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("could not open the node lock {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error(
        "node {node:?} is busy: another change has held its lock ({path}) for over {secs} s; \
         try again, or see what holds it (`fuser {path}`)"
    )]
    Busy { node: String, path: PathBuf, secs: u64 },
    #[error("the wait for the node lock ended (the agent is stopping)")]
    Wait {
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Longest wait for the node lock, unless `PODNET_LOCK_WAIT` (seconds, 1 to 3600) says
/// otherwise.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);

fn lock_wait() -> Duration {
    std::env::var("PODNET_LOCK_WAIT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| (1..=3600).contains(s))
        .map_or(LOCK_WAIT, Duration::from_secs)
}
/// How often a waiter tries again.
const LOCK_POLL: Duration = Duration::from_millis(20);

/// Held while it lives.
#[derive(Debug)]
pub struct NodeLock(#[expect(dead_code, reason = "held for its Drop, which unlocks")] Flock<File>);

impl NodeLock {
    /// Waits (at most [`LOCK_WAIT`]) until node `node` is free and takes it: a change that hangs
    /// holds up the others for that long, not for ever.
    pub fn acquire(node: &str) -> Result<Self, LockError> {
        let name = format!("{node}.lock");
        let wait = lock_wait();
        let deadline = Instant::now() + wait;
        loop {
            if let Some(held) = lock(&name, FlockArg::LockExclusiveNonblock)? {
                return Ok(held);
            }
            if Instant::now() >= deadline {
                let path = PathBuf::from(RUN_DIR).join(&name);
                return Err(LockError::Busy { node: node.to_owned(), path, secs: wait.as_secs() });
            }
            std::thread::sleep(LOCK_POLL);
        }
    }

    /// The agent's own lock on node `node`, held for the agent's whole life: `None` when another
    /// agent holds it.
    pub fn agent(node: &str) -> Result<Option<Self>, LockError> {
        lock(&format!("{node}.agent.lock"), FlockArg::LockExclusiveNonblock)
    }

    /// `podnet monitor`'s lock on node `node` (its events have one reader): `None` when another
    /// monitor holds it.
    pub fn monitor(node: &str) -> Result<Option<Self>, LockError> {
        lock(&format!("{node}.monitor.lock"), FlockArg::LockExclusiveNonblock)
    }
}

/// Locks `/run/podnet/<name>`; `None` when a non-blocking attempt finds it held.
fn lock(name: &str, how: FlockArg) -> Result<Option<NodeLock>, LockError> {
    let path = PathBuf::from(RUN_DIR).join(name);
    let open_err = |source| LockError::Open { path: path.clone(), source };
    std::fs::create_dir_all(RUN_DIR).map_err(open_err)?;
    let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(open_err)?;
    match Flock::lock(file, how) {
        Ok(held) => Ok(Some(NodeLock(held))),
        Err((_, nix::Error::EWOULDBLOCK)) => Ok(None),
        Err((_, source)) => Err(LockError::Lock { path, source }),
    }
}

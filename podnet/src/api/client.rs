//! The calling side of the agent's socket: the CLI and the CNI plugin hand operations to a
//! running agent with [`call`].

use std::{io, path::PathBuf, time::Duration};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use super::{Answer, ApiError, Op, PROTOCOL, Reply, Request};

/// Where the lock files and the agent's socket live.
pub const RUN_DIR: &str = "/run/podnet";

/// How long a client waits for the agent's answer (an `up` of a big node included).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Talking to the agent failed (not: the agent answered with an error).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the agent's socket {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the agent at {path} gave no answer within {secs} s")]
    Timeout { path: PathBuf, secs: u64 },
    #[error(
        "the agent at {path} answered something that is not a podnet answer of protocol {PROTOCOL} \
         (an agent of another podnet version? restart it after an upgrade): {text:?}"
    )]
    Garbled { path: PathBuf, text: String },
}

/// The agent's socket for node `node`.
pub fn socket_path(node: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{node}.sock"))
}

/// Asks node `node`'s agent to run `op`. `None` when no agent listens (no socket, or a stale one
/// left by an agent that was killed); otherwise what it answered.
pub async fn call(node: &str, op: &Op) -> Result<Option<Result<Reply, ApiError>>, ClientError> {
    let path = socket_path(node);
    let mut stream = match UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => {
            return Ok(None);
        }
        Err(source) => return Err(ClientError::Io { path, source }),
    };
    let exchange = async {
        let request = Request { protocol: PROTOCOL, op: op.clone() };
        let mut line = serde_json::to_vec(&request).map_err(io::Error::other)?;
        line.push(b'\n');
        stream.write_all(&line).await?;
        let mut answer = String::new();
        BufReader::new(&mut stream).read_line(&mut answer).await?;
        Ok::<_, io::Error>(answer)
    };
    let text = tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| ClientError::Timeout { path: path.clone(), secs: CALL_TIMEOUT.as_secs() })?
        .map_err(|source| ClientError::Io { path: path.clone(), source })?;
    match serde_json::from_str(&text) {
        Ok(Answer::Ok(reply)) => Ok(Some(Ok(reply))),
        Ok(Answer::Error(error)) => Ok(Some(Err(error))),
        Err(_) => Err(ClientError::Garbled { path, text }),
    }
}

/// Whether an agent answers on node `node`'s socket.
pub async fn agent_listens(node: &str) -> bool {
    UnixStream::connect(socket_path(node)).await.is_ok()
}

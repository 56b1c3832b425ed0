//! The agent's local API: a unix socket `/run/podnet/<node>.sock` (root only), one request per
//! connection: a JSON line holding an [`Op`], answered by a JSON line, `{"ok": VALUE}` or
//! `{"error": "MESSAGE"}`.

use std::{io, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use crate::node::{lock::RUN_DIR, op::Op};

/// How long a client waits for the agent's answer (an `up` of a big node included).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the agent's socket {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the agent at {path} gave no answer within {secs} s")]
    Timeout { path: PathBuf, secs: u64 },
    #[error("the agent at {path} answered something that is not a podnet answer: {text:?}")]
    Garbled { path: PathBuf, text: String },
}

/// The agent's socket for node `node`.
pub fn socket_path(node: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{node}.sock"))
}

/// One answer on the wire.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Ok(Value),
    Error(String),
}

/// Asks node `node`'s agent to run `op`. `None` when no agent listens (no socket, or a stale one
/// left by an agent that was killed); otherwise what it answered.
pub async fn call(node: &str, op: &Op) -> Result<Option<Result<Value, String>>, ApiError> {
    let path = socket_path(node);
    let mut stream = match UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => {
            return Ok(None);
        }
        Err(source) => return Err(ApiError::Io { path, source }),
    };
    let exchange = async {
        let mut line = serde_json::to_vec(op).expect("an op serializes");
        line.push(b'\n');
        stream.write_all(&line).await?;
        let mut answer = String::new();
        BufReader::new(&mut stream).read_line(&mut answer).await?;
        Ok::<_, io::Error>(answer)
    };
    let text = tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| ApiError::Timeout { path: path.clone(), secs: CALL_TIMEOUT.as_secs() })?
        .map_err(|source| ApiError::Io { path: path.clone(), source })?;
    match serde_json::from_str(&text) {
        Ok(Answer::Ok(value)) => Ok(Some(Ok(value))),
        Ok(Answer::Error(message)) => Ok(Some(Err(message))),
        Err(_) => Err(ApiError::Garbled { path, text }),
    }
}

/// Whether an agent answers on node `node`'s socket.
pub async fn agent_listens(node: &str) -> bool {
    UnixStream::connect(socket_path(node)).await.is_ok()
}

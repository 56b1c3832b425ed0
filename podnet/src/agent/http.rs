//! The agent's HTTP endpoint (`[agent] metrics`): `GET /metrics` answers the node's metrics in
//! the Prometheus text format; nothing else is served. One request per connection, read within
//! [`REQUEST_TIMEOUT`] and at most [`HEAD_MAX`] bytes of head: a client that dawdles or sends
//! junk costs a task for a few seconds, nothing more.

use std::{rc::Rc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::Mutex,
};
use tracing::{debug, warn};

use super::Served;
use crate::{
    datapath::{maps::EventMaps, nat},
    error_chain as chain,
    metrics::{self, Snapshot},
    node::{self, NodeError},
};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const HEAD_MAX: usize = 8 * 1024;
/// Metrics clients served at once; more are turned away.
pub const CLIENTS_MAX: usize = 16;

pub async fn serve(mut stream: TcpStream, served: Rc<Mutex<Served>>) {
    let Ok(Some(request_line)) = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await else {
        return;
    };
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = match (method, target.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => match scrape(&*served.lock().await) {
            Ok(text) => ("200 OK", text),
            Err(e) => {
                // The details (paths, config) are for the agent's log, not for any client.
                warn!("agent: metrics: {}", chain(&e));
                (
                    "503 Service Unavailable",
                    "podnet: the node's state cannot be read now (see the agent's log)\n".to_owned(),
                )
            }
        },
        ("GET", _) => ("404 Not Found", "podnet serves /metrics only\n".to_owned()),
        _ => ("405 Method Not Allowed", "podnet serves GET /metrics only\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    match tokio::time::timeout(REQUEST_TIMEOUT, stream.write_all(response.as_bytes())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!("agent: metrics client went away: {e}"),
        Err(_) => debug!("agent: metrics client did not read its answer within {REQUEST_TIMEOUT:?}"),
    }
}

/// The request line, once the whole head (up to the empty line) is in; `None` for a head that
/// is too long, not UTF-8, or cut short.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
        head.extend_from_slice(&chunk[..n]);
        if head.len() > HEAD_MAX {
            return None;
        }
    }
    let head = String::from_utf8(head).ok()?;
    head.lines().next().map(str::to_owned)
}

fn scrape(served: &Served) -> Result<String, NodeError> {
    let config = &served.config;
    let status = node::status(config)?;
    let pins = node::pins_of_running_node(&config.node.name)?;
    let translations = nat::list(&pins)?;
    let snapshot = Snapshot {
        status: &status,
        translations: &translations,
        nat_ports: config.nat.enabled.then_some((config.nat.port_min, config.nat.port_max)),
        events: EventMaps::open(&pins)?.totals()?,
        agent: served.counts,
    };
    Ok(metrics::render(&snapshot))
}

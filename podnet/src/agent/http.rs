//! The agent's HTTP endpoint (`[agent] metrics`), served by hyper: `GET /metrics` answers the
//! node's metrics in the Prometheus text format; nothing else is served. One request per
//! connection, its head read within [`HEADER_TIMEOUT`] (at most [`HEAD_MAX`] bytes), the whole
//! exchange over within [`CONNECTION_TIMEOUT`]; at most [`PER_CLIENT_MAX`] connections from one
//! address and [`CLIENTS_MAX`] in all. A host that opens connections and stalls them holds its
//! own few slots for a few seconds; scrapes from every other host go on.

use std::{
    cell::RefCell,
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    rc::Rc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpStream, sync::Mutex};
use tracing::{debug, warn};

use super::Served;
use crate::{
    datapath::{maps::EventMaps, nat},
    error_chain as chain,
    metrics::{self, Snapshot},
    node::{self, NodeError},
};

const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// hyper's smallest read buffer: a longer head is refused.
const HEAD_MAX: usize = 8 * 1024;
/// Metrics connections served at once from one address; more are turned away.
const PER_CLIENT_MAX: usize = 4;
/// Metrics connections served at once in all: file descriptors are the node socket's and the
/// datapath's first.
const CLIENTS_MAX: usize = 64;

/// The metrics connections open now, by client address.
#[derive(Debug, Default)]
pub struct Clients(RefCell<HashMap<IpAddr, usize>>);

impl Clients {
    /// Takes a slot for a connection from `ip`, if it has one left.
    fn admit(&self, ip: IpAddr) -> bool {
        let mut open = self.0.borrow_mut();
        let total: usize = open.values().sum();
        let from_ip = open.entry(ip).or_default();
        if *from_ip >= PER_CLIENT_MAX || total >= CLIENTS_MAX {
            return false;
        }
        *from_ip += 1;
        true
    }

    fn release(&self, ip: IpAddr) {
        let mut open = self.0.borrow_mut();
        if let Some(n) = open.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&ip);
            }
        }
    }
}

/// Serves the connection `stream` from `peer` on a task of its own, if `peer` has a slot left
/// (else it is closed at once).
pub fn serve(stream: TcpStream, peer: SocketAddr, served: Rc<Mutex<Served>>, clients: Rc<Clients>) {
    // An IPv4 client of an IPv6 socket is the same client as over IPv4.
    let ip = peer.ip().to_canonical();
    if !clients.admit(ip) {
        debug!("agent: metrics: {ip} has {PER_CLIENT_MAX} connections open (or all {CLIENTS_MAX} are taken)");
        return;
    }
    drop(tokio::task::spawn_local(async move {
        // The slot goes back however the task ends.
        let _slot = Slot { clients, ip };
        let service = service_fn(move |request| {
            let served = served.clone();
            async move { Ok::<_, Infallible>(answer(&request, &served).await) }
        });
        let mut connection = http1::Builder::new();
        connection
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .keep_alive(false)
            .max_buf_size(HEAD_MAX);
        match tokio::time::timeout(
            CONNECTION_TIMEOUT,
            connection.serve_connection(TokioIo::new(stream), service),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!("agent: metrics client {ip}: {e}"),
            Err(_) => debug!("agent: metrics client {ip} took longer than {CONNECTION_TIMEOUT:?}"),
        }
    }));
}

/// A connection's slot in [`Clients`], given back when dropped.
struct Slot {
    clients: Rc<Clients>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.clients.release(self.ip);
    }
}

async fn answer(request: &Request<Incoming>, served: &Mutex<Served>) -> Response<Full<Bytes>> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => match scrape(&*served.lock().await) {
            Ok(text) => (StatusCode::OK, text),
            Err(e) => {
                // The details (paths, config) are for the agent's log, not for any client.
                warn!("agent: metrics: {}", chain(&e));
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "podnet: the node's state cannot be read now (see the agent's log)\n".to_owned(),
                )
            }
        },
        (&Method::GET, _) => (StatusCode::NOT_FOUND, "podnet serves /metrics only\n".to_owned()),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "podnet serves GET /metrics only\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8".parse().expect("a header value"));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, "GET".parse().expect("a header value"));
    }
    response
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_holds_only_its_own_slots() {
        let clients = Clients::default();
        let (greedy, other): (IpAddr, IpAddr) =
            ("192.168.50.66".parse().unwrap(), "192.168.50.9".parse().unwrap());
        assert!((0..PER_CLIENT_MAX).all(|_| clients.admit(greedy)));
        assert!(!clients.admit(greedy), "a fifth connection from one address is turned away");
        assert!(clients.admit(other), "another address is served");
        clients.release(greedy);
        assert!(clients.admit(greedy), "a slot freed is a slot again");
        for n in 0..CLIENTS_MAX {
            clients.admit(IpAddr::from([10, 0, (n / 256) as u8, n as u8]));
        }
        assert!(!clients.admit("10.9.9.9".parse().unwrap()), "never more than CLIENTS_MAX in all");
    }
}

//! TCP connection-rate tool for the benchmark (nothing packaged here measures it):
//!
//!   conn-rate server ADDR:PORT          accept and close immediately, forever
//!   conn-rate client ADDR:PORT SECONDS  connect, wait for the server's FIN, close; repeat
//!   conn-rate flood ADDR:PORT SECONDS   send 64-byte UDP datagrams as fast as one thread can
//!
//! The client prints `{"connections": N, "seconds": S, "rate": N/S}`. The server closes first,
//! so TIME_WAIT stays on the server and the client never runs out of ports. The flood prints
//! `{"sent": N, "seconds": S, "rate": N/S}` (it is the benchmark's deny-listed attacker).

use std::{
    io::Read as _,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["server", addr] => server(addr.parse().context("ADDR:PORT")?),
        ["client", addr, seconds] => {
            client(addr.parse().context("ADDR:PORT")?, Duration::from_secs_f64(seconds.parse()?))
        }
        ["flood", addr, seconds] => {
            flood(addr.parse().context("ADDR:PORT")?, Duration::from_secs_f64(seconds.parse()?))
        }
        _ => bail!("usage: conn-rate server ADDR:PORT | client ADDR:PORT SECONDS | flood ADDR:PORT SECONDS"),
    }
}

fn server(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)?;
    for stream in listener.incoming() {
        drop(stream?);
    }
    Ok(())
}

fn client(addr: SocketAddr, length: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut connections = 0u64;
    let mut buf = [0u8; 16];
    while start.elapsed() < length {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        while stream.read(&mut buf)? != 0 {}
        connections += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"connections": connections, "seconds": seconds, "rate": connections as f64 / seconds})
    );
    Ok(())
}

fn flood(addr: SocketAddr, length: Duration) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    let payload = [0u8; 64];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < length {
        // Batches between clock reads; errors (no route yet, buffer full) just count as unsent.
        for _ in 0..256 {
            sent += u64::from(socket.send_to(&payload, addr).is_ok());
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    println!("{}", serde_json::json!({"sent": sent, "seconds": seconds, "rate": sent as f64 / seconds}));
    Ok(())
}

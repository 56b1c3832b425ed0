use std::{io::IsTerminal as _, process::ExitCode};

use anyhow::Context as _;
use clap::Parser as _;
use podnet::{
    config::{Config, PeerNode, XdpMode},
    maps::Deny,
    nat,
    netlink::netns,
    node, status,
};
use tracing_subscriber::EnvFilter;

mod cli;

use cli::{Cli, Command, DenyCommand, NatCommand, NodeCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = ["info", "debug", "trace"][usize::from(cli.verbose.min(2))];
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Config = cli.command {
        print!("{}", podnet::config::DEFAULT_TOML);
        return Ok(ExitCode::SUCCESS);
    }
    let config = Config::load(cli.config.as_deref())?;
    // Enter the node namespace before the runtime starts, so every thread is born in it.
    if let Some(ns) = &cli.netns {
        netns::enter(ns).with_context(|| format!("cannot act as node {ns:?}"))?;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        match cli.command {
            Command::Up => node::up(&config).await?,
            Command::Down => node::down(&config).await?,
            Command::Status { json } => {
                let status = node::status(&config)?;
                let out = if json { serde_json::to_string_pretty(&status)? } else { status::render(&status) };
                println!("{out}");
            }
            Command::Node(NodeCommand::Add { name, ip, pod_cidr }) => {
                node::add_peer(&config, PeerNode { name, ip, pod_cidr }).await?
            }
            Command::Node(NodeCommand::Del { name }) => node::del_peer(&config, &name).await?,
            Command::Nat(NatCommand::List { json }) => {
                let translations = nat::list(&node::pins_of_running_node(&config)?)?;
                let out = if json {
                    serde_json::to_string_pretty(&translations)?
                } else {
                    status::nat_table(&translations)
                };
                println!("{out}");
            }
            Command::Deny(cmd) => {
                let mut deny = Deny::open(&node::pins_of_running_node(&config)?)?;
                if config.uplink.as_ref().is_none_or(|u| u.xdp == XdpMode::Off) {
                    tracing::warn!(
                        "[uplink] xdp is off on this node: the deny list has no effect until it is on"
                    );
                }
                match cmd {
                    DenyCommand::Add { cidr } => deny.insert(cidr)?,
                    DenyCommand::Del { cidr } => deny.remove(cidr)?,
                    DenyCommand::List { json: true } => {
                        println!("{}", serde_json::to_string_pretty(&deny.list())?)
                    }
                    DenyCommand::List { json: false } => deny.list().iter().for_each(|c| println!("{c}")),
                }
            }
            Command::Nat(NatCommand::Flush) => {
                println!("removed {} translation(s)", nat::flush(&node::pins_of_running_node(&config)?)?);
            }
            Command::Nat(NatCommand::Gc) => {
                let pins = node::pins_of_running_node(&config)?;
                println!("removed {} idle translation(s)", nat::gc(&pins, &config.nat.timeouts)?);
            }
            Command::Agent { interval } => {
                let pins = node::pins_of_running_node(&config)?;
                tracing::info!("agent: expiring idle translations every {interval} s (Ctrl-C to stop)");
                loop {
                    match nat::gc(&pins, &config.nat.timeouts) {
                        Ok(0) => {}
                        Ok(n) => tracing::info!("agent: removed {n} idle translation(s)"),
                        Err(e) => tracing::warn!("agent: {e:#}"),
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(interval)).await;
                }
            }
            Command::Config => unreachable!("handled above"),
        }
        Ok(ExitCode::SUCCESS)
    })
}

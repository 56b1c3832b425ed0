use std::{io::IsTerminal as _, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::Parser as _;
use podnet::{
    agent,
    api::{Op, Peer, Reply, client},
    config::{self, Draft},
    datapath::{maps::Deny, nat},
    discovery,
    host::netns,
    model::{Config, XdpMode, names::check_name},
    monitor,
    node::{self, Teardown, op},
    status,
};
use tracing_subscriber::EnvFilter;

mod cli;

use cli::{Cli, Command, DenyCommand, NatCommand, NodeCommand};

fn main() -> ExitCode {
    // A runtime runs the binary as its CNI plugin: the command is in the environment.
    if std::env::var_os("CNI_COMMAND").is_some() {
        init_logs("warn", false);
        return podnet::cni::main();
    }
    let cli = Cli::parse();
    init_logs(["info", "debug", "trace"][usize::from(cli.verbose.min(2))], true);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr (stdout is for answers); RUST_LOG overrides `level`.
fn init_logs(level: &str, plain: bool) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if plain { logs.without_time().init() } else { logs.init() }
}

/// Writes an answer to stdout (with a final newline). A reader that went away (`| head -1`)
/// ends podnet quietly; any other failure (a full disk) is an error, not a panic.
fn show(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    if text.is_empty() {
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_all(text.as_bytes()).and_then(|()| {
        if !text.ends_with('\n') {
            stdout.write_all(b"\n")?;
        }
        stdout.flush()
    });
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        result => result.context("could not write to stdout"),
    }
}

/// `status --watch`: the status every `interval`, with packet rates, until Ctrl-C.
async fn watch_status(config: &Config, json: bool, interval: Duration) -> anyhow::Result<()> {
    let mut before: Option<(node::Status, std::time::Instant)> = None;
    let mut tick = tokio::time::interval(interval);
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = int.recv() => return Ok(()),
            _ = tick.tick() => {}
        }
        let now = (node::status(config)?, std::time::Instant::now());
        let rates =
            before.as_ref().map(|(status, at)| status::rates(status, &now.0, (now.1 - *at).as_secs_f64()));
        let out = if json {
            serde_json::to_string(&serde_json::json!({ "status": now.0, "rates": rates }))?
        } else {
            let clear = if std::io::stdout().is_terminal() { "\x1b[2J\x1b[H" } else { "" };
            format!("{clear}{}\n", status::render(&now.0, Some(&rates.unwrap_or_default())))
        };
        show(&out)?;
        before = Some(now);
    }
}

/// Enters the node namespace `--netns` names, before the runtime starts, so every thread is
/// born in it.
fn enter(cli: &Cli) -> anyhow::Result<()> {
    if let Some(ns) = &cli.netns {
        netns::enter(ns).with_context(|| format!("cannot act as node {ns:?}"))?;
    }
    Ok(())
}

/// The node `down` takes down when its config at `path` does not load (`error`): what the file
/// still says of it (see [`config::salvage`]), with a warning naming what is ignored.
fn salvaged(path: Option<&std::path::Path>, error: config::ConfigError) -> anyhow::Result<Teardown> {
    let salvaged = path.and_then(config::salvage);
    let Some(salvaged) = salvaged else {
        return Err(anyhow::Error::new(error).context(
            "`down` needs the node's name, and the config does not name it: run `podnet down --node NAME`",
        ));
    };
    tracing::warn!("{}", podnet::error_chain(&error));
    Ok(match salvaged {
        config::Salvaged::Sections { draft, ignored } => {
            tracing::warn!(
                "taking node {} down with the config's [node], [uplink] and [cluster] alone; ignored: {}",
                draft.node_name(),
                if ignored.is_empty() { "nothing".to_owned() } else { ignored.join(", ") }
            );
            Teardown::of(&draft)
        }
        config::Salvaged::Name { name, state } => {
            tracing::warn!(
                "taking node {name} down from its state alone (the config's [cluster] does not load either): \
                 its etcd lease, if it holds one, runs out by itself"
            );
            Teardown::named(&name, state)
        }
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Config = cli.command {
        show(podnet::config::DEFAULT_TOML.trim_end())?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Down { node, state_dir } = &cli.command {
        let teardown = match node {
            Some(name) => {
                check_name(name, 32).map_err(|problem| anyhow::anyhow!("--node {name:?}: {problem}"))?;
                Teardown::named(name, state_dir.join(name))
            }
            None => match Draft::load(cli.config.as_deref()) {
                Ok(draft) => Teardown::of(&draft),
                Err(e) => salvaged(cli.config.as_deref(), e)?,
            },
        };
        enter(&cli)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            if client::agent_listens(&teardown.node).await {
                let socket = client::socket_path(&teardown.node).display().to_string();
                return Err(node::NodeError::AgentRunning { socket });
            }
            let _lock = node::lock::NodeLock::acquire(&teardown.node)?;
            node::down(&teardown).await
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let draft = Draft::load(cli.config.as_deref())?;
    enter(&cli)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    if let Command::Agent { interval, ebpf_log } = cli.command {
        // The agent resolves the config itself: a cluster node leases its pod CIDR first.
        let interval = Duration::from_secs(interval.max(1));
        rt.block_on(agent::run(cli.config.as_deref(), draft, interval, ebpf_log))?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = discovery::resolve(&draft)?;
    rt.block_on(async {
        // State-changing verbs go through the node's agent when it runs (see `op::run`).
        let change = |op: Op| {
            let config = &config;
            async move { op::run(config, &op).await }
        };
        match cli.command {
            Command::Up => {
                if let Some(cluster) = &config.cluster
                    && !client::agent_listens(&config.node.name).await
                {
                    tracing::warn!(
                        "node {} is a [cluster] node and no agent runs: nothing renews its lease in etcd, \
                         which runs out within {} s and frees its pod CIDR for another node; start `podnet agent`",
                        config.node.name,
                        cluster.lease_ttl.as_secs()
                    );
                }
                // An absolute path: the agent compares it with the file it serves.
                let config =
                    cli.config.as_ref().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
                change(Op::Up { config }).await?;
            }
            Command::Status { json, watch: false, .. } => {
                let status = node::status(&config)?;
                let out = if json { serde_json::to_string_pretty(&status)? } else { status::render(&status, None) };
                show(&out)?;
            }
            Command::Status { json, watch: true, interval } => {
                watch_status(&config, json, Duration::from_secs(interval)).await?;
            }
            Command::Monitor { drops, pod, json } => {
                let filter = monitor::Filter { drops_only: drops, pod };
                monitor::run(&config, &filter, json).await?;
            }
            Command::EbpfLog { level } => {
                change(Op::EbpfLog { level }).await?;
            }
            Command::Node(NodeCommand::Add { name, ip, pod_cidr }) => {
                change(Op::AddPeer { peer: Peer { name, ip, pod_cidr } }).await?;
            }
            Command::Node(NodeCommand::Del { name }) => {
                change(Op::DelPeer { name }).await?;
            }
            Command::Nat(NatCommand::List { json }) => {
                let translations = nat::list(&node::pins_of_running_node(&config.node.name)?)?;
                let out = if json {
                    serde_json::to_string_pretty(&translations)?
                } else {
                    status::nat_table(&translations)
                };
                show(&out)?;
            }
            Command::Deny(cmd) => {
                if config.uplink.as_ref().is_none_or(|u| u.xdp == XdpMode::Off) {
                    tracing::warn!(
                        "[uplink] xdp is off on this node: the deny list has no effect until it is on"
                    );
                }
                match cmd {
                    DenyCommand::Add { cidr } => {
                        change(Op::DenyAdd { cidr }).await?;
                    }
                    DenyCommand::Del { cidr } => {
                        change(Op::DenyDel { cidr }).await?;
                    }
                    DenyCommand::List { json } => {
                        let denied = Deny::open(&node::pins_of_running_node(&config.node.name)?)?.list();
                        if json {
                            show(&serde_json::to_string_pretty(&denied)?)?;
                        } else {
                            show(&denied.iter().map(|c| format!("{c}\n")).collect::<String>())?;
                        }
                    }
                }
            }
            Command::Nat(NatCommand::Flush) => {
                let removed = match change(Op::NatFlush).await? {
                    Reply::Flushed { removed } => removed,
                    other => anyhow::bail!("the node answered {other:?} to `nat flush`"),
                };
                show(&format!("removed {removed} translation(s)"))?;
            }
            Command::Nat(NatCommand::Gc) => {
                let removed = match change(Op::NatGc { pressure: false }).await? {
                    Reply::Collected { expired, orphans, early } => expired + orphans + early,
                    other => anyhow::bail!("the node answered {other:?} to `nat gc`"),
                };
                show(&format!("removed {removed} idle translation(s)"))?;
            }
            Command::Agent { .. } | Command::Config | Command::Down { .. } => {
                anyhow::bail!("handled before the node's config was resolved")
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

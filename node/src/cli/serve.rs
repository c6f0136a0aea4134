//! Serving: `nak-node run` starts the network on the store's identity, prints the
//! listen addresses, and runs a [`Server`] until Ctrl-C, printing what it does;
//! `nak-node relay` runs a public node that serves no model, only the swarm itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use indicatif::{ProgressBar, ProgressStyle};
use libp2p::Multiaddr;
use nak_node::client::SwarmModel;
use nak_node::engine::{EngineConfig, Fault, LlamaLoader};
use nak_node::inference::ServiceConfig;
use nak_node::net::{reachability_name, Network, NetworkConfig, NetworkHandle};
use nak_node::server::{EventSink, ModelSource, Server, ServerConfig, ServerEvent};
use nak_shard_store::{ModelId, Store};

use super::audit::{auditor, watch};
use super::{block_on, open_store, JoinArgs};

/// Join the swarm and serve a span of a model.
#[derive(clap::Args)]
pub struct RunArgs {
    /// A whole-model GGUF (imported), or a model id (fetched from the swarm).
    #[arg(long)]
    model: String,
    /// Layers to serve: auto (the span that most helps the swarm, within --max-memory), all, or A:B (end exclusive).
    #[arg(long, default_value = "all")]
    serve_layers: String,
    /// Addresses to listen on (default: TCP and QUIC on all interfaces).
    #[arg(long)]
    listen: Vec<Multiaddr>,
    #[command(flatten)]
    join: JoinArgs,
    /// Most bytes of weights this node may hold (with auto, default: half the available memory).
    #[arg(long)]
    max_memory: Option<u64>,
    /// CPU threads.
    #[arg(long)]
    threads: Option<i32>,
    /// Sessions this server holds at once (each with its own KV cache of 2048 positions).
    #[arg(long, default_value_t = 8)]
    max_sessions: u32,
    /// Seconds between announcements while the model has at most 64 servers (past that,
    /// in proportion to their number, at most 4×).
    #[arg(long, default_value_t = 10)]
    announce_interval: u64,
    /// With `--serve-layers auto`: mean seconds between placement re-checks (jittered ±50 %).
    #[arg(long, default_value_t = 120)]
    rebalance_interval: u64,
    /// With `--serve-layers auto`: a move must lift the weakest blocks' throughput by more than
    /// (this − 1) × the node's own throughput.
    #[arg(long, default_value_t = 1.25)]
    min_gain: f64,
    /// Relay connections for peers that cannot be dialled directly (run this on a public node).
    #[arg(long)]
    relay_server: bool,
    /// An address others reach this server at (its public address, a forwarded port):
    /// put in its provider records at once rather than after reachability probes. Repeatable.
    #[arg(long)]
    external_address: Vec<Multiaddr>,
    /// Audit other servers: every --audit-interval, run a short verified generation through
    /// them and audit each of their sessions with this chance (0: only check the proofs
    /// others publish).
    #[arg(long, default_value_t = 0.0)]
    audit_rate: f64,
    /// Seconds between those audit generations.
    #[arg(long, default_value_t = 60)]
    audit_interval: u64,
    /// Also serve the OpenAI-compatible API for this model (as `nak-node api` does) on this address.
    #[arg(long)]
    api: Option<SocketAddr>,
    /// A small model with this model's vocabulary (a whole GGUF), for ring sessions that
    /// ask this server, as their last hop, to draft with it (`--speculative draft`).
    #[arg(long)]
    draft_model: Option<PathBuf>,
    /// Serve Prometheus metrics (`GET /metrics`: tokens, sessions, this hop's step
    /// latency, fetched bytes, DHT and libp2p figures) on this address.
    #[arg(long)]
    metrics: Option<SocketAddr>,
}

/// `nak-node run`.
pub fn run(args: RunArgs, data_dir: Option<PathBuf>) -> Result<()> {
    if !(args.min_gain.is_finite() && args.min_gain >= 1.0) {
        bail!("--min-gain must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.audit_rate) {
        bail!("--audit-rate must be between 0 and 1");
    }
    let store = open_store(data_dir)?;
    let mut engine = engine_config(args.threads, args.max_sessions);
    engine.fault = Fault::from_env().map_err(anyhow::Error::msg)?;
    if engine.fault.active() {
        eprintln!("FAULT INJECTION: {:?} of {:.3} of steps (testing aid)", engine.fault.mode, engine.fault.rate);
    }
    let audits = Audits { rate: args.audit_rate, every: Duration::from_secs(args.audit_interval.max(1)) };
    let mut service = ServiceConfig::default();
    if let Some(path) = &args.draft_model {
        let model = super::load_draft_model(path, engine.threads, args.max_sessions)?;
        service.draft_model = Some(Arc::new(model));
    }
    let server = ServerConfig {
        serve_layers: args.serve_layers.parse().map_err(|e| anyhow::anyhow!("--serve-layers {e}"))?,
        max_memory: args.max_memory,
        engine,
        announce_every: Duration::from_secs(args.announce_interval.max(1)),
        rebalance_every: Duration::from_secs(args.rebalance_interval.max(1)),
        min_gain: args.min_gain,
        service,
        ..Default::default()
    };
    let network = NetworkConfig {
        relay_server: args.relay_server,
        external_addresses: args.external_address,
        ..args.join.network(args.listen, store.root(), true)?
    };
    block_on(serve(store, args.model, network, server, audits, args.api, args.metrics))
}

/// A public node that serves no model: peers join through it (a stable `--bootstrap`
/// address) and, behind NATs, are reached through it (circuit relay) until hole
/// punching connects them directly.
#[derive(clap::Args)]
pub struct RelayArgs {
    /// Addresses to listen on (default: TCP and QUIC on all interfaces, random ports; give a
    /// fixed port, e.g. /ip4/0.0.0.0/tcp/4001, for an address others can write down).
    #[arg(long)]
    listen: Vec<Multiaddr>,
    #[command(flatten)]
    join: JoinArgs,
}

/// `nak-node relay`.
pub fn relay(args: RelayArgs, data_dir: Option<PathBuf>) -> Result<()> {
    let store = open_store(data_dir)?;
    let network = NetworkConfig { relay_server: true, ..args.join.network(args.listen, store.root(), true)? };
    block_on(async move {
        let (net, _) = Network::spawn_in_store(&store, network).await?;
        for addr in net.wait_for_listen_addrs(Duration::from_secs(5)).await? {
            println!("listening {addr}");
        }
        println!("relaying");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => eprintln!("leaving the swarm"),
            () = print_reachability(net) => {}
        }
        Ok(())
    })
}

/// What a server does for verification beyond signing receipts.
struct Audits {
    rate: f64,
    every: Duration,
}

async fn serve(
    store: Store,
    model: String,
    network: NetworkConfig,
    cfg: ServerConfig,
    audits: Audits,
    api: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
) -> Result<()> {
    let (alone, mdns) = (network.bootstrap.is_empty() && network.remembered.is_empty(), network.mdns);
    let (net, key) = Network::spawn_in_store(&store, network).await?;
    for addr in net.wait_for_listen_addrs(Duration::from_secs(5)).await? {
        println!("listening {addr}");
    }
    if let Some(addr) = metrics {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        println!("metrics http://{}/metrics", listener.local_addr()?);
        tokio::spawn(async move {
            if let Err(e) = nak_node::metrics::serve(listener).await {
                tracing::warn!(error = %e, "the metrics endpoint stopped");
            }
        });
    }
    // From the start: AutoNAT decides while the span is still being fetched and loaded.
    tokio::spawn(print_reachability(net.clone()));
    if alone {
        let lan = if mdns { "; mDNS joins nodes of this network as they appear" } else { "" };
        eprintln!("no peers known: starting a swarm (others join with --bootstrap <a listening address>){lan}");
    }
    let model = if std::path::Path::new(&model).is_file() {
        ModelSource::File(model.into())
    } else {
        let text = model.to_ascii_lowercase();
        let id = match store.resolve_model(&text) {
            Ok(id) => id,
            Err(_) => {
                ModelId::from_hex(&text).context("--model is neither a file, a local model, nor a full model id")?
            }
        };
        ModelSource::Id(id)
    };
    // One progress bar per fetch, drawn on stderr when it is a terminal.
    let bar: Mutex<Option<ProgressBar>> = Mutex::new(None);
    let events: EventSink = Arc::new(move |event: ServerEvent| match event {
        ServerEvent::Chose { layers, probe_throughput } => {
            eprintln!("auto: {probe_throughput:.0} block-tokens/s, chose layers {}:{}", layers.start, layers.end);
        }
        ServerEvent::Serving { model, layers, throughput } => {
            println!("serving {model} layers {}:{} ({throughput:.0} block-tokens/s)", layers.start, layers.end);
        }
        ServerEvent::Moving { from, to } => {
            eprintln!("auto: moving from layers {}:{} to {}:{}", from.start, from.end, to.start, to.end);
        }
        ServerEvent::Fetching { layers, done, total } => {
            let Ok(mut bar) = bar.lock() else { return };
            let b = bar.get_or_insert_with(|| {
                let b =
                    ProgressBar::new(total).with_message(format!("fetching layers {}:{}", layers.start, layers.end));
                b.set_style(
                    ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b
            });
            b.set_position(done);
            if done >= total {
                b.finish_and_clear();
                *bar = None;
            }
        }
    });
    let threads = cfg.engine.threads;
    let server = Server::start(store.clone(), net.clone(), &key, model, cfg, Arc::new(LlamaLoader), events).await?;
    let auditor = auditor(&net, &store, server.manifest(), audits.rate, threads).await?;
    let swarm = Arc::new(SwarmModel::connect(net.clone(), &store, server.model_id()).await?);
    if let Some(addr) = api {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        println!("api http://{}", listener.local_addr()?);
        let model = swarm.clone();
        tokio::spawn(async move {
            if let Err(e) = nak_node::api::serve(model, listener).await {
                tracing::warn!(error = %e, "the API stopped");
            }
        });
    }
    // Beside the server, not spawned: the watch runs as long as the server does.
    let watching = watch(auditor, swarm, server.layers(), audits.rate, audits.every);
    let serving = server.run(async {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("leaving the swarm");
    });
    tokio::select! {
        served = serving => served?,
        () = watching => {}
    }
    Ok(())
}

/// Prints how the node can be reached (`reachability public|relayed|private|unknown`)
/// at start and whenever it changes; returns when the network stops.
async fn print_reachability(net: NetworkHandle) {
    let mut last = None;
    while let Ok(now) = net.reachability().await {
        if last != Some(now) {
            println!("reachability {}", reachability_name(now));
            last = Some(now);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Engine settings of a server: the defaults, with `threads` if given.
fn engine_config(threads: Option<i32>, max_sessions: u32) -> EngineConfig {
    let mut cfg = EngineConfig { max_sessions: max_sessions.max(1), ..EngineConfig::default() };
    if let Some(t) = threads {
        cfg.threads = t;
    }
    cfg
}

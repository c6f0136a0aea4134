//! `nak-node run`: start the network on the store's identity, print the listen
//! addresses, and run a [`Server`] until Ctrl-C, printing what it does.

use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use indicatif::{ProgressBar, ProgressStyle};
use libp2p::Multiaddr;
use nak_node::engine::{EngineConfig, LlamaLoader};
use nak_node::net::NetworkConfig;
use nak_node::server::{EventSink, ModelSource, ServeLayers, Server, ServerConfig, ServerEvent};
use nak_shard_store::{ModelId, Store};

use crate::swarm_commands::{network_config, start_network};

/// Options of `run`.
pub struct RunOptions {
    pub model: String,
    pub serve_layers: ServeLayers,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub relay_server: bool,
    pub server: ServerConfig,
}

/// `nak-node run`.
pub async fn run(store: Store, opts: RunOptions) -> Result<()> {
    let cfg = NetworkConfig { relay_server: opts.relay_server, ..network_config(opts.listen, opts.bootstrap) };
    let (net, key) = start_network(&store, cfg).await?;
    for addr in net.wait_for_listen_addrs(std::time::Duration::from_secs(5)).await? {
        println!("listening {addr}");
    }
    let model = if std::path::Path::new(&opts.model).is_file() {
        ModelSource::File(opts.model.into())
    } else {
        let text = opts.model.to_ascii_lowercase();
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
    let cfg = ServerConfig { serve_layers: opts.serve_layers, ..opts.server };
    let server = Server::start(store, net, &key, model, cfg, Arc::new(LlamaLoader), events).await?;
    server
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("leaving the swarm");
        })
        .await?;
    Ok(())
}

/// Engine settings of a server: the defaults, with `threads` if given.
pub fn engine_config(threads: Option<i32>, max_sessions: u32) -> EngineConfig {
    let mut cfg = EngineConfig { max_sessions: max_sessions.max(1), ..EngineConfig::default() };
    if let Some(t) = threads {
        cfg.threads = t;
    }
    cfg
}

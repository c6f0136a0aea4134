//! `nak-node run`: serve a span of a model in the swarm.
//!
//! Start the network on the store's identity and print the listen addresses; get the
//! model (import a file, or fetch the manifest by id from its DHT providers) and provide
//! what the store holds of it; pick the span (`all`, `A:B`, or `auto`); fetch the blobs
//! it needs from their providers (verified), assemble and load it, measure it, provide
//! its blocks, and announce it on the model's topic every interval until Ctrl-C, when
//! it stops providing and leaves.
//!
//! With `auto` the node first measures its speed on one block, listens to the swarm's
//! announcements, and takes the span that most raises the weakest blocks within its
//! memory budget ([`nak_node::placement`]), announcing it as *joining* while it loads.
//! Every re-check interval (jittered, so nodes do not move in lockstep) it asks the
//! same question again and moves when that clearly helps and strands no block. A move
//! loads the new span in the background while the old one keeps being announced.

use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use libp2p::Multiaddr;
use nak_node::engine::{EngineConfig, SessionConfig, SpanEngine, StepInput};
use nak_node::net::{NetworkConfig, NetworkHandle};
use nak_node::placement::{self, Placement};
use nak_protocol::{announce, keys, pb};
use nak_shard_store::import::span_blobs;
use nak_shard_store::{cached_span, import_gguf, BlobRole, Manifest, ModelId, Store};
use prost::Message;

use crate::swarm_commands::{fetch_manifest, fetch_span_blobs, listen_addrs, network_config, now_ms, start_network};

/// Options of `run`.
pub struct RunOptions {
    pub model: String,
    pub serve_layers: String,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub max_memory: Option<u64>,
    pub threads: Option<i32>,
    pub announce_every: Duration,
    /// Mean time between placement re-checks (`auto` only).
    pub rebalance_every: Duration,
    /// How much a move must lift the weakest blocks (`auto` only), e.g. 1.25.
    pub min_gain: f64,
    /// Relay connections for peers behind NATs.
    pub relay_server: bool,
}

/// A loaded span and its measured speed.
struct Serving {
    layers: Range<u32>,
    engine: SpanEngine,
    /// Tokens per second through one block.
    throughput: f64,
}

/// Signs and publishes this node's announcements.
struct Announcer {
    net: NetworkHandle,
    signer: ed25519_dalek::SigningKey,
    model: ModelId,
    topic: String,
    valid_for: Duration,
    sequence: u64,
}

impl Announcer {
    async fn announce(&mut self, layers: &Range<u32>, throughput: f64, free_sessions: u32, state: pb::ServerState) {
        self.sequence += 1;
        let addrs = listen_addrs(&self.net).await.unwrap_or_default();
        let mut ann = pb::ServerAnnouncement {
            peer_id: self.net.peer_id().to_bytes(),
            model_id: self.model.0.to_vec(),
            first_layer: layers.start,
            end_layer: layers.end,
            block_throughput: throughput,
            free_sessions,
            version: env!("CARGO_PKG_VERSION").to_string(),
            addrs: addrs.iter().map(|a| a.to_vec()).collect(),
            timestamp_ms: now_ms(),
            sequence: self.sequence,
            valid_for_ms: self.valid_for.as_millis() as u64,
            ..Default::default()
        };
        ann.set_state(state);
        let signed = announce::sign(&self.signer, &ann).encode_to_vec();
        if let Err(e) = self.net.publish(self.topic.clone(), signed).await {
            tracing::debug!(error = %e, "announcement not published (no peers yet?)");
        }
    }
}

/// Tokens per second through one block of the loaded span: a short decode, timed.
fn measure_block_throughput(engine: &mut SpanEngine) -> f64 {
    let Ok(session) = engine.open_session(SessionConfig::default()) else { return 0.0 };
    let width = engine.n_embd();
    let takes_tokens = engine.span().has_embedding;
    let input = |i: usize| {
        if takes_tokens {
            StepInput::Tokens(vec![1 + (i as i32 % 50)])
        } else {
            let row: Vec<f32> = (0..width).map(|j| ((i + j as usize) % 7) as f32 * 0.01).collect();
            match nak_protocol::Activation::encode(&row, width, Default::default()) {
                Ok(a) => StepInput::Hidden(a),
                Err(_) => StepInput::Tokens(vec![]),
            }
        }
    };
    let _ = engine.step(session, input(0));
    let t0 = Instant::now();
    let steps = 16;
    for i in 1..=steps {
        if engine.step(session, input(i)).is_err() {
            break;
        }
    }
    let per_step = t0.elapsed().as_secs_f64() / steps as f64;
    let _ = engine.close_session(session);
    engine.span().n_layer as f64 / per_step.max(1e-9)
}

/// Fetches, assembles, loads and measures `layers`.
async fn load_span(
    store: &Store,
    net: &NetworkHandle,
    manifest: &Manifest,
    layers: Range<u32>,
    cfg: EngineConfig,
) -> Result<Serving> {
    fetch_span_blobs(store, net, manifest, layers.clone()).await?;
    let (s, id, r) = (store.clone(), manifest.model_id(), layers.clone());
    let path = tokio::task::spawn_blocking(move || cached_span(&s, &id, r)).await??;
    tokio::task::spawn_blocking(move || -> Result<Serving> {
        let mut engine = SpanEngine::load(&path, cfg)?;
        let throughput = measure_block_throughput(&mut engine);
        Ok(Serving { layers, engine, throughput })
    })
    .await?
}

/// Bytes of weights a span needs (what `--max-memory` bounds).
fn span_bytes(manifest: &Manifest, layers: &Range<u32>) -> u64 {
    span_blobs(manifest, layers).iter().map(|b| b.size).sum::<u64>()
        + manifest.blob(BlobRole::Meta, None).map_or(0, |b| b.size)
}

/// Half of the memory the kernel says is available: `auto`'s budget when none is given.
fn default_budget() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024 / 2)
}

/// What the other servers of the model announce.
async fn others(net: &NetworkHandle, model: &ModelId) -> Vec<Placement> {
    let me = net.peer_id().to_bytes();
    net.announcements()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.model_id == model.0 && a.peer_id != me && a.first_layer < a.end_layer)
        .map(|a| Placement { layers: a.first_layer..a.end_layer, throughput: a.block_throughput })
        .collect()
}

/// Placement policy of an `auto` node.
struct AutoPlacer {
    candidates: Vec<Range<u32>>,
    n_layer: u32,
    seed: Vec<u8>,
    min_gain: f64,
}

impl AutoPlacer {
    fn new(manifest: &Manifest, budget: u64, seed: Vec<u8>, min_gain: f64) -> Result<Self> {
        let candidates = placement::candidate_spans(manifest.n_layer, |r| span_bytes(manifest, r) <= budget);
        if candidates.is_empty() {
            bail!("a memory budget of {budget} bytes holds no block of this model");
        }
        Ok(Self { candidates, n_layer: manifest.n_layer, seed, min_gain })
    }

    fn best(&self, others: &[Placement], throughput: f64) -> Range<u32> {
        let totals = placement::block_totals(self.n_layer, others);
        let tie_break = |start: u32| {
            let h = blake3::Hasher::new().update(&self.seed).update(&start.to_le_bytes()).finalize();
            u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or_default())
        };
        placement::best_span(&totals, &self.candidates, throughput, tie_break)
            .unwrap_or_else(|| self.candidates[0].clone())
    }

    /// Where to move from `current`, if moving clearly helps.
    fn recheck(&self, others: &[Placement], current: &Range<u32>, throughput: f64) -> Option<Range<u32>> {
        let best = self.best(others, throughput);
        placement::should_move(self.n_layer, others, current, &best, throughput, self.min_gain).then_some(best)
    }
}

/// Provides the DHT keys of the blocks in `new` but not `old`, and withdraws the rest of `old`.
async fn provide_blocks(net: &NetworkHandle, model: &ModelId, old: &Range<u32>, new: &Range<u32>) -> Result<()> {
    for layer in new.clone().filter(|l| !old.contains(l)) {
        net.provide(keys::block_key(&model.0, layer)).await?;
    }
    for layer in old.clone().filter(|l| !new.contains(l)) {
        net.stop_providing(keys::block_key(&model.0, layer)).await?;
    }
    Ok(())
}

/// Provides every blob of the model the store holds (after import, fetch or a move).
async fn provide_blobs(store: &Store, net: &NetworkHandle, manifest: &Manifest) -> Result<()> {
    for blob in &manifest.blobs {
        if store.has(&blob.hash) {
            net.provide(keys::blob_key(&blob.hash.0)).await?;
        }
    }
    Ok(())
}

/// `nak-node run`.
pub async fn run(store: Store, opts: RunOptions) -> Result<()> {
    let cfg = NetworkConfig {
        relay_server: opts.relay_server,
        ..network_config(opts.listen.clone(), opts.bootstrap.clone())
    };
    let (net, key) = start_network(&store, cfg).await?;
    for addr in listen_addrs(&net).await? {
        println!("listening {addr}");
    }

    let id = if std::path::Path::new(&opts.model).is_file() {
        let path = std::path::PathBuf::from(&opts.model);
        let s = store.clone();
        tokio::task::spawn_blocking(move || import_gguf(&s, &path, &mut |_| {})).await??.model_id
    } else {
        let text = opts.model.to_ascii_lowercase();
        match store.resolve_model(&text) {
            Ok(id) => id,
            Err(_) => {
                ModelId::from_hex(&text).context("--model is neither a file, a local model, nor a full model id")?
            }
        }
    };
    let manifest = fetch_manifest(&store, &net, id).await?;
    net.provide(keys::manifest_key(&id.0)).await?;
    provide_blobs(&store, &net, &manifest).await?;
    let topic = keys::announce_topic(&id.0);
    net.subscribe(topic.clone()).await?;
    let mut announcer = Announcer {
        net: net.clone(),
        signer: ed25519_dalek::SigningKey::from_bytes(
            &key.secret().as_ref().try_into().context("identity secret is 32 bytes")?,
        ),
        model: id,
        topic,
        // Three intervals: one lost announcement does not make the node vanish.
        valid_for: opts.announce_every * 3,
        sequence: 0,
    };
    let mut cfg = EngineConfig::default();
    if let Some(t) = opts.threads {
        cfg.threads = t;
    }
    let n = manifest.n_layer;

    let auto = match opts.serve_layers.as_str() {
        "auto" => {
            let budget = opts.max_memory.or_else(default_budget).unwrap_or(u64::MAX);
            Some(AutoPlacer::new(&manifest, budget, net.peer_id().to_bytes(), opts.min_gain)?)
        }
        _ => None,
    };
    let layers = match (&auto, opts.serve_layers.as_str()) {
        (Some(placer), _) => {
            // Our speed, on one block, while the swarm's announcements come in.
            let probe_layer = placer.best(&others(&net, &id).await, 1.0).start;
            let probe = load_span(&store, &net, &manifest, probe_layer..probe_layer + 1, cfg.clone()).await?;
            let throughput = probe.throughput;
            drop(probe);
            tokio::time::sleep(jitter(opts.announce_every * 2)).await;
            let layers = placer.best(&others(&net, &id).await, throughput);
            eprintln!("auto: {throughput:.0} block-tokens/s, chose layers {}:{}", layers.start, layers.end);
            announcer.announce(&layers, throughput, 0, pb::ServerState::Joining).await;
            layers
        }
        (None, "all") => 0..n,
        (None, other) => nak_shard_store::span::parse_layer_range(other)
            .filter(|r| r.end <= n)
            .with_context(|| format!("--serve-layers {other}: expected auto, all or A:B within 0:{n}"))?,
    };
    if let Some(budget) = opts.max_memory {
        let need = span_bytes(&manifest, &layers);
        if need > budget {
            bail!("layers {}:{} need {need} bytes of weights, over --max-memory {budget}", layers.start, layers.end);
        }
    }
    let mut serving = load_span(&store, &net, &manifest, layers, cfg.clone()).await?;
    provide_blobs(&store, &net, &manifest).await?;
    provide_blocks(&net, &id, &(0..0), &serving.layers).await?;
    println!(
        "serving {id} layers {}:{} ({:.0} block-tokens/s)",
        serving.layers.start, serving.layers.end, serving.throughput
    );

    let mut announce_tick = tokio::time::interval(opts.announce_every);
    let mut next_check = Instant::now() + jitter(opts.rebalance_every);
    // Polled here rather than spawned: the load is mostly blocking work on its own threads.
    let mut moving: Option<futures::future::LocalBoxFuture<'static, Result<Serving>>> = None;
    loop {
        let check_in = next_check.saturating_duration_since(Instant::now());
        tokio::select! {
            _ = announce_tick.tick() => {
                let free = serving.engine.config().max_sessions.saturating_sub(serving.engine.n_sessions() as u32);
                announcer.announce(&serving.layers, serving.throughput, free, pb::ServerState::Online).await;
            }
            _ = tokio::time::sleep(check_in), if auto.is_some() && moving.is_none() => {
                next_check = Instant::now() + jitter(opts.rebalance_every);
                let Some(placer) = &auto else { continue };
                let others = others(&net, &id).await;
                if let Some(to) = placer.recheck(&others, &serving.layers, serving.throughput) {
                    eprintln!("auto: moving from layers {}:{} to {}:{}", serving.layers.start, serving.layers.end, to.start, to.end);
                    let (s, nt, m, c) = (store.clone(), net.clone(), manifest.clone(), cfg.clone());
                    moving = Some(Box::pin(async move { load_span(&s, &nt, &m, to, c).await }));
                }
            }
            done = async { moving.as_mut().expect("guarded by the branch condition").await }, if moving.is_some() => {
                moving = None;
                match done {
                    Ok(new) => {
                        provide_blobs(&store, &net, &manifest).await?;
                        provide_blocks(&net, &id, &serving.layers, &new.layers).await?;
                        serving = new;
                        println!("serving {id} layers {}:{} ({:.0} block-tokens/s)", serving.layers.start, serving.layers.end, serving.throughput);
                        announce_tick.reset_immediately();
                    }
                    Err(e) => tracing::warn!(error = %e, "could not move; staying"),
                }
            }
            _ = tokio::signal::ctrl_c() => {
                eprintln!("leaving the swarm");
                net.shutdown().await?;
                return Ok(());
            }
        }
    }
}

/// `mean` scaled by a random factor in [0.5, 1.5).
fn jitter(mean: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // std seeds every `RandomState` from the OS's randomness: enough for spreading timers.
    let bits = std::collections::hash_map::RandomState::new().build_hasher().finish();
    mean.mul_f64(0.5 + (bits >> 11) as f64 / (1u64 << 53) as f64)
}

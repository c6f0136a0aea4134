//! A swarm server: serves a span of a model and keeps the swarm told about it.
//!
//! [`Server::start`] gets the model (imports a file, or fetches the manifest by id
//! from its DHT providers) and provides what the store holds of it; picks the span
//! (`all`, `A:B`, or `auto`); fetches the blobs it needs from their providers
//! (verified), assembles it, loads it with the injected [`ComputeLoader`], measures
//! it, and provides its blocks. The span runs on an [`EngineWorker`] behind the
//! [`InferenceService`], which serves sessions to clients. [`Server::run`] then announces
//! it on the model's topic every interval until `shutdown` resolves, when it stops
//! providing and leaves.
//!
//! With `auto` the server first measures its speed on one block, listens to the
//! swarm's announcements, and takes the span that most raises the weakest blocks
//! within its memory budget ([`crate::placement`]), announcing it as *joining* while it
//! loads. Every re-check interval (jittered, so servers do not move in lockstep) it
//! asks the same question again and moves when that clearly helps and strands no
//! block. A move loads the new span while the old one keeps being announced; open
//! sessions finish on the old span, new ones get the new one.
//!
//! The network ([`crate::net`], possibly on an injected transport) and the compute
//! (a [`ComputeLoader`]) both come from the caller, so many servers can run in one
//! process.

mod auto;

use std::future::Future;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::identity::ed25519;
use nak_protocol::{announce, keys, pb};
use nak_shard_store::import::{model_metadata, ImportError};
use nak_shard_store::{cached_span, import_gguf, span, Manifest, ModelId, Store, StoreError};
use prost::Message;

pub use auto::span_bytes;
use auto::{jitter, others, AutoPlacer};

use crate::dilation::dilate;
use crate::engine::{Compute, ComputeLoader, EngineConfig, EngineError, EngineWorker, SessionConfig, StepInput};
use crate::fetch::{fetch_manifest, fetch_meta, fetch_span_blobs, FetchError};
use crate::inference::{InferenceService, ServiceConfig, ServiceError};
use crate::net::{NetworkError, NetworkHandle};

/// Errors of a server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The network failed.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Importing or assembling failed.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// Fetching the model from the swarm failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// Loading or measuring the span failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The inference service could not start.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// A blocking task died.
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The settings cannot work for this model.
    #[error("{0}")]
    Config(String),
}

/// Which layers to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeLayers {
    /// Where the swarm needs them most, within the memory budget.
    Auto,
    /// The whole model.
    All,
    /// These layers, end exclusive.
    Range(Range<u32>),
}

impl std::str::FromStr for ServeLayers {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "all" => Ok(Self::All),
            other => nak_shard_store::span::parse_layer_range(other)
                .map(Self::Range)
                .ok_or_else(|| format!("{other}: expected auto, all or A:B")),
        }
    }
}

/// Where the model comes from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A whole-model GGUF, imported into the store.
    File(PathBuf),
    /// A model id: the manifest comes from the store or from the swarm.
    Id(ModelId),
}

/// Settings of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Layers to serve. Default all.
    pub serve_layers: ServeLayers,
    /// Most bytes of weights to hold. Default none (with `auto`: half the available memory).
    pub max_memory: Option<u64>,
    /// Engine settings.
    pub engine: EngineConfig,
    /// Time between announcements in a small swarm. Default 10 s.
    pub announce_every: Duration,
    /// Servers of the model (as the announcements held count them) past which the time
    /// between announcements grows in proportion, up to [`MAX_ANNOUNCE_STRETCH`] times
    /// `announce_every`: every announcement reaches every node, so a fixed period would
    /// make each node's share grow with the swarm. `None` keeps it fixed. Default 64.
    pub announce_stretch_after: Option<usize>,
    /// Mean time between placement re-checks (`auto`). Default 120 s.
    pub rebalance_every: Duration,
    /// A move must lift the weakest blocks by more than (this − 1) × the server's own
    /// throughput (`auto`, see [`crate::placement`]). Default 1.25.
    pub min_gain: f64,
    /// Limits of the inference service.
    pub service: ServiceConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            serve_layers: ServeLayers::All,
            max_memory: None,
            engine: EngineConfig::default(),
            announce_every: Duration::from_secs(10),
            announce_stretch_after: Some(64),
            rebalance_every: Duration::from_secs(120),
            min_gain: 1.25,
            service: ServiceConfig::default(),
        }
    }
}

/// What a server reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// `auto` chose a span, after measuring this many block-tokens/s on one block.
    Chose { layers: Range<u32>, probe_throughput: f64 },
    /// A span is loaded and announced.
    Serving { model: ModelId, layers: Range<u32>, throughput: f64 },
    /// `auto` is moving to another span.
    Moving { from: Range<u32>, to: Range<u32> },
    /// Blobs of `layers` are being fetched: `done` of `total` bytes so far.
    Fetching { layers: Range<u32>, done: u64, total: u64 },
}

/// Where a server reports its [`ServerEvent`]s.
pub type EventSink = Arc<dyn Fn(ServerEvent) + Send + Sync>;

/// A loaded span, on its compute thread, and its measured speed.
struct Serving {
    layers: Range<u32>,
    worker: EngineWorker,
    /// Tokens per second through one block.
    throughput: f64,
}

/// A running server.
pub struct Server {
    store: Store,
    net: NetworkHandle,
    manifest: Manifest,
    cfg: ServerConfig,
    loader: Arc<dyn ComputeLoader>,
    auto: Option<AutoPlacer>,
    signer: ed25519_dalek::SigningKey,
    sequence: u64,
    serving: Serving,
    service: InferenceService,
    events: EventSink,
}

/// Tokens per second through one block of a loaded span: a short decode, timed.
fn measure_block_throughput(compute: &mut dyn Compute) -> f64 {
    let Ok(session) = compute.open_session(SessionConfig::default()) else { return 0.0 };
    let width = compute.n_embd();
    let takes_tokens = compute.span().has_embedding;
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
    let _ = compute.step(session, input(0));
    let t0 = Instant::now();
    let steps = 16;
    for i in 1..=steps {
        if compute.step(session, input(i)).is_err() {
            break;
        }
    }
    let per_step = t0.elapsed().as_secs_f64() / steps as f64;
    let _ = compute.close_session(session);
    compute.span().n_layer as f64 / per_step.max(1e-9)
}

/// Fetches, assembles, loads and measures `layers`.
async fn load_span(
    store: Store,
    net: NetworkHandle,
    manifest: Manifest,
    layers: Range<u32>,
    loader: Arc<dyn ComputeLoader>,
    cfg: EngineConfig,
    events: EventSink,
) -> Result<Serving, ServeError> {
    let progress = |done, total| events(ServerEvent::Fetching { layers: layers.clone(), done, total });
    fetch_span_blobs(&store, &net, &manifest, layers.clone(), &progress).await?;
    let (id, r) = (manifest.model_id(), layers.clone());
    let path = tokio::task::spawn_blocking(move || cached_span(&store, &id, r)).await??;
    tokio::task::spawn_blocking(move || -> Result<Serving, ServeError> {
        let mut compute = loader.load(&path, &cfg)?;
        let throughput = measure_block_throughput(compute.as_mut());
        let worker = EngineWorker::spawn(compute).map_err(|e| EngineError::Load(format!("compute thread: {e}")))?;
        Ok(Serving { layers, worker, throughput })
    })
    .await?
}

/// Provides every key at once: each query waits on the slowest peer it asks (a dead
/// address costs a connect timeout), so one after another they would add up.
async fn provide_all(net: &NetworkHandle, keys: impl Iterator<Item = Vec<u8>>) -> Result<(), ServeError> {
    futures::future::try_join_all(keys.map(|key| net.provide(key))).await?;
    Ok(())
}

/// Provides the held blobs of no layer (the metadata, embeddings, head): every server
/// needs them, whatever it serves.
async fn provide_shared_blobs(store: &Store, net: &NetworkHandle, manifest: &Manifest) -> Result<(), ServeError> {
    let held = manifest.blobs.iter().filter(|b| b.layer.is_none() && store.has(&b.hash));
    provide_all(net, held.map(|b| keys::blob_key(&b.hash.0))).await
}

/// Moves the provider records from serving `old` (`None`: nothing provided yet) to
/// serving `new`: the block keys of `new`, and a blob key for each held blob of a layer
/// outside `new`. A server of a block holds the block's blobs and fetchers ask the block
/// key too (see `fetch`), so they need no record of their own: a joining server makes
/// half the DHT walks it made with both, and each walk dials about twenty peers.
async fn provide_span(
    store: &Store,
    net: &NetworkHandle,
    manifest: &Manifest,
    old: Option<&Range<u32>>,
    new: &Range<u32>,
) -> Result<(), ServeError> {
    let model = manifest.model_id();
    let served_before = |l: u32| old.is_some_and(|o| o.contains(&l));
    // Before: a blob record for each held blob of a layer outside `old`.
    let had_blob_record = |l: u32| old.is_some_and(|o| !o.contains(&l));
    let layer_blobs = || manifest.blobs.iter().filter_map(|b| Some((b.layer?, b))).filter(|(_, b)| store.has(&b.hash));
    let blocks = new.clone().filter(|l| !served_before(*l)).map(|l| keys::block_key(&model.0, l));
    let blobs = layer_blobs().filter(|(l, _)| !new.contains(l) && !had_blob_record(*l));
    provide_all(net, blocks.chain(blobs.map(|(_, b)| keys::blob_key(&b.hash.0)))).await?;
    for layer in old.into_iter().flat_map(|o| o.clone()).filter(|l| !new.contains(l)) {
        net.stop_providing(keys::block_key(&model.0, layer)).await?;
    }
    for (_, blob) in layer_blobs().filter(|(l, _)| new.contains(l) && had_blob_record(*l)) {
        net.stop_providing(keys::blob_key(&blob.hash.0)).await?;
    }
    Ok(())
}

/// What a server offers in one announcement: its span, speed and state, for how long.
struct Offer<'a> {
    layers: &'a Range<u32>,
    throughput: f64,
    free_sessions: u32,
    sequence: u64,
    valid_for: Duration,
    state: pb::ServerState,
}

/// Signs and publishes `offer` for `model`, as this node, with the vocabulary digest of
/// the draft model it drafts with, if any.
async fn publish_announcement(
    net: &NetworkHandle,
    signer: &ed25519_dalek::SigningKey,
    model: &ModelId,
    cfg: &ServerConfig,
    offer: Offer<'_>,
) {
    let addrs = net.listen_addrs().await.unwrap_or_default();
    let mut ann = pb::ServerAnnouncement {
        peer_id: net.peer_id().to_bytes(),
        model_id: model.0.to_vec(),
        first_layer: offer.layers.start,
        end_layer: offer.layers.end,
        block_throughput: offer.throughput,
        free_sessions: offer.free_sessions,
        version: env!("CARGO_PKG_VERSION").to_string(),
        addrs: addrs.iter().map(|a| a.to_vec()).collect(),
        timestamp_ms: announce::now_ms(),
        sequence: offer.sequence,
        valid_for_ms: offer.valid_for.as_millis() as u64,
        draft_vocab: cfg.service.draft_model.as_ref().map(|d| d.vocab_digest().to_vec()).unwrap_or_default(),
        ..Default::default()
    };
    ann.set_state(offer.state);
    ann.set_reachability(net.reachability().await.unwrap_or_default());
    let signed = announce::sign(signer, &ann).encode_to_vec();
    if let Err(e) = net.set_announcement(ann).await {
        tracing::debug!(error = %e, "announcement not kept for peers that ask");
    }
    if let Err(e) = net.publish(keys::announce_topic(&model.0), signed).await {
        tracing::debug!(error = %e, "announcement not published (no peers yet?)");
    }
}

/// Time for the leaving announcement to go out before the network shuts down.
const LEAVING_SENT: Duration = Duration::from_millis(300);

/// Most times `announce_every` the period stretches to. An announcement is valid for three
/// periods, and peers accept at most two minutes by default (`max_announcement_age`):
/// 4 × 10 s × 3 meets it.
pub const MAX_ANNOUNCE_STRETCH: f64 = 4.0;

/// The time between announcements when `servers` announce the model: `base`, or, past
/// `stretch_after` servers, `base` times their share of `stretch_after`, at most
/// [`MAX_ANNOUNCE_STRETCH`] times `base`.
fn stretched_period(base: Duration, stretch_after: Option<usize>, servers: usize) -> Duration {
    match stretch_after {
        Some(after) if after > 0 => base.mul_f64((servers as f64 / after as f64).clamp(1.0, MAX_ANNOUNCE_STRETCH)),
        _ => base,
    }
}

impl Server {
    /// Gets the model, chooses, fetches, loads and provides the span. `key` is the
    /// node's identity (the one `net` runs on), which signs the announcements.
    pub async fn start(
        store: Store,
        net: NetworkHandle,
        key: &ed25519::Keypair,
        model: ModelSource,
        cfg: ServerConfig,
        loader: Arc<dyn ComputeLoader>,
        events: EventSink,
    ) -> Result<Server, ServeError> {
        // Held in wall time from here on (see `dilation`).
        let cfg = ServerConfig {
            announce_every: dilate(cfg.announce_every),
            rebalance_every: dilate(cfg.rebalance_every),
            ..cfg
        };
        let id = match model {
            ModelSource::File(path) => {
                let s = store.clone();
                tokio::task::spawn_blocking(move || import_gguf(&s, &path, &mut |_| {})).await??.model_id
            }
            ModelSource::Id(id) => id,
        };
        let manifest = fetch_manifest(&store, &net, id).await?;
        net.provide(keys::manifest_key(&id.0)).await?;
        provide_shared_blobs(&store, &net, &manifest).await?;
        net.subscribe(keys::announce_topic(&id.0)).await?;
        let signer = crate::net::identity::signing_key(key);
        let n = manifest.n_layer;
        let mut sequence = 0;

        let auto = match cfg.serve_layers {
            ServeLayers::Auto => {
                let budget = cfg.max_memory.or_else(auto::default_budget).unwrap_or(u64::MAX);
                // Which spans the architecture can run is in the model's metadata.
                fetch_meta(&store, &net, &manifest, true).await?;
                let s = store.clone();
                let metadata = tokio::task::spawn_blocking(move || model_metadata(&s, &id)).await??;
                let runnable = |r: &Range<u32>| span::check_splittable(&metadata, r.clone()).map_err(|e| e.to_string());
                Some(AutoPlacer::new(&manifest, budget, net.peer_id().to_bytes(), cfg.min_gain, runnable)?)
            }
            _ => None,
        };
        let layers = match (&auto, &cfg.serve_layers) {
            (Some(placer), _) => {
                // Our speed, on one block, while the swarm's announcements come in.
                let probe = placer.probe_span(placer.best(&others(&net, &id).await, 1.0).start);
                let (s, nt, m, l) = (store.clone(), net.clone(), manifest.clone(), loader.clone());
                let probe = load_span(s, nt, m, probe, l, cfg.engine.clone(), events.clone()).await?;
                let probe_throughput = probe.throughput;
                drop(probe);
                tokio::time::sleep(jitter(cfg.announce_every * 2)).await;
                let layers = placer.best(&others(&net, &id).await, probe_throughput);
                events(ServerEvent::Chose { layers: layers.clone(), probe_throughput });
                sequence += 1;
                let offer = Offer {
                    layers: &layers,
                    throughput: probe_throughput,
                    free_sessions: 0,
                    sequence,
                    valid_for: cfg.announce_every * 3,
                    state: pb::ServerState::Joining,
                };
                publish_announcement(&net, &signer, &id, &cfg, offer).await;
                layers
            }
            (None, ServeLayers::Range(r)) if r.end <= n && r.start < r.end => r.clone(),
            (None, ServeLayers::Range(r)) => {
                return Err(ServeError::Config(format!("layers {}:{} are not within 0:{n}", r.start, r.end)));
            }
            (None, _) => 0..n,
        };
        if let Some(budget) = cfg.max_memory {
            let need = span_bytes(&manifest, &layers);
            if need > budget {
                return Err(ServeError::Config(format!(
                    "layers {}:{} need {need} bytes of weights, over the memory budget of {budget}",
                    layers.start, layers.end
                )));
            }
        }
        let (s, nt, m, l) = (store.clone(), net.clone(), manifest.clone(), loader.clone());
        let serving = load_span(s, nt, m, layers, l, cfg.engine.clone(), events.clone()).await?;
        let service_cfg = ServiceConfig { receipt_key: Some(Arc::new(signer.clone())), ..cfg.service.clone() };
        let service = InferenceService::spawn(&net, service_cfg)?;
        service.serve(id, serving.worker.clone());
        provide_span(&store, &net, &manifest, None, &serving.layers).await?;
        let mut server = Server { store, net, manifest, cfg, loader, auto, signer, sequence, serving, service, events };
        // Announced before it says it serves: a peer that asks from then on gets the answer.
        let period = server.announce_period().await;
        server.announce(pb::ServerState::Online, period).await;
        let s = &server.serving;
        (server.events)(ServerEvent::Serving { model: id, layers: s.layers.clone(), throughput: s.throughput });
        Ok(server)
    }

    /// The model served.
    pub fn model_id(&self) -> ModelId {
        self.manifest.model_id()
    }

    /// The model's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The layers served now.
    pub fn layers(&self) -> Range<u32> {
        self.serving.layers.clone()
    }

    /// Announces the span in `state`, valid for three `period`s. The last announcement
    /// says `Leaving`: peers drop the server from their routes and placement at once
    /// instead of when it expires.
    async fn announce(&mut self, state: pb::ServerState, period: Duration) {
        self.sequence += 1;
        let s = &self.serving;
        let free = match state {
            pb::ServerState::Online => {
                let open = s.worker.stats().await.map_or(0, |st| st.sessions as u32);
                s.worker.max_sessions().saturating_sub(open)
            }
            _ => 0,
        };
        let offer = Offer {
            layers: &s.layers,
            throughput: s.throughput,
            free_sessions: free,
            sequence: self.sequence,
            valid_for: period * 3,
            state,
        };
        publish_announcement(&self.net, &self.signer, &self.manifest.model_id(), &self.cfg, offer).await;
    }

    /// The time between announcements for the swarm as this server sees it now.
    async fn announce_period(&self) -> Duration {
        let servers = others(&self.net, &self.manifest.model_id()).await.len() + 1;
        stretched_period(self.cfg.announce_every, self.cfg.announce_stretch_after, servers)
    }

    /// Announces, re-checks placement (`auto`) and moves, until `shutdown` resolves; then
    /// stops providing and shuts the network down.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let id = self.manifest.model_id();
        let mut next_announce = Instant::now() + self.cfg.announce_every;
        let mut next_check = Instant::now() + jitter(self.cfg.rebalance_every);
        // Polled here rather than spawned: the load is mostly blocking work on its own threads.
        let mut moving: Option<futures::future::LocalBoxFuture<'static, Result<Serving, ServeError>>> = None;
        tokio::pin!(shutdown);
        loop {
            let check_in = next_check.saturating_duration_since(Instant::now());
            let announce_in = next_announce.saturating_duration_since(Instant::now());
            tokio::select! {
                _ = tokio::time::sleep(announce_in) => {
                    let period = self.announce_period().await;
                    self.announce(pb::ServerState::Online, period).await;
                    next_announce = Instant::now() + period;
                }
                _ = tokio::time::sleep(check_in), if self.auto.is_some() && moving.is_none() => {
                    next_check = Instant::now() + jitter(self.cfg.rebalance_every);
                    let Some(placer) = &self.auto else { continue };
                    let others = others(&self.net, &id).await;
                    tracing::debug!(?others, current = ?self.serving.layers, "placement re-check");
                    if let Some(to) = placer.recheck(&others, &self.serving.layers, self.serving.throughput) {
                        (self.events)(ServerEvent::Moving { from: self.serving.layers.clone(), to: to.clone() });
                        let (s, nt, m, l) = (self.store.clone(), self.net.clone(), self.manifest.clone(), self.loader.clone());
                        moving = Some(Box::pin(load_span(s, nt, m, to, l, self.cfg.engine.clone(), self.events.clone())));
                    }
                }
                done = async { moving.as_mut().expect("guarded by the branch condition").await }, if moving.is_some() => {
                    moving = None;
                    match done {
                        Ok(new) => {
                            let (old, store, net) = (&self.serving.layers, &self.store, &self.net);
                            provide_span(store, net, &self.manifest, Some(old), &new.layers).await?;
                            // Open sessions finish on the old span; its thread ends with the last one.
                            self.service.serve(id, new.worker.clone());
                            self.serving = new;
                            let s = &self.serving;
                            (self.events)(ServerEvent::Serving { model: id, layers: s.layers.clone(), throughput: s.throughput });
                            next_announce = Instant::now();
                        }
                        Err(e) => tracing::warn!(error = %e, "could not move; staying"),
                    }
                }
                _ = &mut shutdown => {
                    self.service.stop_admitting();
                    let period = self.announce_period().await;
                    self.announce(pb::ServerState::Leaving, period).await;
                    // Gossip sends from the network task; a moment before the connections close.
                    tokio::time::sleep(dilate(LEAVING_SENT)).await;
                    self.net.shutdown().await?;
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announcement_period_grows_with_the_swarm_up_to_its_cap() {
        let base = Duration::from_secs(10);
        assert_eq!(stretched_period(base, Some(64), 1), base);
        assert_eq!(stretched_period(base, Some(64), 64), base);
        assert_eq!(stretched_period(base, Some(64), 128), base * 2);
        assert_eq!(stretched_period(base, Some(64), 10_000), base.mul_f64(MAX_ANNOUNCE_STRETCH));
        assert_eq!(stretched_period(base, None, 10_000), base);
        assert_eq!(stretched_period(base, Some(0), 10_000), base);
        // Below the cap, a node receives about `stretch_after` announcements per base period.
        for servers in [64, 100, 200, 256] {
            let per_base =
                servers as f64 * base.as_secs_f64() / stretched_period(base, Some(64), servers).as_secs_f64();
            assert!((per_base - 64.0).abs() < 1e-6, "{servers} servers: {per_base}");
        }
    }

    #[test]
    fn a_stretched_announcement_stays_within_the_age_peers_accept() {
        let longest = ServerConfig::default().announce_every.mul_f64(MAX_ANNOUNCE_STRETCH) * 3;
        assert!(longest <= crate::net::NetworkConfig::default().max_announcement_age);
    }
}

//! A simulated swarm serving one model: real servers with `auto` placement on the
//! modelled compute, real clients, and a god view of who serves what.
//!
//! Data flow: [`SimSwarm::start`] writes a synthetic model (its weights only give the
//! span files their shape; the [`crate::compute`] model computes), starts server 0 on the
//! file, and every other server by model id: each fetches the manifest and its span's
//! blobs from the swarm, measures its modelled speed, and chooses its span from the
//! announcements it hears, as a real `auto` server does. Every [`ServerEvent`] goes to
//! the god view, which the scenarios read for coverage and balance. Servers die in one
//! of three ways ([`Exit`]); replacements join through live nodes.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use libp2p::{Multiaddr, PeerId};
use nak_node::engine::EngineConfig;
use nak_node::net::{NetworkConfig, NetworkHandle};
use nak_node::server::{EventSink, ModelSource, ServeLayers, Server, ServerConfig, ServerEvent};
use nak_shard_store::{ModelId, SynthConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::compute::{DeviceProfile, ModelledLoader};
use crate::node;
use crate::transport::{Death, SimNet};

/// Settings of the swarm.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// Servers at the start.
    pub servers: usize,
    /// Layers of the model. Default 32.
    pub n_layer: u32,
    /// Layers one server can hold (its memory budget). Default 8.
    pub budget_layers: u32,
    /// Time between a server's announcements in a small swarm. Default 5 s.
    pub announce_every: Duration,
    /// Servers past which that time grows with the swarm
    /// ([`ServerConfig::announce_stretch_after`]). Default the node's own, 64.
    pub announce_stretch_after: Option<usize>,
    /// Mean time between placement re-checks. Default 30 s.
    pub rebalance_every: Duration,
    /// Mean time between two joins. Default 50 ms.
    pub join_gap: Duration,
    /// Most connections a node keeps ([`NetworkConfig::max_connections`]). Default 128,
    /// the node's own.
    pub max_connections: usize,
    /// The device every server models; each server's speed is this one's times a
    /// seeded factor between 0.5 and 2.
    pub device: DeviceProfile,
    /// Sessions a server holds at once. Default 8.
    pub max_sessions: u32,
}

impl SwarmConfig {
    /// The defaults for `servers` servers.
    pub fn new(servers: usize) -> Self {
        Self {
            servers,
            n_layer: 32,
            budget_layers: 8,
            announce_every: Duration::from_secs(5),
            announce_stretch_after: ServerConfig::default().announce_stretch_after,
            rebalance_every: Duration::from_secs(30),
            join_gap: Duration::from_millis(50),
            max_connections: NetworkConfig::default().max_connections,
            device: DeviceProfile::default(),
            max_sessions: 8,
        }
    }
}

/// Hidden width and vocabulary of the synthetic model.
pub const N_EMBD: u32 = 64;
/// See [`N_EMBD`].
pub const N_VOCAB: u32 = 512;

/// How a server leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It stops announcing and providing, then closes its connections.
    Leave,
    /// It vanishes: connections close at once.
    Crash,
    /// It vanishes silently: peers notice by their timeouts.
    Blackhole,
}

/// What the god view knows of a server.
#[derive(Debug, Clone)]
pub struct ServerState {
    /// The simulated node it runs on.
    pub node: usize,
    /// Its peer id.
    pub peer: PeerId,
    /// Layers it serves now (none until it serves).
    pub layers: Option<Range<u32>>,
    /// Its measured tokens per second through one block.
    pub throughput: f64,
    /// Moves it made after its first span.
    pub moves: u32,
    /// When it joined and when it first served.
    pub joined: Instant,
    pub serving_since: Option<Instant>,
    pub alive: bool,
}

struct Running {
    stop: Option<oneshot::Sender<()>>,
}

/// A swarm of servers of one synthetic model.
pub struct SimSwarm {
    pub net: Arc<SimNet>,
    pub cfg: SwarmConfig,
    pub seed: u64,
    /// The model.
    pub model: ModelId,
    /// Bytes of weights each server may hold: `budget_layers` layers.
    budget: u64,
    dir: tempfile::TempDir,
    model_file: PathBuf,
    rng: Mutex<ChaCha8Rng>,
    /// The god view, by node.
    pub view: Arc<Mutex<HashMap<usize, ServerState>>>,
    running: Mutex<HashMap<usize, Running>>,
    next_node: Mutex<usize>,
}

impl SimSwarm {
    /// Writes a fresh synthetic model and starts server 0 on its file (the others start
    /// by model id in [`SimSwarm::populate`]).
    pub async fn start(net: Arc<SimNet>, cfg: SwarmConfig, seed: u64) -> Result<Arc<Self>> {
        let dir = node::run_dir()?;
        let model_file = dir.path().join("model.gguf");
        let synth = SynthConfig { n_layer: cfg.n_layer, n_embd: N_EMBD, n_vocab: N_VOCAB, seed, ..Default::default() };
        nak_shard_store::write_synthetic(&synth, &model_file).context("the synthetic model")?;
        // Its manifest (imported into a scratch store) gives the model id and the budget of
        // `budget_layers` layers, which every server gets, the first one too.
        let scratch = nak_shard_store::Store::open(dir.path().join("scratch"))?;
        let id = nak_shard_store::import_gguf(&scratch, &model_file, &mut |_| {})?.model_id;
        let manifest = scratch.manifest(&id)?;
        let budget = (0..=cfg.n_layer.saturating_sub(cfg.budget_layers))
            .map(|a| nak_node::server::span_bytes(&manifest, &(a..a + cfg.budget_layers)))
            .max()
            .context("a model with layers")?;
        let swarm = Arc::new(Self {
            net,
            cfg: cfg.clone(),
            seed,
            model: id,
            budget,
            dir,
            model_file,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed ^ 0x5eed)),
            view: Arc::new(Mutex::new(HashMap::new())),
            running: Mutex::new(HashMap::new()),
            next_node: Mutex::new(0),
        });
        swarm.clone().spawn_server(None).await?;
        Ok(swarm)
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh node index.
    pub fn next_node(&self) -> usize {
        let mut n = Self::lock(&self.next_node);
        *n += 1;
        *n - 1
    }

    /// Up to three live nodes to join through.
    pub fn bootstrap(&self) -> Vec<Multiaddr> {
        let live: Vec<usize> = Self::lock(&self.running).keys().copied().collect();
        let mut rng = Self::lock(&self.rng);
        let mut picks: Vec<usize> = (0..3.min(live.len())).map(|_| live[rng.gen_range(0..live.len())]).collect();
        picks.sort();
        picks.dedup();
        picks.into_iter().map(|n| node::dial_addr(self.seed, n)).collect()
    }

    /// Network settings of a node of this swarm.
    pub fn network_config(&self, n: usize, bootstrap: Vec<Multiaddr>) -> NetworkConfig {
        NetworkConfig { max_connections: self.cfg.max_connections, ..node::config(n, bootstrap) }
    }

    /// Starts one more server; `None` (the first): on the model file.
    async fn spawn_server(self: Arc<Self>, model: Option<ModelId>) -> Result<usize> {
        let n = self.next_node();
        let key = node::key(self.seed, n);
        let bootstrap = self.bootstrap();
        let net = node::spawn(&self.net, self.dir.path(), self.seed, n, self.network_config(n, bootstrap)).await?;
        let speed = {
            let mut rng = Self::lock(&self.rng);
            2f64.powf(rng.gen_range(-1.0..1.0))
        };
        let loader = Arc::new(ModelledLoader {
            profile: DeviceProfile { speed: self.cfg.device.speed * speed, ..self.cfg.device },
            n_embd: N_EMBD,
            n_vocab: N_VOCAB,
        });
        let store = nak_shard_store::Store::open(self.dir.path().join(format!("n{n}")))?;
        let source = match model {
            Some(id) => ModelSource::Id(id),
            None => ModelSource::File(self.model_file.clone()),
        };
        let server_cfg = ServerConfig {
            serve_layers: ServeLayers::Auto,
            max_memory: Some(self.budget),
            engine: EngineConfig { max_sessions: self.cfg.max_sessions, ctx_per_session: 512, ..Default::default() },
            announce_every: self.cfg.announce_every,
            announce_stretch_after: self.cfg.announce_stretch_after,
            rebalance_every: self.cfg.rebalance_every,
            ..ServerConfig::default()
        };
        let peer = net.peer_id();
        Self::lock(&self.view).insert(
            n,
            ServerState {
                node: n,
                peer,
                layers: None,
                throughput: 0.0,
                moves: 0,
                joined: Instant::now(),
                serving_since: None,
                alive: true,
            },
        );
        let view = self.view.clone();
        let events: EventSink = Arc::new(move |e| {
            let mut v = view.lock().unwrap_or_else(|p| p.into_inner());
            let Some(s) = v.get_mut(&n) else { return };
            match e {
                ServerEvent::Serving { layers, throughput, .. } => {
                    if s.layers.is_some() {
                        s.moves += 1;
                    }
                    s.layers = Some(layers);
                    s.throughput = throughput;
                    s.serving_since.get_or_insert_with(Instant::now);
                }
                ServerEvent::Chose { probe_throughput, .. } => s.throughput = probe_throughput,
                _ => {}
            }
        });
        let (stop, stopped) = oneshot::channel::<()>();
        Self::lock(&self.running).insert(n, Running { stop: Some(stop) });
        let this = self.clone();
        // A server's run loop is not `Send` (it polls its span loads in place): it runs on
        // the scenario's local set, so every scenario runs inside a `LocalSet`.
        tokio::task::spawn_local(async move {
            let started = Server::start(store, net, &key, source, server_cfg, loader, events).await;
            let result = match started {
                Ok(server) => {
                    server
                        .run(async {
                            let _ = stopped.await;
                        })
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::info!(node = n, error = %e, "a simulated server ended with an error");
            }
            this.mark_dead(n);
        });
        Ok(n)
    }

    fn mark_dead(&self, n: usize) {
        if let Some(s) = Self::lock(&self.view).get_mut(&n) {
            s.alive = false;
        }
    }

    /// Starts the other `cfg.servers - 1` servers (Poisson joins).
    pub async fn populate(self: &Arc<Self>) -> Result<()> {
        let model = self.model;
        let mut gaps = Vec::new();
        for _ in 1..self.cfg.servers {
            let u: f64 = Self::lock(&self.rng).gen_range(f64::EPSILON..1.0);
            gaps.push(self.cfg.join_gap.mul_f64(-u.ln()));
        }
        let of = gaps.len() + 1;
        for (n, gap) in gaps.into_iter().enumerate() {
            self.clone().spawn_server(Some(model)).await?;
            crate::host::join_progress(&self.net, n + 2, of);
            crate::clock::sleep(gap).await;
        }
        Ok(())
    }

    /// Starts a replacement server.
    pub async fn add_server(self: &Arc<Self>) -> Result<usize> {
        self.clone().spawn_server(Some(self.model)).await
    }

    /// Takes server `n` out in the way `exit` says.
    pub fn remove(&self, n: usize, exit: Exit) {
        let Some(mut running) = Self::lock(&self.running).remove(&n) else { return };
        tracing::info!(node = n, peer = %node::peer_of(self.seed, n), ?exit, "a server leaves");
        match exit {
            Exit::Leave => {}
            Exit::Crash => self.net.kill(n, Death::Close),
            Exit::Blackhole => self.net.kill(n, Death::Blackhole),
        }
        self.mark_dead(n);
        // A crashed server's threads and tasks end too (its network is already gone).
        if let Some(stop) = running.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Live servers, by node.
    pub fn live(&self) -> Vec<usize> {
        let mut live: Vec<usize> = Self::lock(&self.running).keys().copied().collect();
        live.sort();
        live
    }

    /// A random live server.
    pub fn pick_live(&self) -> Option<usize> {
        let live = self.live();
        (!live.is_empty()).then(|| live[Self::lock(&self.rng).gen_range(0..live.len())])
    }

    /// The live servers that serve, with their spans and speeds.
    pub fn serving(&self) -> Vec<ServerState> {
        Self::lock(&self.view).values().filter(|s| s.alive && s.layers.is_some()).cloned().collect()
    }

    /// Every server that ever ran.
    pub fn all_servers(&self) -> Vec<ServerState> {
        Self::lock(&self.view).values().cloned().collect()
    }

    /// Whether every block has a live server.
    pub fn covered(&self) -> bool {
        let loads = self.block_throughput();
        loads.iter().all(|t| *t > 0.0)
    }

    /// Each block's summed throughput over the live servers.
    pub fn block_throughput(&self) -> Vec<f64> {
        let mut loads = vec![0.0; self.cfg.n_layer as usize];
        for s in self.serving() {
            for l in s.layers.clone().unwrap_or(0..0) {
                if let Some(x) = loads.get_mut(l as usize) {
                    *x += s.throughput;
                }
            }
        }
        loads
    }

    /// The weakest block's throughput ÷ the best any placement of these servers could
    /// give it. The best is bounded by the average (each server's throughput spread
    /// evenly over the model), so this never overstates the quality.
    pub fn balance_quality(&self) -> f64 {
        let loads = self.block_throughput();
        let weakest = loads.iter().copied().fold(f64::INFINITY, f64::min);
        let capacity: f64 =
            self.serving().iter().map(|s| s.throughput * s.layers.as_ref().map_or(0, |l| l.len()) as f64).sum();
        let best = capacity / self.cfg.n_layer as f64;
        if best > 0.0 {
            weakest / best
        } else {
            0.0
        }
    }

    /// A node's network for a client, joining through live servers.
    pub async fn spawn_client(&self) -> Result<(usize, NetworkHandle, nak_shard_store::Store)> {
        let n = self.next_node();
        let cfg = NetworkConfig { dht_server: false, ..self.network_config(n, self.bootstrap()) };
        let net = node::spawn(&self.net, self.dir.path(), self.seed, n, cfg).await?;
        let store = nak_shard_store::Store::open(self.dir.path().join(format!("n{n}")))?;
        Ok((n, net, store))
    }

    /// Stops every server.
    pub async fn shutdown(&self) {
        let all: Vec<Running> = Self::lock(&self.running).drain().map(|(_, r)| r).collect();
        for mut r in all {
            if let Some(stop) = r.stop.take() {
                let _ = stop.send(());
            }
        }
    }
}

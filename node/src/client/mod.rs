//! The client side of distributed generation: find the servers, pick a route, run
//! sessions through it.
//!
//! [`SwarmModel::connect`] fetches the model's manifest and its metadata blob from the
//! swarm (verified, like any blob) and loads the tokenizer from it; no weights are
//! fetched. [`SwarmModel::view`] finds the model's servers at once, without waiting
//! for their next announcement: the DHT names the providers of each block, and each is
//! asked for its current signed announcement ([`NetworkHandle::ask_announcement`]); the
//! announcement topic keeps the view current after that. It adds the ping round trip
//! to each server; [`route::best_route`] picks the chain. [`RemoteSession::open`]
//! ([`session`]) opens one session per hop over control streams ([`links`]), telling each where to push its output, and then
//! generates in ring or client-sampled mode. When a hop fails, [`recovery`] bans it,
//! routes its layers through other servers and has the hop before it replay its outputs
//! to them, and the generation goes on.

mod coverage;
mod hop;
mod links;
mod options;
mod recovery;
pub mod route;
mod session;
mod speculate;
mod text;
mod verify;

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use nak_protocol::{keys, pb};
use nak_shard_store::{tokenizer_file, Manifest, ModelId, Store};

pub use coverage::model_status;
pub use options::{DecodeMode, Failover, RemoteGeneration, ReplayPolicy, SampledToken, SessionOptions};
pub use route::{best_route, best_route_between, disjoint_routes, RouteHop, ServerInfo};
pub use session::RemoteSession;
pub use speculate::{DraftSource, Speculation, SpeculationReport};
pub use text::TextStream;
pub use verify::{ReceiptProblem, Verification};

use crate::dilation::dilate;
use crate::engine::{EngineError, Model};
use crate::fetch::{fetch_manifest, fetch_meta, FetchError};
use crate::net::{NetworkError, NetworkHandle};

/// Errors of a client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The network failed.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// Fetching the manifest or metadata failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The tokenizer failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The store failed.
    #[error(transparent)]
    Import(#[from] nak_shard_store::ImportError),
    /// Some layers have no server.
    #[error("no route through the model: {0}")]
    NoRoute(String),
    /// A hop refused or failed.
    #[error("hop {peer} (layers {start}:{end}): {code}: {message}")]
    Hop {
        /// The server.
        peer: PeerId,
        /// Its layers in this route.
        start: u32,
        /// End of them.
        end: u32,
        /// Why.
        code: pb::ErrorCode,
        /// In its words.
        message: String,
    },
    /// A hop sent something the protocol does not allow here.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Nothing came for too long.
    #[error("no answer within {} s", .0.as_secs_f64())]
    Timeout(Duration),
    /// A hop failed and no other server can take its layers.
    #[error("no backup for layers {start}:{end} after {failed} failed: {detail}")]
    NoBackup {
        /// First layer left without a server.
        start: u32,
        /// Layer after the last.
        end: u32,
        /// The failed peer(s).
        failed: String,
        /// What the swarm offers.
        detail: String,
    },
    /// Bad arguments.
    #[error("{0}")]
    Input(String),
}

/// First ban of a peer that failed us; it doubles with each further failure.
const FIRST_BAN: Duration = Duration::from_secs(30);
/// Longest ban.
const LONGEST_BAN: Duration = Duration::from_secs(3600);

/// A model in the swarm, as a client sees it: manifest, tokenizer, and the servers it
/// keeps off its routes for now.
pub struct SwarmModel {
    net: NetworkHandle,
    manifest: Manifest,
    vocab: Model,
    /// [`Model::vocab_digest`] of the tokenizer, once asked for.
    vocab_digest: std::sync::OnceLock<[u8; 32]>,
    /// Banned peers: until when, and how many times they failed.
    bans: Mutex<HashMap<PeerId, (Instant, u32)>>,
    /// When [`SwarmModel::connect`] began.
    joined: Instant,
    /// How long after that the first view with a full route was ready.
    discovery: Mutex<Option<Duration>>,
    /// When servers were last asked for their announcements.
    last_asked: Mutex<Option<Instant>>,
}

/// How often a view that still lacks layers asks the DHT and the servers again.
const ASK_AGAIN: Duration = Duration::from_secs(2);
/// How long a block's provider lookup, or a server's answer, may take: a dead or
/// blackholed provider must not hold up the others (nor a failover).
const ASK_LIMIT: Duration = Duration::from_secs(2);

impl SwarmModel {
    /// Fetches the manifest and metadata of `id` into `store` (from the swarm unless the
    /// store has them) and loads the tokenizer.
    pub async fn connect(net: NetworkHandle, store: &Store, id: ModelId) -> Result<Self, ClientError> {
        let joined = Instant::now();
        let manifest = fetch_manifest(store, &net, id).await?;
        fetch_meta(store, &net, &manifest, false).await?;
        net.subscribe(keys::announce_topic(&id.0)).await?;
        let s = store.clone();
        let path = tokio::task::spawn_blocking(move || tokenizer_file(&s, &id))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))??;
        let vocab = tokio::task::spawn_blocking(move || Model::load_vocab(&path))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))??;
        Ok(Self {
            net,
            manifest,
            vocab,
            vocab_digest: std::sync::OnceLock::new(),
            bans: Mutex::new(HashMap::new()),
            joined,
            discovery: Mutex::new(None),
            last_asked: Mutex::new(None),
        })
    }

    /// The model's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The model's id.
    pub fn id(&self) -> ModelId {
        self.manifest.model_id()
    }

    /// Layers of the model.
    pub fn n_layer(&self) -> u32 {
        self.manifest.n_layer
    }

    /// The tokenizer (and chat template).
    pub fn vocab(&self) -> &Model {
        &self.vocab
    }

    /// BLAKE3 of the vocabulary ([`Model::vocab_digest`]): what a draft model must match.
    pub fn vocab_digest(&self) -> [u8; 32] {
        *self.vocab_digest.get_or_init(|| self.vocab.vocab_digest())
    }

    /// The network.
    pub fn net(&self) -> &NetworkHandle {
        &self.net
    }

    /// The servers of this model that are online, waiting up to `wait` for every layer
    /// to be covered (returning what is known then). While layers lack a server, the
    /// DHT and the servers it names are asked (every [`ASK_AGAIN`]), and gossip listened to.
    pub async fn view(&self, wait: Duration) -> Result<Vec<ServerInfo>, ClientError> {
        let deadline = tokio::time::Instant::now() + dilate(wait);
        loop {
            let servers = self.servers(false).await?;
            let covered = best_route(&servers, self.n_layer(), &HashSet::new()).is_some();
            if covered {
                self.note_discovery();
            }
            if covered || tokio::time::Instant::now() >= deadline {
                return Ok(servers);
            }
            if !self.ask_servers_if_due().await {
                tokio::time::sleep(dilate(Duration::from_millis(100))).await;
            }
        }
    }

    fn note_discovery(&self) {
        let mut discovery = self.discovery.lock().unwrap_or_else(|p| p.into_inner());
        discovery.get_or_insert_with(|| self.joined.elapsed());
    }

    /// How long after joining the first full route was known (None before that).
    pub fn discovery_time(&self) -> Option<Duration> {
        *self.discovery.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Unless that was done less than [`ASK_AGAIN`] ago, finds the providers of every
    /// block of the model in the DHT and asks each for its current announcement (which
    /// lands in the network's view); returns whether it asked.
    async fn ask_servers_if_due(&self) -> bool {
        {
            let mut last = self.last_asked.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < dilate(ASK_AGAIN)) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let answered = discover_servers(&self.net, &self.id().0, self.n_layer()).await;
        tracing::debug!(servers = answered, "asked the block providers for their announcements");
        true
    }

    /// The online servers of this model that the network holds announcements of: those
    /// of servers it set aside as disconnected when `disconnected`, the others when not.
    async fn servers(&self, disconnected: bool) -> Result<Vec<ServerInfo>, ClientError> {
        let rtts = self.net.rtts().await?;
        let me = self.net.peer_id();
        let model = self.id();
        let announcements =
            if disconnected { self.net.disconnected_announcements().await? } else { self.net.announcements().await? };
        let mut out = Vec::new();
        for a in announcements {
            let Ok(peer) = PeerId::from_bytes(&a.peer_id) else { continue };
            let online = a.state() == pb::ServerState::Online;
            if peer == me || a.model_id != model.0 || !online || a.first_layer >= a.end_layer {
                continue;
            }
            out.push(ServerInfo {
                peer,
                addrs: a.addrs.iter().filter_map(|b| Multiaddr::try_from(b.clone()).ok()).collect(),
                layers: a.first_layer..a.end_layer.min(self.n_layer()),
                block_throughput: a.block_throughput,
                free_sessions: a.free_sessions,
                rtt: rtts.get(&peer).copied(),
                draft_vocab: a.draft_vocab,
            });
        }
        out.sort_by_key(|s| (s.layers.start, s.peer));
        Ok(out)
    }

    /// The best route now, avoiding banned peers and `avoid`, waiting up to `wait` for
    /// the swarm's announcements; with `drafts`, one whose last hop drafts with a draft
    /// model of this model's vocabulary.
    pub async fn route(
        &self,
        wait: Duration,
        avoid: &HashSet<PeerId>,
        drafts: bool,
    ) -> Result<Vec<RouteHop>, ClientError> {
        let route = self.route_between(0..self.n_layer(), avoid, drafts, wait).await;
        route.map_err(|held| {
            let drafting = if drafts { ", ending on a server with a draft model (serve --draft-model)" } else { "" };
            ClientError::NoRoute(format!("{} layers{drafting}; servers hold [{held}]", self.n_layer()))
        })
    }

    /// The best route through `layers` avoiding banned peers and `avoid`, waiting up to
    /// `wait` for a server that can take them to be announced (a client that has just
    /// joined may not have heard every server yet); with `drafts`, its last hop must draft
    /// with a draft model of this model's vocabulary. The error lists the spans of the
    /// usable servers (a `+draft` after those that draft).
    ///
    /// Servers set aside as disconnected ([`NetworkHandle::disconnected_announcements`])
    /// are used only when no route avoids them, once the DHT has been asked or the wait
    /// is over: a dial to one that has gone fails, which drops it.
    pub async fn route_between(
        &self,
        layers: Range<u32>,
        avoid: &HashSet<PeerId>,
        drafts: bool,
        wait: Duration,
    ) -> Result<Vec<RouteHop>, String> {
        let deadline = tokio::time::Instant::now() + dilate(wait);
        let mut asked = false;
        let digest = self.vocab_digest();
        let last_drafts = drafts.then_some(&digest[..]);
        loop {
            let excluded: HashSet<PeerId> = self.banned().union(avoid).copied().collect();
            let mut servers = self.servers(false).await.map_err(|e| e.to_string())?;
            let mut route = best_route_between(&servers, layers.clone(), &excluded, last_drafts);
            let over = tokio::time::Instant::now() >= deadline;
            if route.is_none() && (asked || over) {
                servers.extend(self.servers(true).await.map_err(|e| e.to_string())?);
                route = best_route_between(&servers, layers.clone(), &excluded, last_drafts);
            }
            if let Some((route, _)) = route {
                if layers == (0..self.n_layer()) {
                    self.note_discovery();
                }
                return Ok(route);
            }
            if over {
                return Err(held(&servers, &excluded));
            }
            if self.ask_servers_if_due().await {
                asked = true;
            } else {
                tokio::time::sleep(dilate(Duration::from_millis(100))).await;
            }
        }
    }

    /// Keeps `peer` off this client's routes for a while, longer each time it fails;
    /// returns for how long.
    pub fn ban(&self, peer: PeerId) -> Duration {
        let mut bans = self.bans.lock().unwrap_or_else(|p| p.into_inner());
        let strikes = bans.get(&peer).map_or(0, |b| b.1) + 1;
        let length = FIRST_BAN.saturating_mul(1 << (strikes - 1).min(16)).min(LONGEST_BAN);
        bans.insert(peer, (Instant::now() + dilate(length), strikes));
        length
    }

    /// Peers banned now.
    pub fn banned(&self) -> HashSet<PeerId> {
        let now = Instant::now();
        let bans = self.bans.lock().unwrap_or_else(|p| p.into_inner());
        bans.iter().filter(|(_, (until, _))| *until > now).map(|(p, _)| *p).collect()
    }

    /// Every token that ends generation.
    pub fn end_tokens(&self) -> Vec<i32> {
        (0..self.vocab.n_vocab() as i32).filter(|&t| self.vocab.is_eog(t)).collect()
    }

    /// The text of tokens.
    pub fn detokenize(&self, tokens: &[i32]) -> String {
        let bytes: Vec<u8> = tokens.iter().flat_map(|&t| self.vocab.token_piece(t)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Finds the providers of each of the `n_layer` blocks of a model in the DHT (all at
/// once) and asks each for its current signed announcement, which the network checks and
/// adds to its view; returns how many servers answered.
pub async fn discover_servers(net: &NetworkHandle, model_id: &[u8; 32], n_layer: u32) -> usize {
    let lookups = (0..n_layer)
        .map(|layer| tokio::time::timeout(dilate(ASK_LIMIT), net.providers(keys::block_key(model_id, layer))));
    let found = futures::future::join_all(lookups).await;
    let mut peers: Vec<PeerId> = found.into_iter().flatten().flatten().flatten().collect();
    peers.sort();
    peers.dedup();
    peers.retain(|p| *p != net.peer_id());
    let asks = peers.iter().map(|&peer| tokio::time::timeout(dilate(ASK_LIMIT), net.ask_announcement(peer, model_id)));
    let answers = futures::future::join_all(asks).await;
    let mut answered = 0;
    for (answer, peer) in answers.into_iter().zip(&peers) {
        match answer {
            Ok(Ok(_)) => answered += 1,
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "a block provider gave no announcement"),
            Err(_) => tracing::debug!(%peer, "a block provider did not answer in time"),
        }
    }
    answered
}

/// The spans of the servers not in `excluded`, for messages (`+draft` after those with a
/// draft model).
fn held(servers: &[ServerInfo], excluded: &HashSet<PeerId>) -> String {
    let spans: Vec<String> = servers
        .iter()
        .filter(|s| !excluded.contains(&s.peer))
        .map(|s| {
            let draft = if s.draft_vocab.is_empty() { "" } else { "+draft" };
            format!("{}:{}{draft}", s.layers.start, s.layers.end)
        })
        .collect();
    spans.join(", ")
}

pub(crate) fn peer_string<S: serde::Serializer>(peer: &PeerId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(peer)
}

//! The network task: one task owns the libp2p `Swarm`; everything else talks to it.
//!
//! [`Network::spawn`] builds the swarm (TCP and QUIC, noise, yamux, identify, ping,
//! Kademlia on `/nakshatra/kad/1.0.0`, gossipsub, and `/nakshatra/blobs/1` for blob
//! exchange) and runs its event loop on a tokio task. A [`NetworkHandle`] sends that
//! loop [`Command`]s through a bounded channel, each with a oneshot for its answer.
//!
//! Data flow:
//! - identify tells us a peer's listen addresses; they go into Kademlia's table;
//! - `provide` / `providers` become Kademlia provider queries; their results are
//!   routed back to the caller by query id;
//! - inbound blob requests are answered from the local store on a blocking thread
//!   (hashing and reading are slow) and the answer returns to the loop through a
//!   bounded channel, since only the loop may touch the swarm;
//! - announcements received on a model's topic are checked (signature, signer,
//!   freshness, size) before gossipsub forwards them; rejected ones are logged.

mod codec;
pub mod identity;
mod provider;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::kad::{self, store::MemoryStore, GetProvidersOk, QueryResult, RecordKey};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use nak_protocol::announce::{self, MAX_ANNOUNCEMENT_BYTES};
use nak_protocol::pb;
use nak_shard_store::transfer::{BlobProvider, ChunkNum, ChunkRanges, ProviderError, StoreProvider};
use nak_shard_store::{Hash, Store};
use tokio::sync::{mpsc, oneshot};

pub use codec::{BlobCodec, BLOB_PROTOCOL};
pub use provider::RemoteProvider;

/// Kademlia protocol of the swarm.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/nakshatra/kad/1.0.0");

/// Network settings.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Addresses to listen on. Default: TCP and QUIC on all interfaces, random ports.
    pub listen: Vec<Multiaddr>,
    /// Peers to join through.
    pub bootstrap: Vec<Multiaddr>,
    /// How long provider records live. Default 10 minutes (a churning swarm).
    pub provider_ttl: Duration,
    /// How often they are republished. Default 3 minutes.
    pub provider_republish: Duration,
    /// Largest announcement age accepted. Default 2 minutes.
    pub max_announcement_age: Duration,
    /// Commands queued before senders wait. Default 64.
    pub command_queue: usize,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".parse().expect("valid literal multiaddr"),
                "/ip4/0.0.0.0/udp/0/quic-v1".parse().expect("valid literal multiaddr"),
            ],
            bootstrap: Vec::new(),
            provider_ttl: Duration::from_secs(600),
            provider_republish: Duration::from_secs(180),
            max_announcement_age: Duration::from_secs(120),
            command_queue: 64,
        }
    }
}

/// Errors of the network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// Building the swarm failed.
    #[error("cannot start the network: {0}")]
    Setup(String),
    /// The network task has stopped.
    #[error("the network task has stopped")]
    Stopped,
    /// A query or request failed.
    #[error("{0}")]
    Failed(String),
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    gossipsub: gossipsub::Behaviour,
    blobs: request_response::Behaviour<BlobCodec>,
}

/// Requests to the network task.
pub enum Command {
    /// The addresses we listen on.
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    /// Dial a peer at an address (with its `/p2p/` part).
    Dial(Multiaddr, oneshot::Sender<Result<(), NetworkError>>),
    /// Announce in the DHT that we provide `key`.
    Provide(Vec<u8>, oneshot::Sender<Result<(), NetworkError>>),
    /// Stop providing `key`.
    StopProviding(Vec<u8>),
    /// Find providers of `key`.
    Providers(Vec<u8>, oneshot::Sender<Result<Vec<PeerId>, NetworkError>>),
    /// Send a blob request to a peer.
    Request(PeerId, pb::BlobRequest, oneshot::Sender<Result<pb::BlobResponse, NetworkError>>),
    /// Subscribe to a topic.
    Subscribe(String, oneshot::Sender<Result<(), NetworkError>>),
    /// Publish bytes on a topic.
    Publish(String, Vec<u8>, oneshot::Sender<Result<(), NetworkError>>),
    /// The latest announcement of each peer, while it holds (see [`NetworkHandle::announcements`]).
    Announcements(oneshot::Sender<Vec<pb::ServerAnnouncement>>),
    /// Gossip topics that connected peers subscribe to.
    PeerTopics(oneshot::Sender<Vec<String>>),
    /// Counters of the network task.
    Stats(oneshot::Sender<NetworkStats>),
    /// Stop providing everything and end the task.
    Shutdown(oneshot::Sender<()>),
}

/// Counters of the network task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Announcements that failed their checks and were not forwarded.
    pub rejected_announcements: u64,
    /// Announcements accepted.
    pub accepted_announcements: u64,
    /// Blob-exchange frames refused as oversized or malformed.
    pub refused_blob_frames: u64,
    /// Inbound blob requests that were read but could not be answered.
    pub failed_blob_requests: u64,
}

/// A cheap, cloneable way to talk to the network task.
#[derive(Clone)]
pub struct NetworkHandle {
    tx: mpsc::Sender<Command>,
    peer_id: PeerId,
}

impl NetworkHandle {
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, NetworkError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| NetworkError::Stopped)?;
        rx.await.map_err(|_| NetworkError::Stopped)
    }

    /// Listen addresses, each ending in `/p2p/<peer id>`.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetworkError> {
        let peer = self.peer_id;
        Ok(self.ask(Command::ListenAddrs).await?.into_iter().map(|a| a.with_p2p(peer).unwrap_or_else(|a| a)).collect())
    }

    /// Dials an address.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetworkError> {
        self.ask(|tx| Command::Dial(addr, tx)).await?
    }

    /// Provides a DHT key.
    pub async fn provide(&self, key: Vec<u8>) -> Result<(), NetworkError> {
        self.ask(|tx| Command::Provide(key, tx)).await?
    }

    /// Stops providing a DHT key.
    pub async fn stop_providing(&self, key: Vec<u8>) -> Result<(), NetworkError> {
        self.tx.send(Command::StopProviding(key)).await.map_err(|_| NetworkError::Stopped)
    }

    /// Finds the providers of a DHT key.
    pub async fn providers(&self, key: Vec<u8>) -> Result<Vec<PeerId>, NetworkError> {
        self.ask(|tx| Command::Providers(key, tx)).await?
    }

    /// Sends a blob request and waits for the answer.
    pub async fn request(&self, peer: PeerId, req: pb::BlobRequest) -> Result<pb::BlobResponse, NetworkError> {
        self.ask(|tx| Command::Request(peer, req, tx)).await?
    }

    /// The same, from a thread outside the runtime (blob fetch workers).
    pub fn request_blocking(&self, peer: PeerId, req: pb::BlobRequest) -> Result<pb::BlobResponse, NetworkError> {
        let (tx, rx) = oneshot::channel();
        self.tx.blocking_send(Command::Request(peer, req, tx)).map_err(|_| NetworkError::Stopped)?;
        rx.blocking_recv().map_err(|_| NetworkError::Stopped)?
    }

    /// Subscribes to a gossip topic.
    pub async fn subscribe(&self, topic: String) -> Result<(), NetworkError> {
        self.ask(|tx| Command::Subscribe(topic, tx)).await?
    }

    /// Publishes on a gossip topic.
    pub async fn publish(&self, topic: String, data: Vec<u8>) -> Result<(), NetworkError> {
        self.ask(|tx| Command::Publish(topic, data, tx)).await?
    }

    /// The latest announcement of each peer that still holds: younger than its own
    /// `valid_for_ms` (or the configured maximum age when it gives none), from a peer
    /// whose connection has not closed since.
    pub async fn announcements(&self) -> Result<Vec<pb::ServerAnnouncement>, NetworkError> {
        self.ask(Command::Announcements).await
    }

    /// Gossip topics that connected peers subscribe to (how `status` finds the models).
    pub async fn peer_topics(&self) -> Result<Vec<String>, NetworkError> {
        self.ask(Command::PeerTopics).await
    }

    /// Counters of the network task.
    pub async fn stats(&self) -> Result<NetworkStats, NetworkError> {
        self.ask(Command::Stats).await
    }

    /// Stops providing and ends the network task.
    pub async fn shutdown(&self) -> Result<(), NetworkError> {
        self.ask(Command::Shutdown).await
    }
}

/// The running network.
pub struct Network;

impl Network {
    /// Builds the swarm with `key` as identity, serving blobs from `store`, and spawns its task.
    pub async fn spawn(
        key: libp2p::identity::ed25519::Keypair,
        store: Store,
        cfg: NetworkConfig,
    ) -> Result<(NetworkHandle, tokio::task::JoinHandle<()>), NetworkError> {
        let keypair = identity::libp2p_keypair(&key);
        let peer_id = keypair.public().to_peer_id();
        let setup = |e: &dyn std::fmt::Display| NetworkError::Setup(e.to_string());
        let codec = BlobCodec::default();
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
            .map_err(|e| setup(&e))?
            .with_quic()
            .with_behaviour(|key| {
                let mut kad_cfg = kad::Config::new(KAD_PROTOCOL);
                kad_cfg.set_provider_record_ttl(Some(cfg.provider_ttl));
                kad_cfg.set_provider_publication_interval(Some(cfg.provider_republish));
                kad_cfg.set_query_timeout(Duration::from_secs(30));
                let gossip_cfg = gossipsub::ConfigBuilder::default()
                    .validation_mode(gossipsub::ValidationMode::Strict)
                    .validate_messages()
                    .max_transmit_size(MAX_ANNOUNCEMENT_BYTES + 1024)
                    .heartbeat_interval(Duration::from_millis(500))
                    .build()?;
                Ok(Behaviour {
                    identify: identify::Behaviour::new(identify::Config::new(
                        "/nakshatra/id/1.0.0".into(),
                        key.public(),
                    )),
                    ping: ping::Behaviour::default(),
                    kad: kad::Behaviour::with_config(peer_id, MemoryStore::new(peer_id), kad_cfg),
                    gossipsub: gossipsub::Behaviour::new(
                        gossipsub::MessageAuthenticity::Signed(key.clone()),
                        gossip_cfg,
                    )?,
                    blobs: request_response::Behaviour::with_codec(
                        codec.clone(),
                        [(BLOB_PROTOCOL, ProtocolSupport::Full)],
                        request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
                    ),
                })
            })
            .map_err(|e| setup(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
            .build();
        // Every node answers DHT queries: the swarm is made of servers.
        swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
        for addr in &cfg.listen {
            swarm.listen_on(addr.clone()).map_err(|e| setup(&e))?;
        }
        for addr in &cfg.bootstrap {
            if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() {
                swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            }
            swarm.dial(addr.clone()).map_err(|e| setup(&e))?;
        }
        let (tx, rx) = mpsc::channel(cfg.command_queue);
        let (served_tx, served_rx) = mpsc::channel(cfg.command_queue);
        let task = Task {
            swarm,
            commands: rx,
            served_tx,
            served_rx,
            provider: StoreProvider::new(store, peer_id.to_string()),
            codec,
            pending_providers: HashMap::new(),
            pending_provide: HashMap::new(),
            pending_requests: HashMap::new(),
            pending_dials: HashMap::new(),
            provided: Vec::new(),
            announcements: HashMap::new(),
            stats: NetworkStats::default(),
            max_age: cfg.max_announcement_age,
            bootstrapped: false,
        };
        let join = tokio::spawn(task.run());
        Ok((NetworkHandle { tx, peer_id }, join))
    }
}

type Reply<T> = oneshot::Sender<Result<T, NetworkError>>;

struct Task {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    served_tx: mpsc::Sender<(request_response::ResponseChannel<pb::BlobResponse>, pb::BlobResponse)>,
    served_rx: mpsc::Receiver<(request_response::ResponseChannel<pb::BlobResponse>, pb::BlobResponse)>,
    provider: StoreProvider,
    codec: BlobCodec,
    pending_providers: HashMap<kad::QueryId, (Vec<PeerId>, Reply<Vec<PeerId>>)>,
    pending_provide: HashMap<kad::QueryId, Reply<()>>,
    pending_requests: HashMap<OutboundRequestId, Reply<pb::BlobResponse>>,
    pending_dials: HashMap<PeerId, Reply<()>>,
    provided: Vec<RecordKey>,
    announcements: HashMap<Vec<u8>, pb::ServerAnnouncement>,
    stats: NetworkStats,
    max_age: Duration,
    bootstrapped: bool,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Task {
    async fn run(mut self) {
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_event(event),
                Some((channel, response)) = self.served_rx.recv() => {
                    if self.swarm.behaviour_mut().blobs.send_response(channel, response).is_err() {
                        tracing::debug!("a blob requester went away before its answer");
                    }
                }
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown(done)) => {
                        for key in std::mem::take(&mut self.provided) {
                            self.swarm.behaviour_mut().kad.stop_providing(&key);
                        }
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => self.on_command(command),
                    None => return,
                },
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        let behaviour = self.swarm.behaviour_mut();
        match command {
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Dial(addr, reply) => {
                let peer = match addr.iter().last() {
                    Some(libp2p::multiaddr::Protocol::P2p(peer)) => peer,
                    _ => {
                        let _ = reply.send(Err(NetworkError::Failed(format!("{addr} has no /p2p/ peer id"))));
                        return;
                    }
                };
                behaviour.kad.add_address(&peer, addr.clone());
                match self.swarm.dial(addr) {
                    Ok(()) => {
                        self.pending_dials.insert(peer, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NetworkError::Failed(e.to_string())));
                    }
                }
            }
            Command::Provide(key, reply) => {
                let key = RecordKey::new(&key);
                match behaviour.kad.start_providing(key.clone()) {
                    Ok(id) => {
                        self.provided.push(key);
                        self.pending_provide.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NetworkError::Failed(e.to_string())));
                    }
                }
            }
            Command::StopProviding(key) => {
                let key = RecordKey::new(&key);
                behaviour.kad.stop_providing(&key);
                self.provided.retain(|k| *k != key);
            }
            Command::Providers(key, reply) => {
                let id = behaviour.kad.get_providers(RecordKey::new(&key));
                self.pending_providers.insert(id, (Vec::new(), reply));
            }
            Command::Request(peer, req, reply) => {
                let id = behaviour.blobs.send_request(&peer, req);
                self.pending_requests.insert(id, reply);
            }
            Command::Subscribe(topic, reply) => {
                let r = behaviour.gossipsub.subscribe(&IdentTopic::new(topic)).map(|_| ());
                let _ = reply.send(r.map_err(|e| NetworkError::Failed(e.to_string())));
            }
            Command::Publish(topic, data, reply) => {
                let r = behaviour.gossipsub.publish(IdentTopic::new(topic), data).map(|_| ());
                let _ = reply.send(r.map_err(|e| NetworkError::Failed(e.to_string())));
            }
            Command::Announcements(reply) => {
                let (now, default) = (now_ms(), self.max_age.as_millis() as u64);
                self.announcements.retain(|_, a| {
                    let valid = if a.valid_for_ms > 0 { a.valid_for_ms.min(default) } else { default };
                    now.saturating_sub(a.timestamp_ms) <= valid
                });
                let _ = reply.send(self.announcements.values().cloned().collect());
            }
            Command::PeerTopics(reply) => {
                let mut topics: Vec<String> =
                    behaviour.gossipsub.all_peers().flat_map(|(_, t)| t.into_iter().map(|t| t.to_string())).collect();
                topics.sort();
                topics.dedup();
                let _ = reply.send(topics);
            }
            Command::Stats(reply) => {
                let _ = reply.send(NetworkStats { refused_blob_frames: self.codec.refused(), ..self.stats });
            }
            Command::Shutdown(_) => {}
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => tracing::info!(%address, "listening"),
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                if let Some(reply) = self.pending_dials.remove(&peer_id) {
                    let _ = reply.send(Ok(()));
                }
                // The first peer we meet: walk the DHT towards ourselves to fill the routing table.
                if !self.bootstrapped {
                    self.bootstrapped = self.swarm.behaviour_mut().kad.bootstrap().is_ok();
                }
            }
            // A server that went away no longer serves, whatever its last announcement said.
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. }
                if self.announcements.remove(&peer_id.to_bytes()).is_some() =>
            {
                tracing::info!(peer = %peer_id, "dropped the announcement of a disconnected server");
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } => {
                if let Some(reply) = self.pending_dials.remove(&peer) {
                    let _ = reply.send(Err(NetworkError::Failed(error.to_string())));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                ..
            })) => self.on_query(id, result, step.last),
            SwarmEvent::Behaviour(BehaviourEvent::Blobs(event)) => self.on_blobs(event),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                let verdict = match announce::verify(&message.data, now_ms(), self.max_age.as_millis() as u64) {
                    Ok(ann) => {
                        let newer = self.announcements.get(&ann.peer_id).is_none_or(|old| old.sequence < ann.sequence);
                        if newer {
                            self.announcements.insert(ann.peer_id.clone(), ann);
                        }
                        self.stats.accepted_announcements += 1;
                        MessageAcceptance::Accept
                    }
                    Err(e) => {
                        tracing::warn!(from = %propagation_source, error = %e, "rejected an announcement");
                        self.stats.rejected_announcements += 1;
                        MessageAcceptance::Reject
                    }
                };
                let _ = self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    verdict,
                );
            }
            _ => {}
        }
    }

    fn on_query(&mut self, id: kad::QueryId, result: QueryResult, last: bool) {
        match result {
            QueryResult::GetProviders(r) => {
                let Some((found, _)) = self.pending_providers.get_mut(&id) else { return };
                let mut done = last;
                match r {
                    Ok(GetProvidersOk::FoundProviders { providers, .. }) => {
                        found.extend(providers);
                        // Enough to start fetching; a caller wanting more asks again.
                        done = true;
                    }
                    Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => done = true,
                    Err(e) => tracing::debug!(error = %e, "provider query ended"),
                }
                if done {
                    if let Some((mut found, reply)) = self.pending_providers.remove(&id) {
                        found.sort();
                        found.dedup();
                        let _ = reply.send(Ok(found));
                    }
                    if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                        q.finish();
                    }
                }
            }
            QueryResult::StartProviding(r) => {
                if let Some(reply) = self.pending_provide.remove(&id) {
                    // With no other peer yet the record is still stored locally: not an error.
                    if let Err(e) = &r {
                        tracing::debug!(error = %e, "provider record published to fewer peers than wanted");
                    }
                    let _ = reply.send(Ok(()));
                }
            }
            _ => {}
        }
    }

    fn on_blobs(&mut self, event: request_response::Event<pb::BlobRequest, pb::BlobResponse>) {
        match event {
            request_response::Event::Message { message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let provider = self.provider.clone();
                    let tx = self.served_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let response = serve(&provider, request);
                        let _ = tx.blocking_send((channel, response));
                    });
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(reply) = self.pending_requests.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure { request_id, error, .. } => {
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Err(NetworkError::Failed(error.to_string())));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::warn!(%peer, %error, "a blob request could not be read or answered");
                self.stats.failed_blob_requests += 1;
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}

/// Answers one blob request from the local store.
fn serve(provider: &StoreProvider, request: pb::BlobRequest) -> pb::BlobResponse {
    use pb::blob_request::Kind;
    use pb::blob_response::Result as R;
    let result = match request.kind {
        Some(Kind::Range(r)) => match <[u8; 32]>::try_from(r.hash.as_slice()) {
            Ok(hash) => {
                let mut ranges = ChunkRanges::empty();
                for range in r.ranges.iter().take(1024) {
                    if range.start < range.end {
                        ranges |= ChunkRanges::from(ChunkNum(range.start)..ChunkNum(range.end));
                    }
                }
                match provider.fetch(&Hash(hash), r.size, &ranges) {
                    Ok(encoded) => R::Encoded(encoded),
                    Err(ProviderError::NotFound) => R::NotFound(pb::NotFound {}),
                    Err(ProviderError::Unavailable(e)) => R::Error(e),
                }
            }
            Err(_) => R::Error("blob hash must be 32 bytes".into()),
        },
        Some(Kind::Manifest(id)) => match <[u8; 32]>::try_from(id.as_slice()) {
            Ok(id) => match provider.store().manifest(&Hash(id)) {
                Ok(m) => R::Manifest(m.canonical_bytes()),
                Err(_) => R::NotFound(pb::NotFound {}),
            },
            Err(_) => R::Error("model id must be 32 bytes".into()),
        },
        None => R::Error("empty request".into()),
    };
    pb::BlobResponse { result: Some(result) }
}

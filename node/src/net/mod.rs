//! The network: one task owns the libp2p `Swarm`; everything else talks to it.
//!
//! [`Network::spawn`] builds the swarm ([`behaviour`]: TCP and QUIC or an injected
//! transport, noise, yamux, identify, ping, Kademlia on `/nakshatra/kad/1.0.0`,
//! gossipsub, `/nakshatra/blobs/1` for blob exchange, AutoNAT, relay client and server,
//! DCUtR) and runs its event loop ([`task`]) on a tokio task. A [`NetworkHandle`] sends
//! that loop [`Command`]s through a bounded channel, each with a oneshot for its answer.
//!
//! Data flow:
//! - identify tells us a peer's listen addresses; they go into Kademlia's table;
//! - `provide` / `providers` become Kademlia provider queries; their results are
//!   routed back to the caller by query id;
//! - inbound blob requests are answered from the local store on a blocking thread
//!   (hashing and reading are slow) and the answer returns to the loop through a
//!   bounded channel, since only the loop may touch the swarm;
//! - announcements received on a model's topic are checked (signature, signer,
//!   freshness, size) before gossipsub forwards them; rejected ones are logged;
//! - fraud proofs received on a model's proof topic are checked as far as they can be
//!   without the model ([`nak_protocol::proof::check`]) before they are forwarded, and
//!   wait for the node to take them and replay them; the proofs a node verified are
//!   files under [`proofs_dir`], which it serves to peers that ask (`proofs` requests);
//! - when AutoNAT finds us unreachable, the loop listens through a relay it knows;
//! - peers found by mDNS (when on) are dialled; the peers met are remembered in a
//!   file ([`peers`]) that the command line reads back as bootstrap peers;
//! - the swarm's name sets every protocol id ([`namespace`]), and a private swarm's
//!   key wraps TCP in pnet.
//! - every connection passes the bounds of [`ResourceLimits`] (in all, per peer, per
//!   remote IP: [`per_ip`]); a peer whose frames are refused (the blob codec's, or the
//!   inference service's through [`NetworkHandle::report`]) earns strikes, and is cut
//!   off, then banned for a while ([`limits`]).

mod activity;
mod answers;
mod behaviour;
mod codec;
mod delay;
pub mod frames;
pub mod identity;
mod limits;
mod namespace;
mod peers;
mod per_ip;
mod provider;
mod scope;
mod streams;
mod task;

use std::collections::HashMap;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId, StreamProtocol};
use nak_protocol::pb;
use nak_shard_store::transfer::StoreProvider;
use nak_shard_store::{Hash, ModelId, Store};
use tokio::sync::{mpsc, oneshot};

use task::Task;

pub use behaviour::{memory_transport, private_tcp_transport, secured_transport, InjectedTransport, HANDSHAKE_TIMEOUT};
pub use codec::{BlobCodec, BLOB_PROTOCOL};
pub use delay::delayed_tcp_transport;
pub use limits::{ResourceLimits, MAX_STREAMS_PER_CONNECTION};
pub use namespace::{read_swarm_key, SwarmProtocols, PUBLIC_SWARM};
pub use peers::{bootstrap_file_peers, read_peers_file, BOOTSTRAP_ENV, BOOTSTRAP_FILE, PEERS_FILE};
pub use per_ip::PerIpLimitExceeded;
pub use provider::RemoteProvider;
pub use streams::Stream;

/// Kademlia protocol of the public swarm (other swarms: [`SwarmProtocols`]).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/nakshatra/kad/1.0.0");

/// Network settings.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Addresses to listen on. Default: TCP and QUIC on all interfaces, random ports.
    pub listen: Vec<Multiaddr>,
    /// Peers to join through: dialed at start and put in the DHT routing table at once.
    pub bootstrap: Vec<Multiaddr>,
    /// Peers met before (a cache, which may hold many that have gone): dialed at start,
    /// but they enter the routing table only once they answer as DHT servers, so that
    /// queries never wait on the dead ones. Default none.
    pub remembered: Vec<Multiaddr>,
    /// How long provider records live. Default 10 minutes (a churning swarm).
    pub provider_ttl: Duration,
    /// How often they are republished. Default 3 minutes.
    pub provider_republish: Duration,
    /// Largest announcement age accepted. Default 2 minutes.
    pub max_announcement_age: Duration,
    /// Commands queued before senders wait. Default 64.
    pub command_queue: usize,
    /// Relay connections for peers that cannot be reached directly (a public node's
    /// service to the swarm). Default off.
    pub relay_server: bool,
    /// Hold every received byte this long: TCP only, a wide-area link on loopback for
    /// benchmarks ([`delayed_tcp_transport`]). Default none.
    pub link_delay: Option<Duration>,
    /// The swarm to join ([`SwarmProtocols`]): nodes of different swarms never talk.
    /// Default [`PUBLIC_SWARM`].
    pub swarm: String,
    /// A private swarm's pre-shared key: TCP only, every connection encrypted with it
    /// ([`private_tcp_transport`]). Default none.
    pub swarm_key: Option<libp2p::pnet::PreSharedKey>,
    /// Find peers on the local network by multicast DNS and join them. Default off here
    /// (tests and embedders run many nodes on one host); the command line turns it on.
    pub mdns: bool,
    /// Where to remember the peers met (bounded, rewritten from time to time and at
    /// shutdown), to rejoin through them after a restart. Default none.
    pub peers_file: Option<std::path::PathBuf>,
    /// Answer DHT queries and hold records for others. Default on; a short-lived client
    /// turns it off, or it would stay in others' routing tables after it leaves and
    /// their queries would wait on it (a dead QUIC address costs a handshake timeout).
    pub dht_server: bool,
    /// How long a connection no protocol uses stays open. Default 120 s (the next DHT
    /// query or fetch often goes to the same peers); every open connection holds about
    /// 100 KiB of buffers.
    pub idle_connection_timeout: Duration,
    /// Ask peers to dial back to learn whether this node is reachable (AutoNAT), and
    /// reserve a relay when it is not. Default on; off where reachability means nothing
    /// (a simulated network).
    pub autonat: bool,
    /// Most open connections: past it, the least recently used are closed down to three
    /// quarters of it, never one that carries a session or a gossip mesh link. Default 128.
    pub max_connections: usize,
    /// Addresses others reach this node at, as its operator knows them (a public address,
    /// a forwarded port). Provider records carry the node's confirmed addresses only, and a
    /// record with none is answered by a holder only while the provider sits in that
    /// holder's routing table: in a swarm of hundreds, one lookup in eight came back
    /// empty. These count as confirmed from the start, before AutoNAT has probed (or
    /// where it is off). Default none.
    pub external_addresses: Vec<Multiaddr>,
    /// What peers may make this node hold, and what happens to those that misbehave.
    /// Default [`ResourceLimits::default`].
    pub limits: ResourceLimits,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".parse().expect("valid literal multiaddr"),
                "/ip4/0.0.0.0/udp/0/quic-v1".parse().expect("valid literal multiaddr"),
            ],
            bootstrap: Vec::new(),
            remembered: Vec::new(),
            provider_ttl: Duration::from_secs(600),
            provider_republish: Duration::from_secs(180),
            max_announcement_age: Duration::from_secs(120),
            command_queue: 64,
            relay_server: false,
            link_delay: None,
            swarm: PUBLIC_SWARM.to_string(),
            swarm_key: None,
            mdns: false,
            peers_file: None,
            dht_server: true,
            idle_connection_timeout: Duration::from_secs(120),
            autonat: true,
            max_connections: 128,
            external_addresses: Vec::new(),
            limits: ResourceLimits::default(),
        }
    }
}

impl NetworkConfig {
    /// The defaults, joining through `bootstrap` and listening on `listen` (the default
    /// addresses when it is empty). `NAK_LINK_DELAY_MS`, when set, delays every byte
    /// received by that many milliseconds ([`NetworkConfig::link_delay`]): benchmarks
    /// of a wide-area swarm on loopback set it for every process.
    pub fn joining(listen: Vec<Multiaddr>, bootstrap: Vec<Multiaddr>) -> Self {
        let link_delay = std::env::var(LINK_DELAY_ENV).ok().and_then(|v| v.parse().ok()).map(Duration::from_millis);
        let mut cfg = NetworkConfig { bootstrap, link_delay, ..NetworkConfig::default() };
        if !listen.is_empty() {
            cfg.listen = listen;
        }
        cfg
    }
}

/// The environment variable [`NetworkConfig::joining`] reads a link delay from.
pub const LINK_DELAY_ENV: &str = "NAK_LINK_DELAY_MS";

/// Errors of the network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// Building the swarm failed.
    #[error("cannot start the network: {0}")]
    Setup(String),
    /// The node's identity could not be loaded or made.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// The network task has stopped.
    #[error("the network task has stopped")]
    Stopped,
    /// A query or request failed.
    #[error("{0}")]
    Failed(String),
}

/// Requests to the network task.
pub enum Command {
    /// The addresses we listen on.
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    /// Listen on one more address (for example through a relay: `<relay>/p2p-circuit`).
    ListenOn(Multiaddr, oneshot::Sender<Result<(), NetworkError>>),
    /// Connect to a peer (unless connected), dialling `addrs` at once and wherever the
    /// swarm knows it.
    Dial(PeerId, Vec<Multiaddr>, oneshot::Sender<Result<(), NetworkError>>),
    /// Announce in the DHT that we provide `key`.
    Provide(Vec<u8>, oneshot::Sender<Result<(), NetworkError>>),
    /// Stop providing `key`.
    StopProviding(Vec<u8>),
    /// Find providers of `key`: the first peer's answer, or (`exhaustive`) every answer
    /// until the query has asked the peers closest to the key.
    Providers { key: Vec<u8>, exhaustive: bool, reply: oneshot::Sender<Result<Vec<PeerId>, NetworkError>> },
    /// The providers of `key` that this node's own DHT store holds.
    StoredProviders(Vec<u8>, oneshot::Sender<Vec<PeerId>>),
    /// Send a blob request to a peer.
    Request(PeerId, pb::BlobRequest, oneshot::Sender<Result<pb::BlobResponse, NetworkError>>),
    /// Subscribe to a topic.
    Subscribe(String, oneshot::Sender<Result<(), NetworkError>>),
    /// Publish bytes on a topic.
    Publish(String, Vec<u8>, oneshot::Sender<Result<(), NetworkError>>),
    /// The latest announcement of each peer, while it holds: those of disconnected servers
    /// or the others (see [`NetworkHandle::announcements`]).
    Announcements { disconnected: bool, reply: oneshot::Sender<Vec<pb::ServerAnnouncement>> },
    /// The latest ping round-trip time to each connected peer.
    Rtts(oneshot::Sender<HashMap<PeerId, Duration>>),
    /// Gossip topics that connected peers subscribe to.
    PeerTopics(oneshot::Sender<Vec<String>>),
    /// Ban a peer: close and refuse its connections, ignore its announcements and its
    /// provider records.
    Block(PeerId),
    /// A peer sent something refused (a malformed or oversized frame, frames over the
    /// rate): a strike against it ([`ResourceLimits`]).
    Report(PeerId, String),
    /// This node's current announcement of a model, which it signs afresh for each peer
    /// that asks for it.
    SetAnnouncement(pb::ServerAnnouncement),
    /// Check a signed announcement (as gossip's are checked) and keep it as its server's
    /// latest when it is newer.
    AddAnnouncement(Vec<u8>, oneshot::Sender<Result<pb::ServerAnnouncement, NetworkError>>),
    /// Fraud proofs received on gossip since the last call (model-free checks passed).
    TakeProofs(oneshot::Sender<Vec<(PeerId, pb::FraudProof)>>),
    /// How this node can be reached, as far as it knows.
    Reachability(oneshot::Sender<pb::Reachability>),
    /// Peers connected now.
    ConnectedPeers(oneshot::Sender<Vec<PeerId>>),
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
    /// Connections made through a relay, then upgraded to direct ones by hole punching.
    pub hole_punches: u64,
    /// Blob-exchange frames refused as oversized or malformed.
    pub refused_blob_frames: u64,
    /// Inbound blob requests that were read but could not be answered.
    pub failed_blob_requests: u64,
    /// Fraud proofs from gossip that failed their model-free checks.
    pub rejected_proofs: u64,
    /// Connections closed because there were more than [`NetworkConfig::max_connections`].
    pub trimmed_connections: u64,
    /// Strikes against peers for refused frames ([`ResourceLimits`]).
    pub strikes: u64,
    /// Peers banned for a while for their strikes.
    pub bans: u64,
}

/// The word for a reachability (`public`, `relayed`, `private`, `unknown`), as `run`
/// prints it and `status` shows it.
pub fn reachability_name(r: pb::Reachability) -> &'static str {
    match r {
        pb::Reachability::Unknown => "unknown",
        pb::Reachability::Public => "public",
        pb::Reachability::Relayed => "relayed",
        pb::Reachability::Private => "private",
    }
}

/// Where a node keeps the fraud proofs it verified about a model, one file each; it
/// answers other peers' proof requests from there.
pub fn proofs_dir(root: &std::path::Path, model_id: &[u8; 32]) -> std::path::PathBuf {
    let hex: String = model_id.iter().map(|b| format!("{b:02x}")).collect();
    root.join("proofs").join(hex)
}

/// A cheap, cloneable way to talk to the network task.
#[derive(Clone)]
pub struct NetworkHandle {
    tx: mpsc::Sender<Command>,
    peer_id: PeerId,
    streams: libp2p_stream::Control,
    streams_in_use: streams::StreamsInUse,
    inference: StreamProtocol,
}

impl NetworkHandle {
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The inference protocol of this node's swarm.
    pub fn inference_protocol(&self) -> StreamProtocol {
        self.inference.clone()
    }

    /// Opens and accepts raw protocol streams (inference sessions) without going
    /// through the network task: the stream behaviour hands them over directly.
    pub fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
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

    /// Listens on one more address; a `…/p2p/<relay>/p2p-circuit` address makes a
    /// reservation with that relay so peers can reach us through it.
    pub async fn listen_on(&self, addr: Multiaddr) -> Result<(), NetworkError> {
        self.ask(|tx| Command::ListenOn(addr, tx)).await?
    }

    /// Opens a `protocol` stream to `peer`, connecting first unless connected (`addrs`
    /// and the addresses the swarm knows, dialled at once).
    ///
    /// The connection comes from the network task, not from libp2p-stream's own dial:
    /// that one is dropped when another of its dials has not been picked up yet (its
    /// queue holds one), and the stream then waits for a connection that never comes.
    pub async fn open_stream(
        &self,
        peer: PeerId,
        addrs: &[Multiaddr],
        protocol: StreamProtocol,
    ) -> Result<Stream, NetworkError> {
        self.connect(peer, addrs.to_vec())
            .await
            .map_err(|e| NetworkError::Failed(format!("cannot connect to {peer}: {e}")))?;
        let mut control = self.streams();
        let first = match control.open_stream(peer, protocol.clone()).await {
            Ok(stream) => return Ok(self.track(peer, stream)),
            Err(e) => e,
        };
        // The connection closed in between, or was relayed and is being replaced by a
        // direct one (hole punching): once more.
        if let Err(e) = self.connect(peer, addrs.to_vec()).await {
            tracing::debug!(%peer, error = %e, "cannot connect");
        }
        control
            .open_stream(peer, protocol)
            .await
            .map(|stream| self.track(peer, stream))
            .map_err(|e| NetworkError::Failed(format!("no stream to {peer}: {e} (first try: {first})")))
    }

    /// Counts an accepted stream from `peer` as in use while it lives, so that the
    /// connection carrying it is never closed for having too many (see
    /// [`NetworkConfig::max_connections`]).
    pub fn track(&self, peer: PeerId, stream: libp2p::Stream) -> Stream {
        self.streams_in_use.track(peer, stream)
    }

    /// The listen addresses, waiting up to `limit` for the first to appear and then
    /// until no more appear for a moment (listeners start asynchronously, each on every
    /// interface); empty if none did.
    pub async fn wait_for_listen_addrs(&self, limit: Duration) -> Result<Vec<Multiaddr>, NetworkError> {
        const SETTLED: Duration = Duration::from_millis(100);
        let t0 = std::time::Instant::now();
        let (mut addrs, mut changed) = (Vec::new(), t0);
        loop {
            let now = self.listen_addrs().await?;
            if now != addrs {
                (addrs, changed) = (now, std::time::Instant::now());
            }
            if (!addrs.is_empty() && changed.elapsed() >= SETTLED) || t0.elapsed() > limit {
                return Ok(addrs);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Dials an address (ending in the peer's `/p2p/` id).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetworkError> {
        match addr.iter().last() {
            Some(libp2p::multiaddr::Protocol::P2p(peer)) => self.connect(peer, vec![addr]).await,
            _ => Err(NetworkError::Failed(format!("{addr} has no /p2p/ peer id"))),
        }
    }

    /// Connects to `peer` unless connected: `addrs` and the addresses the swarm knows are
    /// dialled at once (a dead address does not hold up a live one).
    pub async fn connect(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), NetworkError> {
        self.ask(|tx| Command::Dial(peer, addrs, tx)).await?
    }

    /// Provides a DHT key.
    pub async fn provide(&self, key: Vec<u8>) -> Result<(), NetworkError> {
        self.ask(|tx| Command::Provide(key, tx)).await?
    }

    /// Stops providing a DHT key.
    pub async fn stop_providing(&self, key: Vec<u8>) -> Result<(), NetworkError> {
        self.tx.send(Command::StopProviding(key)).await.map_err(|_| NetworkError::Stopped)
    }

    /// Finds providers of a DHT key: the first that any peer reports (fast).
    pub async fn providers(&self, key: Vec<u8>) -> Result<Vec<PeerId>, NetworkError> {
        self.ask(|reply| Command::Providers { key, exhaustive: false, reply }).await?
    }

    /// Finds every provider the peers closest to the key know of. Slower; for when the
    /// first answer's providers have failed (records outlive the peers that made them,
    /// and a record published before the swarm grew sits on fewer peers).
    pub async fn all_providers(&self, key: Vec<u8>) -> Result<Vec<PeerId>, NetworkError> {
        self.ask(|reply| Command::Providers { key, exhaustive: true, reply }).await?
    }

    /// The providers of a DHT key that this node's own store holds: the records other
    /// nodes placed on it (and its own). No network traffic; for measuring where records
    /// went.
    pub async fn stored_providers(&self, key: Vec<u8>) -> Result<Vec<PeerId>, NetworkError> {
        self.ask(|tx| Command::StoredProviders(key, tx)).await
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
    /// that has not disconnected since (see [`NetworkHandle::disconnected_announcements`]).
    pub async fn announcements(&self) -> Result<Vec<pb::ServerAnnouncement>, NetworkError> {
        self.ask(|reply| Command::Announcements { disconnected: false, reply }).await
    }

    /// The announcements that still hold of servers whose last connection closed without
    /// this node closing it (a crash and a connection the server closed for room look the
    /// same), since when they have neither connected nor announced again. Each is dropped
    /// when a dial to its server fails; until then a route may use them when no route
    /// through [`NetworkHandle::announcements`] exists.
    pub async fn disconnected_announcements(&self) -> Result<Vec<pb::ServerAnnouncement>, NetworkError> {
        self.ask(|reply| Command::Announcements { disconnected: true, reply }).await
    }

    /// Sets what this node answers peers that ask for its announcement of the model
    /// (`announcement.model_id`); the answer is stamped and signed at the time of asking.
    pub async fn set_announcement(&self, announcement: pb::ServerAnnouncement) -> Result<(), NetworkError> {
        self.tx.send(Command::SetAnnouncement(announcement)).await.map_err(|_| NetworkError::Stopped)
    }

    /// Asks `peer` for its current announcement of a model, checks it like one from
    /// gossip and adds it to [`NetworkHandle::announcements`].
    pub async fn ask_announcement(
        &self,
        peer: PeerId,
        model_id: &[u8; 32],
    ) -> Result<pb::ServerAnnouncement, NetworkError> {
        use pb::blob_response::Result as R;
        let req = pb::BlobRequest { kind: Some(pb::blob_request::Kind::Announcement(model_id.to_vec())) };
        match self.request(peer, req).await?.result {
            Some(R::Announcement(bytes)) => self.ask(|tx| Command::AddAnnouncement(bytes, tx)).await?,
            Some(R::NotFound(_)) => Err(NetworkError::Failed(format!("{peer} does not serve the model"))),
            Some(R::Error(e)) => Err(NetworkError::Failed(format!("{peer}: {e}"))),
            _ => Err(NetworkError::Failed(format!("{peer} answered an announcement request with something else"))),
        }
    }

    /// The latest ping round-trip time to each connected peer (libp2p ping, every 15 s).
    pub async fn rtts(&self) -> Result<HashMap<PeerId, Duration>, NetworkError> {
        self.ask(Command::Rtts).await
    }

    /// Gossip topics that connected peers subscribe to (how `status` finds the models).
    pub async fn peer_topics(&self) -> Result<Vec<String>, NetworkError> {
        self.ask(Command::PeerTopics).await
    }

    /// The models whose announcement topics connected peers subscribe to, each once, in
    /// id order.
    pub async fn peer_models(&self) -> Result<Vec<ModelId>, NetworkError> {
        let topics = self.peer_topics().await?;
        let mut ids: Vec<ModelId> =
            topics.iter().filter_map(|t| nak_protocol::keys::model_of_topic(t).map(Hash)).collect();
        ids.sort_by_key(|id| id.0);
        ids.dedup();
        Ok(ids)
    }

    /// Bans `peer` from this node's network: its connections are closed and refused, its
    /// announcements ignored (also when others forward them), and providers lists no
    /// longer name it.
    pub async fn block(&self, peer: PeerId) -> Result<(), NetworkError> {
        self.tx.send(Command::Block(peer)).await.map_err(|_| NetworkError::Stopped)
    }

    /// Counts a strike against `peer`, which sent something refused (`why`); enough of them
    /// close its connections, then ban it for a while ([`ResourceLimits`]). Never waits: a
    /// report that finds the command queue full is dropped (a flood of refusals is the very
    /// moment the queue must stay free for the node's own work).
    pub fn report(&self, peer: PeerId, why: impl Into<String>) {
        if self.tx.try_send(Command::Report(peer, why.into())).is_err() {
            tracing::debug!(%peer, "a strike was not counted: the network task is busy");
        }
    }

    /// Fraud proofs received on gossip since the last call, each with the peer it came from.
    pub async fn take_proofs(&self) -> Result<Vec<(PeerId, pb::FraudProof)>, NetworkError> {
        self.ask(Command::TakeProofs).await
    }

    /// How this node can be reached: public (AutoNAT peers dialled it back), relayed
    /// (behind a NAT, with a relay reservation), private (behind a NAT, no relay) or
    /// unknown (not tested yet, or only local addresses, which AutoNAT does not test).
    pub async fn reachability(&self) -> Result<pb::Reachability, NetworkError> {
        self.ask(Command::Reachability).await
    }

    /// Peers connected now.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, NetworkError> {
        self.ask(Command::ConnectedPeers).await
    }

    /// Waits up to `limit` for a connection to any peer; whether one came.
    pub async fn wait_for_peer(&self, limit: Duration) -> Result<bool, NetworkError> {
        let t0 = std::time::Instant::now();
        loop {
            if !self.connected_peers().await?.is_empty() {
                return Ok(true);
            }
            if t0.elapsed() > limit {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
    /// Starts the network on the identity kept in `store`'s directory (made on first
    /// use, so a node keeps its peer id across restarts); returns its handle and that
    /// identity. The network task runs until [`NetworkHandle::shutdown`].
    pub async fn spawn_in_store(
        store: &Store,
        cfg: NetworkConfig,
    ) -> Result<(NetworkHandle, libp2p::identity::ed25519::Keypair), NetworkError> {
        let key = identity::load_or_create(store.root())?;
        let (handle, _task) = Self::spawn(key.clone(), store.clone(), cfg).await?;
        Ok((handle, key))
    }

    /// Builds the swarm with `key` as identity on TCP and QUIC, serving blobs from
    /// `store`, and spawns its task.
    pub async fn spawn(
        key: libp2p::identity::ed25519::Keypair,
        store: Store,
        cfg: NetworkConfig,
    ) -> Result<(NetworkHandle, tokio::task::JoinHandle<()>), NetworkError> {
        Self::spawn_with_transport(key, store, cfg, None).await
    }

    /// The same on an injected transport (see [`memory_transport`]) when one is given.
    pub async fn spawn_with_transport(
        key: libp2p::identity::ed25519::Keypair,
        store: Store,
        cfg: NetworkConfig,
        transport: Option<InjectedTransport>,
    ) -> Result<(NetworkHandle, tokio::task::JoinHandle<()>), NetworkError> {
        let keypair = identity::libp2p_keypair(&key);
        let signer = identity::signing_key(&key);
        let peer_id = keypair.public().to_peer_id();
        let setup = |e: &dyn std::fmt::Display| NetworkError::Setup(e.to_string());
        let codec = BlobCodec::default();
        let protocols = SwarmProtocols::of(&cfg.swarm)?;
        // Both replace plain TCP and leave QUIC out: refuse rather than drop one silently.
        if cfg.link_delay.is_some() && cfg.swarm_key.is_some() {
            return Err(NetworkError::Setup(format!("{LINK_DELAY_ENV} cannot be combined with a swarm key")));
        }
        let tcp_replacement = match (transport.is_none(), cfg.link_delay, cfg.swarm_key) {
            (true, Some(delay), _) => Some(delayed_tcp_transport(&keypair, &protocols, delay)?),
            (true, None, Some(psk)) => Some(private_tcp_transport(&keypair, &protocols, psk)?),
            _ => None,
        };
        let tcp_only = tcp_replacement.is_some();
        let mut swarm =
            behaviour::build_swarm(keypair, &cfg, &protocols, codec.clone(), transport.or(tcp_replacement))?;
        let quic = |a: &Multiaddr| a.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::QuicV1));
        for addr in cfg.listen.iter().filter(|a| !(tcp_only && quic(a))) {
            swarm.listen_on(addr.clone()).map_err(|e| setup(&e))?;
        }
        for addr in &cfg.external_addresses {
            swarm.add_external_address(addr.clone());
        }
        for addr in &cfg.bootstrap {
            if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() {
                swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            }
            swarm.dial(addr.clone()).map_err(|e| setup(&e))?;
        }
        for addr in cfg.remembered.iter().filter(|a| !cfg.bootstrap.contains(a)) {
            // A stale entry that cannot even be dialed is no reason not to start.
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::debug!(%addr, "remembered peer not dialed: {e}");
            }
        }
        let (tx, rx) = mpsc::channel(cfg.command_queue);
        let streams = swarm.behaviour().streams.new_control();
        let provider = StoreProvider::new(store, peer_id.to_string());
        let task = Task::new(swarm, rx, provider, codec, &cfg, &protocols, signer);
        let streams_in_use = task.streams_in_use();
        let join = tokio::spawn(task.run());
        let inference = protocols.inference;
        Ok((NetworkHandle { tx, peer_id, streams, streams_in_use, inference }, join))
    }
}

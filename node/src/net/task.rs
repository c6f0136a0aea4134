//! The event loop that owns the swarm: commands in, swarm events handled, answers out.
//!
//! Besides routing query results back to callers, it keeps the node reachable: peers
//! that offer relaying (seen in identify) are remembered, and when AutoNAT concludes we
//! are behind a NAT the node listens through one of them (a relay reservation), so
//! others can dial us via `<relay>/p2p-circuit/p2p/<us>`; DCUtR then tries to replace
//! such relayed connections with direct ones. A relay reservation's address becomes an
//! external address (provider records carry it); the addresses peers report are kept
//! only where this node can use them ([`super::scope`]).
//!
//! While the swarm is smaller than Kademlia's K, each newcomer is among the K closest
//! peers of every key, so the loop publishes its provider records again (once the joins
//! of the moment settle): records made before anyone else joined do not stay on this
//! node alone until the periodic republish.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::kad::store::RecordStore as _;
use libp2p::kad::{self, GetProvidersOk, QueryResult, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, InboundRequestId, OutboundRequestId};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{autonat, dcutr, identify, ping, relay, Multiaddr, PeerId, Swarm};
use nak_protocol::{keys, pb};
use nak_shard_store::transfer::StoreProvider;
use tokio::sync::{mpsc, oneshot};

mod announcements;
mod blobs;
mod penalties;
mod trim;

use super::behaviour::{self, Behaviour, BehaviourEvent};
use super::limits::{self, Penalties, ResourceLimits};
use super::peers::{MetPeers, SAVE_EVERY};
use super::scope;
use super::streams::StreamsInUse;
use super::{BlobCodec, Command, NetworkConfig, NetworkError, NetworkStats, SwarmProtocols};
use crate::dilation::dilate;
use trim::OpenConnection;

type Reply<T> = oneshot::Sender<Result<T, NetworkError>>;

/// How long after a newcomer joins a small swarm our provider records are published again.
const REPUBLISH_SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// A provider query: found so far, whether to run to the end, and where to answer.
type ProviderQuery = (Vec<PeerId>, bool, Reply<Vec<PeerId>>);

pub(super) struct Task {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    served_tx: mpsc::Sender<(request_response::ResponseChannel<pb::BlobResponse>, pb::BlobResponse)>,
    served_rx: mpsc::Receiver<(request_response::ResponseChannel<pb::BlobResponse>, pb::BlobResponse)>,
    provider: StoreProvider,
    codec: BlobCodec,
    pending_providers: HashMap<kad::QueryId, ProviderQuery>,
    pending_provide: HashMap<kad::QueryId, Reply<()>>,
    /// Blob requests in flight each way, with their peers (the connection bound keeps those).
    pending_requests: HashMap<OutboundRequestId, (PeerId, Reply<pb::BlobResponse>)>,
    serving: HashMap<InboundRequestId, PeerId>,
    pending_dials: HashMap<PeerId, Vec<Reply<()>>>,
    provided: Vec<RecordKey>,
    announcements: HashMap<Vec<u8>, pb::ServerAnnouncement>,
    /// Servers (of `announcements`) set aside since their last connection closed, with
    /// when (Unix ms); see [`announcements`].
    disconnected: HashMap<Vec<u8>, u64>,
    rtts: HashMap<PeerId, Duration>,
    stats: NetworkStats,
    max_age: Duration,
    bootstrapped: bool,
    /// Peers that offer relaying, with an address of each.
    relays: HashMap<PeerId, Multiaddr>,
    /// Each open connection.
    connections: HashMap<ConnectionId, OpenConnection>,
    /// Most connections before the least used are closed ([`trim`]).
    max_connections: usize,
    last_trim: Option<std::time::Instant>,
    /// Peers whose connections [`trim`] closed (they have not gone).
    trimmed: HashSet<PeerId>,
    /// When each connected peer last sent or was sent a blob request.
    last_used: HashMap<PeerId, std::time::Instant>,
    /// Streams of the node's own protocols, per peer.
    streams_in_use: StreamsInUse,
    /// Relays we hold a reservation with (or asked for one).
    reserved: HashSet<PeerId>,
    /// Whether we relay for others.
    relay_server: bool,
    /// When to publish our provider records again because the swarm grew.
    republish_at: Option<tokio::time::Instant>,
    /// Fraud proofs received on gossip that passed the model-free checks, with the peer
    /// that published each, until the node takes them ([`Command::TakeProofs`]).
    proofs: std::collections::VecDeque<(PeerId, pb::FraudProof)>,
    /// Peers banned for proven fraud (for good).
    blocked: HashSet<PeerId>,
    /// Peers' strikes and timed bans, and the bounds they are held to.
    penalties: Penalties,
    limits: ResourceLimits,
    /// This node's own current announcement of each model it serves (by model id),
    /// signed afresh whenever a peer asks for it.
    own_announcements: HashMap<Vec<u8>, pb::ServerAnnouncement>,
    /// The node's identity, which signs those answers.
    signer: ed25519_dalek::SigningKey,
    /// What AutoNAT last concluded.
    nat: autonat::NatStatus,
    /// Relays that accepted a reservation from us (and still hold it).
    relayed: HashSet<PeerId>,
    /// Peers met, and the file they are remembered in.
    met: MetPeers,
    peers_file: Option<std::path::PathBuf>,
    /// Identify's protocol version of our swarm: a peer that reports another is of
    /// another swarm.
    identify_version: String,
    /// Our swarm's DHT protocol: only peers that serve it enter the routing table.
    kad_protocol: libp2p::StreamProtocol,
}

/// Fraud proofs held for the node to take; more are dropped (and not forwarded).
const PROOF_QUEUE: usize = 64;

impl Task {
    pub(super) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        provider: StoreProvider,
        codec: BlobCodec,
        cfg: &NetworkConfig,
        protocols: &SwarmProtocols,
        signer: ed25519_dalek::SigningKey,
    ) -> Self {
        let (served_tx, served_rx) = mpsc::channel(cfg.command_queue);
        Task {
            swarm,
            commands,
            served_tx,
            served_rx,
            provider,
            codec,
            pending_providers: HashMap::new(),
            pending_provide: HashMap::new(),
            pending_requests: HashMap::new(),
            serving: HashMap::new(),
            pending_dials: HashMap::new(),
            provided: Vec::new(),
            announcements: HashMap::new(),
            disconnected: HashMap::new(),
            rtts: HashMap::new(),
            stats: NetworkStats::default(),
            max_age: dilate(cfg.max_announcement_age),
            bootstrapped: false,
            relays: HashMap::new(),
            reserved: HashSet::new(),
            connections: HashMap::new(),
            max_connections: cfg.max_connections,
            last_trim: None,
            trimmed: HashSet::new(),
            last_used: HashMap::new(),
            streams_in_use: StreamsInUse::default(),
            relay_server: cfg.relay_server,
            republish_at: None,
            proofs: std::collections::VecDeque::new(),
            blocked: HashSet::new(),
            penalties: Penalties::default(),
            limits: cfg.limits.clone(),
            own_announcements: HashMap::new(),
            signer,
            nat: autonat::NatStatus::Unknown,
            relayed: HashSet::new(),
            met: cfg.peers_file.as_deref().map(MetPeers::load).unwrap_or_default(),
            peers_file: cfg.peers_file.clone(),
            identify_version: protocols.identify.clone(),
            kad_protocol: protocols.kad.clone(),
        }
    }

    /// The counts of the node's own streams, which the handle keeps up to date.
    pub(super) fn streams_in_use(&self) -> StreamsInUse {
        self.streams_in_use.clone()
    }

    pub(super) async fn run(mut self) {
        let mut save = tokio::time::interval(dilate(SAVE_EVERY));
        // A burst of connections all inside their grace leaves nothing to close when they
        // arrive: look again once they have aged, not only at the next connection.
        let mut trim = tokio::time::interval(dilate(trim::GRACE));
        trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let republish_at = self.republish_at;
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_event(event),
                _ = save.tick() => self.save_peers(),
                _ = trim.tick() => {
                    self.trim_connections();
                    self.lift_bans();
                }
                _ = tokio::time::sleep_until(republish_at.unwrap_or_else(tokio::time::Instant::now)), if republish_at.is_some() => {
                    self.republish_at = None;
                    for key in self.provided.clone() {
                        if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key) {
                            tracing::debug!(error = %e, "could not republish a provider record");
                        }
                    }
                }
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
                        self.save_peers();
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => self.on_command(command),
                    None => return,
                },
            }
        }
    }

    fn save_peers(&mut self) {
        if let Some(path) = &self.peers_file {
            if let Err(e) = self.met.save(path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remember the peers met");
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        let behaviour = self.swarm.behaviour_mut();
        match command {
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::ListenOn(addr, reply) => {
                let r = self.swarm.listen_on(addr).map(|_| ());
                let _ = reply.send(r.map_err(|e| NetworkError::Failed(e.to_string())));
            }
            Command::Dial(peer, addrs, reply) => {
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                // Answered when this dial (or the one already under way) ends.
                match dial_unless_connected(&mut self.swarm, peer, addrs) {
                    Ok(()) => self.pending_dials.entry(peer).or_default().push(reply),
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
            Command::Providers { key, exhaustive, reply } => {
                let id = behaviour.kad.get_providers(RecordKey::new(&key));
                self.pending_providers.insert(id, (Vec::new(), exhaustive, reply));
            }
            Command::StoredProviders(key, reply) => {
                let records = behaviour.kad.store_mut().providers(&RecordKey::new(&key));
                let _ = reply.send(records.into_iter().map(|r| r.provider).collect());
            }
            Command::Request(peer, req, reply) => {
                self.last_used.insert(peer, std::time::Instant::now());
                let id = behaviour.blobs.send_request(&peer, req);
                self.pending_requests.insert(id, (peer, reply));
            }
            Command::Subscribe(topic, reply) => {
                let topic = IdentTopic::new(topic);
                // Scoring is on from the start (`behaviour`), so this cannot fail.
                let _ = behaviour.gossipsub.set_topic_params(topic.clone(), limits::gossip_topic_scoring());
                let r = behaviour.gossipsub.subscribe(&topic).map(|_| ());
                let _ = reply.send(r.map_err(|e| NetworkError::Failed(e.to_string())));
            }
            Command::Publish(topic, data, reply) => {
                let r = behaviour.gossipsub.publish(IdentTopic::new(topic), data).map(|_| ());
                let _ = reply.send(r.map_err(|e| NetworkError::Failed(e.to_string())));
            }
            Command::Announcements { disconnected, reply } => {
                let _ = reply.send(self.held_announcements(disconnected));
            }
            Command::Rtts(reply) => {
                let _ = reply.send(self.rtts.clone());
            }
            Command::PeerTopics(reply) => {
                let mut topics: Vec<String> =
                    behaviour.gossipsub.all_peers().flat_map(|(_, t)| t.into_iter().map(|t| t.to_string())).collect();
                topics.sort();
                topics.dedup();
                let _ = reply.send(topics);
            }
            Command::Block(peer) => {
                behaviour.blocked.block_peer(peer);
                self.announcements.remove(&peer.to_bytes());
                self.disconnected.remove(&peer.to_bytes());
                self.blocked.insert(peer);
                self.met.forget(&peer);
            }
            Command::SetAnnouncement(ann) => {
                self.own_announcements.insert(ann.model_id.clone(), ann);
            }
            Command::Report(peer, why) => self.strike(peer, &why),
            Command::AddAnnouncement(data, reply) => {
                let _ = reply.send(self.accept_announcement(&data).map_err(|e| NetworkError::Failed(e.to_string())));
            }
            Command::TakeProofs(reply) => {
                let _ = reply.send(self.proofs.drain(..).collect());
            }
            Command::Reachability(reply) => {
                let _ = reply.send(match (&self.nat, !self.relayed.is_empty()) {
                    (autonat::NatStatus::Public(_), _) => pb::Reachability::Public,
                    (_, true) => pb::Reachability::Relayed,
                    (autonat::NatStatus::Private, false) => pb::Reachability::Private,
                    (autonat::NatStatus::Unknown, false) => pb::Reachability::Unknown,
                });
            }
            Command::ConnectedPeers(reply) => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Stats(reply) => {
                let _ = reply.send(NetworkStats { refused_blob_frames: self.codec.refused(), ..self.stats });
            }
            Command::Shutdown(_) => {}
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        behaviour::record_metrics(&event);
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                // A relay server is public by its operator's word: its listen addresses are
                // what it hands to the peers that reserve a slot with it.
                if self.relay_server && !is_circuit(&address) {
                    self.swarm.add_external_address(address);
                } else if is_circuit(&address) {
                    // A relay reservation: an address anyone can dial.
                    self.swarm.add_external_address(address);
                }
            }
            // Our provider records carry our confirmed addresses, and one without any is found
            // only through holders that know us: publish again with the new address.
            SwarmEvent::ExternalAddrConfirmed { .. } if !self.provided.is_empty() => {
                self.republish_at = Some(tokio::time::Instant::now() + dilate(REPUBLISH_SETTLE));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } if is_circuit(&address) => self.lost_relay(&address),
            SwarmEvent::ListenerClosed { addresses, .. } => {
                for address in addresses.iter().filter(|a| is_circuit(a)) {
                    self.lost_relay(address);
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                let (addr, dialer) = (endpoint.get_remote_address().clone(), endpoint.is_dialer());
                let since = std::time::Instant::now();
                self.connections.insert(connection_id, OpenConnection { peer: peer_id, addr, dialer, since });
                self.trimmed.remove(&peer_id);
                self.disconnected.remove(&peer_id.to_bytes());
                self.trim_connections();
                if endpoint.is_relayed() {
                    tracing::info!(peer = %peer_id, dialer = endpoint.is_dialer(), "connected through a relay");
                }
                if let libp2p::core::ConnectedPoint::Dialer { address, .. } = endpoint {
                    self.met.remember(peer_id, address);
                }
                for reply in self.pending_dials.remove(&peer_id).into_iter().flatten() {
                    let _ = reply.send(Ok(()));
                }
                // The first peer we meet: walk the DHT towards ourselves to fill the routing table.
                // (A remembered peer enters the table only after identify; kad bootstraps on its
                // own then, a moment later, which leaves a relayed connection's hole punch alone.)
                if !self.bootstrapped {
                    self.bootstrapped = self.swarm.behaviour_mut().kad.bootstrap().is_ok();
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, cause, .. } => {
                self.connections.remove(&connection_id);
                if num_established == 0 {
                    self.on_last_connection_closed(peer_id, cause.as_ref());
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result: Ok(rtt), .. })) => {
                self.rtts.insert(peer, rtt);
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } => {
                if matches!(error, DialError::Transport(_) | DialError::WrongPeerId { .. }) {
                    self.on_dial_failed(peer);
                }
                for reply in self.pending_dials.remove(&peer).into_iter().flatten() {
                    let _ = reply.send(Err(NetworkError::Failed(error.to_string())));
                }
                // A request to a peer never reached left a use behind (bounded memory).
                if !self.swarm.is_connected(&peer) {
                    self.last_used.remove(&peer);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                connection_id,
                peer_id,
                info,
            })) => {
                // A node of another Nakshatra swarm, reached over QUIC (no noise prologue to stop
                // it). Other libp2p peers name their own versions and may still speak our
                // protocols (the public swarm's are plain), so only ours are compared.
                if info.protocol_version.starts_with("/nakshatra") && info.protocol_version != self.identify_version {
                    tracing::info!(peer = %peer_id, theirs = %info.protocol_version, "a peer of another swarm; disconnecting");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                let reached = self.connections.get(&connection_id).map(|c| (c.addr.clone(), c.dialer));
                let usable: Vec<Multiaddr> = (info.listen_addrs.into_iter())
                    .filter(|a| scope::usable(a, reached.as_ref().map(|(r, _)| r)))
                    .collect();
                let direct = usable.iter().find(|a| !is_circuit(a)).cloned();
                if info.protocols.contains(&relay::HOP_PROTOCOL_NAME) {
                    // Where we dialled it, it listens; else one of its addresses we can reach.
                    let at = match reached {
                        Some((addr, true)) if !is_circuit(&addr) => Some(addr),
                        _ => direct.clone(),
                    };
                    if let Some(addr) = at {
                        self.relays.insert(peer_id, addr);
                    }
                }
                // A client (a DHT client) stays out of the routing table and the peers file:
                // once it leaves, queries and restarts would still wait on its addresses.
                if info.protocols.contains(&self.kad_protocol) {
                    if let Some(addr) = direct.filter(|_| !self.met.knows(&peer_id)) {
                        self.met.remember(peer_id, addr);
                    }
                    for addr in usable {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(libp2p::mdns::Event::Discovered(found))) => {
                let me = *self.swarm.local_peer_id();
                for (peer, addr) in found.into_iter().filter(|(p, _)| *p != me && !self.blocked.contains(p)) {
                    tracing::debug!(%peer, %addr, "found on the local network");
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    let _ = dial_unless_connected(&mut self.swarm, peer, vec![addr]);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged { old, new })) => {
                tracing::info!(?old, ?new, "reachability changed");
                if new == autonat::NatStatus::Private {
                    self.reserve_relay();
                }
                self.nat = new;
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(event)) => {
                tracing::info!(?event, "relay client");
                if let relay::client::Event::ReservationReqAccepted { relay_peer_id, .. } = event {
                    self.relayed.insert(relay_peer_id);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event { remote_peer_id, result })) => match result {
                Ok(_) => {
                    self.stats.hole_punches += 1;
                    tracing::info!(peer = %remote_peer_id, "hole punched: direct connection");
                }
                Err(e) => tracing::info!(peer = %remote_peer_id, error = %e, "hole punching failed; staying relayed"),
            },
            // Records go to the K closest peers. While the swarm has fewer than K peers every
            // newcomer is one of them, so records published before it joined are placed on
            // it too, once the joins of the moment have settled.
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated { is_new_peer: true, .. })) => {
                let known: usize = self.swarm.behaviour_mut().kad.kbuckets().map(|b| b.num_entries()).sum();
                if known < kad::K_VALUE.get() && !self.provided.is_empty() && self.republish_at.is_none() {
                    self.republish_at = Some(tokio::time::Instant::now() + dilate(REPUBLISH_SETTLE));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                stats,
            })) => {
                if step.last {
                    let ms = stats.duration().map(|d| d.as_millis() as u64);
                    tracing::debug!(
                        kind = query_kind(&result),
                        steps = step.count.get(),
                        requests = stats.num_requests(),
                        failed = stats.num_failures(),
                        ?ms,
                        "kad query done"
                    );
                }
                self.on_query(id, result, step.last)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Blobs(event)) => self.on_blobs(event),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                let verdict = if keys::is_proof_topic(message.topic.as_str()) {
                    self.on_proof(propagation_source, &message.data)
                } else {
                    self.on_announcement(&message.data, propagation_source)
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

    /// Listens through a relay we know and have no reservation with yet.
    fn reserve_relay(&mut self) {
        let Some((peer, addr)) = self.relays.iter().find(|(p, _)| !self.reserved.contains(p)) else {
            tracing::warn!("behind a NAT and no relay known: peers cannot dial us");
            return;
        };
        let circuit = addr.clone().with_p2p(*peer).unwrap_or_else(|a| a).with(Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit.clone()) {
            Ok(_) => {
                tracing::info!(%circuit, "listening through a relay");
                self.reserved.insert(*peer);
            }
            Err(e) => tracing::warn!(%circuit, error = %e, "cannot listen through a relay"),
        }
    }

    /// A relay reservation ended (the relay went away or refused to renew it): reachable
    /// through it no more. Behind a NAT, another relay is asked; this one again only once
    /// identify shows it relays (after a new connection).
    fn lost_relay(&mut self, circuit: &Multiaddr) {
        let relay = circuit.iter().take_while(|p| *p != Protocol::P2pCircuit).fold(None, |last, p| match p {
            Protocol::P2p(peer) => Some(peer),
            _ => last,
        });
        tracing::info!(%circuit, "no longer listening through a relay");
        self.swarm.remove_external_address(circuit);
        if let Some(relay) = relay {
            self.reserved.remove(&relay);
            self.relays.remove(&relay);
            self.relayed.remove(&relay);
        }
        if self.nat == autonat::NatStatus::Private {
            self.reserve_relay();
        }
    }

    fn on_query(&mut self, id: kad::QueryId, result: QueryResult, last: bool) {
        match result {
            QueryResult::GetProviders(r) => {
                let Some((found, exhaustive, _)) = self.pending_providers.get_mut(&id) else { return };
                let mut done = last;
                match r {
                    Ok(GetProvidersOk::FoundProviders { providers, .. }) => {
                        let new: Vec<PeerId> = providers
                            .into_iter()
                            .filter(|p| !self.blocked.contains(p) && p != self.swarm.local_peer_id())
                            .collect();
                        // Kademlia knows a provider's addresses only while this query lives (they
                        // are not kept once it is finished), so dial now: the fetch that follows
                        // asks by peer id alone.
                        for peer in &new {
                            let _ = dial_unless_connected(&mut self.swarm, *peer, Vec::new());
                        }
                        found.extend(new);
                        // Enough to start fetching, unless the caller asked for everyone. Kademlia
                        // reports every peer's answer here, also the answers that name nobody:
                        // stopping at the first of those returned nothing for keys whose records
                        // sit on a few peers of a large swarm (half the lookups at 200 nodes).
                        done |= !*exhaustive && !found.is_empty();
                    }
                    Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => {
                        if found.is_empty() {
                            tracing::debug!(?id, "provider query found nobody");
                        }
                        done = true
                    }
                    Err(e) => tracing::debug!(error = %e, "provider query ended"),
                }
                if done {
                    if let Some((mut found, _, reply)) = self.pending_providers.remove(&id) {
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
}

/// Dials `peer` (at `addrs`, and wherever the swarm knows it) unless connected to it or
/// dialling it already (then Ok: that dial stands for this one).
fn dial_unless_connected(swarm: &mut Swarm<Behaviour>, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), DialError> {
    let opts = DialOpts::peer_id(peer)
        .addresses(addrs)
        .extend_addresses_through_behaviour()
        .condition(PeerCondition::DisconnectedAndNotDialing)
        .build();
    match swarm.dial(opts) {
        Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => Ok(()),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "cannot dial a peer");
            Err(e)
        }
    }
}

fn is_circuit(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// What kind of Kademlia query a result is of, for the logs.
fn query_kind(result: &QueryResult) -> &'static str {
    match result {
        QueryResult::Bootstrap(_) => "bootstrap",
        QueryResult::GetClosestPeers(_) => "closest peers",
        QueryResult::GetProviders(_) => "providers",
        QueryResult::StartProviding(_) => "provide",
        QueryResult::RepublishProvider(_) => "republish provider",
        QueryResult::GetRecord(_) => "record",
        QueryResult::PutRecord(_) => "put record",
        QueryResult::RepublishRecord(_) => "republish record",
    }
}

//! The swarm's protocols and how the swarm is built.
//!
//! One [`Behaviour`] combines identify, ping, Kademlia, gossipsub, blob exchange, and
//! the NAT-traversal trio: AutoNAT (are we reachable?), the circuit-relay client (be
//! reachable through a relay when not) and DCUtR (upgrade a relayed connection to a
//! direct one by hole punching); a public node may also relay for others; mDNS, when
//! on, finds peers on the local network. Every protocol id is the swarm's own
//! ([`SwarmProtocols`]). Raw streams
//! (inference sessions) go through `libp2p-stream`, outside the swarm's event loop.
//!
//! The transport is TCP and QUIC by default. A caller may inject its own
//! ([`InjectedTransport`], e.g. [`memory_transport`]) to run many nodes in one process;
//! the relay client's transport is layered on top of either.

use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, MemoryTransport};
use libp2p::core::upgrade::Version;
use libp2p::gossipsub;
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore};
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    allow_block_list, autonat, connection_limits, dcutr, identify, mdns, noise, ping, relay, tcp, yamux, PeerId, Swarm,
    Transport,
};
use nak_protocol::announce::MAX_ANNOUNCEMENT_BYTES;
use nak_protocol::proof::MAX_PROOF_BYTES;

use super::activity::ActivityTracked;
use super::limits::{self, MAX_STREAMS_PER_CONNECTION};
use super::per_ip::PerIpLimits;
use super::{BlobCodec, NetworkConfig, NetworkError, SwarmProtocols};
use crate::dilation::dilate;

/// Longest a connection's security and multiplexer handshake may take on a transport
/// built here (on TCP and QUIC the swarm applies [`super::ResourceLimits::handshake_timeout`]
/// around every transport as well).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A transport handed to the node instead of TCP and QUIC: authenticated and multiplexed.
pub type InjectedTransport = Boxed<(PeerId, StreamMuxerBox)>;

/// Every protocol a node speaks.
#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    /// Bounds on pending and established connections: first, so a refused connection
    /// costs the other protocols nothing.
    pub limits: connection_limits::Behaviour,
    /// Bounds on incoming connections per remote IP.
    pub per_ip: PerIpLimits,
    /// Banned peers (for proven fraud, or for a while for refused frames): no connection
    /// to or from them.
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    /// Kademlia, and when it last sent each peer a request (for the connection bound).
    pub kad: ActivityTracked<kad::Behaviour<MemoryStore>>,
    pub gossipsub: gossipsub::Behaviour,
    pub blobs: request_response::Behaviour<BlobCodec>,
    pub autonat: Toggle<autonat::Behaviour>,
    pub relay_client: relay::client::Behaviour,
    pub relay_server: Toggle<relay::Behaviour>,
    pub dcutr: dcutr::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub streams: libp2p_stream::Behaviour,
}

/// An in-memory transport (addresses `/memory/<n>`) with noise and yamux, for many nodes
/// in one process.
pub fn memory_transport(keypair: &Keypair) -> Result<InjectedTransport, NetworkError> {
    secured_transport(MemoryTransport::default(), keypair)
}

/// Noise and yamux over any transport of byte streams, as on TCP: for in-memory and
/// simulated networks.
pub fn secured_transport<T>(transport: T, keypair: &Keypair) -> Result<InjectedTransport, NetworkError>
where
    T: Transport + Send + Unpin + 'static,
    T::Output: futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static,
    T::Error: Send + Sync + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
{
    let noise = noise::Config::new(keypair).map_err(|e| NetworkError::Setup(e.to_string()))?;
    Ok(transport.upgrade(Version::V1).authenticate(noise).multiplex(muxer()).timeout(dilate(HANDSHAKE_TIMEOUT)).boxed())
}

/// TCP with the pre-shared key's encryption under noise and yamux: a private swarm's
/// transport.
pub fn private_tcp_transport(
    keypair: &Keypair,
    protocols: &SwarmProtocols,
    psk: PreSharedKey,
) -> Result<InjectedTransport, NetworkError> {
    let noise = protocols.noise(keypair).map_err(|e| NetworkError::Setup(e.to_string()))?;
    Ok(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
        .upgrade(Version::V1)
        .authenticate(noise)
        .multiplex(muxer())
        .timeout(dilate(HANDSHAKE_TIMEOUT))
        .boxed())
}

/// yamux with at most [`MAX_STREAMS_PER_CONNECTION`] streams.
fn muxer() -> yamux::Config {
    let mut cfg = yamux::Config::default();
    cfg.set_max_num_streams(MAX_STREAMS_PER_CONNECTION);
    cfg
}

/// A gossip message's id: the hash of its topic and data (unsigned messages carry no
/// author or sequence number to tell them apart).
fn gossip_message_id(message: &gossipsub::Message) -> gossipsub::MessageId {
    let mut hasher = blake3::Hasher::new();
    hasher.update(message.topic.as_str().as_bytes());
    hasher.update(&[0]);
    hasher.update(&message.data);
    gossipsub::MessageId::from(hasher.finalize().as_bytes().to_vec())
}

fn behaviour(
    key: &Keypair,
    relay_client: relay::client::Behaviour,
    cfg: &NetworkConfig,
    protocols: &SwarmProtocols,
    codec: BlobCodec,
) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let peer_id = key.public().to_peer_id();
    let mut kad_cfg = kad::Config::new(protocols.kad.clone());
    kad_cfg.set_provider_record_ttl(Some(dilate(cfg.provider_ttl)));
    kad_cfg.set_provider_publication_interval(Some(dilate(cfg.provider_republish)));
    kad_cfg.set_query_timeout(dilate(Duration::from_secs(30)));
    // The rest at libp2p's defaults, stretched with the node's clock.
    kad_cfg.set_substreams_timeout(dilate(Duration::from_secs(10)));
    kad_cfg.set_periodic_bootstrap_interval(Some(dilate(Duration::from_secs(5 * 60))));
    kad_cfg.set_kbucket_pending_timeout(dilate(Duration::from_secs(60)));
    // How long a walk waits on one peer before going on without it. Upstream it is fixed
    // at 10 s of wall time (our patch of libp2p-kad makes it a setting): a dilated swarm
    // would give up on a peer still being dialled after a few round trips.
    kad_cfg.set_peer_timeout(dilate(Duration::from_secs(10)));
    let mut gossip_builder = gossipsub::ConfigBuilder::default();
    if let Some(prefix) = &protocols.gossip_prefix {
        gossip_builder.protocol_id_prefix(prefix.clone());
    }
    // What the swarm gossips signs itself: announcements with their server's key, fraud
    // proofs with the accused's receipts; the task checks them once per message. So
    // gossip goes unsigned, and a message is known by its content. A signed gossip
    // message is checked on every copy a node receives, before duplicates are dropped:
    // five or six signature checks per node for each announcement, 15 % of the CPU of
    // a 200-node swarm (measured with perf in `nak-sim churn`).
    let gossip_cfg = gossip_builder
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .message_id_fn(gossip_message_id)
        .validate_messages()
        .max_transmit_size(MAX_ANNOUNCEMENT_BYTES.max(MAX_PROOF_BYTES) + 1024)
        .heartbeat_interval(dilate(Duration::from_millis(500)))
        // The rest at libp2p's defaults, stretched with the node's clock.
        .heartbeat_initial_delay(dilate(Duration::from_secs(5)))
        .fanout_ttl(dilate(Duration::from_secs(60)))
        .duplicate_cache_time(dilate(Duration::from_secs(60)))
        .prune_backoff(dilate(Duration::from_secs(60)))
        .unsubscribe_backoff(dilate(Duration::from_secs(10)))
        .graft_flood_threshold(dilate(Duration::from_secs(10)))
        .iwant_followup_time(dilate(Duration::from_secs(3)))
        .publish_queue_duration(dilate(Duration::from_secs(5)))
        .forward_queue_duration(dilate(Duration::from_secs(1)))
        .build()?;
    let mut gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip_cfg)?;
    let (score, thresholds) = limits::gossip_scoring();
    gossipsub.with_peer_score(score, thresholds)?;
    Ok(Behaviour {
        limits: connection_limits::Behaviour::new(cfg.limits.connections()),
        per_ip: PerIpLimits::new(cfg.limits.max_pending_incoming_per_ip, cfg.limits.max_established_incoming_per_ip),
        blocked: allow_block_list::Behaviour::default(),
        // Peers learn at once of an address gained later (a relay reservation).
        identify: identify::Behaviour::new(
            identify::Config::new(protocols.identify.clone(), key.public())
                .with_push_listen_addr_updates(true)
                .with_interval(dilate(Duration::from_secs(5 * 60))),
        ),
        ping: ping::Behaviour::new(
            ping::Config::new()
                .with_interval(dilate(Duration::from_secs(15)))
                .with_timeout(dilate(Duration::from_secs(20))),
        ),
        kad: ActivityTracked::new(kad::Behaviour::with_config(
            peer_id,
            MemoryStore::with_config(peer_id, cfg.limits.dht_store()),
            kad_cfg,
        )),
        gossipsub,
        blobs: request_response::Behaviour::with_codec(
            codec,
            [(protocols.blobs.clone(), ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(dilate(Duration::from_secs(30))),
        ),
        autonat: cfg.autonat.then(|| autonat::Behaviour::new(peer_id, autonat::Config::default())).into(),
        relay_client,
        relay_server: cfg.relay_server.then(|| relay::Behaviour::new(peer_id, relay_config())).into(),
        dcutr: dcutr::Behaviour::new(peer_id),
        mdns: match cfg.mdns {
            true => Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)?),
            false => None,
        }
        .into(),
        streams: libp2p_stream::Behaviour::new(),
    })
}

/// Most a relayed connection may carry, and for how long. libp2p's defaults (128 KiB, 2
/// minutes) only let peers coordinate hole punching; a span's metadata fetch and an
/// inference session whose hole punching failed need more. The relay's operator pays in
/// bandwidth; the per-peer and per-address rate limits stay libp2p's.
const RELAY_CIRCUIT_BYTES: u64 = 64 << 20;
const RELAY_CIRCUIT_DURATION: Duration = Duration::from_secs(30 * 60);

fn relay_config() -> relay::Config {
    relay::Config {
        max_circuit_bytes: RELAY_CIRCUIT_BYTES,
        max_circuit_duration: RELAY_CIRCUIT_DURATION,
        ..relay::Config::default()
    }
}

/// Builds the swarm on TCP and QUIC, or on `transport` when one is injected.
pub(super) fn build_swarm(
    keypair: Keypair,
    cfg: &NetworkConfig,
    protocols: &SwarmProtocols,
    codec: BlobCodec,
    transport: Option<InjectedTransport>,
) -> Result<Swarm<Behaviour>, NetworkError> {
    let setup = |e: &dyn std::fmt::Display| NetworkError::Setup(e.to_string());
    let idle_for = dilate(cfg.idle_connection_timeout);
    let idle = move |c: libp2p::swarm::Config| c.with_idle_connection_timeout(idle_for);
    let builder = libp2p::SwarmBuilder::with_existing_identity(keypair).with_tokio();
    // The builder's phases are distinct types, so the two transport choices cannot share a
    // variable; the steps after the transport are the same for both.
    macro_rules! finish {
        ($after_transport:expr) => {
            $after_transport
                .with_relay_client(|key: &Keypair| protocols.noise(key), muxer)
                .map_err(|e| setup(&e))?
                .with_behaviour(|key, relay| behaviour(key, relay, cfg, protocols, codec))
                .map_err(|e| setup(&e))?
                .with_swarm_config(idle)
                // Every connection's handshake, either way. Left at the builder's default it is
                // 10 s of wall time whatever the dilation: at 30× a dial of four round trips
                // over 85 ms links timed out, and half a simulated swarm's dials failed.
                .with_connection_timeout(dilate(cfg.limits.handshake_timeout))
                .build()
        };
    }
    let mut swarm = match transport {
        None => finish!(builder
            .with_tcp(tcp::Config::default().nodelay(true), |key: &Keypair| protocols.noise(key), muxer)
            .map_err(|e| setup(&e))?
            .with_quic()),
        Some(transport) => finish!(builder.with_other_transport(|_| transport).map_err(|e| setup(&e))?),
    };
    // Servers answer DHT queries whatever AutoNAT says (the swarm is made of servers);
    // clients only ask.
    let mode = if cfg.dht_server { kad::Mode::Server } else { kad::Mode::Client };
    swarm.behaviour_mut().kad.set_mode(Some(mode));
    Ok(swarm)
}

/// Counts `event` into libp2p's metrics.
pub(super) fn record_metrics(event: &libp2p::swarm::SwarmEvent<BehaviourEvent>) {
    use libp2p::metrics::Recorder;
    let m = &crate::metrics::global().p2p;
    m.record(event);
    match event {
        libp2p::swarm::SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => m.record(e),
        libp2p::swarm::SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => m.record(e),
        libp2p::swarm::SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => m.record(e),
        libp2p::swarm::SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => m.record(e),
        libp2p::swarm::SwarmEvent::Behaviour(BehaviourEvent::RelayServer(e)) => m.record(e),
        libp2p::swarm::SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => m.record(e),
        _ => {}
    }
}

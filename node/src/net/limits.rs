//! What one node lets others take from it, and what happens to a peer that takes more.
//!
//! A public node is reachable by anyone, so every resource a peer can make it spend is
//! bounded ([`ResourceLimits`], one struct with the defaults documented):
//!
//! - connections: pending (still in their handshake) and established, incoming and in
//!   all, and per peer, through libp2p's `connection_limits`, and incoming ones per
//!   remote IP ([`super::per_ip`]); past a bound a new connection is refused at once, so
//!   an idle-socket flood holds at most [`ResourceLimits::max_pending_incoming`]
//!   descriptors, each for at most [`ResourceLimits::handshake_timeout`], and one host
//!   cannot take every place;
//! - streams: at most [`MAX_STREAMS_PER_CONNECTION`] per connection (yamux refuses more);
//! - frames and bytes: every frame of the node's protocols has a size bound, and an
//!   inference stream a frame rate (`inference::ServiceConfig`, which also bounds
//!   sessions per peer and the memory sessions retain);
//! - the DHT: records and provider keys stored, providers per key (libp2p's
//!   `MemoryStore` refuses more);
//! - gossip: peer scoring on, counting only what a peer cannot do by accident (a message
//!   that fails its checks, protocol misbehaviour); a peer below the graylist threshold
//!   is ignored.
//!
//! A peer whose frames are refused (malformed, oversized, over the rate) earns a strike
//! each time ([`Penalties`]): first it is throttled (the frame is refused), at
//! [`ResourceLimits::strikes_to_disconnect`] its connections are closed, and at
//! [`ResourceLimits::strikes_to_ban`] it is banned for [`ResourceLimits::ban_duration`].
//! Strikes are forgiven at [`ResourceLimits::forgive_per_minute`], so an honest peer's
//! rare refusal never adds up to a ban.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::connection_limits::ConnectionLimits;
use libp2p::gossipsub::{PeerScoreParams, PeerScoreThresholds, TopicScoreParams};
use libp2p::kad::store::MemoryStoreConfig;
use libp2p::PeerId;

/// Most streams a peer may have open on one connection (yamux refuses more). A client
/// holds at most a handful per server (sessions go over one stream each, bounded per
/// peer by the inference service); DHT, gossip and identify add a few short ones.
pub const MAX_STREAMS_PER_CONNECTION: usize = 256;

/// Bounds on what peers may make this node hold, and how misbehaving peers are treated.
#[derive(Debug, Clone)]
pub struct ResourceLimits {
    /// Incoming connections still in their security handshake. Default 64.
    pub max_pending_incoming: u32,
    /// This node's own dials in progress. Default 256 (a joining node walks the DHT
    /// and fetches blobs from many peers at once).
    pub max_pending_outgoing: u32,
    /// Established connections others opened. Default 384.
    pub max_established_incoming: u32,
    /// Established connections in all. Default 512: with the pending ones and the store's
    /// files it stays under the common limit of 1024 open files, and above the 160–230 a
    /// node held while 1000 nodes joined (`nak-sim churn`). The soft bound that closes
    /// least-used connections is [`super::NetworkConfig::max_connections`].
    pub max_established: u32,
    /// Incoming connections from one IP address still in their handshake. Default 16.
    pub max_pending_incoming_per_ip: u32,
    /// Established incoming connections from one IP address. Default 128 (peers behind
    /// one NAT, swarms run on one host).
    pub max_established_incoming_per_ip: u32,
    /// Established connections to one peer. Default 8 (TCP, QUIC and a relayed one, and
    /// both sides dialling at once).
    pub max_established_per_peer: u32,
    /// Longest an incoming connection's security and multiplexer handshake may take.
    /// Default 10 s.
    pub handshake_timeout: Duration,
    /// Strikes (refused frames) at which a peer's connections are closed. Default 8.
    pub strikes_to_disconnect: u32,
    /// Strikes at which a peer is banned. Default 16.
    pub strikes_to_ban: u32,
    /// Strikes forgiven per minute. Default 4.
    pub forgive_per_minute: u32,
    /// How long a ban for refused frames lasts (a ban for proven fraud lasts for good).
    /// Default 10 minutes.
    pub ban_duration: Duration,
    /// DHT records (values and provider keys) this node stores for others. Default 1024.
    pub max_dht_records: usize,
    /// Providers stored per DHT key. Default 20 (Kademlia's K: the closest peers of a key
    /// each hold its K most recent providers).
    pub max_providers_per_key: usize,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        Self {
            max_pending_incoming: 64,
            max_pending_outgoing: 256,
            max_established_incoming: 384,
            max_established: 512,
            max_established_per_peer: 8,
            max_pending_incoming_per_ip: 16,
            max_established_incoming_per_ip: 128,
            handshake_timeout: Duration::from_secs(10),
            strikes_to_disconnect: 8,
            strikes_to_ban: 16,
            forgive_per_minute: 4,
            ban_duration: Duration::from_secs(600),
            max_dht_records: 1024,
            max_providers_per_key: 20,
        }
    }
}

impl ResourceLimits {
    /// The connection bounds, for libp2p's `connection_limits`.
    pub(super) fn connections(&self) -> ConnectionLimits {
        ConnectionLimits::default()
            .with_max_pending_incoming(Some(self.max_pending_incoming))
            .with_max_pending_outgoing(Some(self.max_pending_outgoing))
            .with_max_established_incoming(Some(self.max_established_incoming))
            .with_max_established(Some(self.max_established))
            .with_max_established_per_peer(Some(self.max_established_per_peer))
    }

    /// The DHT store's bounds.
    pub(super) fn dht_store(&self) -> MemoryStoreConfig {
        MemoryStoreConfig {
            max_records: self.max_dht_records,
            max_provided_keys: self.max_dht_records,
            max_providers_per_key: self.max_providers_per_key,
            ..MemoryStoreConfig::default()
        }
    }
}

/// Gossip peer scoring: libp2p's behaviour penalties (a GRAFT flood, a broken promise
/// to send a message), but no penalty for sharing an address (swarms on one host, peers
/// behind one NAT) or for being slow (a loaded server is not a hostile one).
pub(super) fn gossip_scoring() -> (PeerScoreParams, PeerScoreThresholds) {
    let params =
        PeerScoreParams { ip_colocation_factor_weight: 0.0, slow_peer_weight: 0.0, ..PeerScoreParams::default() };
    (params, PeerScoreThresholds::default())
}

/// A topic's scoring: only messages that fail their checks count (each squared, so the
/// third sends the forwarder below the graylist threshold). Announcements are rare and
/// bursty, so the delivery-rate terms, made for steady streams, are off.
pub(super) fn gossip_topic_scoring() -> TopicScoreParams {
    TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        first_message_deliveries_weight: 0.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.5,
        ..TopicScoreParams::default()
    }
}

/// What a strike leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The frame was refused; nothing more.
    Throttle,
    /// Close the peer's connections.
    Disconnect,
    /// Ban the peer until the given time.
    Ban(Instant),
}

/// Strikes per peer, forgiven with time, and the bans they led to.
#[derive(Debug, Default)]
pub(super) struct Penalties {
    strikes: HashMap<PeerId, (f64, Instant)>,
    bans: HashMap<PeerId, Instant>,
}

impl Penalties {
    /// Counts one strike against `peer` at `now`.
    pub(super) fn strike(&mut self, limits: &ResourceLimits, peer: PeerId, now: Instant) -> Verdict {
        let (count, at) = self.strikes.entry(peer).or_insert((0.0, now));
        *count = (*count - forgiven(limits, *at, now)).max(0.0) + 1.0;
        *at = now;
        if *count >= f64::from(limits.strikes_to_ban) {
            self.strikes.remove(&peer);
            let until = now + limits.ban_duration;
            self.bans.insert(peer, until);
            Verdict::Ban(until)
        } else if *count >= f64::from(limits.strikes_to_disconnect) {
            Verdict::Disconnect
        } else {
            Verdict::Throttle
        }
    }

    /// Ends the bans that are over at `now` and forgets strikes forgiven in full; returns
    /// the peers whose bans ended.
    pub(super) fn expire(&mut self, limits: &ResourceLimits, now: Instant) -> Vec<PeerId> {
        self.strikes.retain(|_, (count, at)| *count > forgiven(limits, *at, now));
        let over: Vec<PeerId> = self.bans.iter().filter(|(_, until)| **until <= now).map(|(p, _)| *p).collect();
        for peer in &over {
            self.bans.remove(peer);
        }
        over
    }
}

/// Strikes forgiven between `since` and `now`.
fn forgiven(limits: &ResourceLimits, since: Instant, now: Instant) -> f64 {
    now.saturating_duration_since(since).as_secs_f64() * f64::from(limits.forgive_per_minute) / 60.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strikes_throttle_then_disconnect_then_ban_and_the_ban_ends() {
        let limits = ResourceLimits::default();
        let (mut p, peer, t0) = (Penalties::default(), PeerId::random(), Instant::now());
        let verdicts: Vec<Verdict> = (0..limits.strikes_to_ban).map(|_| p.strike(&limits, peer, t0)).collect();
        let first_disconnect = verdicts.iter().position(|v| *v == Verdict::Disconnect);
        assert_eq!(first_disconnect, Some(limits.strikes_to_disconnect as usize - 1));
        assert!(verdicts[..first_disconnect.unwrap()].iter().all(|v| *v == Verdict::Throttle));
        assert_eq!(verdicts.last(), Some(&Verdict::Ban(t0 + limits.ban_duration)));
        assert!(p.bans.contains_key(&peer));
        assert!(p.expire(&limits, t0 + limits.ban_duration / 2).is_empty());
        assert_eq!(p.expire(&limits, t0 + limits.ban_duration), vec![peer]);
        assert!(!p.bans.contains_key(&peer));
        // After the ban the peer starts from nothing.
        assert_eq!(p.strike(&limits, peer, t0 + limits.ban_duration), Verdict::Throttle);
    }

    #[test]
    fn rare_strikes_are_forgiven_and_never_add_up() {
        let limits = ResourceLimits::default();
        let (mut p, peer, t0) = (Penalties::default(), PeerId::random(), Instant::now());
        // One refused frame every 20 s for an hour: forgiven faster than earned.
        for i in 0..180u64 {
            assert_eq!(p.strike(&limits, peer, t0 + Duration::from_secs(20 * i)), Verdict::Throttle);
        }
        // A minute of quiet forgives everything; the entry is dropped.
        p.expire(&limits, t0 + Duration::from_secs(20 * 180 + 60));
        assert!(p.strikes.is_empty());
        // Another peer's strikes are its own.
        let other = PeerId::random();
        for _ in 0..limits.strikes_to_disconnect - 1 {
            p.strike(&limits, other, t0);
        }
        assert_eq!(p.strike(&limits, peer, t0), Verdict::Throttle);
    }
}

//! Keeping the number of open connections bounded ([`NetworkConfig::max_connections`]).
//!
//! Gossipsub keeps a stream open on every connection to a peer of the swarm, and a
//! connection with an open stream never idles out: left alone, a node of a large swarm
//! stays connected to every peer any DHT query of its ever reached (the simulations
//! measured about 107 connections per node at 200 nodes, each holding about 95 KiB).
//! When a connection takes the count over the bound, and every [`GRACE`] while it stays
//! over, the task closes connections down to three quarters of it. It never closes one
//! to a peer of its gossip mesh, one that carries a stream of the node's own protocols
//! (a session, a push) or a blob request either way that has not been answered yet (a
//! piece of a span can take longer than the grace over a slow link), one to a relay it
//! holds a reservation with, or one opened, or
//! used for a blob request, a DHT message or one of the node's streams, less than
//! [`GRACE`] ago; of the rest, those to the peers used least recently go first. A
//! server whose connection was closed this way keeps its announcement: it has not gone.
//!
//! [`NetworkConfig::max_connections`]: super::super::NetworkConfig::max_connections

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};

use super::Task;
use crate::dilation::dilate;

/// Connections younger than this stay: a dial just made is about to be used. Long enough
/// for a request over a new connection and its answer (a few round trips), and no longer:
/// at 10 s the nodes of a joining swarm each held about 230 connections at 300 nodes
/// (bound 128), nearly all opened or used by a DHT walk in the last 10 s (a server joining
/// provides about a dozen keys, and each walk reaches some thirty peers).
pub(super) const GRACE: Duration = Duration::from_secs(3);
/// A peer whose streams were all idle this long is forgotten by the stream bookkeeping.
const STREAMS_FORGOTTEN: Duration = Duration::from_secs(100);
/// Least time between two trims.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// An open connection.
pub(super) struct OpenConnection {
    pub(super) peer: PeerId,
    /// The address at the other end.
    pub(super) addr: Multiaddr,
    /// Whether we dialled it.
    pub(super) dialer: bool,
    pub(super) since: Instant,
}

impl Task {
    /// Closes connections when there are more than the bound (see the module doc).
    pub(super) fn trim_connections(&mut self) {
        let now = Instant::now();
        if self.connections.len() <= self.max_connections
            || self.last_trim.is_some_and(|t| now - t < dilate(TRIM_EVERY))
        {
            return;
        }
        self.last_trim = Some(now);
        if let Some(long_ago) = now.checked_sub(dilate(STREAMS_FORGOTTEN)) {
            self.streams_in_use.forget_idle(long_ago);
        }
        let mesh: HashSet<PeerId> = self.swarm.behaviour().gossipsub.all_mesh_peers().copied().collect();
        let requesting: HashSet<PeerId> =
            self.pending_requests.values().map(|(peer, _)| *peer).chain(self.serving.values().copied()).collect();
        // Per peer: its connections and when it was last used.
        let mut peers: HashMap<PeerId, (Vec<ConnectionId>, Instant, bool)> = HashMap::new();
        for (id, c) in &self.connections {
            let (streaming, streamed) = self.streams_in_use.of(&c.peer);
            let busy = streaming || requesting.contains(&c.peer);
            let entry = peers.entry(c.peer).or_insert((Vec::new(), c.since, busy));
            entry.0.push(*id);
            let blobs = self.last_used.get(&c.peer).copied().unwrap_or(c.since);
            let dht_sent = self.swarm.behaviour().kad.last_sent(&c.peer).unwrap_or(c.since);
            entry.1 = entry.1.max(c.since).max(streamed.unwrap_or(c.since)).max(blobs).max(dht_sent);
        }
        let mut candidates: Vec<(PeerId, Vec<ConnectionId>, Instant)> = peers
            .into_iter()
            .filter(|(peer, (_, used, busy))| {
                !busy && now - *used >= dilate(GRACE) && !mesh.contains(peer) && !self.reserved.contains(peer)
            })
            .map(|(peer, (ids, used, _))| (peer, ids, used))
            .collect();
        candidates.sort_by_key(|(_, _, used)| *used);
        let mut excess = self.connections.len().saturating_sub(self.max_connections * 3 / 4);
        let mut closed = 0;
        for (peer, ids, _) in candidates {
            if excess == 0 {
                break;
            }
            for id in &ids {
                self.swarm.close_connection(*id);
            }
            excess = excess.saturating_sub(ids.len());
            closed += ids.len();
            self.trimmed.insert(peer);
        }
        self.stats.trimmed_connections += closed as u64;
        tracing::debug!(closed, open = self.connections.len(), "closed the least used connections");
    }
}

//! Strikes against peers whose frames were refused, and the disconnections and timed bans
//! they lead to ([`super::super::limits`]).

use std::time::Instant;

use libp2p::PeerId;

use super::Task;
use crate::net::limits::Verdict;

impl Task {
    /// Counts a strike against `peer` for `why` and acts on it.
    pub(super) fn strike(&mut self, peer: PeerId, why: &str) {
        self.stats.strikes += 1;
        match self.penalties.strike(&self.limits, peer, Instant::now()) {
            Verdict::Throttle => tracing::debug!(%peer, why, "a strike against a peer"),
            Verdict::Disconnect => {
                tracing::warn!(%peer, why, "closing the connections of a peer with too many refused frames");
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Verdict::Ban(_) => {
                tracing::warn!(%peer, why, secs = self.limits.ban_duration.as_secs(), "banned a peer for a while");
                self.stats.bans += 1;
                // Closes its connections and refuses new ones either way.
                self.swarm.behaviour_mut().blocked.block_peer(peer);
            }
        }
    }

    /// Lifts the timed bans that are over (never a ban for proven fraud).
    pub(super) fn lift_bans(&mut self) {
        for peer in self.penalties.expire(&self.limits, Instant::now()) {
            if !self.blocked.contains(&peer) {
                tracing::info!(%peer, "a peer's ban is over");
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            }
        }
    }
}

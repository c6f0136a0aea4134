//! What arrives on gossip (server announcements, fraud proofs), which servers' announcements
//! still hold, and what the task says of this node's own announcement when a peer asks.
//!
//! A server whose last connection closed without this node closing it may have gone, or
//! may only have closed a connection it had no room for (see [`super::trim`]): the two
//! look the same on the wire. So its announcement is set aside rather than dropped: routes
//! use it only when no other route exists. It is taken back when the server connects or
//! announces again (it had not gone), and dropped when a dial to it fails (it had).

use libp2p::gossipsub::MessageAcceptance;
use libp2p::swarm::ConnectionError;
use libp2p::PeerId;
use nak_protocol::{announce, pb, proof};
use prost::Message;

use super::{Task, PROOF_QUEUE};

/// Why an announcement was not taken.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refused {
    /// The announcing server is banned.
    #[error("the announcing server is banned")]
    Banned,
    /// It failed its checks.
    #[error(transparent)]
    Checks(#[from] announce::AnnounceError),
}

impl Task {
    /// Checks a fraud proof from gossip as far as it can be without the model, and keeps
    /// it for the node, which replays it before anything follows from it.
    pub(super) fn on_proof(&mut self, from: PeerId, data: &[u8]) -> MessageAcceptance {
        let checked = match (data.len() <= proof::MAX_PROOF_BYTES)
            .then(|| pb::FraudProof::decode(data))
            .ok_or_else(|| "oversized".to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            Ok(p) => proof::check(&p).map(|_| p).map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match checked {
            Ok(p) if self.proofs.len() < PROOF_QUEUE => {
                self.proofs.push_back((from, p));
                MessageAcceptance::Accept
            }
            Ok(_) => MessageAcceptance::Ignore,
            Err(e) => {
                tracing::warn!(%from, error = %e, "rejected a fraud proof");
                self.stats.rejected_proofs += 1;
                MessageAcceptance::Reject
            }
        }
    }

    pub(super) fn on_announcement(&mut self, data: &[u8], propagation_source: PeerId) -> MessageAcceptance {
        match self.accept_announcement(data) {
            Ok(_) => MessageAcceptance::Accept,
            // A banned server's word, or one grown stale on its way, forwarded by an honest
            // peer: not used, not blamed on the forwarder (rejects count in its gossip score).
            Err(e @ (Refused::Banned | Refused::Checks(announce::AnnounceError::Stale { .. }))) => {
                tracing::debug!(from = %propagation_source, error = %e, "ignored an announcement");
                MessageAcceptance::Ignore
            }
            Err(e) => {
                tracing::warn!(from = %propagation_source, error = %e, "rejected an announcement");
                MessageAcceptance::Reject
            }
        }
    }

    /// Checks a signed announcement (from gossip or asked for) and keeps it when it is
    /// the newest of its server.
    pub(super) fn accept_announcement(&mut self, data: &[u8]) -> Result<pb::ServerAnnouncement, Refused> {
        let ann = match announce::verify(data, announce::now_ms(), self.max_age.as_millis() as u64) {
            Ok(ann) => ann,
            Err(e) => {
                self.stats.rejected_announcements += 1;
                return Err(e.into());
            }
        };
        if PeerId::from_bytes(&ann.peer_id).is_ok_and(|p| self.blocked.contains(&p)) {
            return Err(Refused::Banned);
        }
        // A server re-signs its current announcement when asked, under the same sequence
        // number: the later timestamp wins a tie.
        let newer = self
            .announcements
            .get(&ann.peer_id)
            .is_none_or(|old| (old.sequence, old.timestamp_ms) < (ann.sequence, ann.timestamp_ms));
        if newer {
            if self.disconnected.get(&ann.peer_id).is_some_and(|&closed| ann.timestamp_ms > closed) {
                self.disconnected.remove(&ann.peer_id);
            }
            self.announcements.insert(ann.peer_id.clone(), ann.clone());
        }
        self.stats.accepted_announcements += 1;
        Ok(ann)
    }

    /// The announcements that still hold (younger than their `valid_for_ms`, or the
    /// configured maximum age when they give none): those of servers set aside as
    /// disconnected when `disconnected`, the others when not.
    pub(super) fn held_announcements(&mut self, disconnected: bool) -> Vec<pb::ServerAnnouncement> {
        let (now, default) = (announce::now_ms(), self.max_age.as_millis() as u64);
        self.announcements.retain(|_, a| {
            let valid = if a.valid_for_ms > 0 { a.valid_for_ms.min(default) } else { default };
            now.saturating_sub(a.timestamp_ms) <= valid
        });
        let held = &self.announcements;
        self.disconnected.retain(|peer, _| held.contains_key(peer));
        let set_aside = |peer: &Vec<u8>| self.disconnected.contains_key(peer);
        held.iter().filter(|(peer, _)| set_aside(peer) == disconnected).map(|(_, a)| a.clone()).collect()
    }

    /// The last connection to `peer` closed: unless it idled out or this node trimmed
    /// it, the peer's announcement is set aside (see the module doc).
    pub(super) fn on_last_connection_closed(&mut self, peer: PeerId, cause: Option<&ConnectionError>) {
        self.last_used.remove(&peer);
        self.serving.retain(|_, p| *p != peer);
        let idle = matches!(cause, Some(ConnectionError::KeepAliveTimeout));
        if self.trimmed.remove(&peer) || idle {
            return;
        }
        self.rtts.remove(&peer);
        let key = peer.to_bytes();
        if self.announcements.contains_key(&key) {
            tracing::debug!(%peer, "set aside the announcement of a disconnected server");
            self.disconnected.insert(key, announce::now_ms());
        }
    }

    /// A dial to `peer` failed: a server set aside as disconnected has gone.
    pub(super) fn on_dial_failed(&mut self, peer: PeerId) {
        let key = peer.to_bytes();
        if self.disconnected.remove(&key).is_some() && self.announcements.remove(&key).is_some() {
            tracing::info!(%peer, "dropped the announcement of a server that could not be dialled");
        }
    }

    /// This node's current announcement of `model_id`, stamped now and signed.
    pub(super) fn own_announcement(&self, model_id: &[u8]) -> pb::blob_response::Result {
        match self.own_announcements.get(model_id) {
            Some(ann) => {
                let ann = pb::ServerAnnouncement { timestamp_ms: announce::now_ms(), ..ann.clone() };
                pb::blob_response::Result::Announcement(announce::sign(&self.signer, &ann).encode_to_vec())
            }
            None => pb::blob_response::Result::NotFound(pb::NotFound {}),
        }
    }
}

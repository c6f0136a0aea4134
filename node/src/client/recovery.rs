//! Repairing a session's route when hops fail.
//!
//! A hop has failed when its control stream ends, when it ends the session, when its
//! upstream neighbour cannot reach it (`NEXT_HOP`, naming it), when its neighbour passes
//! on its complaint that our session is unknown there, or when a step takes far longer
//! than the route's announced speed allows and it does not answer a probe (a stalled
//! server keeps its connections open). [`RemoteSession::repair`] then:
//!
//! 1. bans the failed servers (30 s, doubling with each repeat) so no route uses them;
//! 2. takes the first run of consecutive failed hops and routes its layers through
//!    other servers (any number of hops, entering and leaving spans anywhere; waiting a
//!    few seconds for one to be announced if none is known yet), opening
//!    sessions there wired to the surviving neighbours; a new last hop of the route
//!    emits tokens only from the position the client is waiting for;
//! 3. tells the survivor after the run to take pushes from the new hops;
//! 4. tells the survivor before the run to push to the new hops, first replaying every
//!    output it retained (exact: in the shapes it computed them; fast: joined). When the
//!    first hop failed, the client replays its own tokens in the shapes the first hop
//!    ran them, and in ring mode the last hop is told to push to the new first hop.
//!
//! The replay flows through the new hops and on: survivors skip the positions they hold
//! and compute the one the failure interrupted, so the generation continues where it
//! stopped, no step lost or run twice. A survivor that cannot replay (it did not retain)
//! is replaced too, rebuilt from further up; a new hop that fails is repaired the same
//! way; a bounded number of times.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use nak_protocol::pb;

use super::hop::{hop_error, push_target, refused, Shape};
use super::options::{Failover, ReplayPolicy};
use super::{ClientError, DraftSource, RemoteSession, RouteHop, SwarmModel};
use crate::dilation::dilate;
use crate::inference::{replay_runs, FAST_REPLAY_ROWS};

use pb::inference_frame::Kind;

/// Replacements tried for one repair.
const MAX_REPAIRS: usize = 8;
/// How long a probed hop has to answer (the hello is answered by the server's stream
/// reader, but on a loaded machine that can wait for a core).
const PROBE_WAIT: Duration = Duration::from_secs(1);
/// How long a failed hop's layers are looked for before there is no backup: servers
/// announce themselves every few seconds, and a client may not have heard them all.
const BACKUP_WAIT: Duration = Duration::from_secs(5);

/// What a survivor's answer to a retarget says.
enum Trouble {
    /// These servers failed (the survivor, or a new hop it could not reach).
    Failed(HashSet<PeerId>),
    /// The survivor is alive but retained nothing to replay.
    CannotReplay(PeerId),
    /// An error that is not a failure.
    Fatal(ClientError),
}

impl RemoteSession {
    /// Which servers an error from hop `i` says failed: `None` when it is not a failure
    /// (the generation stops with it), an empty set when it is about a server no longer
    /// in the route.
    pub(super) fn failed_by(&self, i: usize, e: &pb::ErrorFrame) -> Option<HashSet<PeerId>> {
        let relayed = !e.peer.is_empty();
        let failure = match e.code() {
            pb::ErrorCode::NextHop | pb::ErrorCode::Closed => true,
            pb::ErrorCode::UnknownSession => relayed,
            _ => false,
        };
        if !failure {
            return None;
        }
        let about = if relayed { PeerId::from_bytes(&e.peer).ok()? } else { self.hops[i].route.peer };
        Some(self.hops.iter().map(|h| h.route.peer).filter(|p| *p == about).collect())
    }

    /// Sends every hop a hello and returns the servers that do not answer in time.
    pub(super) async fn probe(&mut self) -> HashSet<PeerId> {
        let mut silent: HashMap<u64, PeerId> = HashMap::new();
        for hop in &self.hops {
            if hop.link.send(Kind::Hello(pb::Hello {})).await {
                silent.insert(hop.link.id, hop.route.peer);
            }
        }
        let deadline = tokio::time::Instant::now() + dilate(PROBE_WAIT);
        while !silent.is_empty() {
            let answered = self
                .links
                .wait_for(deadline, |link, frame| {
                    (matches!(frame.kind, Some(Kind::Hello(_))) && silent.contains_key(&link)).then_some(link)
                })
                .await;
            match answered {
                Some(link) => silent.remove(&link),
                None => break,
            };
        }
        let silent: HashSet<PeerId> = silent.into_values().collect();
        if !silent.is_empty() {
            tracing::warn!(?silent, "hops did not answer a probe");
        }
        silent
    }

    /// Takes `failed` out of the route and puts other servers in their place, rebuilt
    /// to the positions so far; `step` is the count of tokens generated.
    pub(super) async fn repair(
        &mut self,
        model: &SwarmModel,
        failed: HashSet<PeerId>,
        cause: &str,
        step: usize,
    ) -> Result<Failover, ClientError> {
        let detected = Instant::now();
        let mut failed_all: Vec<PeerId> = failed.iter().copied().collect();
        for peer in &failed {
            let ban = model.ban(*peer);
            tracing::warn!(%peer, cause, ban_s = ban.as_secs(), "hop failed; repairing the route");
        }
        // Servers to take out of the route: failed ones, and survivors that cannot replay.
        let mut down = failed;
        let mut avoid = down.clone();
        let mut replacement = Vec::new();
        let policy = self.opts.replay;
        for _ in 0..MAX_REPAIRS {
            let Some(a) = self.hops.iter().position(|h| down.contains(&h.route.peer)) else {
                tracing::debug!(hops = ?self.hop_sessions(), "route repaired");
                self.refeed_newest().await;
                return Ok(Failover {
                    failed: failed_all.iter().map(PeerId::to_string).collect(),
                    cause: cause.to_string(),
                    step,
                    positions: self.context.len() as u32,
                    replacement,
                    replay: policy,
                    recovery_ms: None,
                    detected,
                });
            };
            let mut b = a;
            while b + 1 < self.hops.len() && down.contains(&self.hops[b + 1].route.peer) {
                b += 1;
            }
            let layers = self.hops[a].route.start..self.hops[b].route.end;
            let exclude: HashSet<PeerId> =
                avoid.iter().copied().chain(self.hops.iter().map(|h| h.route.peer)).collect();
            let drafts = self.ring() && !self.draft_vocab.is_empty() && b + 1 == self.hops.len();
            let new_route = self.backup_route(model, layers.clone(), &exclude, drafts).await.map_err(|held| {
                ClientError::NoBackup {
                    start: layers.start,
                    end: layers.end,
                    failed: failed_all.iter().map(PeerId::to_string).collect::<Vec<_>>().join(", "),
                    detail: format!("usable servers hold [{held}]"),
                }
            })?;
            let emit_from = if b + 1 == self.hops.len() { self.context.len() as u32 } else { 0 };
            let new_hops = match self.open_hops(model, &new_route, a..b + 1, emit_from).await {
                Ok(hops) => hops,
                Err(e) => match refused(&e) {
                    Some(peer) => {
                        avoid.insert(peer);
                        continue;
                    }
                    None => return Err(e),
                },
            };
            let last_new = a + new_hops.len() - 1;
            // Dropping the old hops closes their control streams.
            drop(self.hops.splice(a..=b, new_hops).collect::<Vec<_>>());
            replacement.extend(new_route);
            match self.rewire(a, last_new).await {
                Ok(()) => {}
                Err(Trouble::Failed(peers)) => {
                    for peer in peers {
                        model.ban(peer);
                        failed_all.push(peer);
                        down.insert(peer);
                        avoid.insert(peer);
                    }
                }
                Err(Trouble::CannotReplay(peer)) => {
                    down.insert(peer);
                    avoid.insert(peer);
                }
                Err(Trouble::Fatal(e)) => return Err(e),
            }
        }
        Err(ClientError::Protocol(format!("the route could not be repaired in {MAX_REPAIRS} tries")))
    }

    /// A route through `layers` to replace failed hops. With `drafts` (they include a
    /// ring's last hop, drafting with a draft model), one that ends on a server drafting
    /// too, if the client knows one; else any, and the new last hop drafts by prompt
    /// lookup for the rest of the session: the tokens are the same either way, and a
    /// generation that goes on beats one that stops.
    async fn backup_route(
        &mut self,
        model: &SwarmModel,
        layers: std::ops::Range<u32>,
        exclude: &HashSet<PeerId>,
        drafts: bool,
    ) -> Result<Vec<RouteHop>, String> {
        if drafts {
            if let Ok(route) = model.route_between(layers.clone(), exclude, true, Duration::ZERO).await {
                return Ok(route);
            }
            tracing::warn!(?layers, "no backup drafts with a draft model; drafting by prompt lookup from here");
            self.draft_vocab.clear();
            (self.spec.source, self.spec.fell_back) = (Some(DraftSource::Lookup), true);
        }
        model.route_between(layers, exclude, false, BACKUP_WAIT).await
    }

    /// Joins the new hops at `a..=last_new` to the survivors around them and has them
    /// rebuilt to the positions so far. They are rebuilt even when the hop after them
    /// failed to take them: the next round of the repair replaces that hop from their
    /// outputs, which a hop never fed would not have.
    async fn rewire(&mut self, a: usize, last_new: usize) -> Result<(), Trouble> {
        let (ring, n) = (self.ring(), self.hops.len());
        let after = if last_new + 1 < n { Some(last_new + 1) } else { (ring && a > 0).then_some(0) };
        let joined = match after {
            Some(d) => {
                let accept = self.hops[last_new].route.peer;
                self.retarget(d, None, Some(accept), pb::ReplayPolicy::None).await
            }
            None => Ok(()),
        };
        if let Err(Trouble::Fatal(e)) = joined {
            return Err(Trouble::Fatal(e));
        }
        let first_new = push_target(&self.hops[a].route, self.hops[a].session_id);
        let fed = if a > 0 {
            self.retarget(a - 1, Some(first_new), None, self.opts.replay.wire()).await
        } else {
            self.replay_tokens().await;
            if ring && last_new + 1 < n {
                self.retarget(n - 1, Some(first_new), None, pb::ReplayPolicy::None).await
            } else {
                Ok(())
            }
        };
        match (joined, fed) {
            (Err(Trouble::Failed(mut peers)), Err(Trouble::Failed(more))) => {
                peers.extend(more);
                Err(Trouble::Failed(peers))
            }
            (joined, Ok(())) => joined,
            (_, fed) => fed,
        }
    }

    /// Sends hop `i` a retarget and waits until it has done it.
    async fn retarget(
        &mut self,
        i: usize,
        push_to: Option<pb::Hop>,
        accept_from: Option<PeerId>,
        replay: pb::ReplayPolicy,
    ) -> Result<(), Trouble> {
        let hop = &self.hops[i];
        let (link, peer) = (hop.link.id, hop.route.peer);
        let retarget = pb::Retarget {
            session_id: hop.session_id,
            push_to,
            accept_from: accept_from.map(|p| p.to_bytes()).unwrap_or_default(),
            replay: replay as i32,
        };
        if !hop.link.send(Kind::Retarget(retarget)).await {
            return Err(Trouble::Failed([peer].into()));
        }
        // Complaints about servers already out of the route are left for the main loop to drop.
        let in_route: HashSet<Vec<u8>> = self.hops.iter().map(|h| h.route.peer.to_bytes()).collect();
        let deadline = tokio::time::Instant::now() + dilate(self.opts.timeout);
        let answer = self
            .links
            .wait_for(deadline, |l, frame| match &frame.kind {
                Some(Kind::Retargeted(_)) if l == link => Some(Ok(())),
                Some(Kind::Error(e)) if l == link && (e.peer.is_empty() || in_route.contains(&e.peer)) => {
                    Some(Err(e.clone()))
                }
                _ => None,
            })
            .await;
        match answer {
            Some(Ok(())) => Ok(()),
            None => Err(Trouble::Failed([peer].into())), // it stopped answering
            Some(Err(e)) if e.code() == pb::ErrorCode::ReplayUnavailable => Err(Trouble::CannotReplay(peer)),
            Some(Err(e)) => match self.failed_by(i, &e) {
                Some(peers) if !peers.is_empty() => Err(Trouble::Failed(peers)),
                _ => Err(Trouble::Fatal(hop_error(&self.hops[i].route, e.code(), e.message))),
            },
        }
    }

    /// Has each hop but the last replay what it retained to the hop after it, over a new
    /// stream, after feeding the first hop every token again: for a route whose hops all
    /// answer while no token comes. A push can be lost between two live hops (the
    /// connection between them broke with it in flight, and no later push on the stream
    /// came to show the break); nothing else would ever send it again. Every hop skips
    /// the positions it holds, so only what was lost is computed. Returns the servers
    /// found failed on the way, to be repaired (a hop that kept nothing to replay gets
    /// the hop after it rebuilt from further up).
    pub(super) async fn resync(&mut self) -> Result<HashSet<PeerId>, ClientError> {
        let (position, hops) = (self.context.len(), self.hop_sessions());
        tracing::warn!(position, ?hops, "every hop answers, no token: replaying along the route");
        self.resyncs += 1;
        self.replay_tokens().await;
        for i in 0..self.hops.len().saturating_sub(1) {
            let next = push_target(&self.hops[i + 1].route, self.hops[i + 1].session_id);
            match self.retarget(i, Some(next), None, self.opts.replay.wire()).await {
                Ok(()) => {}
                Err(Trouble::Failed(peers)) => return Ok(peers),
                Err(Trouble::CannotReplay(_)) => return Ok([self.hops[i + 1].route.peer].into()),
                Err(Trouble::Fatal(e)) => return Err(e),
            }
        }
        Ok(HashSet::new())
    }

    /// Sends the new first hop every token fed so far: in the shapes the first hop ran
    /// them (exact), or joined into steps of up to 512 (fast).
    async fn replay_tokens(&mut self) {
        let shapes = match self.opts.replay {
            ReplayPolicy::Exact => self.shapes.clone(),
            ReplayPolicy::Fast => join(&self.shapes),
        };
        self.send_shapes(&shapes).await;
    }

    /// Feeds the first hop the newest step again. In ring mode the last hop sends each
    /// token to the client before it pushes it to the first hop; one that dies between
    /// the two takes the token with it. A first hop that has the step ignores it.
    pub(super) async fn refeed_newest(&mut self) {
        if let Some(newest) = self.shapes.last().copied() {
            if self.ring() && newest.generation == self.generation {
                self.send_shapes(&[newest]).await;
            }
        }
    }

    async fn send_shapes(&self, shapes: &[Shape]) {
        for &shape in shapes {
            self.send_first(self.step_of(shape)).await;
        }
    }
}

/// Consecutive steps joined into steps of up to [`FAST_REPLAY_ROWS`] rows, each
/// labelled as the last step it joins.
fn join(shapes: &[Shape]) -> Vec<Shape> {
    let runs = replay_runs(shapes.iter().map(|s| (s.rows, ())), FAST_REPLAY_ROWS);
    runs.into_iter()
        .filter_map(|run| {
            let group = &shapes[run];
            let (first, last) = (group.first()?, group.last()?);
            Some(Shape { position: first.position, rows: group.iter().map(|s| s.rows).sum(), ..*last })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_replay_joins_steps_up_to_the_limit_keeping_the_last_ones_label() {
        let shape = |step, position, rows, more| Shape { step, position, rows, generation: 1, more, draft: 0 };
        let shapes = [shape(0, 0, 128, true), shape(1, 128, 100, false), shape(2, 228, 1, false)];
        let joined = join(&shapes);
        assert_eq!(joined.len(), 1);
        assert_eq!((joined[0].step, joined[0].position, joined[0].rows, joined[0].more), (2, 0, 229, false));
        let many: Vec<Shape> = (0..600).map(|i| shape(i, i as u32, 1, false)).collect();
        let joined = join(&many);
        assert_eq!(joined.iter().map(|s| (s.position, s.rows)).collect::<Vec<_>>(), [(0, 512), (512, 88)]);
    }
}

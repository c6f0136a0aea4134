//! A session through a route of servers, and generation over it.
//!
//! [`RemoteSession::open`] opens a control stream to every hop ([`super::links`]) and
//! sends each its `OpenSession`: its layers, the hop to push its output to (the next
//! one; in ring mode the last hop pushes to the first) and the peer allowed to push into
//! it. Every hop's results and errors come back on its control stream.
//! [`RemoteSession::start`] also picks the route, and routes around servers that turn
//! the session away (full, or no longer serving those layers).
//!
//! [`RemoteSession::generate`] sends the new tokens to the first hop in chunks (each
//! chunk flows down the chain while the next is computed) and then:
//!
//! - *ring*: the last hop samples, pushes each token to the first hop, and streams it
//!   here; the client only reads, and stops reading at an end token, at `max_tokens`,
//!   or when the caller says stop;
//! - *client-sampled*: the last hop sends its top logits here; the client samples and
//!   sends the token to the first hop as the next step.
//!
//! Steps and results carry cache positions. The session keeps every token it fed the
//! first hop and the shape of every step the first hop ran, which is what a replacement
//! first hop is rebuilt from. A result at a position already seen is a replacement
//! repeating it, and is dropped. When a hop fails (its stream ends, its neighbour cannot
//! reach it, or it stops answering), [`super::recovery`] repairs the route and the
//! generation goes on; when no other server can take its layers, the tokens so far are
//! returned with the error.
//!
//! The next `generate` (a chat's next turn) keeps the longest common prefix: each hop
//! truncates its cache to it as the new generation's first step arrives, and steps of
//! the old generation still in flight are dropped.

use std::collections::HashSet;
use std::time::Duration;

use libp2p::PeerId;
use nak_protocol::{pb, ActivationDtype};
use nak_shard_store::ModelId;
use tokio::time::Instant;

use super::hop::{hop_error, push_target, refused, ring_tokens, Hop, Shape};
use super::links::Links;
use super::options::{DecodeMode, Failover, RemoteGeneration, SampledToken, SessionOptions};
use super::speculate::{drafting, SpeculationReport};
use super::verify::{ReceiptCheck, Verification};
use super::{ClientError, RouteHop, SwarmModel};
use crate::audit::{AuditReport, AuditTarget};
use crate::chain::Generation;
use crate::dilation::dilate;
use crate::engine::{Sampler, SamplingParams};
use crate::speculative::Drafter;

use pb::inference_frame::Kind;

/// Prompt tokens per step: long prompts go down the chain in pieces of this size.
const PREFILL_CHUNK: usize = 128;
/// Routes tried when servers turn the session away. Crashed servers' announcements
/// outlive them, and under heavy churn four routes in a row each met one (one open in
/// 56 failed so in a 100-node simulation).
const OPEN_ATTEMPTS: usize = 8;
/// A step is suspected stalled after this long at least...
const STALL_FLOOR: Duration = Duration::from_secs(1);
/// ...or this many times the route's expected time for its rows, if longer.
const STALL_FACTOR: f64 = 20.0;
/// Longest wait, after a generation, for the hops' last receipts.
const RECEIPTS_DRAIN: Duration = Duration::from_secs(2);

/// What a session's route brings next, for [`RemoteSession::generate`].
enum Event {
    /// A result and its tokens (more than one when a ring's result brings tokens missed).
    Tokens(pb::StepResult, Vec<i32>),
    Failed(HashSet<PeerId>, String),
    Nothing,
}

/// A session open on every hop of a route.
pub struct RemoteSession {
    pub(super) opts: SessionOptions,
    pub(super) model_id: ModelId,
    pub(super) links: Links,
    pub(super) hops: Vec<Hop>,
    next_session_id: u64,
    sampler: Sampler,
    end_tokens: Vec<i32>,
    max_context: u32,
    pub(super) generation: u32,
    next_step: u64,
    /// The tokens fed to the first hop, by position.
    pub(super) context: Vec<i32>,
    /// The first hop's steps, in position order.
    pub(super) shapes: Vec<Shape>,
    /// Ring mode: the position of the last token to generate.
    pub(super) stop_at: u32,
    /// The checks of the hops' receipts (a verified session).
    receipts: Option<ReceiptCheck>,
    /// When the route last stalled with every hop answering.
    stalled: Option<Instant>,
    /// Resyncs of the route in this generation.
    pub(super) resyncs: u32,
    /// Client-sampled speculation: the drafting.
    drafter: Option<Drafter>,
    /// Ring speculation with a draft model: the vocabulary digest the last hop's must have.
    pub(super) draft_vocab: Vec<u8>,
    /// What speculation did in this generation.
    pub(super) spec: SpeculationReport,
}

impl RemoteSession {
    /// Picks a route (waiting up to `wait` for announcements, avoiding banned servers)
    /// and opens the session on it; a server that turns the session away is routed
    /// around.
    pub async fn start(model: &SwarmModel, opts: SessionOptions, wait: Duration) -> Result<Self, ClientError> {
        let mut avoid = HashSet::new();
        let mut last = None;
        for attempt in 0..OPEN_ATTEMPTS {
            let asked = Instant::now();
            let route = model.route(wait, &avoid, opts.last_hop_drafts()).await?;
            let routed = asked.elapsed();
            let opened = Self::open(model, route, opts.clone()).await;
            tracing::debug!(attempt, ?routed, took = ?asked.elapsed(), ok = opened.is_ok(), "a try at opening a session");
            match opened {
                Ok(session) => return Ok(session),
                Err(e) => match refused(&e) {
                    Some(peer) => {
                        tracing::info!(%peer, error = %e, "a server turned the session away; routing around it");
                        if matches!(e, ClientError::Hop { code: pb::ErrorCode::Closed, .. }) {
                            // Unreachable or gone: the client's next sessions avoid it too.
                            model.ban(peer);
                        }
                        avoid.insert(peer);
                        last = Some(e);
                    }
                    None => return Err(e),
                },
            }
        }
        Err(last.unwrap_or_else(|| ClientError::NoRoute("no server took the session".into())))
    }

    /// Opens a session on every hop of `route` for `model`.
    pub async fn open(model: &SwarmModel, route: Vec<RouteHop>, opts: SessionOptions) -> Result<Self, ClientError> {
        if route.is_empty() {
            return Err(ClientError::NoRoute("empty route".into()));
        }
        if opts.verify && opts.dtype != ActivationDtype::F32 {
            return Err(ClientError::Input("verifying needs f32 hidden states: receipts hash rows as computed".into()));
        }
        let receipts = opts.verify.then(|| ReceiptCheck::new(model.id().0));
        let mut session = Self {
            sampler: Sampler::new(&opts.sampling.without_penalties()),
            opts,
            model_id: model.id(),
            links: Links::new(model.net().clone()),
            hops: Vec::new(),
            next_session_id: rand::random::<u64>() & !0xffff,
            end_tokens: model.end_tokens(),
            max_context: u32::MAX,
            generation: 0,
            next_step: 0,
            context: Vec::new(),
            shapes: Vec::new(),
            stop_at: 0,
            stalled: None,
            resyncs: 0,
            receipts,
            drafter: None,
            draft_vocab: Vec::new(),
            spec: SpeculationReport::default(),
        };
        if let Some(spec) = session.opts.speculation.clone() {
            if session.receipts.is_some() {
                return Err(ClientError::Input("speculative decoding cannot be combined with receipts yet".into()));
            }
            if session.opts.logprobs.is_some() {
                return Err(ClientError::Input(
                    "speculative decoding reports no logprobs of drafted tokens yet".into(),
                ));
            }
            session.spec.source = Some(spec.source);
            (session.drafter, session.draft_vocab) = drafting(&spec, session.ring(), model).await?;
        }
        session.hops = session.open_hops(model, &route, 0..0, 0).await?;
        Ok(session)
    }

    /// The route this session runs on now.
    pub fn route(&self) -> Vec<RouteHop> {
        self.hops.iter().map(|h| h.route.clone()).collect()
    }

    /// Context length every hop allows.
    pub fn max_context(&self) -> u32 {
        self.max_context
    }

    pub(super) fn ring(&self) -> bool {
        self.opts.mode == DecodeMode::Ring
    }

    /// Opens sessions on `new`, the hops that will stand at `replace` of the route (all
    /// of it for a new session), wired to their neighbours in the route as it will be. A
    /// new last hop emits tokens from position `emit_from`. Returns them once every one
    /// has answered; a refusal is an error naming the server. Of the servers whose stream
    /// could not be opened, all but the one the error names are banned here: the streams
    /// open at once, so the error hides the others that failed beside it, and each would
    /// otherwise cost a later route its own wait.
    pub(super) async fn open_hops(
        &mut self,
        model: &SwarmModel,
        new: &[RouteHop],
        replace: std::ops::Range<usize>,
        emit_from: u32,
    ) -> Result<Vec<Hop>, ClientError> {
        let ids: Vec<u64> = (0..new.len() as u64).map(|k| self.next_session_id + k).collect();
        self.next_session_id += new.len() as u64;
        // The route as it will be: (peer, addresses, session id).
        let before = self.hops[..replace.start].iter().map(|h| (&h.route, h.session_id));
        let after = self.hops[replace.end..].iter().map(|h| (&h.route, h.session_id));
        let planned: Vec<(&RouteHop, u64)> = before.chain(new.iter().zip(ids.iter().copied())).chain(after).collect();
        let n = planned.len();
        let ring = self.ring();
        let links = &self.links;
        let streams = futures::future::join_all(new.iter().map(|h| async move {
            links.open(h.peer, &h.addrs).await.map_err(|e| hop_error(h, pb::ErrorCode::Closed, e))
        }))
        .await;
        let failed = streams.iter().filter_map(|s| s.as_ref().err());
        for e in failed.skip(1) {
            if let ClientError::Hop { peer, .. } = e {
                let ban = model.ban(*peer);
                tracing::info!(%peer, error = %e, ban_s = ban.as_secs(), "a new hop is unreachable");
            }
        }
        let mut opened = Vec::new();
        for (k, (hop, stream)) in new.iter().zip(streams).enumerate() {
            let link = stream?;
            let i = replace.start + k;
            let next = if i + 1 < n { Some(i + 1) } else { ring.then_some(0) };
            let prev = if i > 0 { Some(i - 1) } else { ring.then(|| n - 1) };
            let last = i == n - 1;
            let sampling = if ring {
                self.opts.sampling
            } else {
                SamplingParams::default().with_penalties_of(&self.opts.sampling)
            };
            let open = pb::OpenSession {
                session_id: ids[k],
                model_id: self.model_id.0.to_vec(),
                first_layer: hop.start,
                end_layer: hop.end,
                max_context: 0,
                // Client mode: the last hop applies the penalties before choosing the top
                // logits, and this client samples from those.
                sampling: Some(sampling.into()),
                dtype: self.opts.dtype as u32,
                push_to: next.map(|j| push_target(planned[j].0, planned[j].1)),
                accept_from: prev.map(|j| planned[j].0.peer.to_bytes()).unwrap_or_default(),
                top_logits: match (last, ring, self.opts.logprobs) {
                    (false, _, _) => 0,
                    (true, true, logprobs) => logprobs.map_or(0, |n| n.max(1)),
                    (true, false, logprobs) => self.opts.top_logits.max(logprobs.unwrap_or(0)).max(1),
                },
                stop_tokens: if last && ring { self.end_tokens.clone() } else { vec![] },
                emit_from: if last { emit_from } else { 0 },
                receipts: self.opts.verify,
                draft_max: if last && ring { self.opts.speculation.as_ref().map_or(0, |s| s.draft_max) } else { 0 },
                draft_vocab: if last && ring { self.draft_vocab.clone() } else { vec![] },
            };
            if !link.send(Kind::Open(open)).await {
                return Err(hop_error(hop, pb::ErrorCode::Closed, "the stream closed"));
            }
            if let Some(check) = &mut self.receipts {
                check.expect(link.id, hop, ids[k]);
            }
            opened.push(Hop { route: hop.clone(), session_id: ids[k], link });
        }
        let deadline = Instant::now() + dilate(self.opts.timeout);
        for hop in &opened {
            let id = hop.link.id;
            let answer = self
                .links
                .wait_for(deadline, |link, frame| match &frame.kind {
                    Some(Kind::Opened(o)) if link == id => Some(Ok(o.max_context)),
                    Some(Kind::Error(e)) if link == id => Some(Err((e.code(), e.message.clone()))),
                    _ => None,
                })
                .await;
            match answer {
                Some(Ok(max)) => self.max_context = self.max_context.min(max),
                Some(Err((code, message))) => return Err(hop_error(&hop.route, code, message)),
                // As good as gone: routing (and repair) goes around it.
                None => {
                    let waited = self.opts.timeout.as_secs_f64();
                    return Err(hop_error(
                        &hop.route,
                        pb::ErrorCode::Closed,
                        format!("no answer to the open in {waited} s"),
                    ));
                }
            }
        }
        Ok(opened)
    }

    /// Where `link` stands in the route, if it still does.
    pub(super) fn hop_of(&self, link: u64) -> Option<usize> {
        self.hops.iter().position(|h| h.link.id == link)
    }

    /// How long a step of `rows` rows may take before the route is probed.
    pub(super) fn stall_timeout(&self, rows: usize) -> Duration {
        let expected: f64 = self.hops.iter().map(|h| h.route.expected_s).sum();
        let scaled = Duration::from_secs_f64(STALL_FACTOR * expected * (1.0 + rows as f64 / 8.0));
        dilate(STALL_FLOOR).max(scaled)
    }

    /// Sends a step to the first hop. A closed stream shows up as the link's error
    /// frame, which starts a repair.
    pub(super) async fn send_first(&self, step: pb::Step) {
        let first = &self.hops[0];
        let step = pb::Step { session_id: first.session_id, ..step };
        tracing::trace!(session = first.session_id, step = step.step, at = step.position, "step out");
        let _ = first.link.send(Kind::Step(step)).await;
    }

    /// Each hop's server and session there, for logs.
    pub(super) fn hop_sessions(&self) -> Vec<String> {
        self.hops.iter().map(|h| format!("{}/{}", h.route.peer, h.session_id)).collect()
    }

    /// Records a step the first hop runs, then sends it (a prompt chunk or, in client
    /// mode, a sampled token).
    async fn feed(&mut self, tokens: &[i32], keep: u32, more: bool) {
        let shape = self.record_fed(tokens, more, 0);
        self.send_first(pb::Step { keep, ..self.step_of(shape) }).await;
    }

    /// The first hop's step `shape`, from the tokens fed. Steps of earlier generations
    /// (a conversation's kept prefix) are prompt rows now.
    pub(super) fn step_of(&self, shape: Shape) -> pb::Step {
        let (from, to) = (shape.position as usize, (shape.position + shape.rows) as usize);
        pb::Step {
            step: shape.step,
            tokens: self.context.get(from..to.min(self.context.len())).map(<[i32]>::to_vec).unwrap_or_default(),
            generation: self.generation,
            more: shape.more || shape.generation < self.generation,
            position: shape.position,
            stop_at: self.stop_at,
            draft: shape.draft,
            ..Default::default()
        }
    }

    /// Notes that the first hop takes `tokens` next, as one step, the last `draft` drafted.
    fn record_fed(&mut self, tokens: &[i32], more: bool, draft: u32) -> Shape {
        let shape = Shape {
            step: self.next_step,
            position: self.context.len() as u32,
            rows: tokens.len() as u32,
            generation: self.generation,
            more,
            draft,
        };
        self.next_step += 1;
        self.shapes.push(shape);
        self.context.extend_from_slice(tokens);
        shape
    }

    /// Client mode: sends `token` to the first hop as the next step, with drafts behind it
    /// when the session drafts (fewer than `left`, the tokens still wanted).
    async fn feed_token(&mut self, token: i32, left: usize) {
        let room = left.saturating_sub(1).min((self.max_context as usize).saturating_sub(self.context.len() + 2));
        let drafts = match &mut self.drafter {
            Some(drafter) => drafter.next(&self.context, token, room).await,
            None => Vec::new(),
        };
        let shape = self.record_fed(&[&[token], &drafts[..]].concat(), false, drafts.len() as u32);
        self.send_first(self.step_of(shape)).await;
    }

    /// Forgets positions from `keep` on.
    fn truncate(&mut self, keep: usize) {
        self.context.truncate(keep);
        self.shapes.retain(|s| (s.position as usize) < keep);
        if let Some(last) = self.shapes.last_mut() {
            let rows = last.rows.min(keep as u32 - last.position);
            last.draft = last.draft.saturating_sub(last.rows - rows);
            last.rows = rows;
        }
    }

    /// Generates after `tokens`, the whole conversation so far: the hops keep what their
    /// caches share with it and run the rest. `on_token` sees each token as it arrives
    /// and returns false to stop.
    pub async fn generate(
        &mut self,
        model: &SwarmModel,
        tokens: &[i32],
        max_tokens: usize,
        mut on_token: impl FnMut(&SampledToken) -> bool,
    ) -> Result<RemoteGeneration, ClientError> {
        if tokens.is_empty() {
            return Err(ClientError::Input("nothing to generate from: no tokens".into()));
        }
        // Keep the shared prefix, but always run at least one token.
        let keep = self.context.iter().zip(tokens).take_while(|(a, b)| a == b).count().min(tokens.len() - 1);
        let room = (self.max_context as usize).saturating_sub(tokens.len());
        let max_tokens = max_tokens.min(room);
        if max_tokens == 0 {
            return Err(ClientError::Input(format!(
                "{} tokens leave no room in a context of {}",
                tokens.len(),
                self.max_context
            )));
        }
        self.generation += 1;
        self.resyncs = 0;
        self.spec = SpeculationReport { source: self.spec.source, ..Default::default() };
        self.truncate(keep);
        let fresh = &tokens[keep..];
        self.stop_at = if self.ring() { (tokens.len() + max_tokens - 1) as u32 } else { 0 };
        let t0 = Instant::now();
        let chunks: Vec<&[i32]> = fresh.chunks(PREFILL_CHUNK).collect();
        for (c, chunk) in chunks.iter().enumerate() {
            self.feed(chunk, keep as u32, c + 1 < chunks.len()).await;
        }

        let mut out: Vec<i32> = Vec::new();
        let mut failovers: Vec<Failover> = Vec::new();
        // Repairs waiting for their first token, to time them.
        let mut repaired: Vec<usize> = Vec::new();
        let (mut prefill, mut cancelled, mut ended, mut error) = (Duration::ZERO, false, false, None);
        let mut deadline = Instant::now() + self.stall_timeout(fresh.len());
        let mut progress = Instant::now();
        let t1 = loop {
            let (r, tokens) = match self.next_event(&mut deadline, progress).await? {
                Event::Nothing => continue,
                Event::Tokens(r, tokens) => (r, tokens),
                Event::Failed(failed, cause) => {
                    match self.repair(model, failed, &cause, out.len()).await {
                        Ok(f) => {
                            // The next token needs every replayed position computed first.
                            deadline = Instant::now() + self.stall_timeout(f.positions as usize);
                            repaired.push(failovers.len());
                            failovers.push(f);
                        }
                        Err(e @ ClientError::NoBackup { .. }) => {
                            error = Some(e.to_string());
                            break Instant::now();
                        }
                        Err(e) => return Err(e),
                    }
                    continue;
                }
            };
            let now = Instant::now();
            if out.is_empty() {
                prefill = now - t0;
            }
            for f in repaired.drain(..) {
                failovers[f].recovery_ms = Some(failovers[f].detected.elapsed().as_secs_f64() * 1e3);
            }
            let mut stopped = false;
            let newest = tokens.len() - 1;
            for (k, token) in tokens.into_iter().enumerate() {
                let end = self.end_tokens.contains(&token);
                ended |= end;
                if !end {
                    out.push(token);
                }
                let more = !end && out.len() < max_tokens && !(r.last && k == newest);
                // A missed token's result (and so its logprobs) went with its hop.
                let sampled = if k == newest {
                    SampledToken::new(&r, token, self.opts.logprobs, self.ring())
                } else {
                    SampledToken { token, logprob: None, top: vec![] }
                };
                if !end && !on_token(&sampled) {
                    (cancelled, stopped) = (more, true);
                    break;
                }
                if !more {
                    stopped = true;
                    break;
                }
                if self.ring() && k < newest && k + r.accepted as usize >= newest {
                    // A draft that stood: the first hop ran it in the step of the token before.
                    self.context.push(token);
                    if let Some(last) = self.shapes.last_mut() {
                        last.rows += 1;
                    }
                } else if self.ring() {
                    self.record_fed(&[token], false, 0); // the last hop has pushed it to the first
                } else if k == newest {
                    // Drafts that stood are in the context already; the tokens left bound the next.
                    self.feed_token(token, max_tokens - out.len()).await;
                }
            }
            if stopped {
                break now;
            }
            deadline = Instant::now() + self.stall_timeout(1);
            progress = Instant::now();
        };
        if cancelled {
            // An empty step of a newer generation stops the ring at the first hop.
            self.generation += 1;
            let stop = pb::Step {
                step: self.next_step,
                generation: self.generation,
                keep: self.context.len() as u32,
                position: self.context.len() as u32,
                ..Default::default()
            };
            self.send_first(stop).await;
        }
        let decode = t1.saturating_duration_since(t0 + prefill);
        let steps_after_first = out.len().saturating_sub(1);
        let generation = Generation {
            text: model.detokenize(&out),
            prompt_tokens: fresh.len(),
            prefill_ms: prefill.as_secs_f64() * 1e3,
            prefill_tokens_per_s: fresh.len() as f64 / prefill.as_secs_f64().max(1e-9),
            decode_tokens_per_s: steps_after_first as f64 / decode.as_secs_f64().max(1e-9),
            spans: self.hops.len(),
            tokens: out,
        };
        let m = crate::metrics::global();
        m.prompt_tokens.inc_by(generation.prompt_tokens as u64);
        m.tokens_generated.inc_by(generation.tokens.len() as u64);
        m.failovers.inc_by(failovers.len() as u64);
        self.drain_receipts().await;
        let verification = self.receipts.as_ref().map(ReceiptCheck::report);
        let speculation = self.spec.source.map(|_| {
            let mut spec = self.spec;
            spec.finish(generation.tokens.len());
            spec
        });
        Ok(RemoteGeneration {
            generation,
            route: self.route(),
            mode: self.opts.mode,
            cancelled,
            ended,
            failovers,
            resyncs: self.resyncs,
            error,
            verification,
            discovery_ms: model.discovery_time().map(|d| d.as_secs_f64() * 1e3),
            speculation,
        })
    }

    /// What the route brings next: a token, a failure (with its cause), or nothing of
    /// note. A step slower than the stall time gets the hops probed (`deadline` then
    /// moves on). When every hop answers, a ring is fed its newest step again: the token
    /// the last hop pushed to a first hop that was being replaced is lost when the
    /// client heard of it only after the repair (a first hop that has the step ignores
    /// it). A second such stall without progress resynchronises the route
    /// ([`RemoteSession::resync`]): the first is often only a slow step (a prefill, a
    /// stream to the next hop being opened). A route that answers probes but
    /// brings nothing for the session's timeout since the last `progress` is an error.
    async fn next_event(&mut self, deadline: &mut Instant, progress: Instant) -> Result<Event, ClientError> {
        let Some((link, frame)) = self.links.next(*deadline).await else {
            let silent = self.probe().await;
            *deadline = Instant::now() + self.stall_timeout(1);
            if !silent.is_empty() {
                return Ok(Event::Failed(silent, "stalled".into()));
            }
            if progress.elapsed() >= dilate(self.opts.timeout) {
                let hops = self.hop_sessions();
                tracing::warn!(mode = ?self.opts.mode, position = self.context.len(), ?hops, "every hop answers, no token");
                return Err(ClientError::Timeout(self.opts.timeout));
            }
            if self.stalled.is_none_or(|t| t < progress) {
                self.stalled = Some(Instant::now());
                self.refeed_newest().await;
                return Ok(Event::Nothing);
            }
            let failed = self.resync().await?;
            return Ok(if failed.is_empty() { Event::Nothing } else { Event::Failed(failed, "resync".into()) });
        };
        let Some(i) = self.hop_of(link) else { return Ok(Event::Nothing) }; // a hop no longer in the route
        match frame.kind {
            Some(Kind::Result(r)) => match self.accept(&r, i) {
                Some(tokens) => Ok(Event::Tokens(r, tokens?)),
                None => Ok(Event::Nothing),
            },
            Some(Kind::Receipts(batch)) => {
                self.check_receipts(link, &batch);
                Ok(Event::Nothing)
            }
            Some(Kind::Error(e)) => match self.failed_by(i, &e) {
                Some(failed) if failed.is_empty() => Ok(Event::Nothing), // about a hop already replaced
                Some(failed) => Ok(Event::Failed(failed, format!("{}: {}", e.code(), e.message))),
                None => Err(hop_error(&self.hops[i].route, e.code(), e.message)),
            },
            _ => Ok(Event::Nothing), // hello answers, late replies
        }
    }

    fn check_receipts(&mut self, link: u64, batch: &pb::Receipts) {
        let context = &self.context;
        let fed = |at: u32, rows: u32| context.get(at as usize..(at + rows) as usize).map(<[i32]>::to_vec);
        if let (Some(check), Some(signed)) = (&mut self.receipts, &batch.batch) {
            check.batch(link, signed, fed);
        }
    }

    /// Waits, up to [`RECEIPTS_DRAIN`], for every hop's receipts of the generation's
    /// steps (hops send them in batches; the last batch follows the last step).
    async fn drain_receipts(&mut self) {
        let Some(check) = &self.receipts else { return };
        let links: Vec<u64> = self.hops.iter().map(|h| h.link.id).collect();
        let end = self.context.len() as u32;
        let deadline = Instant::now() + dilate(RECEIPTS_DRAIN);
        let mut settled = check.settled(&links, self.generation, end);
        while !settled {
            let Some((link, frame)) = self.links.next(deadline).await else { break };
            if let Some(Kind::Receipts(batch)) = frame.kind {
                self.check_receipts(link, &batch);
            }
            settled = self.receipts.as_ref().is_none_or(|c| c.settled(&links, self.generation, end));
        }
        if !settled {
            tracing::warn!("some hops did not send the receipts of every step in time");
        }
    }

    /// Every hop's receipts of this session so far, for audits (a verified session).
    pub fn audit_targets(&self) -> Vec<AuditTarget> {
        self.receipts.as_ref().map(ReceiptCheck::targets).unwrap_or_default()
    }

    /// Records what audits of this session found in the next reports.
    pub fn record_audit(&mut self, report: &AuditReport) {
        if let Some(check) = &mut self.receipts {
            check.audited(report.audited, report.frauds.clone(), report.ms);
        }
    }

    /// What the receipts (and audits) of this session showed so far.
    pub fn verification(&self) -> Option<Verification> {
        self.receipts.as_ref().map(ReceiptCheck::report)
    }

    /// The tokens a result from hop `i` brings, if it is the next one this generation
    /// waits for (others are late answers of a cancelled generation, or positions a
    /// replacement repeats). In ring mode that is the tokens of the rows it ran that the
    /// client missed (a last hop replaced after pushing a token on, before its result
    /// came), then its own.
    fn accept(&mut self, r: &pb::StepResult, i: usize) -> Option<Result<Vec<i32>, ClientError>> {
        let expected = self.context.len() as u32;
        if i + 1 != self.hops.len() || r.generation != self.generation || !r.has_token || r.position < expected {
            return None;
        }
        let ahead = || ClientError::Protocol(format!("a token at position {} before {expected}", r.position));
        if self.ring() {
            self.spec.trip(r.drafted, r.accepted);
            return Some(ring_tokens(r, expected).ok_or_else(ahead));
        }
        Some(if r.position > expected {
            Err(ahead())
        } else if !r.rows.is_empty() {
            let sampler = &mut self.sampler;
            let draw = |i: usize| sampler.sample_candidates(r.rows[i].top.iter().map(|t| (t.token, t.logit)));
            let whole = r.rows.iter().all(|row| !row.top.is_empty());
            let judged = self.drafter.as_mut().filter(|_| whole).and_then(|d| d.settle(r.rows.len(), draw));
            let Some((tokens, stood)) = judged else {
                return Some(Err(ClientError::Protocol("a drafted step's result does not fit its drafts".into())));
            };
            let drafted = r.rows.len() - 1;
            self.spec.trip(drafted as u32, stood as u32);
            // The drafts after the ones that stood leave the context.
            self.truncate(expected as usize - (drafted - stood));
            Ok(tokens)
        } else if r.top.is_empty() {
            Err(ClientError::Protocol("the last hop sent no logits".into()))
        } else {
            self.spec.trip(0, 0);
            if let Some(drafter) = &mut self.drafter {
                drafter.landed(0);
            }
            Ok(vec![self.sampler.sample_candidates(r.top.iter().map(|t| (t.token, t.logit)))])
        })
    }

    /// Closes the session on every hop.
    pub async fn close(self) {
        for hop in &self.hops {
            let close = pb::CloseSession { session_id: hop.session_id };
            let _ = hop.link.send(Kind::Close(close)).await;
        }
    }
}

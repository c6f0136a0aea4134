//! One session on a server: a task that runs its steps in cache order and sends each
//! output where it goes.
//!
//! Steps arrive in the task's bounded inbox from the stream readers, from the client
//! (the opener) or pushed by another hop. Each names the cache position of its first
//! row, which makes replays safe: rows the cache already holds are skipped, a step it
//! holds entirely is ignored (a client repeating its last step gets the cached result),
//! and a pushed step that starts past the cache waits, bounded, for the steps before it
//! (after a repair, the replay and the ring's next step come on different streams). The
//! task runs a step on the shared engine worker, then:
//!
//! - a hidden state is recorded in the session's [`OutputLog`] and goes to the next hop
//!   as its step input ([`Pusher`]), or back to the client when the session pushes
//!   nowhere;
//! - a token (the last hop) goes to the client, with the top logits when asked; in ring
//!   mode it also goes to the first hop as the next step's input, unless it is a stop
//!   token or sits at the generation's `stop_at` position. Tokens before `emit_from`
//!   (a replacement rebuilding positions the client already has) go nowhere.
//!
//! Speculative steps end in drafted rows, which a hop holds only until the next step
//! tells it which stood ([`super::speculate`]); the last hop samples each of them and
//! keeps those that agree, then (ring mode) drafts the next ones itself.
//!
//! A step of a newer generation first truncates the cache (and the log) to the
//! positions the client keeps; steps of older generations still in flight are dropped.
//! A failed push leaves the session waiting, outputs kept, for the client to retarget it
//! to a replacement, to which it then replays the log.

use std::collections::BTreeMap;
use std::time::Duration;

use nak_protocol::{pb, Activation, ActivationDtype};
use tokio::sync::mpsc;

use super::log::{OutputLog, Shape};
use super::push::Pusher;
use super::receipts::{input_rows, output_hash, ReceiptSigner, StepShape};
use super::speculate::replaced_from;
use super::{code_of, error};
use crate::dilation::dilate;
use crate::engine::{token_logprob, top_logprobs, EngineWorker, SessionId, StepInput, StepOutput, StepRequest};
use crate::speculative::Drafter;

use pb::inference_frame::Kind;
use pb::ErrorCode;

/// Pushed steps held until the steps before them arrive.
const MAX_WAITING: usize = 256;
/// How long a session with unsent receipts waits for its next step before sending them.
const RECEIPTS_QUIET: Duration = Duration::from_millis(20);

/// Where a step came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// The session's opener, on its control stream.
    Client,
    /// The hop allowed to push into this session.
    Pushed,
}

/// What the stream readers hand a session.
pub(super) enum Input {
    Step(pb::Step, Origin),
    /// Push to another hop from now on (first replaying the log to it), or only answer
    /// `Retargeted` once what came before has been handled.
    Retarget(Option<Pusher>, pb::ReplayPolicy),
}

/// How a session was opened, beyond its engine session.
pub(super) struct SessionSetup {
    pub(super) push: Option<Pusher>,
    pub(super) top_logits: u32,
    pub(super) stop_tokens: Vec<i32>,
    pub(super) emit_from: u32,
    pub(super) log: OutputLog,
    pub(super) max_context: u32,
    /// Signs a receipt for every step computed, when the opener asked for them.
    pub(super) receipts: Option<ReceiptSigner>,
    /// Last hop in ring mode, when the opener asked for drafts: the drafting.
    pub(super) drafter: Option<Drafter>,
}

/// A session's state and the task that runs it.
pub(super) struct SessionTask {
    id: u64,
    engine: SessionId,
    worker: EngineWorker,
    to_client: mpsc::Sender<pb::InferenceFrame>,
    setup: SessionSetup,
    started: bool,
    generation: u32,
    /// The position of the last token to generate in this generation (0: none).
    stop_at: u32,
    /// Positions in the engine's cache.
    position: u32,
    /// The last result sent to the client, for a repeated step.
    last: Option<(u64, pb::InferenceFrame)>,
    /// A step this session pushed to itself (a one-hop ring).
    looped: Option<pb::Step>,
    /// Pushed steps that start past the cache, by position.
    waiting: BTreeMap<u32, pb::Step>,
    /// The token of each cached position (-1 where a step did not say).
    held: Vec<i32>,
    /// Where the drafted rows the cache holds begin.
    drafts_from: Option<u32>,
}

impl SessionTask {
    pub(super) fn new(
        id: u64,
        engine: SessionId,
        worker: EngineWorker,
        to_client: mpsc::Sender<pb::InferenceFrame>,
        setup: SessionSetup,
    ) -> Self {
        Self {
            id,
            engine,
            worker,
            to_client,
            setup,
            started: false,
            generation: 0,
            stop_at: 0,
            position: 0,
            last: None,
            looped: None,
            waiting: BTreeMap::new(),
            held: Vec::new(),
            drafts_from: None,
        }
    }

    /// Runs steps until the inbox closes (the client closed or left) or nothing comes
    /// for `idle`; then frees the engine session.
    pub(super) async fn run(mut self, mut inbox: mpsc::Receiver<Input>, idle: Duration) {
        loop {
            // A waiting step whose turn has come first; then what is in the inbox (perhaps
            // a newer generation), before a step we pushed to ourselves.
            let next = match self.next_waiting() {
                Some(step) => Ok(Some(Input::Step(step, Origin::Pushed))),
                None => match inbox.try_recv() {
                    Ok(input) => Ok(Some(input)),
                    Err(mpsc::error::TryRecvError::Disconnected) => Ok(None),
                    Err(mpsc::error::TryRecvError::Empty) => match self.looped.take() {
                        Some(step) => Ok(Some(Input::Step(step, Origin::Pushed))),
                        None => self.wait(&mut inbox, idle).await,
                    },
                },
            };
            match next {
                Ok(Some(Input::Step(step, origin))) => self.step(step, origin).await,
                Ok(Some(Input::Retarget(push, replay))) => self.retarget(push, replay).await,
                Ok(None) => break,
                Err(_) => {
                    let msg = format!("closed after {} s without a step", idle.as_secs());
                    self.tell_client(error(self.id, ErrorCode::Closed, msg)).await;
                    break;
                }
            }
        }
        if let Some(push) = &mut self.setup.push {
            push.close().await;
        }
        self.send_receipts(true).await;
        if let Some(signer) = &self.setup.receipts {
            signer.end();
        }
        let _ = self.worker.close_session(self.engine).await;
    }

    /// The next input, waiting up to `idle`; receipts not yet sent go out once the
    /// session has been quiet for a moment (the generation has likely ended).
    async fn wait(
        &mut self,
        inbox: &mut mpsc::Receiver<Input>,
        idle: Duration,
    ) -> Result<Option<Input>, tokio::time::error::Elapsed> {
        if self.setup.receipts.as_ref().is_some_and(ReceiptSigner::has_pending) {
            if let Ok(input) = tokio::time::timeout(dilate(RECEIPTS_QUIET), inbox.recv()).await {
                return Ok(input);
            }
            self.send_receipts(true).await;
        }
        tokio::time::timeout(idle, inbox.recv()).await
    }

    /// Sends the receipts signed so far when a batch is full, or (`flush`) any.
    async fn send_receipts(&mut self, flush: bool) {
        if let Some(frame) = self.setup.receipts.as_mut().and_then(|s| s.batch(flush)) {
            self.tell_client(frame).await;
        }
    }

    /// Forgets what the cache held from position `at` on (it has been truncated there).
    fn forget_from(&mut self, at: u32) {
        self.held.truncate(at as usize);
        self.setup.log.truncate(at);
        self.drafts_from = self.drafts_from.filter(|&d| d < at);
    }

    /// Where a step of `rows` rows ending at `end` makes this hop drop the rows it holds:
    /// from the first held draft it replaces ([`replaced_from`]) and, for a drafted step
    /// that runs at all, from the row before its drafts (which the last hop samples).
    fn replaced_rows(&self, step: &pb::Step, rows: u32, end: u32) -> Option<u32> {
        let tokens = if step.tokens.is_empty() { &step.row_tokens } else { &step.tokens };
        let replaced = replaced_from(&self.held, self.drafts_from, step.position, rows, tokens);
        if step.draft == 0 || (replaced.is_none() && end <= self.position) {
            return replaced;
        }
        let verify_from = end.saturating_sub(step.draft.saturating_add(1)).max(step.position);
        let at = replaced.unwrap_or(self.position).min(verify_from);
        (at < self.position).then_some(at)
    }

    fn next_waiting(&mut self) -> Option<pb::Step> {
        let (&position, _) = self.waiting.first_key_value()?;
        (position <= self.position).then(|| self.waiting.pop_first().map(|(_, step)| step)).flatten()
    }

    async fn tell_client(&self, frame: pb::InferenceFrame) {
        let _ = self.to_client.send(frame).await;
    }

    async fn fail(&self, code: ErrorCode, message: impl Into<String>) {
        self.tell_client(error(self.id, code, message)).await;
    }

    /// Starts generation `step.generation`: keeps `step.keep` positions. False when the
    /// step only stopped the previous generation (it carries no rows).
    async fn start_generation(&mut self, step: &pb::Step) -> bool {
        if let Err(e) = self.worker.truncate(self.engine, step.keep).await {
            self.fail(code_of(&e), e.to_string()).await;
            return false;
        }
        self.position = self.position.min(step.keep);
        self.forget_from(self.position);
        self.waiting.clear();
        self.started = true;
        self.generation = step.generation;
        self.last = None;
        !(step.tokens.is_empty() && step.hidden.is_empty())
    }

    async fn step(&mut self, step: pb::Step, origin: Origin) {
        let n = step.step;
        tracing::trace!(
            session = self.id,
            step = n,
            at = step.position,
            generation = step.generation,
            ?origin,
            "step in"
        );
        if self.started && step.generation < self.generation {
            if origin == Origin::Client {
                self.fail(ErrorCode::StepOutOfOrder, format!("generation {} has ended", step.generation)).await;
            }
            return;
        }
        if (!self.started || step.generation > self.generation) && !self.start_generation(&step).await {
            return;
        }
        let (rows, hidden) = match (step.tokens.is_empty(), step.hidden.is_empty()) {
            (false, true) => (step.tokens.len(), None),
            (true, false) => match Activation::from_bytes(&step.hidden) {
                Ok(a) => (a.n_rows as usize, Some(a)),
                Err(e) => return self.fail(ErrorCode::BadInput, e.to_string()).await,
            },
            _ => return self.fail(ErrorCode::BadInput, "a step carries either tokens or a hidden state").await,
        };
        let Some(end) = u32::try_from(rows).ok().and_then(|r| step.position.checked_add(r)) else {
            return self.fail(ErrorCode::BadInput, "the step's rows run past any context").await;
        };
        if step.position < self.position {
            if let Some(at) = self.replaced_rows(&step, rows as u32, end) {
                tracing::trace!(session = self.id, at, cache = self.position, "drafted rows replaced");
                if let Err(e) = self.worker.rewind(self.engine, at).await {
                    return self.fail(code_of(&e), e.to_string()).await;
                }
                self.position = at;
                self.forget_from(at);
            }
        }
        if end <= self.position {
            // Held already: a replay reaching a hop that has it, or a repeated step.
            if let (Origin::Client, Some((s, frame))) = (origin, &self.last) {
                if *s == n {
                    self.tell_client(frame.clone()).await;
                }
            }
            return;
        }
        if step.position > self.position {
            if origin == Origin::Pushed && self.waiting.len() < MAX_WAITING {
                tracing::debug!(session = self.id, at = step.position, cache = self.position, "a pushed step waits");
                self.waiting.insert(step.position, step);
                return;
            }
            let msg = format!("step {n} starts at position {} but the cache holds {}", step.position, self.position);
            return self.fail(ErrorCode::StepOutOfOrder, msg).await;
        }
        self.stop_at = step.stop_at;
        self.run_step(step, hidden, end).await;
    }

    /// Runs the rows of `step` the cache lacks (it holds the ones before `self.position`);
    /// `hidden` is its hidden state, already read.
    async fn run_step(&mut self, step: pb::Step, hidden: Option<Activation>, end: u32) {
        let skip = (self.position - step.position) as usize;
        let row_tokens: Vec<i32> = step.row_tokens.get(skip..).map(<[i32]>::to_vec).unwrap_or_default();
        let input = match hidden {
            Some(a) if skip == 0 => StepInput::Hidden(a),
            Some(a) => match a.slice_rows(skip as u32..a.n_rows) {
                Ok(a) => StepInput::Hidden(a),
                Err(e) => return self.fail(ErrorCode::BadInput, e.to_string()).await,
            },
            None => StepInput::Tokens(step.tokens[skip..].to_vec()),
        };
        // The tokens the rows stand for travel on with the hidden state, for the last hop's penalties.
        let row_tokens = match &input {
            StepInput::Tokens(t) => t.clone(),
            StepInput::Hidden(_) => row_tokens,
        };
        let draft = step.draft.min(end - self.position);
        if draft > 0 && end - self.position <= draft {
            return self.fail(ErrorCode::BadInput, "a drafted step must hold a row before its drafts").await;
        }
        let rows_in = match (&self.setup.receipts, &input) {
            (None, _) => None,
            (Some(_), _) if draft > 0 => {
                return self.fail(ErrorCode::BadInput, "a session with receipts takes no drafted rows").await;
            }
            // What an audit replays must be what the receipt hashed: f32, as computed.
            (Some(_), StepInput::Hidden(a)) if a.dtype != ActivationDtype::F32 => {
                return self.fail(ErrorCode::BadInput, "a session with receipts takes f32 hidden states only").await;
            }
            (Some(_), input) => Some(input_rows(input)),
        };
        let started = std::time::Instant::now();
        // A token is wanted unless more prompt follows or the client has it already.
        let sample = !step.more && end >= self.setup.emit_from;
        // A drafted step samples the row before its drafts and each draft; in ring mode,
        // drawing up to the first draft that misses (the client judges client-sampled drafts).
        let verify = self.setup.push.is_some();
        let request = StepRequest {
            session: self.engine,
            input,
            row_tokens: row_tokens.clone(),
            sample,
            sample_rows: draft + 1,
            verify,
            row_by_row: draft > 0,
        };
        let out = match self.worker.step_request(request).await {
            Ok(out) => out,
            Err(e) => return self.fail(code_of(&e), e.to_string()).await,
        };
        let compute = started.elapsed();
        tracing::trace!(session = self.id, step = step.step, compute_us = compute.as_micros() as u64, "step ran");
        let m = crate::metrics::global();
        m.step_seconds.observe(compute.as_secs_f64());
        m.step_rows.inc_by(u64::from(end.saturating_sub(self.position)));
        let first = self.position;
        self.position = end;
        if row_tokens.len() == (end - first) as usize {
            self.held.extend_from_slice(&row_tokens);
        } else {
            self.held.resize(end as usize, -1);
        }
        self.drafts_from = (draft > 0).then_some(end - draft);
        let shape = StepShape { step: step.step, generation: self.generation, position: first, rows: end - first };
        // The output's hash for the receipt: a hidden state's now (it is small), a token's
        // (the whole vocabulary's logits) once the token has gone on.
        let receipts = self.setup.receipts.is_some();
        let mut out_hash = (receipts && !matches!(out, StepOutput::Token { .. })).then(|| output_hash(&out));
        match out {
            StepOutput::Hidden(a) => {
                self.setup.log.record(self.generation, step.step, first, (step.more, draft), &a, &row_tokens);
                let onward = pb::Step {
                    step: step.step,
                    hidden: a.to_bytes(),
                    generation: self.generation,
                    keep: step.keep,
                    more: step.more,
                    row_tokens,
                    position: first,
                    stop_at: step.stop_at,
                    draft,
                    ..Default::default()
                };
                self.send_on(onward).await;
            }
            StepOutput::Rows(rows) => self.verify(step.step, draft, rows, row_tokens).await,
            StepOutput::Token { token, logits, raw_logits } => {
                self.emit(step.step, step.more, end, vec![(token, logits)], row_tokens, 0).await;
                if receipts {
                    out_hash = Some(output_hash(&StepOutput::Token { token, logits: Vec::new(), raw_logits }));
                }
            }
            StepOutput::Cached => {}
        }
        if let (Some(signer), Some(rows), Some(output)) = (&mut self.setup.receipts, rows_in, out_hash) {
            signer.record(shape, rows, output);
            self.send_receipts(false).await;
        }
    }

    /// The rows of a drafted step came out of the last hop: `rows[i]` is the token (and
    /// logits) the target picked after the row before the drafts and after each draft,
    /// `fed` the tokens of the rows run. Client-sampled, the client gets every row's top
    /// logits and judges the drafts itself; in ring mode the drafts that agree with the
    /// picks stand, and go on with the pick after them.
    async fn verify(&mut self, n: u64, draft: u32, mut rows: Vec<(i32, Vec<f32>)>, mut fed: Vec<i32>) {
        let end = self.position;
        if end < self.setup.emit_from {
            return;
        }
        if self.setup.push.is_none() {
            let k = self.setup.top_logits.max(1) as usize;
            let rows_top = rows.iter().map(|(_, logits)| pb::RowLogits { top: top_of(logits, k) }).collect();
            let result = pb::StepResult {
                session_id: self.id,
                step: n,
                token: rows.last().map_or(0, |r| r.0),
                has_token: true,
                generation: self.generation,
                position: end,
                rows: rows_top,
                drafted: draft,
                ..Default::default()
            };
            let frame = pb::InferenceFrame { kind: Some(Kind::Result(result)) };
            self.tell_client(frame.clone()).await;
            self.last = Some((n, frame));
            return;
        }
        let Some(split) = fed.len().checked_sub(draft as usize) else {
            return self.fail(ErrorCode::BadInput, "drafted rows came without their tokens").await;
        };
        let drafts = fed.split_off(split);
        // The engine drew up to the first miss; the drafts that stood are the picks before it.
        let stood = drafts.iter().zip(&rows).take_while(|(d, r)| **d == r.0).count().min(rows.len().saturating_sub(1));
        rows.truncate(stood + 1);
        self.emit(n, false, end - draft, rows, fed, draft).await;
    }

    /// Sends the tokens sampled from a step's last rows (with their logits), the first at
    /// position `first`, to the client (in ring mode with `fed`, the tokens of the rows
    /// before `first`) and, in ring mode, the last of them to the first hop, with the
    /// next drafts. More than one token when drafts stood; those after a stop are dropped.
    async fn emit(
        &mut self,
        n: u64,
        more: bool,
        first: u32,
        mut tokens: Vec<(i32, Vec<f32>)>,
        mut fed: Vec<i32>,
        drafted: u32,
    ) {
        let newest = first + tokens.len().saturating_sub(1) as u32;
        if more || newest < self.setup.emit_from {
            return; // a prompt chunk before the last, or a token the client already has
        }
        let ring = self.setup.push.is_some();
        let (stop_tokens, stop_at, max_context) = (&self.setup.stop_tokens, self.stop_at, self.setup.max_context);
        let stops = |token: i32, at: u32| {
            stop_tokens.contains(&token) || (stop_at > 0 && at >= stop_at) || at + 1 >= max_context
        };
        let cut = tokens.iter().enumerate().position(|(j, (token, _))| stops(*token, first + j as u32));
        if let Some(j) = cut {
            tokens.truncate(j + 1);
        }
        let stop = cut.is_some();
        let Some((token, logits)) = tokens.pop() else { return };
        let position = first + tokens.len() as u32;
        let accepted = tokens.len() as u32;
        fed.extend(tokens.iter().map(|t| t.0));
        let (top, logprob) = match self.setup.top_logits {
            0 => (vec![], 0.0),
            k => (top_of(&logits, k as usize), token_logprob(&logits, token)),
        };
        let drafts = if ring && !stop { self.next_drafts(position, token, accepted).await } else { vec![] };
        let result = pb::StepResult {
            session_id: self.id,
            step: n,
            token,
            has_token: true,
            generation: self.generation,
            top,
            last: ring && stop,
            position,
            logprob,
            fed: if ring { fed } else { vec![] },
            drafted,
            accepted,
            ..Default::default()
        };
        let frame = pb::InferenceFrame { kind: Some(Kind::Result(result)) };
        self.tell_client(frame.clone()).await;
        self.last = Some((n, frame));
        if stop {
            if let Some(drafter) = &mut self.setup.drafter {
                drafter.pause();
            }
        } else if ring {
            let next = pb::Step {
                step: n + 1,
                draft: drafts.len() as u32,
                tokens: [token].into_iter().chain(drafts).collect(),
                generation: self.generation,
                position,
                stop_at: self.stop_at,
                ..Default::default()
            };
            self.send_on(next).await;
        }
    }

    /// Ring mode, last hop: the drafts to push behind `token`, which goes at `position`
    /// (none unless the session drafts); `stood` of the last trip's drafts stood.
    async fn next_drafts(&mut self, position: u32, token: i32, stood: u32) -> Vec<i32> {
        let Some(drafter) = &mut self.setup.drafter else { return Vec::new() };
        drafter.landed(stood as usize);
        let mut room = self.setup.max_context.saturating_sub(position + 2);
        if self.stop_at > 0 {
            room = room.min(self.stop_at.saturating_sub(position));
        }
        let held = &self.held[..(position as usize).min(self.held.len())];
        drafter.next(held, token, room as usize).await
    }

    /// Pushes `step` to the next hop, or returns it to the client as a result. False when
    /// the push failed (the client has been told).
    async fn send_on(&mut self, step: pb::Step) -> bool {
        let id = self.id;
        match &mut self.setup.push {
            Some(push) if push.is_loop(id) => self.looped = Some(pb::Step { session_id: id, ..step }),
            Some(push) => {
                if let Err(e) = push.push(step, &self.to_client, id).await {
                    let target = push.target();
                    tracing::warn!(session = id, %target, error = %e, "push failed");
                    let mut frame = error(id, ErrorCode::NextHop, format!("next hop {target}: {e}"));
                    if let Some(Kind::Error(err)) = &mut frame.kind {
                        err.peer = target.to_bytes();
                    }
                    self.tell_client(frame).await;
                    return false;
                }
            }
            None => {
                let result = pb::StepResult {
                    session_id: id,
                    step: step.step,
                    hidden: step.hidden,
                    generation: step.generation,
                    position: step.position,
                    ..Default::default()
                };
                let frame = pb::InferenceFrame { kind: Some(Kind::Result(result)) };
                self.tell_client(frame.clone()).await;
                self.last = Some((step.step, frame));
            }
        }
        true
    }

    /// Rewires the session's output: to `push` from now on, first replaying every
    /// retained output to it with `replay`'s shape; then tells the client.
    async fn retarget(&mut self, push: Option<Pusher>, replay: pb::ReplayPolicy) {
        if let Some(push) = push {
            if let Some(old) = &mut self.setup.push {
                old.close().await;
            }
            self.setup.push = Some(push);
            let width_bytes = self.worker.n_embd() as usize * 4;
            if let Some(shape) = Shape::of(replay, width_bytes) {
                if !self.setup.log.complete() {
                    let msg = "this hop did not retain the session's outputs (over its memory budget)";
                    return self.fail(ErrorCode::ReplayUnavailable, msg).await;
                }
                let steps = self.setup.log.replay(shape, self.generation, self.stop_at);
                tracing::debug!(session = self.id, steps = steps.len(), ?replay, "replaying to the new next hop");
                for step in steps {
                    if !self.send_on(step).await {
                        return; // the client heard why, and retargets again
                    }
                }
            }
        }
        let done = pb::Retargeted { session_id: self.id, position: self.position };
        self.tell_client(pb::InferenceFrame { kind: Some(Kind::Retargeted(done)) }).await;
    }
}

/// The `k` largest of `logits`, with their log-probabilities.
fn top_of(logits: &[f32], k: usize) -> Vec<pb::TokenLogprob> {
    let top = top_logprobs(logits, k).into_iter();
    top.map(|(token, logprob, logit)| pb::TokenLogprob { token, logprob, logit }).collect()
}

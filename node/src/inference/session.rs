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
use super::{code_of, error};
use crate::dilation::dilate;
use crate::engine::{token_logprob, top_logprobs, EngineWorker, SessionId, StepInput, StepOutput, StepRequest};

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
        self.setup.log.truncate(self.position);
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
        let rows_in = match (&self.setup.receipts, &input) {
            (None, _) => None,
            // What an audit replays must be what the receipt hashed: f32, as computed.
            (Some(_), StepInput::Hidden(a)) if a.dtype != ActivationDtype::F32 => {
                return self.fail(ErrorCode::BadInput, "a session with receipts takes f32 hidden states only").await;
            }
            (Some(_), input) => Some(input_rows(input)),
        };
        let started = std::time::Instant::now();
        // A token is wanted unless more prompt follows or the client has it already.
        let sample = !step.more && end >= self.setup.emit_from;
        let request = StepRequest { session: self.engine, input, row_tokens: row_tokens.clone(), sample };
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
        let shape = StepShape { step: step.step, generation: self.generation, position: first, rows: end - first };
        // The output's hash for the receipt: a hidden state's now (it is small), a token's
        // (the whole vocabulary's logits) once the token has gone on.
        let receipts = self.setup.receipts.is_some();
        let mut out_hash = (receipts && !matches!(out, StepOutput::Token { .. })).then(|| output_hash(&out));
        match out {
            StepOutput::Hidden(a) => {
                self.setup.log.record(self.generation, step.step, first, step.more, &a, &row_tokens);
                let onward = pb::Step {
                    step: step.step,
                    hidden: a.to_bytes(),
                    generation: self.generation,
                    keep: step.keep,
                    more: step.more,
                    row_tokens,
                    position: first,
                    stop_at: step.stop_at,
                    ..Default::default()
                };
                self.send_on(onward).await;
            }
            StepOutput::Token { token, logits, raw_logits } => {
                self.emit(step.step, step.more, token, &logits, row_tokens).await;
                if receipts {
                    out_hash = Some(output_hash(&StepOutput::Token { token, logits, raw_logits }));
                }
            }
            StepOutput::Cached => {}
        }
        if let (Some(signer), Some(rows), Some(output)) = (&mut self.setup.receipts, rows_in, out_hash) {
            signer.record(shape, rows, output);
            self.send_receipts(false).await;
        }
    }

    /// Sends the token sampled at `self.position` to the client (in ring mode with the
    /// tokens `fed` of the step's rows) and, in ring mode, to the first hop.
    async fn emit(&mut self, n: u64, more: bool, token: i32, logits: &[f32], fed: Vec<i32>) {
        let position = self.position;
        if more || position < self.setup.emit_from {
            return; // a prompt chunk before the last, or a token the client already has
        }
        let ring = self.setup.push.is_some();
        let stop = self.setup.stop_tokens.contains(&token)
            || (self.stop_at > 0 && position >= self.stop_at)
            || position + 1 >= self.setup.max_context;
        let (top, logprob) = match self.setup.top_logits {
            0 => (vec![], 0.0),
            k => (
                top_logprobs(logits, k as usize)
                    .into_iter()
                    .map(|(token, logprob, logit)| pb::TokenLogprob { token, logprob, logit })
                    .collect(),
                token_logprob(logits, token),
            ),
        };
        let result = pb::StepResult {
            session_id: self.id,
            step: n,
            token,
            has_token: true,
            generation: self.generation,
            top,
            last: ring && stop,
            hidden: vec![],
            position,
            logprob,
            fed: if ring { fed } else { vec![] },
        };
        let frame = pb::InferenceFrame { kind: Some(Kind::Result(result)) };
        self.tell_client(frame.clone()).await;
        self.last = Some((n, frame));
        if ring && !stop {
            let next = pb::Step {
                step: n + 1,
                tokens: vec![token],
                generation: self.generation,
                position,
                stop_at: self.stop_at,
                ..Default::default()
            };
            self.send_on(next).await;
        }
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

//! One session on a server: a task that runs its steps in order and sends each output
//! where it goes.
//!
//! Steps arrive in the task's bounded inbox from the stream readers, from the client
//! (the opener) or pushed by another hop. The task checks the generation and the step
//! number, runs the step on the shared engine worker, then:
//!
//! - a hidden state goes to the next hop as its step input ([`Pusher`]), or back to the
//!   client when the session pushes nowhere;
//! - a token (the last hop) goes to the client, with the top logits when asked; in ring
//!   mode it also goes to the first hop as the next step's input, unless it is a stop
//!   token or the generation's token budget is spent.
//!
//! A step of a newer generation first truncates the cache to the positions the client
//! keeps; steps of older generations still in flight (a cancelled ring) are dropped.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use nak_protocol::{pb, Activation};
use tokio::sync::mpsc;

use super::{code_of, connect, error};
use crate::engine::{top_logprobs, EngineWorker, SessionId, StepInput, StepOutput, StepRequest};
use crate::net::frames::{read_frame, write_frame, MAX_INFERENCE_FRAME};
use crate::net::NetworkHandle;

use pb::inference_frame::Kind;
use pb::ErrorCode;

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
}

/// Sends a session's outputs to the next hop over a stream of its own, opened on first
/// use. The session task writes to it directly: one task hand-off less per hop and token.
pub(super) struct Pusher {
    net: NetworkHandle,
    target: PeerId,
    addrs: Vec<Multiaddr>,
    session_id: u64,
    writer: Option<futures::io::WriteHalf<libp2p::Stream>>,
}

impl Pusher {
    pub(super) fn new(net: NetworkHandle, target: PeerId, addrs: Vec<Multiaddr>, session_id: u64) -> Self {
        Self { net, target, addrs, session_id, writer: None }
    }

    /// Opens the stream: dials one of the given addresses first unless already connected.
    /// Error frames the next hop sends back on it go to `errors` (our client).
    async fn connect(&mut self, errors: &mpsc::Sender<pb::InferenceFrame>, our_id: u64) -> Result<(), String> {
        let stream = connect(&self.net, self.target, &self.addrs)
            .await
            .map_err(|e| format!("cannot reach the next hop: {e}"))?;
        let (mut reader, writer) = futures::AsyncReadExt::split(stream);
        let (errors, target) = (errors.clone(), self.target);
        tokio::spawn(async move {
            while let Ok(frame) = read_frame::<pb::InferenceFrame, _>(&mut reader, MAX_INFERENCE_FRAME).await {
                if let Some(Kind::Error(mut e)) = frame.kind {
                    e.message = format!("next hop {target}: {}", e.message);
                    e.session_id = our_id;
                    let _ = errors.send(pb::InferenceFrame { kind: Some(Kind::Error(e)) }).await;
                }
            }
        });
        self.writer = Some(writer);
        Ok(())
    }

    async fn push(
        &mut self,
        mut step: pb::Step,
        errors: &mpsc::Sender<pb::InferenceFrame>,
        our_id: u64,
    ) -> Result<(), String> {
        step.session_id = self.session_id;
        let frame = pb::InferenceFrame { kind: Some(Kind::Step(step)) };
        if self.writer.is_none() {
            self.connect(errors, our_id).await?;
        }
        let Some(writer) = &mut self.writer else { return Err("no stream to the next hop".into()) };
        if let Err(e) = write_frame(writer, &frame, MAX_INFERENCE_FRAME).await {
            self.writer = None; // the next push opens a new stream
            return Err(format!("the stream to the next hop {} broke: {e}", self.target));
        }
        Ok(())
    }

    /// Ends the stream, so the next hop sees it close.
    async fn close(&mut self) {
        if let Some(mut writer) = self.writer.take() {
            let _ = futures::AsyncWriteExt::close(&mut writer).await;
        }
    }
}

/// A session's state and the task that runs it.
pub(super) struct SessionTask {
    id: u64,
    engine: SessionId,
    worker: EngineWorker,
    to_client: mpsc::Sender<pb::InferenceFrame>,
    push: Option<Pusher>,
    top_logits: u32,
    stop_tokens: Vec<i32>,
    started: bool,
    generation: u32,
    next_step: u64,
    /// Tokens produced in this generation, and how many it may produce (0: no limit).
    produced: u32,
    max_tokens: u32,
    /// The last result sent to the client, for a replayed step.
    last: Option<(u64, pb::InferenceFrame)>,
    /// A step this session pushed to itself (a one-hop ring).
    looped: Option<pb::Step>,
}

impl SessionTask {
    pub(super) fn new(
        id: u64,
        engine: SessionId,
        worker: EngineWorker,
        to_client: mpsc::Sender<pb::InferenceFrame>,
        push: Option<Pusher>,
        top_logits: u32,
        stop_tokens: Vec<i32>,
    ) -> Self {
        Self {
            id,
            engine,
            worker,
            to_client,
            push,
            top_logits,
            stop_tokens,
            started: false,
            generation: 0,
            next_step: 0,
            produced: 0,
            max_tokens: 0,
            last: None,
            looped: None,
        }
    }

    /// Runs steps until the inbox closes (the client closed or left) or nothing comes
    /// for `idle`; then frees the engine session.
    pub(super) async fn run(mut self, mut inbox: mpsc::Receiver<Input>, idle: Duration) {
        loop {
            // What is waiting (perhaps a newer generation) goes before a step we pushed to ourselves.
            let next = match inbox.try_recv() {
                Ok(input) => Ok(Some(input)),
                Err(mpsc::error::TryRecvError::Disconnected) => Ok(None),
                Err(mpsc::error::TryRecvError::Empty) => match self.looped.take() {
                    Some(step) => Ok(Some(Input::Step(step, Origin::Pushed))),
                    None => tokio::time::timeout(idle, inbox.recv()).await,
                },
            };
            match next {
                Ok(Some(Input::Step(step, origin))) => self.step(step, origin).await,
                Ok(None) => break,
                Err(_) => {
                    let msg = format!("closed after {} s without a step", idle.as_secs());
                    self.tell_client(error(self.id, ErrorCode::Closed, msg)).await;
                    break;
                }
            }
        }
        if let Some(push) = &mut self.push {
            push.close().await;
        }
        let _ = self.worker.close_session(self.engine).await;
    }

    async fn tell_client(&self, frame: pb::InferenceFrame) {
        let _ = self.to_client.send(frame).await;
    }

    async fn fail(&self, code: ErrorCode, message: impl Into<String>) {
        self.tell_client(error(self.id, code, message)).await;
    }

    async fn step(&mut self, step: pb::Step, origin: Origin) {
        let (id, n) = (self.id, step.step);
        if self.started && step.generation < self.generation {
            if origin == Origin::Client {
                self.fail(ErrorCode::StepOutOfOrder, format!("generation {} has ended", step.generation)).await;
            }
            return;
        }
        if !self.started || step.generation > self.generation {
            if let Err(e) = self.worker.truncate(self.engine, step.keep).await {
                return self.fail(code_of(&e), e.to_string()).await;
            }
            self.started = true;
            (self.generation, self.next_step, self.produced, self.max_tokens) =
                (step.generation, n, 0, step.max_tokens);
            self.last = None;
            if step.tokens.is_empty() && step.hidden.is_empty() {
                return; // an empty step of a new generation: the client stopped the last one
            }
        } else if n + 1 == self.next_step {
            match (&self.last, origin) {
                (Some((s, frame)), Origin::Client) if *s == n => self.tell_client(frame.clone()).await,
                (_, Origin::Client) => self.fail(ErrorCode::StepOutOfOrder, format!("step {n} was not kept")).await,
                (_, Origin::Pushed) => {} // a hop resending what we already ran
            }
            return;
        } else if n != self.next_step {
            let msg = format!("step {n} out of order: expected {}", self.next_step);
            return self.fail(ErrorCode::StepOutOfOrder, msg).await;
        }

        // The tokens the rows stand for travel on with the hidden state, for the last hop's penalties.
        let (input, row_tokens) = match (step.tokens.is_empty(), step.hidden.is_empty()) {
            (false, true) => (StepInput::Tokens(step.tokens.clone()), step.tokens),
            (true, false) => match Activation::from_bytes(&step.hidden) {
                Ok(a) => (StepInput::Hidden(a), step.row_tokens),
                Err(e) => return self.fail(ErrorCode::BadInput, e.to_string()).await,
            },
            _ => return self.fail(ErrorCode::BadInput, "a step carries either tokens or a hidden state").await,
        };
        let started = std::time::Instant::now();
        let request = StepRequest { session: self.engine, input, row_tokens: row_tokens.clone() };
        let out = match self.worker.step_request(request).await {
            Ok(out) => out,
            Err(e) => return self.fail(code_of(&e), e.to_string()).await,
        };
        tracing::trace!(session = id, step = n, compute_us = started.elapsed().as_micros() as u64, "step ran");
        self.next_step += 1;
        let (generation, more) = (step.generation, step.more);
        match out {
            StepOutput::Hidden(a) => {
                let onward = pb::Step {
                    session_id: 0,
                    step: n,
                    hidden: a.to_bytes(),
                    generation,
                    keep: step.keep,
                    more,
                    max_tokens: step.max_tokens,
                    tokens: vec![],
                    row_tokens,
                };
                self.send_on(onward).await;
            }
            StepOutput::Token { token, logits } => {
                if more {
                    return; // a prompt chunk before the last: no token yet
                }
                self.produced += 1;
                let ring = self.push.is_some();
                let stop =
                    self.stop_tokens.contains(&token) || (self.max_tokens > 0 && self.produced >= self.max_tokens);
                let top = match self.top_logits {
                    0 => vec![],
                    k => top_logprobs(&logits, k as usize)
                        .into_iter()
                        .map(|(token, logprob, logit)| pb::TokenLogprob { token, logprob, logit })
                        .collect(),
                };
                let result = pb::StepResult {
                    session_id: id,
                    step: n,
                    token,
                    has_token: true,
                    generation,
                    top,
                    last: ring && stop,
                    hidden: vec![],
                };
                let frame = pb::InferenceFrame { kind: Some(Kind::Result(result)) };
                self.tell_client(frame.clone()).await;
                self.last = Some((n, frame));
                if ring && !stop {
                    let next = pb::Step { step: n + 1, tokens: vec![token], generation, ..Default::default() };
                    self.send_on(next).await;
                }
            }
        }
    }

    /// Pushes `step` to the next hop, or returns it to the client as a result.
    async fn send_on(&mut self, step: pb::Step) {
        let id = self.id;
        match &mut self.push {
            Some(push) if push.target == push.net.peer_id() && push.session_id == id => {
                self.looped = Some(pb::Step { session_id: id, ..step });
            }
            Some(push) => {
                if let Err(e) = push.push(step, &self.to_client, id).await {
                    tracing::warn!(session = id, error = %e, "push failed");
                    self.fail(ErrorCode::Closed, e).await;
                }
            }
            None => {
                let result = pb::StepResult {
                    session_id: id,
                    step: step.step,
                    hidden: step.hidden,
                    generation: step.generation,
                    ..Default::default()
                };
                let frame = pb::InferenceFrame { kind: Some(Kind::Result(result)) };
                self.tell_client(frame.clone()).await;
                self.last = Some((step.step, frame));
            }
        }
    }
}

//! A session through a route of servers, and generation over it.
//!
//! [`RemoteSession::open`] opens one control stream per hop and sends each its
//! `OpenSession`: its layers, the hop to push its output to (the next one; in ring
//! mode the last hop pushes to the first) and the peer allowed to push into it. Every
//! hop's results and errors come back on its control stream; one reader task per
//! stream feeds them into a single channel.
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
//! The session remembers which tokens the servers' caches hold. The next `generate`
//! (a chat's next turn) keeps the longest common prefix: each hop truncates its cache to
//! it as the new generation's first step arrives, and steps of the old generation still
//! in flight are dropped.

use std::time::{Duration, Instant};

use futures::AsyncReadExt;
use nak_protocol::{pb, ActivationDtype};
use serde::Serialize;
use tokio::sync::mpsc;

use super::{ClientError, RouteHop, SwarmModel};
use crate::chain::Generation;
use crate::engine::{Sampler, SamplingParams};
use crate::inference::{connect, error, write_loop};
use crate::net::frames::{read_frame, MAX_INFERENCE_FRAME};

use pb::inference_frame::Kind;

/// Prompt tokens per step: long prompts go down the chain in pieces of this size.
const PREFILL_CHUNK: usize = 128;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DecodeMode {
    /// The last hop samples and sends the token straight to the first hop.
    Ring,
    /// The last hop sends its top logits to the client, which samples.
    Client,
}

/// Settings of a session.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Decoding mode. Default ring.
    pub mode: DecodeMode,
    /// Sampling (in ring mode done by the last hop, in client mode here). Default greedy.
    pub sampling: SamplingParams,
    /// Hidden-state encoding between hops. Default f32 (exact).
    pub dtype: ActivationDtype,
    /// Client mode: logits the last hop returns with each token. Default 16.
    pub top_logits: u32,
    /// Longest wait for any answer. Default 60 s.
    pub timeout: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            mode: DecodeMode::Ring,
            sampling: SamplingParams::default(),
            dtype: ActivationDtype::F32,
            top_logits: 16,
            timeout: Duration::from_secs(60),
        }
    }
}

/// One generation through the swarm: the local generation's report plus the route.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteGeneration {
    /// What any generation reports.
    #[serde(flatten)]
    pub generation: Generation,
    /// The hops used.
    pub route: Vec<RouteHop>,
    /// How tokens were chosen.
    pub mode: DecodeMode,
    /// The caller stopped it before an end token or `max_tokens`.
    pub cancelled: bool,
}

/// A session open on every hop of a route.
pub struct RemoteSession {
    route: Vec<RouteHop>,
    opts: SessionOptions,
    base_id: u64,
    /// Control streams' writers, one per hop.
    writers: Vec<mpsc::Sender<pb::InferenceFrame>>,
    /// Frames from every hop: (hop index, frame).
    frames: mpsc::Receiver<(usize, pb::InferenceFrame)>,
    sampler: Sampler,
    end_tokens: Vec<i32>,
    max_context: u32,
    generation: u32,
    next_step: u64,
    /// Tokens whose positions the hops' caches hold, in order.
    cached: Vec<i32>,
}

impl RemoteSession {
    /// Opens a session on every hop of `route` for `model`.
    pub async fn open(model: &SwarmModel, route: Vec<RouteHop>, opts: SessionOptions) -> Result<Self, ClientError> {
        if route.is_empty() {
            return Err(ClientError::NoRoute("empty route".into()));
        }
        let net = model.net();
        let base_id: u64 = rand::random::<u64>() & !0xff;
        let end_tokens = model.end_tokens();
        let (frames_tx, frames) = mpsc::channel(256);
        let mut writers = Vec::new();
        let last = route.len() - 1;
        let streams = futures::future::try_join_all(
            route
                .iter()
                .map(|hop| async move { connect(net, hop.peer, &hop.addrs).await.map_err(|e| hop_error(hop, e)) }),
        )
        .await?;
        for (i, (hop, stream)) in route.iter().zip(streams).enumerate() {
            let (mut reader, writer) = stream.split();
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(write_loop(writer, rx));
            let frames_tx = frames_tx.clone();
            tokio::spawn(async move {
                while let Ok(frame) = read_frame::<pb::InferenceFrame, _>(&mut reader, MAX_INFERENCE_FRAME).await {
                    if frames_tx.send((i, frame)).await.is_err() {
                        break;
                    }
                }
                let closed = error(0, pb::ErrorCode::Closed, "the stream closed");
                let _ = frames_tx.send((i, closed)).await;
            });
            let ring = opts.mode == DecodeMode::Ring;
            let next = if i < last {
                Some(i + 1)
            } else if ring {
                Some(0)
            } else {
                None
            };
            let prev = if i > 0 {
                Some(i - 1)
            } else if ring {
                Some(last)
            } else {
                None
            };
            let open = pb::OpenSession {
                session_id: base_id + i as u64,
                model_id: model.id().0.to_vec(),
                first_layer: hop.start,
                end_layer: hop.end,
                max_context: 0,
                // Client mode: the last hop applies the penalties before choosing the top
                // logits, and this client samples from those.
                sampling: Some(
                    if ring { opts.sampling } else { SamplingParams::default().with_penalties_of(&opts.sampling) }
                        .into(),
                ),
                dtype: opts.dtype as u32,
                push_to: next.map(|n| pb::Hop {
                    peer_id: route[n].peer.to_bytes(),
                    addrs: route[n].addrs.iter().map(|a| a.to_vec()).collect(),
                    session_id: base_id + n as u64,
                }),
                accept_from: prev.map(|p| route[p].peer.to_bytes()).unwrap_or_default(),
                top_logits: if i == last && !ring { opts.top_logits.max(1) } else { 0 },
                stop_tokens: if i == last && ring { end_tokens.clone() } else { vec![] },
            };
            tx.send(pb::InferenceFrame { kind: Some(Kind::Open(open)) })
                .await
                .map_err(|_| ClientError::Protocol(format!("the stream to {} closed", hop.peer)))?;
            writers.push(tx);
        }
        let sampler = Sampler::new(&opts.sampling.without_penalties());
        let mut session = Self {
            route,
            opts,
            base_id,
            writers,
            frames,
            sampler,
            end_tokens,
            max_context: u32::MAX,
            generation: 0,
            next_step: 0,
            cached: Vec::new(),
        };
        for _ in 0..session.route.len() {
            match session.next_frame().await? {
                (_, Kind::Opened(o)) => session.max_context = session.max_context.min(o.max_context),
                (i, other) => return Err(ClientError::Protocol(format!("hop {i} answered the open with {other:?}"))),
            }
        }
        Ok(session)
    }

    /// The route this session runs on.
    pub fn route(&self) -> &[RouteHop] {
        &self.route
    }

    /// Context length every hop allows.
    pub fn max_context(&self) -> u32 {
        self.max_context
    }

    /// The next frame from any hop; an error frame becomes [`ClientError::Hop`].
    async fn next_frame(&mut self) -> Result<(usize, Kind), ClientError> {
        let (i, frame) = tokio::time::timeout(self.opts.timeout, self.frames.recv())
            .await
            .map_err(|_| ClientError::Timeout(self.opts.timeout))?
            .ok_or_else(|| ClientError::Protocol("every stream closed".into()))?;
        match frame.kind {
            Some(Kind::Error(e)) => {
                let hop = &self.route[i];
                Err(ClientError::Hop {
                    peer: hop.peer,
                    start: hop.start,
                    end: hop.end,
                    code: e.code(),
                    message: e.message,
                })
            }
            Some(kind) => Ok((i, kind)),
            None => Err(ClientError::Protocol(format!("hop {i} sent an empty frame"))),
        }
    }

    async fn send_first(&self, step: pb::Step) -> Result<(), ClientError> {
        let frame = pb::InferenceFrame { kind: Some(Kind::Step(step)) };
        self.writers[0].send(frame).await.map_err(|_| ClientError::Protocol("the first hop's stream closed".into()))
    }

    /// Generates after `tokens`, the whole conversation so far: the hops keep what their
    /// caches share with it and run the rest. `on_token` sees each token as it arrives
    /// and returns false to stop.
    pub async fn generate(
        &mut self,
        model: &SwarmModel,
        tokens: &[i32],
        max_tokens: usize,
        mut on_token: impl FnMut(i32) -> bool,
    ) -> Result<RemoteGeneration, ClientError> {
        if tokens.is_empty() {
            return Err(ClientError::Input("nothing to generate from: no tokens".into()));
        }
        // Keep the shared prefix, but always run at least one token.
        let keep = self.cached.iter().zip(tokens).take_while(|(a, b)| a == b).count().min(tokens.len() - 1);
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
        self.cached.truncate(keep);
        let fresh = &tokens[keep..];
        let ring = self.opts.mode == DecodeMode::Ring;
        let t0 = Instant::now();
        let chunks: Vec<&[i32]> = fresh.chunks(PREFILL_CHUNK).collect();
        for (c, chunk) in chunks.iter().enumerate() {
            let step = pb::Step {
                session_id: self.base_id,
                step: self.next_step,
                tokens: chunk.to_vec(),
                generation: self.generation,
                keep: keep as u32,
                more: c + 1 < chunks.len(),
                max_tokens: if ring { max_tokens as u32 } else { 0 },
                ..Default::default()
            };
            self.next_step += 1;
            self.send_first(step).await?;
        }
        self.cached.extend_from_slice(fresh);

        let last = self.route.len() - 1;
        let mut out: Vec<i32> = Vec::new();
        // The newest token: fed to the first hop, but in every hop's cache only once the
        // token after it arrives.
        let mut pending: Option<i32> = None;
        let (mut prefill, mut cancelled) = (Duration::ZERO, false);
        let t1 = loop {
            let (i, kind) = self.next_frame().await?;
            let Kind::Result(r) = kind else {
                return Err(ClientError::Protocol(format!("hop {i} sent {kind:?} during generation")));
            };
            if i != last || r.generation != self.generation || !r.has_token {
                continue; // a late answer of a cancelled generation
            }
            let token = if ring {
                r.token
            } else if r.top.is_empty() {
                return Err(ClientError::Protocol("the last hop sent no logits".into()));
            } else {
                self.sampler.sample_candidates(r.top.iter().map(|t| (t.token, t.logit)))
            };
            if out.is_empty() {
                prefill = t0.elapsed();
            }
            self.cached.extend(pending.take());
            let end = self.end_tokens.contains(&token);
            if !end {
                out.push(token);
            }
            let more = !end && out.len() < max_tokens && !r.last;
            if !end && !on_token(token) {
                cancelled = more;
                break Instant::now();
            }
            if !more {
                break Instant::now();
            }
            pending = Some(token);
            self.next_step = r.step + 2;
            if !ring {
                let step = pb::Step {
                    session_id: self.base_id,
                    step: r.step + 1,
                    tokens: vec![token],
                    generation: self.generation,
                    ..Default::default()
                };
                self.send_first(step).await?;
            }
            // In ring mode the last hop has already pushed this token to the first.
        };
        if cancelled {
            // An empty step of a newer generation stops the ring at the first hop.
            self.generation += 1;
            let stop = pb::Step {
                session_id: self.base_id,
                step: self.next_step,
                generation: self.generation,
                keep: self.cached.len() as u32,
                ..Default::default()
            };
            self.send_first(stop).await?;
        }
        let decode = t1.saturating_duration_since(t0 + prefill);
        let steps_after_first = out.len().saturating_sub(1);
        let generation = Generation {
            text: model.detokenize(&out),
            prompt_tokens: fresh.len(),
            prefill_ms: prefill.as_secs_f64() * 1e3,
            prefill_tokens_per_s: fresh.len() as f64 / prefill.as_secs_f64().max(1e-9),
            decode_tokens_per_s: steps_after_first as f64 / decode.as_secs_f64().max(1e-9),
            spans: self.route.len(),
            tokens: out,
        };
        Ok(RemoteGeneration { generation, route: self.route.clone(), mode: self.opts.mode, cancelled })
    }

    /// Closes the session on every hop.
    pub async fn close(self) {
        for (i, w) in self.writers.iter().enumerate() {
            let close = pb::CloseSession { session_id: self.base_id + i as u64 };
            let _ = w.send(pb::InferenceFrame { kind: Some(Kind::Close(close)) }).await;
        }
    }
}

fn hop_error(hop: &RouteHop, e: impl std::fmt::Display) -> ClientError {
    ClientError::Hop {
        peer: hop.peer,
        start: hop.start,
        end: hop.end,
        code: pb::ErrorCode::Closed,
        message: format!("cannot open a stream: {e}"),
    }
}

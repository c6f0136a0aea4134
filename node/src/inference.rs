//! The server side of `/nakshatra/inference/1`: sessions over long-lived streams.
//!
//! [`InferenceService::spawn`] accepts inference streams from the network's stream
//! control. Each stream gets a task that reads [`pb::InferenceFrame`]s in order:
//!
//! - `Open` checks the model and layers against what this server holds, opens an engine
//!   session on the shared [`EngineWorker`] (so the steps of every stream batch
//!   together), and answers `Opened`, or an error with code `OVERLOADED` when no slot
//!   is free, so the client routes elsewhere;
//! - `Step` must carry the session's next step number; its tokens or hidden state go to
//!   the worker and the result (a hidden state, or the sampled token) comes back as a
//!   `StepResult`. A replay of the last step gets the cached result again;
//! - `Close` frees the session; so does the end of the stream.
//!
//! Bad input (unknown session, step out of order, wrong width or kind, NaN, a token
//! outside the vocabulary) gets an `ErrorFrame` with its code, and the session and the
//! stream go on. A frame that cannot be read (oversized, malformed) ends that stream
//! only, since the reader no longer knows where the next frame starts.

use std::collections::HashMap;
use std::ops::Range;

use futures::StreamExt;
use libp2p::PeerId;
use nak_protocol::{pb, Activation, ActivationDtype};
use nak_shard_store::ModelId;

use crate::engine::{EngineError, EngineWorker, SamplingParams, SessionConfig, SessionId, StepInput, StepOutput};
use crate::net::frames::{read_frame, write_frame, INFERENCE_PROTOCOL, MAX_INFERENCE_FRAME};
use crate::net::NetworkHandle;

use pb::inference_frame::Kind;
use pb::ErrorCode;

/// Errors starting the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Another service already accepts inference streams on this network.
    #[error("inference streams are already being accepted")]
    AlreadyAccepting,
}

/// Accepts and serves inference streams.
pub struct InferenceService;

impl InferenceService {
    /// Serves `model`'s layers held by `worker` to every peer that opens an inference stream.
    pub fn spawn(
        net: &NetworkHandle,
        model: ModelId,
        worker: EngineWorker,
    ) -> Result<tokio::task::JoinHandle<()>, ServiceError> {
        let mut incoming = net.streams().accept(INFERENCE_PROTOCOL).map_err(|_| ServiceError::AlreadyAccepting)?;
        Ok(tokio::spawn(async move {
            while let Some((peer, stream)) = incoming.next().await {
                let served = Served { model, worker: worker.clone() };
                tokio::spawn(served.stream(peer, stream));
            }
        }))
    }
}

/// One session on a stream.
struct Live {
    engine: SessionId,
    next_step: u64,
    /// The last step's result frame, sent again on a replay.
    last: Option<pb::InferenceFrame>,
}

/// What to send back: a new frame, or the session's cached last result (a hidden state
/// can be megabytes, so it is written from the cache rather than copied into it).
enum Reply {
    Frame(pb::InferenceFrame),
    LastResult(u64),
}

struct Served {
    model: ModelId,
    worker: EngineWorker,
}

fn error(session_id: u64, code: ErrorCode, message: impl Into<String>) -> pb::InferenceFrame {
    let mut e = pb::ErrorFrame { session_id, message: message.into(), ..Default::default() };
    e.set_code(code);
    pb::InferenceFrame { kind: Some(Kind::Error(e)) }
}

fn code_of(e: &EngineError) -> ErrorCode {
    match e {
        EngineError::UnknownSession(_) => ErrorCode::UnknownSession,
        EngineError::TooManySessions(_) => ErrorCode::Overloaded,
        EngineError::Input(_) | EngineError::Activation(_) | EngineError::ContextFull { .. } => ErrorCode::BadInput,
        _ => ErrorCode::Internal,
    }
}

impl Served {
    async fn stream(self, peer: PeerId, mut stream: libp2p::Stream) {
        let mut sessions: HashMap<u64, Live> = HashMap::new();
        loop {
            let frame = match read_frame::<pb::InferenceFrame, _>(&mut stream, MAX_INFERENCE_FRAME).await {
                Ok(frame) => frame,
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    tracing::warn!(%peer, error = %e, "refused an inference frame; closing the stream");
                    let reply = error(0, ErrorCode::BadFrame, e.to_string());
                    let _ = write_frame(&mut stream, &reply, MAX_INFERENCE_FRAME).await;
                    break;
                }
                Err(_) => break, // the peer went away
            };
            let reply = match frame.kind {
                Some(Kind::Open(open)) => Some(Reply::Frame(self.open(&mut sessions, open).await)),
                Some(Kind::Step(step)) => Some(self.step(&mut sessions, step).await),
                Some(Kind::Close(close)) => {
                    if let Some(live) = sessions.remove(&close.session_id) {
                        let _ = self.worker.close_session(live.engine).await;
                    }
                    None
                }
                _ => {
                    Some(Reply::Frame(error(0, ErrorCode::BadFrame, "a client sends open, step and close frames only")))
                }
            };
            let frame = match &reply {
                Some(Reply::Frame(frame)) => Some(frame),
                Some(Reply::LastResult(id)) => sessions.get(id).and_then(|live| live.last.as_ref()),
                None => None,
            };
            if let Some(frame) = frame {
                if write_frame(&mut stream, frame, MAX_INFERENCE_FRAME).await.is_err() {
                    break;
                }
            }
        }
        for live in sessions.into_values() {
            let _ = self.worker.close_session(live.engine).await;
        }
    }

    fn layers_held(&self) -> Range<u32> {
        let span = self.worker.span();
        span.first..span.first + span.n_layer
    }

    async fn open(&self, sessions: &mut HashMap<u64, Live>, open: pb::OpenSession) -> pb::InferenceFrame {
        let id = open.session_id;
        let held = self.layers_held();
        if open.model_id != self.model.0 {
            return error(id, ErrorCode::WrongSpan, "this server does not serve that model");
        }
        let layers = open.first_layer..open.end_layer;
        if layers.is_empty() || layers.start < held.start || layers.end > held.end {
            let msg = format!(
                "layers {}..{} are not within the {}..{} served here",
                layers.start, layers.end, held.start, held.end
            );
            return error(id, ErrorCode::WrongSpan, msg);
        }
        if sessions.contains_key(&id) {
            return error(id, ErrorCode::BadInput, "a session with this id is already open on this stream");
        }
        let dtype = match open.dtype {
            0 => ActivationDtype::F32,
            1 => ActivationDtype::F16,
            2 => ActivationDtype::Bf16,
            other => return error(id, ErrorCode::BadInput, format!("unknown hidden-state encoding {other}")),
        };
        if !open.temperature.is_finite() || open.temperature < 0.0 {
            return error(id, ErrorCode::BadInput, "temperature must be a finite number, at least 0");
        }
        let cfg = SessionConfig {
            layers: Some(layers),
            sampling: SamplingParams { temperature: open.temperature, seed: open.seed },
            dtype,
        };
        match self.worker.open_session(cfg).await {
            Ok(engine) => {
                sessions.insert(id, Live { engine, next_step: 0, last: None });
                let opened = pb::Opened { session_id: id, max_context: self.worker.ctx_per_session() };
                pb::InferenceFrame { kind: Some(Kind::Opened(opened)) }
            }
            Err(e) => error(id, code_of(&e), e.to_string()),
        }
    }

    async fn step(&self, sessions: &mut HashMap<u64, Live>, step: pb::Step) -> Reply {
        let id = step.session_id;
        let Some(live) = sessions.get_mut(&id) else {
            return Reply::Frame(error(id, ErrorCode::UnknownSession, format!("no session {id} on this stream")));
        };
        if step.step + 1 == live.next_step && live.last.is_some() {
            return Reply::LastResult(id);
        }
        if step.step != live.next_step {
            let msg = format!("step {} out of order: expected {}", step.step, live.next_step);
            return Reply::Frame(error(id, ErrorCode::StepOutOfOrder, msg));
        }
        let input = match (step.tokens.is_empty(), step.hidden.is_empty()) {
            (false, true) => StepInput::Tokens(step.tokens),
            (true, false) => match Activation::from_bytes(&step.hidden) {
                Ok(a) => StepInput::Hidden(a),
                Err(e) => return Reply::Frame(error(id, ErrorCode::BadInput, e.to_string())),
            },
            _ => return Reply::Frame(error(id, ErrorCode::BadInput, "a step carries either tokens or a hidden state")),
        };
        match self.worker.step(live.engine, input).await {
            Ok(out) => {
                let mut result = pb::StepResult { session_id: id, step: step.step, ..Default::default() };
                match out {
                    StepOutput::Hidden(a) => result.hidden = a.to_bytes(),
                    StepOutput::Token { token, .. } => {
                        result.token = token;
                        result.has_token = true;
                    }
                }
                live.next_step += 1;
                live.last = Some(pb::InferenceFrame { kind: Some(Kind::Result(result)) });
                Reply::LastResult(id)
            }
            Err(e) => Reply::Frame(error(id, code_of(&e), e.to_string())),
        }
    }
}

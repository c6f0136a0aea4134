//! The server side of `/nakshatra/inference/1`: sessions over long-lived streams, with
//! outputs pushed from server to server.
//!
//! [`InferenceService::spawn`] accepts inference streams from the network's stream
//! control; [`InferenceService::serve`] says which engine new sessions run on (a move
//! swaps it; sessions already open finish on the old one). Each stream gets a reader
//! task and a writer task:
//!
//! - `Open` checks the model and layers against what this server holds, opens an engine
//!   session on the shared [`EngineWorker`] (so the steps of every session batch
//!   together) and starts the session's task ([`session`]); the stream becomes the
//!   session's *control* stream, where its results and errors go. A full engine answers
//!   `OVERLOADED`, so the client routes elsewhere.
//! - `Step` goes to the session's inbox if it comes on the control stream, or from the
//!   peer the opener named in `accept_from` (the previous hop pushing its output, or in
//!   ring mode the last hop pushing the next token). Anyone else gets `UNKNOWN_SESSION`.
//! - `Close` from the opener ends the session; so does the end of its control stream.
//! - `Retarget` from the opener rewires a session around a failed hop: who may push into
//!   it (changed here, at once) and where it pushes (its task replays the outputs it
//!   retained to the new next hop first); the task answers `Retargeted`.
//! - `Hello` is answered at once: it opens every stream, and a client probes with it.
//!
//! A session whose open named `push_to` sends each output onward itself as the next
//! hop's step input, so hidden states go hop to hop without the client relaying them.
//! Limits: engine slots, sessions per peer, frames per second per stream, frame size,
//! idle time, and the bytes of outputs retained for replays. A frame that cannot be
//! read ends its stream only.

mod log;
mod push;
mod receipts;
pub(crate) use receipts::output_hash;
mod retention;
mod session;
mod speculate;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, StreamExt};
use libp2p::{Multiaddr, PeerId};
use nak_protocol::{pb, ActivationDtype};
use nak_shard_store::ModelId;
use tokio::sync::mpsc;

use crate::dilation::dilate;
use crate::engine::{EngineError, EngineWorker, SamplingParams, SessionConfig};
use crate::net::frames::{read_frame, write_frame, MAX_INFERENCE_FRAME};
use crate::net::NetworkHandle;
use crate::speculative::DraftModel;
pub(crate) use log::{replay_runs, FAST_REPLAY_ROWS};
use log::{OutputLog, RetainBudget};
use push::Pusher;
pub use receipts::exec_class;
use receipts::ReceiptSigner;
use retention::AuditRetention;
use session::{Input, Origin, SessionSetup, SessionTask};

use pb::inference_frame::Kind;
use pb::ErrorCode;

/// Frames waiting for a stream's writer.
const OUTBOX: usize = 64;
/// Steps waiting for a session's task.
const INBOX: usize = 64;
/// Most logits a client may ask for with each token.
const MAX_TOP_LOGITS: u32 = 1024;
/// Most tokens a ring's last hop may be asked to draft a trip.
pub(crate) const MAX_DRAFT: u32 = 32;

/// Errors starting the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Another service already accepts inference streams on this network.
    #[error("inference streams are already being accepted")]
    AlreadyAccepting,
}

/// Limits of the service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// A session with no step for this long is closed. Default 5 min.
    pub idle_timeout: Duration,
    /// Sessions one peer may hold open at once. Default 16.
    pub max_sessions_per_peer: usize,
    /// Frames per second one stream may send (bursts up to one second's worth). Default 2000.
    pub max_frames_per_sec: u32,
    /// Bytes of outputs kept, across sessions, to replay to a replacement next hop;
    /// sessions past it stop retaining. Default 512 MiB (SmolLM2's hidden states are
    /// 2.3 KB a position, a 4096-wide model's 16 KB).
    pub retain_budget: u64,
    /// The node's identity key, to sign receipts with; sessions that ask for receipts
    /// are refused without it. Default none.
    pub receipt_key: Option<Arc<ed25519_dalek::SigningKey>>,
    /// Bytes of input rows of sessions with receipts kept for their openers' audits.
    /// Default 256 MiB.
    pub audit_budget: u64,
    /// How long an ended session's rows stay for audits. Default 10 min.
    pub audit_window: Duration,
    /// A small model with the served model's vocabulary, for the ring sessions whose
    /// last hop this server is to draft with it (`OpenSession.draft_vocab`); those are
    /// refused without one. Default none.
    pub draft_model: Option<Arc<DraftModel>>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(300),
            max_sessions_per_peer: 16,
            max_frames_per_sec: 2000,
            retain_budget: 512 << 20,
            receipt_key: None,
            audit_budget: 256 << 20,
            audit_window: Duration::from_secs(600),
            draft_model: None,
        }
    }
}

/// What new sessions run on.
#[derive(Clone)]
struct Backend {
    model: ModelId,
    worker: EngineWorker,
}

/// A live session, as the stream readers see it.
struct Entry {
    owner: PeerId,
    control: u64,
    accept_from: Option<PeerId>,
    inbox: mpsc::Sender<Input>,
}

struct Shared {
    net: NetworkHandle,
    cfg: ServiceConfig,
    budget: Arc<RetainBudget>,
    audits: Arc<AuditRetention>,
    backend: RwLock<Option<Backend>>,
    sessions: Mutex<HashMap<u64, Entry>>,
}

impl Shared {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        // A panic while holding this lock cannot leave the map half-updated (single inserts and removes).
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets session `id` if it is still the one opened on `control`.
    fn forget(&self, id: u64, control: u64) {
        let mut sessions = self.sessions();
        if sessions.get(&id).is_some_and(|e| e.control == control) {
            sessions.remove(&id);
            crate::metrics::global().sessions_open.dec();
        }
    }
}

/// Accepts and serves inference streams; stops accepting when dropped.
pub struct InferenceService {
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl InferenceService {
    /// Accepts inference streams on `net`. Sessions are refused until [`Self::serve`].
    pub fn spawn(net: &NetworkHandle, cfg: ServiceConfig) -> Result<Self, ServiceError> {
        let mut incoming =
            net.streams().accept(net.inference_protocol()).map_err(|_| ServiceError::AlreadyAccepting)?;
        // Held in wall time from here on (see `dilation`).
        let cfg =
            ServiceConfig { idle_timeout: dilate(cfg.idle_timeout), audit_window: dilate(cfg.audit_window), ..cfg };
        let shared = Arc::new(Shared {
            net: net.clone(),
            budget: RetainBudget::new(cfg.retain_budget),
            audits: AuditRetention::new(cfg.audit_budget, cfg.audit_window),
            cfg,
            backend: RwLock::new(None),
            sessions: Mutex::new(HashMap::new()),
        });
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            let mut next_stream = 0u64;
            while let Some((peer, stream)) = incoming.next().await {
                next_stream += 1;
                let stream = s.net.track(peer, stream);
                tokio::spawn(serve_stream(s.clone(), peer, stream, next_stream));
            }
        });
        Ok(Self { shared, accept })
    }

    /// New sessions run `model`'s layers on `worker`; open ones keep their engine.
    pub fn serve(&self, model: ModelId, worker: EngineWorker) {
        *self.shared.backend.write().unwrap_or_else(|p| p.into_inner()) = Some(Backend { model, worker });
    }

    /// Refuses new sessions; open ones go on.
    pub fn stop_admitting(&self) {
        *self.shared.backend.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Sessions open now.
    pub fn sessions(&self) -> usize {
        self.shared.sessions().len()
    }

    /// Bytes of outputs retained for replays now, across sessions.
    pub fn retained_bytes(&self) -> u64 {
        self.shared.budget.used()
    }

    /// Bytes of input rows retained for audits now, across sessions.
    pub fn audit_bytes(&self) -> u64 {
        self.shared.audits.used()
    }
}

impl Drop for InferenceService {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// An error frame.
pub(crate) fn error(session_id: u64, code: ErrorCode, message: impl Into<String>) -> pb::InferenceFrame {
    let mut e = pb::ErrorFrame { session_id, message: message.into(), ..Default::default() };
    e.set_code(code);
    pb::InferenceFrame { kind: Some(Kind::Error(e)) }
}

fn code_of(e: &EngineError) -> ErrorCode {
    match e {
        EngineError::UnknownSession(_) => ErrorCode::UnknownSession,
        EngineError::TooManySessions(_) => ErrorCode::Overloaded,
        EngineError::Input(_) | EngineError::Activation(_) | EngineError::ContextFull { .. } => ErrorCode::BadInput,
        EngineError::WorkerStopped => ErrorCode::Closed,
        _ => ErrorCode::Internal,
    }
}

/// A token bucket: `rate` frames a second, bursts of up to `rate`.
struct RateLimit {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    fn new(per_sec: u32) -> Self {
        let rate = f64::from(per_sec.max(1));
        Self { rate, tokens: rate, at: Instant::now() }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.rate);
        self.at = now;
        let ok = self.tokens >= 1.0;
        if ok {
            self.tokens -= 1.0;
        }
        ok
    }
}

/// Tries at opening an inference stream before giving up.
const OPEN_ATTEMPTS: u32 = 5;
/// Longest wait for the other side's hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest all the tries at opening the stream may wait for the peer together. A peer
/// that vanished without closing (a dead host, a blackhole) leaves a dial hanging until
/// the transport gives up, which may end the try with an error just before this bound;
/// trying again would wait as long again. A try that fails fast (a relayed peer's first
/// stream while hole punching) is tried again within it.
const OPEN_LIMIT: Duration = Duration::from_secs(10);

/// Opens an inference stream to `peer` (dialling `addrs` if not connected) and waits for
/// the peer's hello. libp2p-stream hands inbound streams to the service through a
/// channel with room for one and drops any that arrive while it is full, which happens
/// when many sessions open at once; such a stream is reset before the hello, and we
/// open another after a short random pause. The tries share one [`OPEN_LIMIT`], and a
/// peer that opens the stream but sends no hello in time is not tried again.
pub(crate) async fn connect(
    net: &NetworkHandle,
    peer: PeerId,
    addrs: &[Multiaddr],
) -> Result<crate::net::Stream, String> {
    let hello = pb::InferenceFrame { kind: Some(Kind::Hello(pb::Hello {})) };
    let mut last = String::new();
    let deadline = tokio::time::Instant::now() + dilate(OPEN_LIMIT);
    for attempt in 0..OPEN_ATTEMPTS {
        if attempt > 0 {
            let pause = rand::random::<u64>() % (20 << attempt);
            tokio::time::sleep(dilate(Duration::from_millis(pause))).await;
        }
        let opened = tokio::time::timeout_at(deadline, net.open_stream(peer, addrs, net.inference_protocol()));
        let mut stream = match opened.await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                last = e.to_string();
                continue;
            }
            Err(_) => return Err(format!("{peer} did not answer within {} s", OPEN_LIMIT.as_secs())),
        };
        let exchange = async {
            write_frame(&mut stream, &hello, MAX_INFERENCE_FRAME).await?;
            read_frame::<pb::InferenceFrame, _>(&mut stream, MAX_INFERENCE_FRAME).await
        };
        match tokio::time::timeout(dilate(HELLO_TIMEOUT), exchange).await {
            Ok(Ok(pb::InferenceFrame { kind: Some(Kind::Hello(_)) })) => return Ok(stream),
            Ok(Ok(_)) => return Err(format!("{peer} answered the hello with another frame")),
            Ok(Err(e)) => last = format!("the stream was closed before the hello: {e}"),
            // A dropped stream is reset and shows above; silence is the peer's, and trying
            // again would only wait as long again (a server gone silently costs one wait).
            Err(_) => return Err(format!("{peer} sent no hello within {} s", HELLO_TIMEOUT.as_secs_f64())),
        }
        tracing::debug!(%peer, attempt, error = %last, "inference stream not taken; opening another");
    }
    Err(format!("no inference stream to {peer} after {OPEN_ATTEMPTS} tries: {last}"))
}

/// Writes frames from `rx` to a stream until every sender is gone or the stream fails.
pub(crate) async fn write_loop(
    mut writer: impl futures::AsyncWrite + Unpin,
    mut rx: mpsc::Receiver<pb::InferenceFrame>,
) {
    while let Some(frame) = rx.recv().await {
        if write_frame(&mut writer, &frame, MAX_INFERENCE_FRAME).await.is_err() {
            break;
        }
    }
    let _ = futures::AsyncWriteExt::close(&mut writer).await;
}

async fn serve_stream(shared: Arc<Shared>, peer: PeerId, stream: crate::net::Stream, control: u64) {
    let (mut reader, writer) = stream.split();
    let (out, rx) = mpsc::channel(OUTBOX);
    tokio::spawn(write_loop(writer, rx));
    let mut opened_here = Vec::new();
    let mut rate = RateLimit::new(shared.cfg.max_frames_per_sec);
    loop {
        let frame = match read_frame::<pb::InferenceFrame, _>(&mut reader, MAX_INFERENCE_FRAME).await {
            Ok(frame) => frame,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                tracing::warn!(%peer, error = %e, "refused an inference frame; closing the stream");
                shared.net.report(peer, "a malformed or oversized inference frame");
                let _ = out.send(error(0, ErrorCode::BadFrame, e.to_string())).await;
                break;
            }
            Err(_) => break, // the peer went away
        };
        if !rate.allow() {
            shared.net.report(peer, "inference frames over the rate");
            let msg = format!("over {} frames per second", shared.cfg.max_frames_per_sec);
            let _ = out.send(error(0, ErrorCode::Overloaded, msg)).await;
            continue;
        }
        let reply = match frame.kind {
            Some(Kind::Open(open)) => {
                let id = open.session_id;
                let reply = open_session(&shared, peer, control, open, &out).await;
                if matches!(reply.kind, Some(Kind::Opened(_))) {
                    opened_here.push(id);
                }
                Some(reply)
            }
            Some(Kind::Step(step)) => route_step(&shared, peer, control, step).await,
            Some(Kind::Hello(_)) => Some(pb::InferenceFrame { kind: Some(Kind::Hello(pb::Hello {})) }),
            Some(Kind::Audit(request)) => {
                send_audit_rows(&shared, peer, request.session_id, &out).await;
                None
            }
            Some(Kind::Retarget(rt)) => retarget(&shared, peer, control, rt).await,
            Some(Kind::Close(close)) => {
                // Dropping the entry drops the inbox's sender: the session's task closes it.
                shared.forget(close.session_id, control);
                None
            }
            _ => {
                shared.net.report(peer, "an inference frame a client does not send");
                let msg = "a client sends hello, open, step, retarget, close and audit frames only";
                Some(error(0, ErrorCode::BadFrame, msg))
            }
        };
        if let Some(reply) = reply {
            if out.send(reply).await.is_err() {
                break;
            }
        }
    }
    for id in opened_here {
        shared.forget(id, control);
    }
}

/// Most bytes of rows in one `AuditRows` frame.
const AUDIT_FRAME_BYTES: usize = 4 << 20;

/// Answers an audit: the input rows this server retained of `peer`'s session, in frames
/// of at most [`AUDIT_FRAME_BYTES`], or an error frame.
async fn send_audit_rows(shared: &Shared, peer: PeerId, session_id: u64, out: &mpsc::Sender<pb::InferenceFrame>) {
    let steps = match shared.audits.rows((peer, session_id)) {
        Ok(steps) => steps,
        Err(e) => {
            let _ = out.send(error(session_id, ErrorCode::UnknownSession, e)).await;
            return;
        }
    };
    let (mut first, mut part, mut bytes) = (0u64, Vec::new(), 0usize);
    let total = steps.len();
    for (i, rows) in steps.into_iter().enumerate() {
        bytes += rows.tokens.len() * 4 + rows.hidden.len();
        part.push(rows);
        let last = i + 1 == total;
        if bytes >= AUDIT_FRAME_BYTES || last {
            let n = part.len() as u64;
            let frame = pb::AuditRows { session_id, first, steps: std::mem::take(&mut part), last };
            if out.send(pb::InferenceFrame { kind: Some(Kind::AuditRows(frame)) }).await.is_err() {
                return;
            }
            (first, bytes) = (first + n, 0);
        }
    }
    if total == 0 {
        let frame = pb::AuditRows { session_id, first: 0, steps: vec![], last: true };
        let _ = out.send(pb::InferenceFrame { kind: Some(Kind::AuditRows(frame)) }).await;
    }
}

/// Hands a step to its session, or says why not.
async fn route_step(shared: &Shared, peer: PeerId, control: u64, step: pb::Step) -> Option<pb::InferenceFrame> {
    let id = step.session_id;
    let target = shared.sessions().get(&id).and_then(|e| {
        let origin = if e.owner == peer && e.control == control {
            Origin::Client
        } else if e.accept_from == Some(peer) {
            Origin::Pushed
        } else {
            return None;
        };
        Some((e.inbox.clone(), origin))
    });
    let Some((inbox, origin)) = target else {
        return Some(error(id, ErrorCode::UnknownSession, format!("no session {id} open to you here")));
    };
    match inbox.send(Input::Step(step, origin)).await {
        Ok(()) => None,
        Err(_) => Some(error(id, ErrorCode::Closed, "the session has ended")),
    }
}

/// Rewires a session (only its opener may, on its control stream).
async fn retarget(shared: &Shared, peer: PeerId, control: u64, rt: pb::Retarget) -> Option<pb::InferenceFrame> {
    let id = rt.session_id;
    let accept_from = match peer_from(&rt.accept_from) {
        Ok(p) => p,
        Err(e) => return Some(error(id, ErrorCode::BadInput, e)),
    };
    let push = match &rt.push_to {
        None => None,
        Some(hop) => match pusher(shared, hop) {
            Ok(p) => Some(p),
            Err(e) => return Some(error(id, ErrorCode::BadInput, e)),
        },
    };
    let inbox = {
        let mut sessions = shared.sessions();
        let Some(entry) = sessions.get_mut(&id).filter(|e| e.owner == peer && e.control == control) else {
            return Some(error(id, ErrorCode::UnknownSession, format!("no session {id} opened on this stream")));
        };
        if accept_from.is_some() {
            entry.accept_from = accept_from;
        }
        entry.inbox.clone()
    };
    match inbox.send(Input::Retarget(push, rt.replay())).await {
        Ok(()) => None, // the session answers once it has done it
        Err(_) => Some(error(id, ErrorCode::Closed, "the session has ended")),
    }
}

fn pusher(shared: &Shared, hop: &pb::Hop) -> Result<Pusher, String> {
    let target = peer_from(&hop.peer_id)?.ok_or("push_to names no peer")?;
    let addrs = hop.addrs.iter().filter_map(|a| Multiaddr::try_from(a.clone()).ok()).collect();
    Ok(Pusher::new(shared.net.clone(), target, addrs, hop.session_id))
}

fn peer_from(bytes: &[u8]) -> Result<Option<PeerId>, String> {
    if bytes.is_empty() {
        return Ok(None);
    }
    PeerId::from_bytes(bytes).map(Some).map_err(|e| format!("bad peer id: {e}"))
}

fn layers_held(worker: &EngineWorker) -> Range<u32> {
    let span = worker.span();
    span.first..span.first + span.n_layer
}

async fn open_session(
    shared: &Arc<Shared>,
    peer: PeerId,
    control: u64,
    open: pb::OpenSession,
    out: &mpsc::Sender<pb::InferenceFrame>,
) -> pb::InferenceFrame {
    let id = open.session_id;
    let backend = shared.backend.read().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(Backend { model, worker }) = backend else {
        return error(id, ErrorCode::WrongSpan, "this server is not serving now");
    };
    if open.model_id != model.0 {
        return error(id, ErrorCode::WrongSpan, "this server does not serve that model");
    }
    let held = layers_held(&worker);
    let layers = open.first_layer..open.end_layer;
    if layers.is_empty() || layers.start < held.start || layers.end > held.end {
        let msg = format!(
            "layers {}..{} are not within the {}..{} served here",
            layers.start, layers.end, held.start, held.end
        );
        return error(id, ErrorCode::WrongSpan, msg);
    }
    let dtype = match open.dtype {
        0 => ActivationDtype::F32,
        1 => ActivationDtype::F16,
        2 => ActivationDtype::Bf16,
        other => return error(id, ErrorCode::BadInput, format!("unknown hidden-state encoding {other}")),
    };
    let sampling = open.sampling.as_ref().map(SamplingParams::from).unwrap_or_default();
    if let Err(e) = sampling.validate() {
        return error(id, ErrorCode::BadInput, e);
    }
    if open.top_logits > MAX_TOP_LOGITS {
        return error(id, ErrorCode::BadInput, format!("top_logits is at most {MAX_TOP_LOGITS}"));
    }
    if open.draft_max > MAX_DRAFT {
        return error(id, ErrorCode::BadInput, format!("draft_max is at most {MAX_DRAFT}"));
    }
    if open.draft_max > 0 && open.receipts {
        // A receipt signs one row's logits per step; a trip of drafts has several.
        return error(id, ErrorCode::BadInput, "speculative decoding cannot be combined with receipts yet");
    }
    let drafter = match speculate::drafter_for(shared.cfg.draft_model.as_deref(), &open).await {
        Ok(drafter) => drafter,
        Err((code, msg)) => return error(id, code, msg),
    };
    let accept_from = match peer_from(&open.accept_from) {
        Ok(p) => p,
        Err(e) => return error(id, ErrorCode::BadInput, e),
    };
    let push = match &open.push_to {
        None => None,
        Some(hop) => match pusher(shared, hop) {
            Ok(p) => Some(p),
            Err(e) => return error(id, ErrorCode::BadInput, e),
        },
    };
    {
        let sessions = shared.sessions();
        if sessions.contains_key(&id) {
            return error(id, ErrorCode::BadInput, "a session with this id is already open here");
        }
        if sessions.values().filter(|e| e.owner == peer).count() >= shared.cfg.max_sessions_per_peer {
            let msg = format!("at most {} sessions per peer", shared.cfg.max_sessions_per_peer);
            return error(id, ErrorCode::Overloaded, msg);
        }
    }
    let receipts = match (open.receipts, &shared.cfg.receipt_key) {
        (false, _) => None,
        (true, None) => return error(id, ErrorCode::BadInput, "this server does not sign receipts"),
        (true, Some(_)) if dtype != ActivationDtype::F32 => {
            return error(id, ErrorCode::BadInput, "receipts need f32 hidden states (they hash rows as computed)")
        }
        (true, Some(key)) => {
            Some(ReceiptSigner::new(key.clone(), model.0, layers.clone(), (peer, id), shared.audits.clone()))
        }
    };
    // A last hop signs the raw logits its token came from.
    let cfg = SessionConfig {
        layers: Some(layers),
        sampling,
        dtype,
        return_logits: open.top_logits > 0,
        raw_logits: open.receipts,
    };
    let engine = match worker.open_session(cfg).await {
        Ok(engine) => engine,
        Err(e) => return error(id, code_of(&e), e.to_string()),
    };
    let (inbox, rx) = mpsc::channel(INBOX);
    let setup = SessionSetup {
        push,
        top_logits: open.top_logits,
        stop_tokens: open.stop_tokens,
        emit_from: open.emit_from,
        log: OutputLog::new(shared.budget.clone()),
        max_context: worker.ctx_per_session(),
        receipts,
        drafter,
    };
    let task = SessionTask::new(id, engine, worker.clone(), out.clone(), setup);
    let registered = match shared.sessions().entry(id) {
        std::collections::hash_map::Entry::Occupied(_) => false,
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(Entry { owner: peer, control, accept_from, inbox });
            let m = crate::metrics::global();
            m.sessions_open.inc();
            m.sessions_opened.inc();
            true
        }
    };
    if !registered {
        let _ = worker.close_session(engine).await;
        return error(id, ErrorCode::BadInput, "a session with this id is already open here");
    }
    let (s, idle) = (shared.clone(), shared.cfg.idle_timeout);
    tokio::spawn(async move {
        task.run(rx, idle).await;
        s.forget(id, control);
    });
    pb::InferenceFrame {
        kind: Some(Kind::Opened(pb::Opened { session_id: id, max_context: worker.ctx_per_session() })),
    }
}

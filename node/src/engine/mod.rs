//! The span engine: one loaded span GGUF, many sessions, batched steps.
//!
//! A [`SpanEngine`] owns a llama.cpp model and one context whose KV cache holds a
//! sequence per session. A step hands a session's input rows to the engine — token ids
//! when the session starts at the model's first layer, hidden states otherwise — and
//! gets back the hidden state of every row (when the session stops before the model's
//! last layer) or the last row's logits and a sampled token (when it ends there), or a
//! token from each of the last rows, in order (when drafted tokens are verified).
//!
//! [`SpanEngine::step_batch`] takes the pending steps of many sessions, groups those
//! that run the same layers with the same kind of input, and packs each group into as
//! few llama.cpp decodes as the batch size allows. A step that is invalid (unknown
//! session, wrong input kind or width, NaN, past its context) gets its own error and
//! the others still run.

mod compute;
mod fault;
mod ffi;
mod sampling;
mod worker;

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use nak_protocol::{Activation, ActivationDtype, ActivationError};
use nak_shard_store::span;

pub use compute::{Compute, ComputeLoader, LlamaLoader};
pub use fault::{Fault, FaultMode, FAULT_MODE_ENV, FAULT_RATE_ENV};
pub use ffi::{init_backend, LoadedSpan, Model};
use ffi::{Batch, Context, ContextParams};
pub use sampling::{token_logprob, top_logprobs, Sampler, SamplingParams};
pub use worker::{EngineWorker, StepReceiver, WorkerStats};

/// Errors of the span engine.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The model or context could not be loaded.
    #[error("load failed: {0}")]
    Load(String),
    /// The step's input is not acceptable.
    #[error("bad input: {0}")]
    Input(String),
    /// A hidden state failed its checks.
    #[error("bad hidden state: {0}")]
    Activation(#[from] ActivationError),
    /// No session with this id.
    #[error("unknown session {0}")]
    UnknownSession(SessionId),
    /// All session slots are taken.
    #[error("no free session slot (limit {0})")]
    TooManySessions(u32),
    /// The step would pass the session's context length.
    #[error("session {session} would reach {needed} tokens of context, its limit is {limit}")]
    ContextFull {
        /// The session.
        session: SessionId,
        /// Tokens it would hold.
        needed: u32,
        /// Its context length.
        limit: u32,
    },
    /// llama.cpp found no room in the KV cache.
    #[error("the KV cache has no room for this batch")]
    CacheFull,
    /// llama.cpp's decode failed.
    #[error("llama.cpp decode failed with code {0}")]
    Decode(i32),
    /// llama.cpp returned no output where one was asked for.
    #[error("llama.cpp produced no {0} for a row that asked for it")]
    NoOutput(&'static str),
    /// The span has no tokenizer (a middle span).
    #[error("this span carries no vocabulary")]
    NoVocab,
    /// The engine's worker thread has stopped.
    #[error("the engine worker has stopped")]
    WorkerStopped,
}

/// Identifies a session within one engine.
pub type SessionId = u64;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Context length of each session. Default 2048.
    pub ctx_per_session: u32,
    /// Sessions held at once. Default 4.
    pub max_sessions: u32,
    /// Rows in one llama.cpp decode (longer inputs are split). Default 512.
    pub max_batch_rows: u32,
    /// CPU threads. Default: all cores.
    pub threads: i32,
    /// Layers offloaded to an accelerator (0 = CPU only). Default 0.
    pub gpu_layers: u32,
    /// How long idle CPU compute threads poll for the next decode before they sleep:
    /// ggml's polling level, 0 (sleep at once) to 100. Default 0, so that a server
    /// leaves the cores to whatever else runs between its decodes (the next hop of a
    /// chain on the same machine, other sessions' network work). Only builds without
    /// OpenMP use it.
    pub poll: u32,
    /// Wrong outputs on purpose, for tests of verification ([`Fault`]). Default none.
    pub fault: Fault,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            ctx_per_session: 2048,
            max_sessions: 4,
            max_batch_rows: 512,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get() as i32),
            gpu_layers: 0,
            poll: 0,
            fault: Fault::default(),
        }
    }
}

/// How a session is opened.
#[derive(Debug, Clone, Default)]
pub struct SessionConfig {
    /// Whole-model layers this session runs; `None` = all of the span's layers.
    pub layers: Option<Range<u32>>,
    /// Sampling, used when the session ends at the model's last layer.
    pub sampling: SamplingParams,
    /// Encoding of the hidden states it returns.
    pub dtype: ActivationDtype,
    /// Return the logits a token was sampled from (a copy of the vocabulary's worth per
    /// step); otherwise [`StepOutput::Token`] carries none.
    pub return_logits: bool,
    /// Return a copy of the raw logits of every sampled row ([`StepOutput::Token::raw_logits`]).
    pub raw_logits: bool,
}

/// Input of one step.
#[derive(Debug, Clone)]
pub enum StepInput {
    /// Token ids (sessions that start at layer 0).
    Tokens(Vec<i32>),
    /// Hidden states of the layer before the session's first.
    Hidden(Activation),
}

/// Output of one step.
#[derive(Debug, Clone)]
pub enum StepOutput {
    /// Hidden state of every input row after the session's last layer.
    Hidden(Activation),
    /// The last row's logits and the token sampled from them.
    Token {
        /// Sampled token.
        token: i32,
        /// Logits of the last input row, after the session's repetition penalties (empty
        /// unless the session asked for them).
        logits: Vec<f32>,
        /// The raw logits before any penalty, when the session asked for them
        /// ([`SessionConfig::raw_logits`]): what a receipt signs the hash of. A copy
        /// rather than the hash, so that the hashing waits until the token has gone on.
        raw_logits: Option<Vec<f32>>,
    },
    /// The rows are in the cache; no token was asked for (see [`StepRequest::sample`]).
    Cached,
    /// A token sampled from each of the last [`StepRequest::sample_rows`] rows (more than
    /// one), in row order, each with its logits when the session asked for them; each
    /// row's draw saw the rows before it as context (speculative decoding).
    Rows(Vec<(i32, Vec<f32>)>),
}

/// One step of one session, for [`SpanEngine::step_batch`].
#[derive(Debug, Clone)]
pub struct StepRequest {
    /// The session.
    pub session: SessionId,
    /// Its input.
    pub input: StepInput,
    /// The token ids the input rows stand for, when the input is hidden states and the
    /// session samples: its repetition penalties then see the whole context, not only
    /// the tokens it sampled. Empty: unknown (ignored for token input, which speaks for itself).
    pub row_tokens: Vec<i32>,
    /// For a session that ends at the head: pick a token from the last row. False when
    /// only the cache is wanted (a prompt chunk before the last, a position rebuilt for a
    /// replacement), which spares the output head's work. Default true.
    pub sample: bool,
    /// How many of the last rows to sample (at least 1, at most the rows; more than one
    /// gives [`StepOutput::Rows`]). Default 1.
    pub sample_rows: u32,
    /// With `sample_rows` > 1: no draws after the first row whose token differs from the
    /// next row's (a rejected draft: the rows after it are discarded), so that a seeded
    /// sampler draws once per token kept, as without drafts. Default false.
    pub verify: bool,
    /// Decode the rows one at a time: each row's numbers are then those of one-token
    /// decoding, bit for bit (llama.cpp's CPU kernels round a batch of several rows
    /// differently for some quantizations, Q4_K among them), which keeps verified drafts
    /// exactly the tokens of plain decoding. Default false.
    pub row_by_row: bool,
}

impl StepRequest {
    /// A step with no row tokens, that samples.
    pub fn new(session: SessionId, input: StepInput) -> Self {
        Self { session, input, row_tokens: Vec::new(), sample: true, sample_rows: 1, verify: false, row_by_row: false }
    }
}

struct Session {
    seq: i32,
    /// Span-local layers.
    layers: Range<u32>,
    n_past: u32,
    sampling: SamplingParams,
    sampler: Sampler,
    return_logits: bool,
    raw_logits: bool,
    /// Token ids of the cached positions, as far as known (for penalties; sessions that sample).
    history: Vec<i32>,
    dtype: ActivationDtype,
}

impl Session {
    /// Records the tokens of rows starting at `start_pos`, skipping positions already known
    /// (a token this session sampled comes back as the next step's input).
    fn record(&mut self, start_pos: u32, tokens: &[i32]) {
        let known = self.history.len().saturating_sub(start_pos as usize);
        for &t in tokens.iter().skip(known) {
            self.history.push(t);
            self.sampler.accept(t);
        }
    }

    /// Forgets positions from `n_keep` on; the penalties restart from what is left, and
    /// the draws too unless `keep_draws` (rejected drafts must not replay the RNG).
    fn forget_from(&mut self, n_keep: u32, keep_draws: bool) {
        self.n_past = self.n_past.min(n_keep);
        self.history.truncate(n_keep as usize);
        if keep_draws {
            self.sampler.reset_penalties(&self.sampling);
        } else {
            self.sampler = Sampler::new(&self.sampling);
        }
        let recent = self.history.len().saturating_sub(self.sampling.repeat_last_n as usize);
        for &t in &self.history[recent..] {
            self.sampler.accept(t);
        }
    }
}

/// A loaded span with its sessions. Field order matters: the context drops before the model.
pub struct SpanEngine {
    ctx: Context,
    model: Model,
    span: LoadedSpan,
    n_embd: u32,
    n_vocab: u32,
    cfg: EngineConfig,
    sessions: HashMap<SessionId, Session>,
    free_seqs: Vec<i32>,
    next_id: SessionId,
    /// The architecture's graph runs any layer range (see [`nak_shard_store::span::SPLITTABLE_ARCHITECTURES`]).
    splittable: bool,
}

/// A request that passed validation, with its decoded rows.
struct Prepared {
    idx: usize,
    session: SessionId,
    seq: i32,
    start_pos: u32,
    rows: Rows,
    row_tokens: Vec<i32>,
    emit_hidden: bool,
    sample: bool,
    /// Rows sampled, from the last back (1 unless drafts are verified).
    sample_rows: usize,
    /// Stop drawing at the first row whose token differs from the next row's.
    verify: bool,
    /// One row per decode.
    row_by_row: bool,
    /// The fault strikes this step.
    corrupt: bool,
}

/// A sampled row: the token, the logits returned (if asked for), the raw logits (if asked for).
type Sampled = (i32, Vec<f32>, Option<Vec<f32>>);

/// Steps that run the same layers with the same kind of input: one decode (or a few).
struct Group {
    layers: Range<u32>,
    tokens: bool,
    members: Vec<Prepared>,
}

enum Rows {
    Tokens(Vec<i32>),
    Hidden(Vec<f32>),
}

impl Rows {
    fn len(&self, width: usize) -> usize {
        match self {
            Rows::Tokens(t) => t.len(),
            Rows::Hidden(h) => h.len() / width,
        }
    }
}

impl SpanEngine {
    /// Loads a span (or whole-model) GGUF.
    pub fn load(path: &Path, cfg: EngineConfig) -> Result<Self, EngineError> {
        if cfg.max_sessions == 0 || cfg.ctx_per_session == 0 || cfg.max_batch_rows == 0 {
            return Err(EngineError::Load("sessions, context and batch size must be positive".into()));
        }
        // Check the file's structure ourselves first: llama.cpp aborts the process on some
        // malformed headers, and a span file may come from an untrusted peer.
        // A span of an architecture whose graph cannot run part of the model is refused
        // here with the reason, before llama.cpp refuses it with a log line.
        let file = nak_shard_store::GgufFile::open(path).map_err(|e| EngineError::Load(e.to_string()))?;
        let position = nak_shard_store::SpanPosition::of(&file).map_err(|e| EngineError::Load(e.to_string()))?;
        span::check_splittable(&file.metadata, position.layers())
            .map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))?;
        let splittable = span::SPLITTABLE_ARCHITECTURES.contains(&file.architecture().unwrap_or_default());
        drop(file);
        let model = Model::load(path, cfg.gpu_layers)?;
        let span = model.span();
        let n_ctx = cfg
            .ctx_per_session
            .checked_mul(cfg.max_sessions)
            .ok_or_else(|| EngineError::Load("context × sessions overflows".into()))?;
        let ctx = Context::new(
            &model,
            ContextParams {
                n_ctx,
                n_batch: cfg.max_batch_rows,
                n_ubatch: cfg.max_batch_rows,
                n_seq_max: cfg.max_sessions,
                n_threads: cfg.threads,
                poll: cfg.poll,
            },
        )?;
        let n_embd = model.n_embd();
        let n_vocab = model.n_vocab();
        let free_seqs = (0..cfg.max_sessions as i32).rev().collect();
        Ok(SpanEngine {
            ctx,
            model,
            span,
            n_embd,
            n_vocab,
            cfg,
            sessions: HashMap::new(),
            free_seqs,
            next_id: 1,
            splittable,
        })
    }

    /// Where the loaded span sits in the whole model.
    pub fn span(&self) -> LoadedSpan {
        self.span
    }

    /// Hidden size.
    pub fn n_embd(&self) -> u32 {
        self.n_embd
    }

    /// The loaded model (tokenizer access for spans that carry a vocabulary).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Settings in force.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Number of open sessions.
    pub fn n_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Opens a session over `cfg.layers` (whole-model indices, within this span).
    pub fn open_session(&mut self, cfg: SessionConfig) -> Result<SessionId, EngineError> {
        let first = self.span.first;
        let all = first..first + self.span.n_layer;
        let layers = cfg.layers.unwrap_or(all.clone());
        if layers.start >= layers.end || layers.start < all.start || layers.end > all.end {
            return Err(EngineError::Input(format!(
                "session layers {}..{} are not a non-empty part of this span's {}..{}",
                layers.start, layers.end, all.start, all.end
            )));
        }
        if layers != (0..self.span.total) && !self.splittable {
            return Err(EngineError::Input(format!(
                "this model's architecture runs only whole, not layers {}..{}",
                layers.start, layers.end
            )));
        }
        let seq = self.free_seqs.pop().ok_or(EngineError::TooManySessions(self.cfg.max_sessions))?;
        self.ctx.remove_from(seq, 0);
        let id = self.next_id;
        self.next_id += 1;
        let local = layers.start - first..layers.end - first;
        let session = Session {
            seq,
            layers: local,
            n_past: 0,
            sampling: cfg.sampling,
            sampler: Sampler::new(&cfg.sampling),
            return_logits: cfg.return_logits,
            raw_logits: cfg.raw_logits,
            history: Vec::new(),
            dtype: cfg.dtype,
        };
        self.sessions.insert(id, session);
        Ok(id)
    }

    /// Closes a session and frees its cache.
    pub fn close_session(&mut self, id: SessionId) -> Result<(), EngineError> {
        let s = self.sessions.remove(&id).ok_or(EngineError::UnknownSession(id))?;
        self.ctx.remove_from(s.seq, 0);
        self.free_seqs.push(s.seq);
        Ok(())
    }

    /// Keeps the first `n_keep` positions of a session's cache and drops the rest; the
    /// sampler's draws restart from its seed (a new generation).
    pub fn truncate(&mut self, id: SessionId, n_keep: u32) -> Result<(), EngineError> {
        self.drop_from(id, n_keep, false)
    }

    /// Drops the rows of rejected drafts, from `n_keep` on: as [`SpanEngine::truncate`],
    /// but the sampler's draws go on, so that no random number is used twice.
    pub fn rewind(&mut self, id: SessionId, n_keep: u32) -> Result<(), EngineError> {
        self.drop_from(id, n_keep, true)
    }

    fn drop_from(&mut self, id: SessionId, n_keep: u32, keep_draws: bool) -> Result<(), EngineError> {
        let s = self.sessions.get_mut(&id).ok_or(EngineError::UnknownSession(id))?;
        if n_keep < s.n_past {
            self.ctx.remove_from(s.seq, n_keep);
            s.forget_from(n_keep, keep_draws);
        }
        Ok(())
    }

    /// Tokens in a session's cache.
    pub fn session_len(&self, id: SessionId) -> Result<u32, EngineError> {
        self.sessions.get(&id).map(|s| s.n_past).ok_or(EngineError::UnknownSession(id))
    }

    /// Runs one step of one session.
    pub fn step(&mut self, session: SessionId, input: StepInput) -> Result<StepOutput, EngineError> {
        self.step_request(StepRequest::new(session, input))
    }

    /// Runs one step given in full (row tokens, whether to sample).
    pub fn step_request(&mut self, request: StepRequest) -> Result<StepOutput, EngineError> {
        self.step_batch(vec![request]).pop().unwrap_or(Err(EngineError::NoOutput("result")))
    }

    /// Runs the steps of many sessions, batching those that share layers and input kind.
    /// Results come back in request order.
    pub fn step_batch(&mut self, requests: Vec<StepRequest>) -> Vec<Result<StepOutput, EngineError>> {
        let mut results: Vec<Option<Result<StepOutput, EngineError>>> = (0..requests.len()).map(|_| None).collect();
        let mut groups: Vec<Group> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (idx, req) in requests.into_iter().enumerate() {
            let prepared = if seen.insert(req.session) {
                self.prepare(idx, req)
            } else {
                Err(EngineError::Input(format!("session {} has two steps in one batch", req.session)))
            };
            match prepared {
                Ok(mut p) => {
                    let tokens = matches!(p.rows, Rows::Tokens(_));
                    let mut layers = self.sessions[&p.session].layers.clone();
                    if p.corrupt {
                        if let Some(fewer) = self.cfg.fault.skip_layer(&layers, p.emit_hidden, tokens) {
                            (layers, p.corrupt) = (fewer, false);
                        }
                    }
                    match groups.iter_mut().find(|g| g.layers == layers && g.tokens == tokens) {
                        Some(g) => g.members.push(p),
                        None => groups.push(Group { layers, tokens, members: vec![p] }),
                    }
                }
                Err(e) => results[idx] = Some(Err(e)),
            }
        }
        for g in groups {
            for (idx, out) in self.run_group(g) {
                results[idx] = Some(out);
            }
        }
        results.into_iter().map(|r| r.unwrap_or(Err(EngineError::NoOutput("result")))).collect()
    }

    fn prepare(&self, idx: usize, req: StepRequest) -> Result<Prepared, EngineError> {
        let s = self.sessions.get(&req.session).ok_or(EngineError::UnknownSession(req.session))?;
        let takes_tokens = s.layers.start == 0 && self.span.has_embedding;
        let rows = match (req.input, takes_tokens) {
            (StepInput::Tokens(t), true) => {
                if let Some(bad) = t.iter().find(|&&t| t < 0 || t as u32 >= self.n_vocab) {
                    return Err(EngineError::Input(format!(
                        "token id {bad} is outside the vocabulary of {}",
                        self.n_vocab
                    )));
                }
                Rows::Tokens(t)
            }
            (StepInput::Hidden(a), false) => Rows::Hidden(a.decode(self.n_embd)?),
            (StepInput::Tokens(_), false) => {
                return Err(EngineError::Input("this session starts past the embedding: send hidden states".into()))
            }
            (StepInput::Hidden(_), true) => {
                return Err(EngineError::Input("this session starts at the embedding: send token ids".into()))
            }
        };
        let n = rows.len(self.n_embd as usize) as u32;
        if n == 0 {
            return Err(EngineError::Input("a step needs at least one row".into()));
        }
        let needed = s.n_past.saturating_add(n);
        if needed > self.cfg.ctx_per_session {
            return Err(EngineError::ContextFull { session: req.session, needed, limit: self.cfg.ctx_per_session });
        }
        let emit_hidden = s.layers.end < self.span.n_layer || !self.span.has_head;
        let row_tokens = match &rows {
            _ if emit_hidden => Vec::new(),
            Rows::Tokens(t) => t.clone(),
            Rows::Hidden(_) if req.row_tokens.is_empty() => Vec::new(),
            Rows::Hidden(_) => {
                if req.row_tokens.len() != n as usize {
                    return Err(EngineError::Input(format!("{} row tokens for {n} rows", req.row_tokens.len())));
                }
                if let Some(bad) = req.row_tokens.iter().find(|&&t| t < 0 || t as u32 >= self.n_vocab) {
                    return Err(EngineError::Input(format!("row token {bad} is outside the vocabulary")));
                }
                req.row_tokens
            }
        };
        let sample = req.sample;
        let sample_rows = req.sample_rows.clamp(1, n) as usize;
        let corrupt = self.cfg.fault.strikes();
        if corrupt {
            tracing::warn!(
                session = req.session,
                position = s.n_past,
                "fault injection: this step's output is corrupted"
            );
        }
        Ok(Prepared {
            idx,
            session: req.session,
            seq: s.seq,
            start_pos: s.n_past,
            rows,
            row_tokens,
            emit_hidden,
            sample,
            sample_rows,
            verify: req.verify,
            row_by_row: req.row_by_row,
            corrupt,
        })
    }

    /// Decodes one group (same layers, same input kind) in as few batches as fit.
    fn run_group(&mut self, group: Group) -> Vec<(usize, Result<StepOutput, EngineError>)> {
        let Group { layers, tokens, members } = group;
        let width = self.n_embd as usize;
        let emit_hidden = members[0].emit_hidden;
        if let Err(e) = self.ctx.set_layers(layers.start, layers.end, emit_hidden) {
            return members.into_iter().map(|p| (p.idx, Err(e.clone()))).collect();
        }
        let cap = self.cfg.max_batch_rows as usize;
        let mut done = vec![0usize; members.len()];
        let mut hidden_out: Vec<Vec<f32>> = members.iter().map(|_| Vec::new()).collect();
        // Each member's sampled tokens and (when asked for) their logits, by row.
        let mut sampled: Vec<Vec<Sampled>> = members.iter().map(|_| Vec::new()).collect();
        let mut failed: Option<EngineError> = None;

        while failed.is_none() && members.iter().zip(&done).any(|(p, d)| *d < p.rows.len(width)) {
            // Sized to what this round holds: a decode step is one row, not a whole batch's worth.
            let pending: usize = members.iter().zip(&done).map(|(p, d)| p.rows.len(width) - d).sum();
            let mut batch = Batch::new(pending.min(cap), if tokens { 0 } else { width });
            let mut placed = Vec::new(); // (member, batch row of its first row, rows)
            for (m, p) in members.iter().enumerate() {
                let total = p.rows.len(width);
                let take = (total - done[m]).min(batch.capacity() - batch.len());
                let take = if p.row_by_row { take.min(1) } else { take };
                if take == 0 {
                    continue;
                }
                let first_row = batch.len();
                for r in done[m]..done[m] + take {
                    let pos = p.start_pos + r as u32;
                    let output = emit_hidden || (p.sample && r + p.sample_rows >= total);
                    match &p.rows {
                        Rows::Tokens(t) => batch.push_token(t[r], pos, p.seq, output),
                        Rows::Hidden(h) => batch.push_hidden(&h[r * width..(r + 1) * width], pos, p.seq, output),
                    }
                }
                placed.push((m, first_row, take));
            }
            let started = std::time::Instant::now();
            let decoded = self.ctx.decode(&batch);
            // Benchmarks read this to separate compute from everything around it.
            tracing::trace!(rows = batch.len(), decode_us = started.elapsed().as_micros() as u64, "decode");
            if let Err(e) = decoded {
                failed = Some(e);
                break;
            }
            for (m, first_row, take) in placed {
                for r in 0..take {
                    let row = (first_row + r) as i32;
                    if emit_hidden {
                        match self.ctx.hidden_row(row, width) {
                            Ok(h) => hidden_out[m].extend_from_slice(h),
                            Err(e) => failed = Some(e),
                        }
                    } else if members[m].sample && done[m] + r + members[m].sample_rows >= members[m].rows.len(width) {
                        let p = &members[m];
                        // Each draw predicted the next row's token: the first miss ends the draws.
                        let ri = done[m] + r;
                        let drawn = sampled[m].len();
                        let missed = drawn != ri + p.sample_rows - p.rows.len(width)
                            || sampled[m].last().is_some_and(|(pick, ..)| p.row_tokens.get(ri) != Some(pick));
                        if p.verify && missed {
                            continue;
                        }
                        let Some(s) = self.sessions.get_mut(&p.session) else { continue };
                        // The rows' tokens up to this one enter the penalties' history before the draw.
                        let upto = (done[m] + r + 1).min(p.row_tokens.len());
                        s.record(p.start_pos, &p.row_tokens[..upto]);
                        match self.ctx.logits_row_mut(row, self.n_vocab as usize) {
                            Ok(l) => {
                                if members[m].corrupt {
                                    self.cfg.fault.corrupt(l);
                                }
                                let raw = s.raw_logits.then(|| l.to_vec());
                                let token = s.sampler.sample(l);
                                let logits = if s.return_logits { l.to_vec() } else { Vec::new() };
                                sampled[m].push((token, logits, raw));
                            }
                            Err(e) => failed = Some(e),
                        }
                    }
                }
                done[m] += take;
            }
        }

        let mut out = Vec::with_capacity(members.len());
        for (m, p) in members.into_iter().enumerate() {
            let Some(s) = self.sessions.get_mut(&p.session) else {
                continue;
            };
            if let Some(e) = &failed {
                // Roll the cache back so the session can retry this step.
                self.ctx.remove_from(p.seq, p.start_pos);
                if s.history.len() > p.start_pos as usize {
                    s.forget_from(p.start_pos, false);
                }
                out.push((p.idx, Err(e.clone())));
                continue;
            }
            s.n_past = p.start_pos + done[m] as u32;
            if !emit_hidden {
                // Every row's token, drawn after or not (a rejected draft's rows stay until
                // the next step drops them), so the history stays one token per position.
                s.record(p.start_pos, &p.row_tokens);
            }
            let result = if emit_hidden {
                if p.corrupt {
                    self.cfg.fault.corrupt(&mut hidden_out[m]);
                }
                Activation::encode(&hidden_out[m], self.n_embd, s.dtype)
                    .map(StepOutput::Hidden)
                    .map_err(EngineError::from)
            } else if !p.sample {
                Ok(StepOutput::Cached)
            } else if sampled[m].is_empty() || (sampled[m].len() != p.sample_rows && !p.verify) {
                Err(EngineError::NoOutput("logits"))
            } else if p.sample_rows > 1 {
                Ok(StepOutput::Rows(sampled[m].drain(..).map(|(token, logits, _)| (token, logits)).collect()))
            } else {
                match sampled[m].pop() {
                    Some((token, logits, raw_logits)) => Ok(StepOutput::Token { token, logits, raw_logits }),
                    None => Err(EngineError::NoOutput("logits")),
                }
            };
            out.push((p.idx, result));
        }
        out
    }
}

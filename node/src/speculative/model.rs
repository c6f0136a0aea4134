//! Drafting with a small model that shares the target model's vocabulary.
//!
//! A [`DraftModel`] is a whole GGUF on its own engine thread ([`EngineWorker`]), shared
//! by the generations that draft with it; each opens a [`DraftSession`], one sequence of
//! its KV cache, kept a copy of the generation's context. [`DraftSession::follow`] queues
//! the tokens it lacks as one step and returns at once: the draft model reads them on its
//! own thread while the route computes, and tokens that come while it reads wait for the
//! next step, so a slow draft model reads in larger steps instead of falling behind.
//! [`DraftSession::draft`] waits for that read, drops the positions from the first token
//! that differs (the drafts that did not stand), feeds the rest with the newest token and
//! decodes greedily one token at a time. A draft is a token for sure, whatever the target
//! samples with: the route keeps it only where its own draw picks it.

use std::path::Path;

use tokio::sync::oneshot;
use tracing::warn;

use crate::engine::{
    EngineConfig, EngineError, EngineWorker, SamplingParams, SessionConfig, SessionId, SpanEngine, StepInput,
    StepOutput, StepReceiver, StepRequest,
};

/// A loaded draft model.
pub struct DraftModel {
    worker: EngineWorker,
    vocab_digest: [u8; 32],
}

impl std::fmt::Debug for DraftModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DraftModel").field("span", &self.worker.span()).finish_non_exhaustive()
    }
}

impl DraftModel {
    /// Loads the whole-model GGUF at `path` with `cfg` (its sessions are the generations
    /// that can draft at once). Blocks while the file loads.
    pub fn load(path: &Path, cfg: EngineConfig) -> Result<Self, EngineError> {
        let engine = SpanEngine::load(path, cfg)?;
        let span = engine.span();
        if !(span.has_embedding && span.has_head && span.n_layer == span.total) {
            return Err(EngineError::Load(format!("{}: a draft model must be a whole model", path.display())));
        }
        let vocab_digest = engine.model().vocab_digest();
        let worker = EngineWorker::spawn(Box::new(engine))
            .map_err(|e| EngineError::Load(format!("starting the draft model's thread: {e}")))?;
        Ok(Self { worker, vocab_digest })
    }

    /// BLAKE3 of its vocabulary ([`crate::engine::Model::vocab_digest`]).
    pub fn vocab_digest(&self) -> [u8; 32] {
        self.vocab_digest
    }

    /// Refuses a target whose vocabulary (`digest`) is not the draft model's: its
    /// drafts would be other tokens than they seem, and never stand.
    pub fn check_vocab(&self, digest: &[u8]) -> Result<(), EngineError> {
        if digest != self.vocab_digest {
            return Err(EngineError::Input("the draft model's vocabulary is not the model's".into()));
        }
        Ok(())
    }

    /// A session for one generation's drafts.
    pub async fn open(&self) -> Result<DraftSession, EngineError> {
        let sampling = SamplingParams { temperature: 0.0, ..SamplingParams::default() };
        let id = self.worker.open_session(SessionConfig { sampling, ..SessionConfig::default() }).await?;
        Ok(DraftSession { worker: self.worker.clone(), id, cached: Vec::new(), pending: None, stale: false })
    }
}

/// One generation's drafting: a sequence of the draft model's cache.
pub struct DraftSession {
    worker: EngineWorker,
    id: SessionId,
    /// The tokens of the cached positions, those of the pending read included.
    cached: Vec<i32>,
    /// The read queued by [`DraftSession::follow`], while its result is not taken.
    pending: Option<StepReceiver>,
    /// A read failed: what the cache holds is unknown, so it is read again from the start.
    stale: bool,
}

impl DraftSession {
    /// Whether the draft model is still reading what [`DraftSession::follow`] queued. A
    /// read that ended is taken here; one that failed has the context read again.
    pub fn is_reading(&mut self) -> bool {
        let Some(rx) = &mut self.pending else { return false };
        let done = match rx.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => return true,
            Ok(result) => result,
            Err(oneshot::error::TryRecvError::Closed) => Err(EngineError::WorkerStopped),
        };
        self.pending = None;
        self.read_done(done);
        false
    }

    fn read_done(&mut self, result: Result<StepOutput, EngineError>) {
        if let Err(e) = result {
            warn!("the draft model could not read the context: {e}");
            self.cached.clear();
            self.stale = true;
        }
    }

    /// Queues the tokens of `context` (the positions before the newest token) that the
    /// cache lacks, in one step, and returns without waiting: the draft model reads them
    /// on its own thread while the route computes. While a read is pending nothing is
    /// queued, so what comes meanwhile is read in one step after it.
    pub async fn follow(&mut self, context: &[i32]) -> Result<(), EngineError> {
        if self.is_reading() {
            return Ok(());
        }
        let new = self.uncached(context).await?;
        if new.is_empty() || context.len() >= self.worker.ctx_per_session() as usize {
            return Ok(());
        }
        let request = StepRequest { sample: false, ..StepRequest::new(self.id, StepInput::Tokens(new.to_vec())) };
        self.pending = Some(self.worker.queue_step(request).await?);
        self.cached.extend_from_slice(new);
        Ok(())
    }

    /// Waits for the pending read, drops the cached positions from the first token that
    /// differs from `context` (drafts that did not stand), and returns what is left to read.
    async fn uncached<'a>(&mut self, context: &'a [i32]) -> Result<&'a [i32], EngineError> {
        if let Some(rx) = self.pending.take() {
            let result = rx.await.unwrap_or(Err(EngineError::WorkerStopped));
            self.read_done(result);
        }
        let same = self.cached.iter().zip(context).take_while(|(a, b)| a == b).count();
        if same < self.cached.len() || self.stale {
            self.worker.rewind(self.id, same as u32).await?;
            self.cached.truncate(same);
            self.stale = false;
        }
        Ok(&context[same..])
    }

    /// Up to `max` tokens the draft model expects after `context` and then `last`,
    /// fewer where its context length ends. What it has not read of `context` is fed
    /// with `last`, in the first step.
    pub async fn draft(&mut self, context: &[i32], last: i32, max: usize) -> Result<Vec<i32>, EngineError> {
        let len = context.len() + 1;
        let max = max.min((self.worker.ctx_per_session() as usize).saturating_sub(len));
        if max == 0 {
            return Ok(Vec::new());
        }
        let new = self.uncached(context).await?;
        let mut feed = [new, &[last]].concat();
        let mut drafts = Vec::with_capacity(max);
        while drafts.len() < max {
            let output = self.worker.step(self.id, StepInput::Tokens(std::mem::take(&mut feed))).await;
            let output = output.inspect_err(|_| self.stale = true)?;
            let StepOutput::Token { token, .. } = output else {
                self.stale = true;
                return Err(EngineError::NoOutput("draft token"));
            };
            drafts.push(token);
            feed = vec![token];
        }
        // The cache holds the context, `last` and every draft but the last.
        self.cached.extend_from_slice(new);
        self.cached.push(last);
        self.cached.extend_from_slice(&drafts[..drafts.len() - 1]);
        Ok(drafts)
    }
}

impl Drop for DraftSession {
    fn drop(&mut self) {
        self.worker.close_soon(self.id);
    }
}

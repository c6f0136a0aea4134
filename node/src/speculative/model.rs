//! Drafting with a small model that shares the target model's vocabulary.
//!
//! A [`DraftModel`] is a whole GGUF on its own engine thread ([`EngineWorker`]), shared
//! by the generations that draft with it; each opens a [`DraftSession`], one sequence of
//! its KV cache. [`DraftSession::catch_up`] keeps that cache a copy of the generation's
//! context: it drops the positions from the first token that differs (the drafts that
//! did not stand) and feeds what is new in one step; [`DraftSession::draft`] then feeds
//! the newest token and decodes greedily one token at a time. A draft is a token for sure, whatever the target samples with: the route keeps
//! it only where its own draw picks it.

use std::path::Path;

use crate::engine::{
    EngineConfig, EngineError, EngineWorker, SamplingParams, SessionConfig, SessionId, SpanEngine, StepInput,
    StepOutput, StepRequest,
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
        Ok(DraftSession { worker: self.worker.clone(), id, cached: Vec::new() })
    }
}

/// One generation's drafting: a sequence of the draft model's cache.
pub struct DraftSession {
    worker: EngineWorker,
    id: SessionId,
    /// The tokens of the cached positions.
    cached: Vec<i32>,
}

impl DraftSession {
    /// Brings the cache up to `context` (the positions before the newest token): drops
    /// the positions from the first token that differs and feeds what is new, in one
    /// step, without drafting.
    pub async fn catch_up(&mut self, context: &[i32]) -> Result<(), EngineError> {
        let same = self.cached.iter().zip(context).take_while(|(a, b)| a == b).count();
        if same < self.cached.len() {
            self.worker.rewind(self.id, same as u32).await?;
            self.cached.truncate(same);
        }
        let room = (self.worker.ctx_per_session() as usize).saturating_sub(1);
        if context.len() > same && context.len() <= room {
            let new = context[same..].to_vec();
            let request = StepRequest { sample: false, ..StepRequest::new(self.id, StepInput::Tokens(new.clone())) };
            self.worker.step_request(request).await?;
            self.cached.extend(new);
        }
        Ok(())
    }

    /// Up to `max` tokens the draft model expects after `context` and then `last`,
    /// fewer where its context length ends.
    pub async fn draft(&mut self, context: &[i32], last: i32, max: usize) -> Result<Vec<i32>, EngineError> {
        let len = context.len() + 1;
        let max = max.min((self.worker.ctx_per_session() as usize).saturating_sub(len));
        if max == 0 {
            return Ok(Vec::new());
        }
        self.catch_up(context).await?;
        if self.cached.len() != context.len() {
            return Ok(Vec::new());
        }
        let mut feed = vec![last];
        let mut drafts = Vec::with_capacity(max);
        while drafts.len() < max {
            let output = self.worker.step(self.id, StepInput::Tokens(feed.clone())).await?;
            self.cached.extend_from_slice(&feed);
            let StepOutput::Token { token, .. } = output else {
                return Err(EngineError::NoOutput("draft token"));
            };
            drafts.push(token);
            feed = vec![token];
        }
        Ok(drafts)
    }
}

impl Drop for DraftSession {
    fn drop(&mut self) {
        self.worker.close_soon(self.id);
    }
}

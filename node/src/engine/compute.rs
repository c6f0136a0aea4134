//! The compute a server runs its span with, as a trait, so it can be injected.
//!
//! A server only needs a few things from its engine: which layers it holds, opening
//! and closing sessions, and steps. [`SpanEngine`] (llama.cpp) provides them; a
//! simulation of many nodes in one process can provide its own. A [`ComputeLoader`]
//! turns an assembled span file into a [`Compute`]; [`LlamaLoader`] is the real one.

use std::path::Path;

use super::{
    EngineConfig, EngineError, LoadedSpan, SessionConfig, SessionId, SpanEngine, StepInput, StepOutput, StepRequest,
};

/// A loaded span that runs steps for sessions.
pub trait Compute: Send {
    /// What the span holds.
    fn span(&self) -> LoadedSpan;
    /// Hidden-state width.
    fn n_embd(&self) -> u32;
    /// Sessions it may hold at once.
    fn max_sessions(&self) -> u32;
    /// Context length of each session.
    fn ctx_per_session(&self) -> u32;
    /// Sessions open now.
    fn n_sessions(&self) -> usize;
    /// Opens a session.
    fn open_session(&mut self, cfg: SessionConfig) -> Result<SessionId, EngineError>;
    /// Runs one step of one session.
    fn step(&mut self, session: SessionId, input: StepInput) -> Result<StepOutput, EngineError>;
    /// Runs the pending steps of many sessions together; one result per request, in order.
    fn step_batch(&mut self, requests: Vec<StepRequest>) -> Vec<Result<StepOutput, EngineError>>;
    /// Closes a session and frees its cache.
    fn close_session(&mut self, session: SessionId) -> Result<(), EngineError>;
    /// Keeps the first `n_keep` positions of a session's cache and drops the rest.
    fn truncate(&mut self, session: SessionId, n_keep: u32) -> Result<(), EngineError>;
    /// Drops rejected drafts from `n_keep` on, the sampler's draws going on (see
    /// [`SpanEngine::rewind`]). Default: [`Compute::truncate`].
    fn rewind(&mut self, session: SessionId, n_keep: u32) -> Result<(), EngineError> {
        self.truncate(session, n_keep)
    }
}

impl Compute for SpanEngine {
    fn span(&self) -> LoadedSpan {
        SpanEngine::span(self)
    }
    fn n_embd(&self) -> u32 {
        SpanEngine::n_embd(self)
    }
    fn max_sessions(&self) -> u32 {
        self.config().max_sessions
    }
    fn ctx_per_session(&self) -> u32 {
        self.config().ctx_per_session
    }
    fn n_sessions(&self) -> usize {
        SpanEngine::n_sessions(self)
    }
    fn open_session(&mut self, cfg: SessionConfig) -> Result<SessionId, EngineError> {
        SpanEngine::open_session(self, cfg)
    }
    fn step(&mut self, session: SessionId, input: StepInput) -> Result<StepOutput, EngineError> {
        SpanEngine::step(self, session, input)
    }
    fn step_batch(&mut self, requests: Vec<StepRequest>) -> Vec<Result<StepOutput, EngineError>> {
        SpanEngine::step_batch(self, requests)
    }
    fn close_session(&mut self, session: SessionId) -> Result<(), EngineError> {
        SpanEngine::close_session(self, session)
    }
    fn truncate(&mut self, session: SessionId, n_keep: u32) -> Result<(), EngineError> {
        SpanEngine::truncate(self, session, n_keep)
    }

    fn rewind(&mut self, session: SessionId, n_keep: u32) -> Result<(), EngineError> {
        SpanEngine::rewind(self, session, n_keep)
    }
}

/// Makes a [`Compute`] from an assembled span file.
pub trait ComputeLoader: Send + Sync {
    /// Loads `span` with `cfg`.
    fn load(&self, span: &Path, cfg: &EngineConfig) -> Result<Box<dyn Compute>, EngineError>;
}

/// Loads spans into llama.cpp ([`SpanEngine`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct LlamaLoader;

impl ComputeLoader for LlamaLoader {
    fn load(&self, span: &Path, cfg: &EngineConfig) -> Result<Box<dyn Compute>, EngineError> {
        Ok(Box::new(SpanEngine::load(span, cfg.clone())?))
    }
}

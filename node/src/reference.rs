//! The baseline: a whole model run through `llama-cpp-2`'s own API, in one context.
//!
//! No span machinery is involved (no slicing, no layer ranges, no hidden-state
//! batches), so tests and benchmarks compare chains against what a plain llama.cpp
//! program produces.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use crate::engine::EngineConfig;

/// Errors of the reference run.
#[derive(Debug, thiserror::Error)]
#[error("reference llama.cpp run failed: {0}")]
pub struct ReferenceError(String);

fn err(e: impl std::fmt::Display) -> ReferenceError {
    ReferenceError(e.to_string())
}

fn backend() -> Result<&'static LlamaBackend, ReferenceError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    crate::engine::init_backend();
    BACKEND.get_or_init(|| LlamaBackend::init().map_err(|e| e.to_string())).as_ref().map_err(err)
}

/// A whole model loaded through llama-cpp-2.
pub struct ReferenceModel {
    model: LlamaModel,
}

/// Output of [`ReferenceModel::generate_greedy`].
#[derive(Debug, Clone)]
pub struct ReferenceRun {
    /// Generated ids (prompt excluded, stops before an end-of-generation token unless ignored).
    pub tokens: Vec<i32>,
    /// Prompt seconds.
    pub prefill_s: f64,
    /// Seconds of the steps after the first token.
    pub decode_s: f64,
}

impl ReferenceModel {
    /// Loads a GGUF on the CPU.
    pub fn load(path: &Path) -> Result<Self, ReferenceError> {
        let model = LlamaModel::load_from_file(backend()?, path, &LlamaModelParams::default()).map_err(err)?;
        Ok(Self { model })
    }

    /// Tokenizes with special tokens added and parsed.
    pub fn tokenize(&self, text: &str) -> Vec<i32> {
        self.model.vocab().tokenize(text.as_bytes(), true, true).into_iter().map(|t| t.0).collect()
    }

    fn context(&self, cfg: &EngineConfig) -> Result<LlamaContext<'_>, ReferenceError> {
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(cfg.ctx_per_session))
            .with_n_batch(cfg.max_batch_rows)
            .with_n_ubatch(cfg.max_batch_rows)
            .with_n_seq_max(1)
            .with_n_threads(cfg.threads)
            .with_n_threads_batch(cfg.threads);
        self.model.new_context(backend()?, params).map_err(err)
    }

    /// Logits of the prompt's last token, in a fresh context.
    pub fn prompt_logits(&self, prompt: &[i32], cfg: &EngineConfig) -> Result<Vec<f32>, ReferenceError> {
        let mut ctx = self.context(cfg)?;
        let mut batch = LlamaBatch::new(prompt.len().max(1), 1);
        let tokens: Vec<LlamaToken> = prompt.iter().map(|&t| LlamaToken(t)).collect();
        batch.add_sequence(&tokens, 0, false).map_err(err)?;
        ctx.decode(&mut batch).map_err(err)?;
        Ok(ctx.get_logits_ith(batch.n_tokens() - 1).to_vec())
    }

    /// Greedy generation in one fresh context with the engine's context settings.
    pub fn generate_greedy(
        &self,
        prompt: &[i32],
        max_tokens: usize,
        ignore_eos: bool,
        cfg: &EngineConfig,
    ) -> Result<ReferenceRun, ReferenceError> {
        let mut ctx = self.context(cfg)?;
        let mut sampler = LlamaSampler::greedy();
        let mut batch = LlamaBatch::new(prompt.len().max(1), 1);
        let prompt_tokens: Vec<LlamaToken> = prompt.iter().map(|&t| LlamaToken(t)).collect();
        let t0 = Instant::now();
        batch.add_sequence(&prompt_tokens, 0, false).map_err(err)?;
        ctx.decode(&mut batch).map_err(err)?;
        let mut tok = sampler.sample(&ctx, batch.n_tokens() - 1);
        let prefill_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut tokens = Vec::new();
        let mut pos = prompt.len() as i32;
        loop {
            if !ignore_eos && self.model.vocab().is_eog(tok) {
                break;
            }
            tokens.push(tok.0);
            if tokens.len() >= max_tokens {
                break;
            }
            batch.clear();
            batch.add(tok, pos, &[0], true).map_err(err)?;
            pos += 1;
            ctx.decode(&mut batch).map_err(err)?;
            tok = sampler.sample(&ctx, 0);
        }
        Ok(ReferenceRun { tokens, prefill_s, decode_s: t1.elapsed().as_secs_f64() })
    }
}

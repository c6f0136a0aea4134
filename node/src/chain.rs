//! A chain of spans in one process, and text generation over it.
//!
//! [`LocalChain::from_model`] slices a whole GGUF at the given cut points into span
//! files (in a temporary directory it owns) and loads one [`SpanEngine`] per span; with
//! no cuts it loads the whole file as a single span. [`LocalChain::generate`] opens a
//! session on every span, feeds the prompt's tokens to the first, hands each span's
//! hidden state to the next as an encoded wire frame, samples on the last, and feeds
//! the sampled token back to the first for the next step — the ring a swarm runs, with
//! the network taken out.

use std::path::{Path, PathBuf};
use std::time::Instant;

use nak_protocol::{Activation, ActivationDtype};
use nak_shard_store::{span, GgufFile};

use crate::engine::{
    EngineConfig, EngineError, SamplingParams, SessionConfig, SessionId, SpanEngine, StepInput, StepOutput, StepRequest,
};

/// Errors of building or running a chain.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A span engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Slicing the model failed.
    #[error(transparent)]
    Span(#[from] span::SpanError),
    /// Reading the model failed.
    #[error(transparent)]
    Gguf(#[from] nak_shard_store::GgufError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] nak_shard_store::ImportError),
    /// Cut points are not increasing and inside the model.
    #[error("cut points {} must be increasing and between 1 and {n_layer} - 1", comma_list(.cuts))]
    BadCuts {
        /// The cuts given.
        cuts: Vec<u32>,
        /// Layers in the model.
        n_layer: u32,
    },
    /// The spans do not form one chain from embedding to head.
    #[error("spans do not chain: {0}")]
    Gap(String),
    /// Temporary files could not be written.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Result of one generation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    /// Generated token ids (prompt excluded, end-of-generation token excluded).
    pub tokens: Vec<i32>,
    /// Generated text.
    pub text: String,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Time to process the prompt and sample the first token, in milliseconds.
    pub prefill_ms: f64,
    /// Prompt tokens per second.
    pub prefill_tokens_per_s: f64,
    /// Tokens per second over the steps after the first token.
    pub decode_tokens_per_s: f64,
    /// Number of spans in the chain.
    pub spans: usize,
}

/// Options of one generation.
#[derive(Debug, Clone, Copy)]
pub struct GenerateOptions {
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Sampling on the last span.
    pub sampling: SamplingParams,
    /// Encoding of hidden states between spans.
    pub dtype: ActivationDtype,
    /// Keep going past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { max_tokens: 32, sampling: SamplingParams::default(), dtype: ActivationDtype::F32, ignore_eos: false }
    }
}

/// `[0, cuts..., n_layer]`, after checking that the cuts increase and fall inside the model.
/// `10,20`, for messages.
fn comma_list(cuts: &[u32]) -> String {
    cuts.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn chain_bounds(cuts: &[u32], n_layer: u32) -> Result<Vec<u32>, ChainError> {
    let increasing = cuts.windows(2).all(|w| w[0] < w[1]);
    if !increasing || cuts.first().is_some_and(|c| *c == 0) || cuts.last().is_some_and(|c| *c >= n_layer) {
        return Err(ChainError::BadCuts { cuts: cuts.to_vec(), n_layer });
    }
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(n_layer);
    Ok(bounds)
}

/// Span engines that together cover a model, first to last.
pub struct LocalChain {
    engines: Vec<SpanEngine>,
    /// Keeps the span files alive while the chain may reload them.
    _dir: Option<tempfile::TempDir>,
}

impl LocalChain {
    /// Loads `model` whole (`cuts` empty) or sliced at `cuts` into `cuts.len() + 1` spans.
    pub fn from_model(model: &Path, cuts: &[u32], cfg: &EngineConfig) -> Result<Self, ChainError> {
        if cuts.is_empty() {
            return Self::from_spans(&[model.to_path_buf()], cfg);
        }
        let src = GgufFile::open(model)?;
        let bounds = chain_bounds(cuts, span::SpanPosition::of(&src)?.n_layer)?;
        let dir = tempfile::tempdir()?;
        let mut paths = Vec::new();
        for w in bounds.windows(2) {
            let path = dir.path().join(format!("span-{}-{}.gguf", w[0], w[1]));
            span::write_span(&src, w[0]..w[1], &path)?;
            paths.push(path);
        }
        let mut chain = Self::from_spans(&paths, cfg)?;
        chain._dir = Some(dir);
        Ok(chain)
    }

    /// Loads model `id` from the store, split at `cuts`, from span files assembled from its
    /// blobs (and cached in the store for the next run).
    pub fn from_store(
        store: &nak_shard_store::Store,
        id: &nak_shard_store::ModelId,
        cuts: &[u32],
        cfg: &EngineConfig,
    ) -> Result<Self, ChainError> {
        let n_layer = store.manifest(id).map_err(nak_shard_store::ImportError::from)?.n_layer;
        let bounds = chain_bounds(cuts, n_layer)?;
        let paths = bounds
            .windows(2)
            .map(|w| nak_shard_store::cached_span(store, id, w[0]..w[1]))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_spans(&paths, cfg)
    }

    /// Loads span files that must chain from the embedding to the head, in order.
    pub fn from_spans(paths: &[PathBuf], cfg: &EngineConfig) -> Result<Self, ChainError> {
        let engines = paths.iter().map(|p| SpanEngine::load(p, cfg.clone())).collect::<Result<Vec<_>, _>>()?;
        Self::from_engines(engines)
    }

    /// Wraps loaded engines after checking that they chain.
    pub fn from_engines(engines: Vec<SpanEngine>) -> Result<Self, ChainError> {
        let (Some(first), Some(last)) = (engines.first(), engines.last()) else {
            return Err(ChainError::Gap("no spans".into()));
        };
        if !first.span().has_embedding || first.span().first != 0 {
            return Err(ChainError::Gap("the first span does not start at the embedding".into()));
        }
        if !last.span().has_head {
            return Err(ChainError::Gap("the last span has no output head".into()));
        }
        for w in engines.windows(2) {
            let (a, b) = (w[0].span(), w[1].span());
            if a.first + a.n_layer != b.first || a.total != b.total {
                return Err(ChainError::Gap(format!(
                    "layers {}..{} are followed by {}..{}",
                    a.first,
                    a.first + a.n_layer,
                    b.first,
                    b.first + b.n_layer
                )));
            }
        }
        Ok(LocalChain { engines, _dir: None })
    }

    /// The engines, first to last.
    pub fn engines(&self) -> &[SpanEngine] {
        &self.engines
    }

    /// Tokenizes with the first span's vocabulary (special tokens added and parsed).
    pub fn tokenize(&self, text: &str) -> Result<Vec<i32>, ChainError> {
        Ok(self.engines[0].model().tokenize(text, true)?)
    }

    /// Generates from `prompt` (token ids).
    pub fn generate(&mut self, prompt: &[i32], opts: &GenerateOptions) -> Result<Generation, ChainError> {
        let scfg = SessionConfig { sampling: opts.sampling, dtype: opts.dtype, ..SessionConfig::default() };
        let mut sessions = Vec::with_capacity(self.engines.len());
        for e in &mut self.engines {
            match e.open_session(scfg.clone()) {
                Ok(id) => sessions.push(id),
                Err(err) => {
                    self.close(&sessions);
                    return Err(err.into());
                }
            }
        }
        let result = self.generate_in(&sessions, prompt, opts);
        self.close(&sessions);
        result
    }

    fn close(&mut self, sessions: &[SessionId]) {
        for (e, id) in self.engines.iter_mut().zip(sessions) {
            let _ = e.close_session(*id);
        }
    }

    /// One pass of `tokens` through every span; returns the sampled token. Every span
    /// learns the tokens, as hops do, so the last one's penalties see them.
    fn forward(&mut self, sessions: &[SessionId], tokens: Vec<i32>) -> Result<i32, ChainError> {
        let mut input = StepInput::Tokens(tokens.clone());
        for (e, id) in self.engines.iter_mut().zip(sessions) {
            let request = StepRequest { row_tokens: tokens.clone(), ..StepRequest::new(*id, input) };
            match e.step_request(request)? {
                // Through the wire format, exactly as a remote hop would receive it.
                StepOutput::Hidden(a) => {
                    input = StepInput::Hidden(Activation::from_bytes(&a.to_bytes()).map_err(EngineError::from)?)
                }
                StepOutput::Token { token, .. } => return Ok(token),
                StepOutput::Cached | StepOutput::Rows(_) => return Err(EngineError::NoOutput("token").into()),
            }
        }
        Err(ChainError::Gap("the last span returned a hidden state".into()))
    }

    fn generate_in(
        &mut self,
        sessions: &[SessionId],
        prompt: &[i32],
        opts: &GenerateOptions,
    ) -> Result<Generation, ChainError> {
        if prompt.is_empty() {
            return Err(EngineError::Input("empty prompt".into()).into());
        }
        let last = self.engines.len() - 1;
        let t0 = Instant::now();
        let mut tokens = Vec::with_capacity(opts.max_tokens);
        let mut next = if opts.max_tokens > 0 { Some(self.forward(sessions, prompt.to_vec())?) } else { None };
        let prefill = t0.elapsed();
        let t1 = Instant::now();
        while let Some(tok) = next.take() {
            if !opts.ignore_eos && self.engines[last].model().is_eog(tok) {
                break;
            }
            tokens.push(tok);
            if tokens.len() < opts.max_tokens {
                next = Some(self.forward(sessions, vec![tok])?);
            }
        }
        let decode = t1.elapsed();
        let mut text = Vec::new();
        for &t in &tokens {
            text.extend(self.engines[last].model().token_piece(t));
        }
        let steps_after_first = tokens.len().saturating_sub(1);
        Ok(Generation {
            prompt_tokens: prompt.len(),
            prefill_ms: prefill.as_secs_f64() * 1e3,
            prefill_tokens_per_s: prompt.len() as f64 / prefill.as_secs_f64().max(1e-9),
            decode_tokens_per_s: steps_after_first as f64 / decode.as_secs_f64().max(1e-9),
            text: String::from_utf8_lossy(&text).into_owned(),
            tokens,
            spans: self.engines.len(),
        })
    }
}

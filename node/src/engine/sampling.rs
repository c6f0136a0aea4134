//! Token sampling from logits, with llama.cpp's samplers (through llama-cpp-2).
//!
//! Temperature 0 is greedy (argmax, ties to the lowest id, as llama.cpp); otherwise
//! logits are divided by the temperature and a token is drawn with a seeded RNG, so
//! the same seed gives the same text.

use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;

/// How to pick the next token.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    /// 0 = greedy. Default 0.
    pub temperature: f32,
    /// Seed of the random draw when temperature > 0. Default 0.
    pub seed: u32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 0.0, seed: 0 }
    }
}

/// A stateful sampler (its RNG advances with each draw).
pub struct Sampler {
    inner: LlamaSampler,
}

impl Sampler {
    /// A sampler for `params`.
    pub fn new(params: &SamplingParams) -> Self {
        let inner = if params.temperature <= 0.0 || !params.temperature.is_finite() {
            LlamaSampler::greedy()
        } else {
            LlamaSampler::chain_simple([LlamaSampler::temp(params.temperature), LlamaSampler::dist(params.seed)])
        };
        Sampler { inner }
    }

    /// Picks a token from `logits` (one per vocabulary entry).
    pub fn sample(&mut self, logits: &[f32]) -> i32 {
        let mut data = LlamaTokenDataArray::from_iter(
            logits.iter().enumerate().map(|(i, &l)| LlamaTokenData::new(LlamaToken(i as i32), l, 0.0)),
            false,
        );
        self.inner.apply(&mut data);
        let token = data.selected_token().map_or(0, |t| t.0);
        self.inner.accept(LlamaToken(token));
        token
    }
}

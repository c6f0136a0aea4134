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
        self.sample_candidates(logits.iter().enumerate().map(|(i, &l)| (i as i32, l)))
    }

    /// Picks a token from some of the vocabulary: `(token, logit)` pairs, in token order
    /// where logits tie (greedy picks the first of equal logits).
    pub fn sample_candidates(&mut self, candidates: impl IntoIterator<Item = (i32, f32)>) -> i32 {
        let mut data = LlamaTokenDataArray::from_iter(
            candidates.into_iter().map(|(t, l)| LlamaTokenData::new(LlamaToken(t), l, 0.0)),
            false,
        );
        self.inner.apply(&mut data);
        let token = data.selected_token().map_or(0, |t| t.0);
        self.inner.accept(LlamaToken(token));
        token
    }
}

/// The `k` largest logits, largest first (ties: lower token first), with their
/// log-probabilities over the whole vocabulary.
pub fn top_logprobs(logits: &[f32], k: usize) -> Vec<(i32, f32, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    let k = k.min(logits.len());
    let by_logit = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
    if k > 0 && k < order.len() {
        order.select_nth_unstable_by(k - 1, by_logit);
        order.truncate(k);
    }
    order.sort_by(by_logit);
    order.into_iter().map(|i| (i as i32, logits[i] - log_sum, logits[i])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_logprobs_are_ordered_normalised_and_tie_to_the_lower_token() {
        let logits = [1.0, 3.0, 2.0, 3.0, -1.0];
        let top = top_logprobs(&logits, 3);
        let tokens: Vec<i32> = top.iter().map(|t| t.0).collect();
        assert_eq!(tokens, vec![1, 3, 2]);
        let all: f32 = top_logprobs(&logits, 5).iter().map(|t| t.1.exp()).sum();
        assert!((all - 1.0).abs() < 1e-5, "probabilities sum to {all}");
        // Greedy over the top-k picks what greedy over the whole vocabulary picks.
        let mut s = Sampler::new(&SamplingParams::default());
        assert_eq!(
            s.sample_candidates(top.iter().map(|t| (t.0, t.2))),
            Sampler::new(&SamplingParams::default()).sample(&logits)
        );
    }
}

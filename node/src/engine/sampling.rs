//! Token sampling from logits, with llama.cpp's samplers (through llama-cpp-2).
//!
//! The order is llama.cpp's: repetition penalties, then top-k, top-p, min-p,
//! temperature and a seeded draw; temperature 0 is greedy (argmax, ties to the lowest
//! id). Penalties look at the session's recent tokens, which the caller feeds in with
//! [`Sampler::accept`] as they enter the context (prompt tokens included, as llama.cpp's
//! tools do); sampling itself records nothing, so a token counts once it is fed back as
//! the next step's input, whoever sampled it.
//!
//! The penalties are a stage of their own ([`Sampler::penalize`]) so that a server can
//! apply them to the whole vocabulary before it sends a client its top logits, and the
//! client samples from those with the rest of the chain.

use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;

/// Most recent tokens a repetition penalty may look at.
pub const MAX_REPEAT_LAST_N: u32 = 1 << 16;

/// How to pick the next token: llama.cpp's samplers, under the names of its options
/// (also this program's command-line options). The defaults, in [`Default`] and on each
/// option, are plain greedy decoding with every filter and penalty off.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, clap::Args)]
pub struct SamplingParams {
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Seed of the random draw when temperature > 0.
    #[arg(long, default_value_t = 0)]
    pub seed: u32,
    /// Keep only the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    pub top_k: u32,
    /// Keep the fewest tokens whose probabilities add up to p (1 = all).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Drop tokens less likely than p × the most likely one (0 = none).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Penalty on tokens among the last --repeat-last-n, prompt included (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Subtracted from a recent token's logit once per occurrence (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Subtracted from a recent token's logit if it occurs at all (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// How many recent tokens the penalties look at (0 = none).
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: u32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            seed: 0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            repeat_last_n: 64,
        }
    }
}

impl SamplingParams {
    /// Checks the values (they may come from the network): finite, and each in its range.
    pub fn validate(&self) -> Result<(), String> {
        let finite = [self.temperature, self.top_p, self.min_p, self.repeat_penalty]
            .into_iter()
            .chain([self.frequency_penalty, self.presence_penalty])
            .all(f32::is_finite);
        if !finite {
            return Err("sampling parameters must be finite numbers".into());
        }
        if self.temperature < 0.0 {
            return Err("temperature must be at least 0".into());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err("top_p must be in (0, 1]".into());
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err("min_p must be in [0, 1]".into());
        }
        if self.repeat_penalty <= 0.0 {
            return Err("repeat_penalty must be above 0".into());
        }
        if self.repeat_last_n > MAX_REPEAT_LAST_N {
            return Err(format!("repeat_last_n is at most {MAX_REPEAT_LAST_N}"));
        }
        Ok(())
    }

    /// Whether any penalty is on.
    pub fn penalizes(&self) -> bool {
        self.repeat_last_n > 0
            && (self.repeat_penalty != 1.0 || self.frequency_penalty != 0.0 || self.presence_penalty != 0.0)
    }

    /// The same without penalties: what a client samples with after a server applied them.
    pub fn without_penalties(&self) -> Self {
        self.with_penalties_of(&Self::default())
    }

    /// These settings with `other`'s penalties.
    pub fn with_penalties_of(&self, other: &Self) -> Self {
        Self {
            repeat_penalty: other.repeat_penalty,
            frequency_penalty: other.frequency_penalty,
            presence_penalty: other.presence_penalty,
            repeat_last_n: other.repeat_last_n,
            ..*self
        }
    }
}

impl From<&nak_protocol::pb::Sampling> for SamplingParams {
    fn from(s: &nak_protocol::pb::Sampling) -> Self {
        Self {
            temperature: s.temperature,
            seed: s.seed,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            frequency_penalty: s.frequency_penalty,
            presence_penalty: s.presence_penalty,
            repeat_last_n: s.repeat_last_n,
        }
    }
}

impl From<SamplingParams> for nak_protocol::pb::Sampling {
    fn from(s: SamplingParams) -> Self {
        Self {
            temperature: s.temperature,
            seed: s.seed,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            frequency_penalty: s.frequency_penalty,
            presence_penalty: s.presence_penalty,
            repeat_last_n: s.repeat_last_n,
        }
    }
}

/// A stateful sampler: its RNG advances with each draw, its penalties remember the
/// tokens fed to [`Sampler::accept`].
pub struct Sampler {
    penalties: Option<LlamaSampler>,
    pick: LlamaSampler,
    /// Plain argmax: no candidate array is built (the common case, once per token).
    greedy: bool,
}

impl Sampler {
    /// A sampler for `params` (which should have passed [`SamplingParams::validate`]).
    pub fn new(params: &SamplingParams) -> Self {
        let penalties = penalty_stage(params);
        let greedy = params.temperature <= 0.0 || !params.temperature.is_finite();
        let pick = if greedy {
            LlamaSampler::greedy()
        } else {
            let mut chain = Vec::new();
            if params.top_k > 0 {
                chain.push(LlamaSampler::top_k(params.top_k.min(i32::MAX as u32) as i32));
            }
            if params.top_p < 1.0 {
                chain.push(LlamaSampler::top_p(params.top_p, 1));
            }
            if params.min_p > 0.0 {
                chain.push(LlamaSampler::min_p(params.min_p, 1));
            }
            chain.extend([LlamaSampler::temp(params.temperature), LlamaSampler::dist(params.seed)]);
            LlamaSampler::chain_simple(chain)
        };
        Sampler { penalties, pick, greedy }
    }

    /// Forgets the tokens the penalties saw (they are fed again from a shorter context);
    /// the draws go on.
    pub fn reset_penalties(&mut self, params: &SamplingParams) {
        if self.penalties.is_some() {
            self.penalties = penalty_stage(params);
        }
    }

    /// Records a token that entered the context (for the penalties).
    pub fn accept(&mut self, token: i32) {
        if let Some(p) = &mut self.penalties {
            p.accept(LlamaToken(token));
        }
    }

    /// Applies the penalties to `logits` (one per vocabulary entry) in place, so the
    /// caller can report the logits the token came from, and picks a token.
    pub fn sample(&mut self, logits: &mut [f32]) -> i32 {
        if self.greedy && self.penalties.is_none() {
            // llama.cpp's greedy sampler: the first of the largest logits.
            let mut best = 0;
            for (i, &l) in logits.iter().enumerate() {
                if l > logits[best] {
                    best = i;
                }
            }
            return best as i32;
        }
        let mut data = candidates(logits.iter().enumerate().map(|(i, &l)| (i as i32, l)));
        if let Some(p) = &mut self.penalties {
            p.apply(&mut data);
            for d in &data.data {
                if let Some(slot) = logits.get_mut(d.id().0 as usize) {
                    *slot = d.logit();
                }
            }
        }
        self.pick.apply(&mut data);
        data.selected_token().map_or(0, |t| t.0)
    }

    /// Picks a token from some of the vocabulary: `(token, logit)` pairs, in token order
    /// where logits tie (greedy picks the first of equal logits).
    pub fn sample_candidates(&mut self, pairs: impl IntoIterator<Item = (i32, f32)>) -> i32 {
        let mut data = candidates(pairs);
        if let Some(p) = &mut self.penalties {
            p.apply(&mut data);
        }
        self.pick.apply(&mut data);
        data.selected_token().map_or(0, |t| t.0)
    }
}

/// The penalties stage of `params`, if it penalizes anything.
fn penalty_stage(params: &SamplingParams) -> Option<LlamaSampler> {
    // llama.cpp keeps the penalties' counts in a map keyed by token; the vocabulary
    // size only bounds buffers of its on-device sampling, which is not used here.
    params.penalizes().then(|| {
        LlamaSampler::penalties(
            i32::MAX,
            params.repeat_last_n as i32,
            params.repeat_penalty,
            params.frequency_penalty,
            params.presence_penalty,
        )
    })
}

/// `token`'s log-probability over the whole vocabulary (NaN for a token out of range).
pub fn token_logprob(logits: &[f32], token: i32) -> f32 {
    usize::try_from(token).ok().and_then(|t| logits.get(t)).map_or(f32::NAN, |l| l - log_sum_exp(logits))
}

/// ln Σ exp(logits), computed without overflow.
fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln()
}

fn candidates(pairs: impl IntoIterator<Item = (i32, f32)>) -> LlamaTokenDataArray {
    LlamaTokenDataArray::from_iter(pairs.into_iter().map(|(t, l)| LlamaTokenData::new(LlamaToken(t), l, 0.0)), false)
}

/// The `k` largest logits, largest first (ties: lower token first), with their
/// log-probabilities over the whole vocabulary.
pub fn top_logprobs(logits: &[f32], k: usize) -> Vec<(i32, f32, f32)> {
    let log_sum = log_sum_exp(logits);
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
            Sampler::new(&SamplingParams::default()).sample(&mut logits.clone())
        );
    }

    #[test]
    fn a_repeat_penalty_moves_greedy_off_a_recent_token_and_reports_the_penalised_logits() {
        let logits = [1.0, 3.0, 2.9, 0.5];
        let params = SamplingParams { repeat_penalty: 1.5, ..SamplingParams::default() };
        let mut s = Sampler::new(&params);
        assert_eq!(s.sample(&mut logits.clone()), 1, "nothing recent yet");
        s.accept(1);
        let mut penalized = logits;
        assert_eq!(s.sample(&mut penalized), 2, "token 1 is penalised: 3.0 / 1.5 < 2.9");
        assert_eq!(penalized, [1.0, 2.0, 2.9, 0.5]);
        // A client sampling from penalised logits without penalties of its own agrees.
        let plain = params.without_penalties();
        assert!(!plain.penalizes());
        assert_eq!(
            Sampler::new(&plain).sample_candidates(penalized.iter().copied().enumerate().map(|(i, l)| (i as i32, l))),
            2
        );
        // Outside the window, the token is free again.
        let mut short = Sampler::new(&SamplingParams { repeat_last_n: 1, ..params });
        short.accept(1);
        short.accept(3);
        assert_eq!(short.sample(&mut logits.clone()), 1);
    }

    #[test]
    fn out_of_range_parameters_are_refused() {
        let ok = SamplingParams::default();
        assert!(ok.validate().is_ok());
        for bad in [
            SamplingParams { temperature: f32::NAN, ..ok },
            SamplingParams { temperature: -1.0, ..ok },
            SamplingParams { top_p: 0.0, ..ok },
            SamplingParams { min_p: 2.0, ..ok },
            SamplingParams { repeat_penalty: 0.0, ..ok },
            SamplingParams { presence_penalty: f32::INFINITY, ..ok },
            SamplingParams { repeat_last_n: MAX_REPEAT_LAST_N + 1, ..ok },
        ] {
            assert!(bad.validate().is_err(), "{bad:?} passed");
        }
    }
}

//! Fault injection, a testing aid for verification: a span engine that computes wrong
//! outputs on purpose, for a fraction of its steps, while everything else about it
//! (receipts included) behaves as an honest server's. Off unless configured; `run`
//! reads it from `NAK_FAULT_CORRUPT` (the fraction of steps) and `NAK_FAULT_MODE`.
//!
//! The corruption happens where a lying server would make it: on the hidden state a
//! step returns, or on the logits before the token is drawn from them, so what the
//! server sends and what it signs agree and only a replay shows the lie.

use std::ops::Range;

/// The environment variable with the fraction of steps to corrupt (0 to 1).
pub const FAULT_RATE_ENV: &str = "NAK_FAULT_CORRUPT";
/// The environment variable with how to corrupt them ([`FaultMode`]; default bitflip).
pub const FAULT_MODE_ENV: &str = "NAK_FAULT_MODE";

/// How a faulty step is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultMode {
    /// The lowest mantissa bit of one value flipped: the smallest possible lie.
    #[default]
    Bitflip,
    /// Small noise (up to ±1 %) added to every value: a cheaper quantization's kind of error.
    Noise,
    /// Every value zeroed.
    Zero,
    /// One layer of the span skipped (the last for a span that returns hidden states,
    /// the first for one that returns logits from hidden input); a span of one layer,
    /// or a whole model, gets a bit flipped instead.
    SkipLayer,
}

impl std::str::FromStr for FaultMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bitflip" => Ok(Self::Bitflip),
            "noise" => Ok(Self::Noise),
            "zero" => Ok(Self::Zero),
            "skip-layer" => Ok(Self::SkipLayer),
            other => Err(format!("{other}: expected bitflip, noise, zero or skip-layer")),
        }
    }
}

/// Which steps go wrong, and how. The default corrupts nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Fault {
    /// Fraction of steps corrupted, 0 to 1.
    pub rate: f64,
    /// How.
    pub mode: FaultMode,
}

impl Fault {
    /// The fault the environment asks for (none when `NAK_FAULT_CORRUPT` is unset).
    pub fn from_env() -> Result<Self, String> {
        let Ok(rate) = std::env::var(FAULT_RATE_ENV) else { return Ok(Self::default()) };
        let rate: f64 = rate.parse().map_err(|_| format!("{FAULT_RATE_ENV}={rate}: expected a fraction 0 to 1"))?;
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!("{FAULT_RATE_ENV}={rate}: expected a fraction 0 to 1"));
        }
        let mode = match std::env::var(FAULT_MODE_ENV) {
            Ok(m) => m.parse()?,
            Err(_) => FaultMode::default(),
        };
        Ok(Self { rate, mode })
    }

    /// Whether the fault is on at all.
    pub fn active(&self) -> bool {
        self.rate > 0.0
    }

    /// Whether the next step is to be corrupted.
    pub(super) fn strikes(&self) -> bool {
        self.active() && rand::random::<f64>() < self.rate
    }

    /// In skip-layer mode, the layers a faulty step runs instead of `layers` (see
    /// [`FaultMode::SkipLayer`]); none when no layer can be left out.
    pub(super) fn skip_layer(&self, layers: &Range<u32>, emit_hidden: bool, tokens: bool) -> Option<Range<u32>> {
        if self.mode != FaultMode::SkipLayer || layers.len() < 2 {
            return None;
        }
        match (emit_hidden, tokens) {
            (true, _) => Some(layers.start..layers.end - 1),
            (false, false) => Some(layers.start + 1..layers.end),
            (false, true) => None,
        }
    }

    /// Corrupts a step's output values (hidden states, or logits before sampling).
    pub(super) fn corrupt(&self, values: &mut [f32]) {
        if values.is_empty() {
            return;
        }
        match self.mode {
            FaultMode::Bitflip | FaultMode::SkipLayer => {
                let i = rand::random::<u64>() as usize % values.len();
                values[i] = f32::from_bits(values[i].to_bits() ^ 1);
            }
            FaultMode::Noise => {
                for v in values.iter_mut() {
                    *v *= 1.0 + (rand::random::<f32>() - 0.5) * 0.02;
                }
            }
            FaultMode::Zero => values.fill(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_changes_the_output_and_the_default_changes_nothing() {
        assert!(!Fault::default().strikes());
        let honest: Vec<f32> = (1..=64).map(|i| i as f32 * 0.37).collect();
        for mode in [FaultMode::Bitflip, FaultMode::Noise, FaultMode::Zero, FaultMode::SkipLayer] {
            let fault = Fault { rate: 1.0, mode };
            assert!(fault.strikes());
            let mut out = honest.clone();
            fault.corrupt(&mut out);
            assert_ne!(out, honest, "{mode:?}");
        }
        let skip = Fault { rate: 1.0, mode: FaultMode::SkipLayer };
        assert_eq!(skip.skip_layer(&(4..8), true, false), Some(4..7));
        assert_eq!(skip.skip_layer(&(4..8), false, false), Some(5..8));
        assert_eq!(skip.skip_layer(&(0..8), false, true), None);
        assert_eq!(skip.skip_layer(&(4..5), true, false), None);
        assert_eq!("skip-layer".parse(), Ok(FaultMode::SkipLayer));
        assert!("other".parse::<FaultMode>().is_err());
    }
}

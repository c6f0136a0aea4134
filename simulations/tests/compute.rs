//! The modelled compute is an exact model: spans compose, caches truncate and rebuild,
//! and the failure-free reference is what a chain of spans generates.

use std::time::Duration;

use nak_node::engine::{Compute, ComputeLoader, EngineConfig, SessionConfig, StepInput, StepOutput, StepRequest};
use nak_protocol::{Activation, ActivationDtype};
use nak_shard_store::{write_synthetic, SynthConfig};
use nak_simulations::compute::{reference_tokens, DeviceProfile, ModelledLoader};

const N_LAYER: u32 = 12;
const N_VOCAB: u32 = 512;

/// Spans of a 12-layer synthetic model cut at `cuts`, loaded as modelled computes.
fn spans(dir: &std::path::Path, cuts: &[u32]) -> Vec<Box<dyn Compute>> {
    std::fs::create_dir_all(dir).unwrap();
    let model = dir.join("m.gguf");
    let cfg = SynthConfig { n_layer: N_LAYER, n_vocab: N_VOCAB, ..SynthConfig::default() };
    write_synthetic(&cfg, &model).unwrap();
    let store = nak_shard_store::Store::open(dir.join("store")).unwrap();
    let id = nak_shard_store::import_gguf(&store, &model, &mut |_| {}).unwrap().model_id;
    let profile = DeviceProfile { per_layer: Duration::ZERO, per_row_layer: Duration::ZERO, speed: 1.0 };
    let loader = ModelledLoader { profile, n_embd: cfg.n_embd, n_vocab: N_VOCAB };
    cuts.windows(2)
        .map(|w| {
            let path = nak_shard_store::cached_span(&store, &id, w[0]..w[1]).unwrap();
            loader.load(&path, &EngineConfig::default()).unwrap()
        })
        .collect()
}

/// Runs `tokens` through the chain from `position`, returning the token the last span picks.
fn step_chain(chain: &mut [Box<dyn Compute>], sessions: &[u64], tokens: &[i32], dtype: ActivationDtype) -> i32 {
    let mut input = StepInput::Tokens(tokens.to_vec());
    for (span, &s) in chain.iter_mut().zip(sessions) {
        match span.step_batch(vec![StepRequest::new(s, input)]).pop().unwrap().unwrap() {
            StepOutput::Hidden(a) => {
                // Through the wire encoding the session chose.
                let rows = a.decode(a.width).unwrap();
                input = StepInput::Hidden(Activation::encode(&rows, a.width, dtype).unwrap());
            }
            StepOutput::Token { token, .. } => return token,
            StepOutput::Cached | StepOutput::Rows(_) => panic!("a one-row sampling step returned no token"),
        }
    }
    panic!("the chain has no head")
}

fn generate(chain: &mut [Box<dyn Compute>], prompt: &[i32], n: usize, dtype: ActivationDtype) -> Vec<i32> {
    let sessions: Vec<u64> = chain.iter_mut().map(|c| c.open_session(SessionConfig::default()).unwrap()).collect();
    let mut out = vec![step_chain(chain, &sessions, prompt, dtype)];
    while out.len() < n {
        let last = *out.last().unwrap();
        out.push(step_chain(chain, &sessions, &[last], dtype));
    }
    out
}

#[test]
fn any_cut_of_the_model_generates_the_reference_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let prompt: Vec<i32> = (300..316).collect();
    let want = reference_tokens(N_LAYER, N_VOCAB, &prompt, 20);
    assert!(want.iter().all(|&t| (300..N_VOCAB as i32).contains(&t)), "{want:?}");
    assert!(want.windows(2).any(|w| w[0] != w[1]), "a constant sequence proves little: {want:?}");
    for (cuts, dtype) in [
        (vec![0, N_LAYER], ActivationDtype::F32),
        (vec![0, 5, N_LAYER], ActivationDtype::F16),
        (vec![0, 1, 7, 11, N_LAYER], ActivationDtype::Bf16),
    ] {
        let mut chain = spans(&dir.path().join(format!("{cuts:?}")), &cuts);
        assert_eq!(generate(&mut chain, &prompt, 20, dtype), want, "cut at {cuts:?}");
    }
    // Another prompt, other tokens.
    let other: Vec<i32> = (301..317).collect();
    assert_ne!(reference_tokens(N_LAYER, N_VOCAB, &other, 20), want);
}

#[test]
fn a_truncated_cache_rebuilds_to_the_same_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mut chain = spans(dir.path(), &[0, 6, N_LAYER]);
    let prompt: Vec<i32> = (400..410).collect();
    let sessions: Vec<u64> = chain.iter_mut().map(|c| c.open_session(SessionConfig::default()).unwrap()).collect();
    let first = step_chain(&mut chain, &sessions, &prompt, ActivationDtype::F32);
    // Drop the last four positions everywhere, then feed them again: the same token.
    for (span, &s) in chain.iter_mut().zip(&sessions) {
        span.truncate(s, 6).unwrap();
    }
    let again = step_chain(&mut chain, &sessions, &prompt[6..], ActivationDtype::F32);
    assert_eq!(first, again);
    // A session that skips a position gives another token: the cache matters.
    let other: Vec<u64> = chain.iter_mut().map(|c| c.open_session(SessionConfig::default()).unwrap()).collect();
    assert_ne!(step_chain(&mut chain, &other, &prompt[1..], ActivationDtype::F32), first);
}

#[test]
fn bad_input_is_refused_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut chain = spans(dir.path(), &[0, 6, N_LAYER]);
    let s0 = chain[0].open_session(SessionConfig::default()).unwrap();
    let s1 = chain[1].open_session(SessionConfig::default()).unwrap();
    let out_of_vocab = chain[0].step(s0, StepInput::Tokens(vec![N_VOCAB as i32])).unwrap_err();
    assert!(out_of_vocab.to_string().contains("vocabulary"), "{out_of_vocab}");
    assert!(chain[0].step(s0, StepInput::Tokens(vec![])).is_err());
    let hidden = Activation::encode(&[0.5; 64], 64, ActivationDtype::F32).unwrap();
    assert!(chain[0].step(s0, StepInput::Hidden(hidden)).is_err(), "the first span takes tokens");
    assert!(chain[1].step(s1, StepInput::Tokens(vec![300])).is_err(), "a later span takes hidden states");
    assert!(chain[1].step(99, StepInput::Tokens(vec![300])).is_err(), "unknown session");
    let later = SessionConfig { layers: Some(0..7), ..SessionConfig::default() };
    assert!(chain[0].open_session(later).is_err(), "layers beyond the span");
}

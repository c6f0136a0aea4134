//! Chains of spans of synthetic models give exactly what one llama.cpp context gives.

mod common;

use common::{chain_prompt_logits, small_synth, span_engines, synth_model, test_engine_config};
use nak_node::chain::{GenerateOptions, LocalChain};
use nak_node::engine::{SessionConfig, SpanEngine, StepInput, StepOutput, StepRequest};
use nak_node::reference::ReferenceModel;
use nak_protocol::ActivationDtype;
use nak_shard_store::{SynthConfig, TensorType};

const PROMPTS: [&str; 3] = ["hello world", "the quick brown fox jumps over", "a"];
const N_TOKENS: usize = 12;

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions { max_tokens, ignore_eos: true, ..GenerateOptions::default() }
}

#[test]
fn chains_reproduce_the_whole_model_for_any_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let model = small_synth(dir.path());
    let cfg = test_engine_config();
    let reference = ReferenceModel::load(&model).unwrap();
    let expected: Vec<Vec<i32>> = PROMPTS
        .iter()
        .map(|p| reference.generate_greedy(&reference.tokenize(p), N_TOKENS, true, &cfg).unwrap().tokens)
        .collect();
    assert!(expected.iter().all(|t| t.len() == N_TOKENS));

    for cuts in [vec![], vec![3], vec![2, 4], vec![1, 2, 5], vec![1, 2, 3, 4, 5]] {
        let mut chain = LocalChain::from_model(&model, &cuts, &cfg).unwrap();
        assert_eq!(chain.engines().len(), cuts.len() + 1);
        for (prompt, want) in PROMPTS.iter().zip(&expected) {
            let tokens = chain.tokenize(prompt).unwrap();
            assert_eq!(tokens, reference.tokenize(prompt));
            let got = chain.generate(&tokens, &greedy(N_TOKENS)).unwrap();
            assert_eq!(&got.tokens, want, "cuts {cuts:?}, prompt {prompt:?}");
        }
    }
}

#[test]
fn chain_logits_are_bit_identical_to_the_whole_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = small_synth(dir.path());
    let cfg = test_engine_config();
    let reference = ReferenceModel::load(&model).unwrap();
    let mut engines = span_engines(dir.path(), &model, &[(0, 1), (1, 4), (4, 6)], &cfg);
    for prompt in PROMPTS {
        let tokens = reference.tokenize(prompt);
        let want = reference.prompt_logits(&tokens, &cfg).unwrap();
        let got = chain_prompt_logits(&mut engines, &tokens);
        assert_eq!(want.len(), 400);
        assert!(want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "logits differ for {prompt:?}");
    }
}

#[test]
fn tied_embedding_head_works_on_the_last_span() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(
        dir.path(),
        &SynthConfig {
            n_layer: 4,
            tied_embedding: true,
            weight_type: TensorType::F16,
            seed: 3,
            ..SynthConfig::default()
        },
    );
    let cfg = test_engine_config();
    let reference = ReferenceModel::load(&model).unwrap();
    let prompt = reference.tokenize("tied heads");
    let want = reference.generate_greedy(&prompt, N_TOKENS, true, &cfg).unwrap().tokens;
    let mut chain = LocalChain::from_model(&model, &[1, 3], &cfg).unwrap();
    assert_eq!(chain.generate(&prompt, &greedy(N_TOKENS)).unwrap().tokens, want);
}

/// Runs every prompt through `stages` (each a list of (engine index, layers)) with all
/// sessions of a stage stepped in one `step_batch`, and returns each prompt's tokens.
fn run_batched(
    engines: &mut [SpanEngine],
    stages: &[(usize, Option<std::ops::Range<u32>>)],
    prompts: &[Vec<i32>],
) -> Vec<Vec<i32>> {
    let sessions: Vec<Vec<u64>> = stages
        .iter()
        .map(|(e, layers)| {
            prompts
                .iter()
                .map(|_| {
                    engines[*e]
                        .open_session(SessionConfig { layers: layers.clone(), ..SessionConfig::default() })
                        .unwrap()
                })
                .collect()
        })
        .collect();
    let mut inputs: Vec<StepInput> = prompts.iter().map(|p| StepInput::Tokens(p.clone())).collect();
    let mut out = vec![Vec::new(); prompts.len()];
    for _ in 0..N_TOKENS {
        for (stage, (e, _)) in stages.iter().enumerate() {
            let requests = inputs
                .drain(..)
                .zip(&sessions[stage])
                .map(|(input, &session)| StepRequest::new(session, input))
                .collect();
            for (i, result) in engines[*e].step_batch(requests).into_iter().enumerate() {
                match result.unwrap() {
                    StepOutput::Hidden(a) => inputs.push(StepInput::Hidden(a)),
                    StepOutput::Token { token, .. } => {
                        out[i].push(token);
                        inputs.push(StepInput::Tokens(vec![token]));
                    }
                    StepOutput::Cached | StepOutput::Rows(_) => panic!("a one-row step returned no token"),
                }
            }
        }
    }
    out
}

#[test]
fn sessions_on_sub_ranges_of_one_span_chain_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let model = small_synth(dir.path());
    let cfg = test_engine_config();
    let reference = ReferenceModel::load(&model).unwrap();
    let prompts: Vec<Vec<i32>> = PROMPTS.iter().map(|p| reference.tokenize(p)).collect();
    let want: Vec<Vec<i32>> =
        prompts.iter().map(|p| reference.generate_greedy(p, N_TOKENS, true, &cfg).unwrap().tokens).collect();

    // One engine holding all six layers; three sessions per prompt run 0..2, 2..5 and 5..6.
    let mut engines =
        vec![SpanEngine::load(&model, nak_node::engine::EngineConfig { max_sessions: 12, ..cfg.clone() }).unwrap()];
    let stages = [(0, Some(0..2)), (0, Some(2..5)), (0, Some(5..6))];
    assert_eq!(run_batched(&mut engines, &stages, &prompts), want);

    // The hidden state of a sub-range equals that of a real span file with the same layers.
    let mut span_engine = span_engines(dir.path(), &model, &[(0, 2)], &cfg).remove(0);
    let s1 = span_engine.open_session(SessionConfig::default()).unwrap();
    let s2 = engines[0].open_session(SessionConfig { layers: Some(0..2), ..SessionConfig::default() }).unwrap();
    let a = span_engine.step(s1, StepInput::Tokens(prompts[1].clone())).unwrap();
    let b = engines[0].step(s2, StepInput::Tokens(prompts[1].clone())).unwrap();
    match (a, b) {
        (StepOutput::Hidden(a), StepOutput::Hidden(b)) => {
            assert_eq!(a.n_rows as usize, prompts[1].len());
            assert_eq!(a, b);
        }
        other => panic!("expected hidden states, got {other:?}"),
    }
}

#[test]
fn batched_sessions_give_what_each_gives_alone() {
    let dir = tempfile::tempdir().unwrap();
    let model = small_synth(dir.path());
    let cfg = test_engine_config();
    let reference = ReferenceModel::load(&model).unwrap();
    let prompts: Vec<Vec<i32>> = PROMPTS.iter().map(|p| reference.tokenize(p)).collect();

    // Alone: one prompt at a time through a 3-span chain.
    let mut chain = LocalChain::from_model(&model, &[2, 4], &cfg).unwrap();
    let alone: Vec<Vec<i32>> = prompts.iter().map(|p| chain.generate(p, &greedy(N_TOKENS)).unwrap().tokens).collect();

    // Together: the same spans, every stage decoding all three sessions in one batch.
    let mut engines = span_engines(dir.path(), &model, &[(0, 2), (2, 4), (4, 6)], &cfg);
    let together = run_batched(&mut engines, &[(0, None), (1, None), (2, None)], &prompts);
    assert_eq!(together, alone);
}

#[test]
fn half_precision_wire_still_generates() {
    let dir = tempfile::tempdir().unwrap();
    let model = small_synth(dir.path());
    let mut chain = LocalChain::from_model(&model, &[3], &test_engine_config()).unwrap();
    let prompt = chain.tokenize("hello").unwrap();
    let exact = chain.generate(&prompt, &greedy(N_TOKENS)).unwrap();
    let half = chain.generate(&prompt, &GenerateOptions { dtype: ActivationDtype::F16, ..greedy(N_TOKENS) }).unwrap();
    assert_eq!(half.tokens.len(), N_TOKENS);
    // f16 rounding may change late tokens of a random model, but not the first.
    assert_eq!(half.tokens[0], exact.tokens[0]);
}

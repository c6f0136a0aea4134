//! Every splittable architecture, span by span, exactly: a synthetic model of each
//! (with the parts that set it apart: QKV biases, q/k norms, experts, post-norms and a
//! sliding window with global layers, fused QKV) cut at every layer boundary gives the
//! whole model's logits bit for bit and its greedy tokens; and what cannot run is refused.

mod common;

use common::{chain_prompt_logits, span_engines, synth_model, test_engine_config};
use nak_node::chain::{GenerateOptions, LocalChain};
use nak_node::engine::{EngineConfig, EngineError, SessionConfig, SpanEngine, StepInput, StepOutput};
use nak_node::reference::ReferenceModel;
use nak_shard_store::gguf::{GgufWriter, TensorSource, Value};
use nak_shard_store::{span, GgufFile, SpanError, SynthArch, SynthConfig};

/// Long enough to be more than 4 sliding windows (8 positions) of the gemma3 model.
const PROMPT: &str = "the quick brown fox jumps over the lazy dog while seven wizards quietly box the jumping frogs";
const N_TOKENS: usize = 16;
const WINDOW: u32 = 8;

/// A small model of `arch`; gemma3 gets 13 layers so that its global layers (5, 11)
/// fall inside spans of many shapes.
fn model_of(dir: &std::path::Path, arch: SynthArch) -> std::path::PathBuf {
    let n_layer = if arch == SynthArch::Gemma3 { 13 } else { 6 };
    synth_model(
        dir,
        &SynthConfig {
            arch,
            n_layer,
            n_embd: 64,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 96,
            n_vocab: 400,
            sliding_window: WINDOW,
            seed: 11,
            ..SynthConfig::default()
        },
    )
}

/// The tests' engine settings, with batches that take the whole prompt.
fn test_config() -> EngineConfig {
    EngineConfig { max_batch_rows: 128, ..test_engine_config() }
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Every two-span cut and a three-span split of `arch` against the whole model.
fn splits_equal_the_whole_model(arch: SynthArch) {
    let dir = tempfile::tempdir().unwrap();
    let model = model_of(dir.path(), arch);
    let n = GgufFile::open(&model).map(|f| span::SpanPosition::of(&f).unwrap().n_layer).unwrap();
    let cfg = test_config();
    let reference = ReferenceModel::load(&model).unwrap();
    let prompt = reference.tokenize(PROMPT);
    assert!(prompt.len() >= 4 * WINDOW as usize, "{} prompt tokens", prompt.len());
    let want_logits = reference.prompt_logits(&prompt, &cfg).unwrap();
    let want_tokens = reference.generate_greedy(&prompt, N_TOKENS, true, &cfg).unwrap().tokens;
    assert_eq!(want_tokens.len(), N_TOKENS);

    let three = if n > 6 { vec![2, 7] } else { vec![1, 4] };
    let splits = (1..n).map(|k| vec![k]).chain([three]);
    for cuts in splits {
        let bounds: Vec<u32> = std::iter::once(0).chain(cuts.iter().copied()).chain([n]).collect();
        let ranges: Vec<(u32, u32)> = bounds.windows(2).map(|w| (w[0], w[1])).collect();
        let sub = dir.path().join(format!("cut-{}", cuts.iter().map(u32::to_string).collect::<Vec<_>>().join("-")));
        std::fs::create_dir_all(&sub).unwrap();
        let mut engines = span_engines(&sub, &model, &ranges, &cfg);
        let got = chain_prompt_logits(&mut engines, &prompt);
        assert!(same_bits(&got, &want_logits), "{arch}: logits differ with cuts {cuts:?}");

        let mut chain = LocalChain::from_model(&model, &cuts, &cfg).unwrap();
        let greedy = GenerateOptions { max_tokens: N_TOKENS, ignore_eos: true, ..GenerateOptions::default() };
        assert_eq!(chain.generate(&prompt, &greedy).unwrap().tokens, want_tokens, "{arch}: tokens, cuts {cuts:?}");
    }
}

#[test]
fn llama_splits_equal_the_whole_model() {
    splits_equal_the_whole_model(SynthArch::Llama);
}

#[test]
fn qwen2_splits_equal_the_whole_model() {
    splits_equal_the_whole_model(SynthArch::Qwen2);
}

#[test]
fn qwen3_splits_equal_the_whole_model() {
    splits_equal_the_whole_model(SynthArch::Qwen3);
}

#[test]
fn qwen3moe_splits_equal_the_whole_model() {
    splits_equal_the_whole_model(SynthArch::Qwen3Moe);
}

#[test]
fn gemma3_splits_equal_the_whole_model() {
    splits_equal_the_whole_model(SynthArch::Gemma3);
}

#[test]
fn phi3_splits_equal_the_whole_model() {
    splits_equal_the_whole_model(SynthArch::Phi3);
}

#[test]
fn a_gemma3_27b_shape_keeps_its_attention_scale_in_spans() {
    // 62 layers make llama.cpp take a Gemma 3 for the 27B, whose attention scale is
    // 1/√(n_embd/n_head), not 1/√head_dim; a span of 31 layers must keep it.
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        arch: SynthArch::Gemma3,
        n_layer: 62,
        n_embd: 64,
        n_head: 4,
        n_head_kv: 2,
        n_ff: 64,
        n_vocab: 400,
        head_dim: Some(32),
        seed: 5,
        ..SynthConfig::default()
    };
    let model = synth_model(dir.path(), &cfg);
    let test_cfg = test_config();
    let reference = ReferenceModel::load(&model).unwrap();
    let prompt = reference.tokenize(PROMPT);
    let want = reference.prompt_logits(&prompt, &test_cfg).unwrap();
    let mut engines = span_engines(dir.path(), &model, &[(0, 31), (31, 62)], &test_cfg);
    assert!(same_bits(&chain_prompt_logits(&mut engines, &prompt), &want), "logits differ");
}

#[test]
fn mistral3_splits_equal_the_whole_model() {
    splits_equal_the_whole_model(SynthArch::Mistral3);
}

#[test]
fn sub_ranges_of_one_loaded_model_equal_span_files() {
    for arch in SynthArch::ALL {
        let dir = tempfile::tempdir().unwrap();
        let model = model_of(dir.path(), arch);
        let cfg = test_config();
        let prompt = ReferenceModel::load(&model).unwrap().tokenize(PROMPT);
        let mut whole = SpanEngine::load(&model, cfg.clone()).unwrap();
        let mut first = span_engines(dir.path(), &model, &[(0, 3)], &cfg).remove(0);
        let s1 = whole.open_session(SessionConfig { layers: Some(0..3), ..SessionConfig::default() }).unwrap();
        let s2 = first.open_session(SessionConfig::default()).unwrap();
        let a = whole.step(s1, StepInput::Tokens(prompt.clone())).unwrap();
        let b = first.step(s2, StepInput::Tokens(prompt.clone())).unwrap();
        match (a, b) {
            (StepOutput::Hidden(a), StepOutput::Hidden(b)) => {
                assert_eq!(a, b, "{arch}: layers 0..3 of the whole model differ from the span file 0:3")
            }
            other => panic!("{arch}: expected hidden states, got {other:?}"),
        }
    }
}

#[test]
fn a_gemma3_span_of_only_global_layers_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_of(dir.path(), SynthArch::Gemma3);
    let src = GgufFile::open(&model).unwrap();
    // Layer 5 is global (every sixth layer); 4:6 holds a sliding-window layer too.
    let err = span::write_span(&src, 5..6, &dir.path().join("global.gguf")).unwrap_err();
    assert!(matches!(err, SpanError::OnlyGlobalLayers { start: 5, end: 6 }), "{err}");
    assert!(err.to_string().contains("sliding-window"), "{err}");
    span::write_span(&src, 4..6, &dir.path().join("mixed.gguf")).unwrap();
    SpanEngine::load(&dir.path().join("mixed.gguf"), test_config()).unwrap();
}

/// Rewrites a span file as another architecture (keys renamed), bypassing the planner.
fn as_architecture(src: &std::path::Path, arch: &str, out: &std::path::Path) {
    let file = GgufFile::open(src).unwrap();
    let old = file.architecture().unwrap().to_string();
    let metadata: Vec<(String, Value)> = file
        .metadata
        .iter()
        .map(|(k, v)| match (k.as_str(), k.strip_prefix(&format!("{old}."))) {
            ("general.architecture", _) => (k.clone(), Value::String(arch.into())),
            (_, Some(rest)) => (format!("{arch}.{rest}"), v.clone()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let sources = file
        .tensors
        .iter()
        .map(|t| {
            let (info, file) = (t.clone(), &file);
            TensorSource { info: t.clone(), write: Box::new(move |w| file.copy_tensor_data(&info, w).map(|_| ())) }
        })
        .collect();
    GgufWriter::with_alignment(file.alignment).write(out, &metadata, sources).unwrap();
}

#[test]
fn architectures_outside_the_allow_list_are_refused_as_spans_but_run_whole() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_of(dir.path(), SynthArch::Llama);
    let src = GgufFile::open(&model).unwrap();
    let renamed = dir.path().join("other.gguf");
    as_architecture(&model, "starcoder2", &renamed);
    let other = GgufFile::open(&renamed).unwrap();
    let err = span::write_span(&other, 1..3, &dir.path().join("other-span.gguf")).unwrap_err();
    assert!(matches!(&err, SpanError::Unsplittable { arch } if arch == "starcoder2"), "{err}");

    // A span file of it made some other way is refused at load, with the reason.
    let llama_span = dir.path().join("llama-span.gguf");
    span::write_span(&src, 1..3, &llama_span).unwrap();
    let forged = dir.path().join("forged-span.gguf");
    as_architecture(&llama_span, "starcoder2", &forged);
    match SpanEngine::load(&forged, test_engine_config()) {
        Err(EngineError::Load(msg)) => assert!(msg.contains("cannot be split"), "{msg}"),
        other => panic!("a span of an unsplittable architecture loaded: {:?}", other.map(|_| ())),
    }
}

#[test]
fn token_ids_sent_to_a_span_without_the_embedding_are_refused() {
    for arch in [SynthArch::Gemma3, SynthArch::Qwen2] {
        let dir = tempfile::tempdir().unwrap();
        let model = model_of(dir.path(), arch);
        let mut engines = span_engines(dir.path(), &model, &[(2, 6)], &test_engine_config());
        let s = engines[0].open_session(SessionConfig::default()).unwrap();
        let err = engines[0].step(s, StepInput::Tokens(vec![5, 6, 7])).unwrap_err();
        assert!(matches!(err, EngineError::Input(_)), "{arch}: {err}");
    }
}

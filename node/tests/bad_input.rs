//! Bad input gets a clear error and leaves the engine working.

mod common;

use common::{small_synth, span_engines, test_engine_config};
use nak_node::engine::{EngineConfig, EngineError, SessionConfig, SpanEngine, StepInput, StepOutput, StepRequest};
use nak_protocol::{Activation, ActivationDtype, ActivationError};
use nak_shard_store::gguf::TensorSource;
use nak_shard_store::{span, GgufFile, GgufWriter};

fn spans(dir: &std::path::Path) -> (SpanEngine, SpanEngine) {
    let model = small_synth(dir);
    let mut engines = span_engines(dir, &model, &[(0, 2), (2, 4)], &test_engine_config());
    let middle = engines.pop().unwrap();
    (engines.pop().unwrap(), middle)
}

fn hidden_of(engine: &mut SpanEngine, tokens: &[i32]) -> Activation {
    let s = engine.open_session(SessionConfig::default()).unwrap();
    let out = engine.step(s, StepInput::Tokens(tokens.to_vec())).unwrap();
    engine.close_session(s).unwrap();
    match out {
        StepOutput::Hidden(a) => a,
        other => panic!("expected a hidden state, got {other:?}"),
    }
}

#[test]
fn span_file_missing_a_tensor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = small_synth(dir.path());
    let src = GgufFile::open(&model).unwrap();
    let span_path = dir.path().join("span.gguf");
    span::write_span(&src, 2..4, &span_path).unwrap();
    let span_file = GgufFile::open(&span_path).unwrap();
    let broken = dir.path().join("broken.gguf");
    let sources = span_file
        .tensors
        .iter()
        .filter(|t| t.name != "blk.1.ffn_up.weight")
        .map(|t| {
            let t = t.clone();
            let f = &span_file;
            TensorSource { info: t.clone(), write: Box::new(move |w| f.copy_tensor_data(&t, w).map(|_| ())) }
        })
        .collect();
    GgufWriter::default().write(&broken, &span_file.metadata, sources).unwrap();
    match SpanEngine::load(&broken, test_engine_config()) {
        Err(EngineError::Load(msg)) => assert!(msg.contains("could not load"), "{msg}"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a span without blk.1.ffn_up loaded"),
    }
    // Truncated and garbage files are caught before llama.cpp sees them.
    let bytes = std::fs::read(&span_path).unwrap();
    std::fs::write(&broken, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(SpanEngine::load(&broken, test_engine_config()), Err(EngineError::Load(_))));
    std::fs::write(&broken, b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff").unwrap();
    assert!(matches!(SpanEngine::load(&broken, test_engine_config()), Err(EngineError::Load(_))));
    // The good span still loads in the same process.
    SpanEngine::load(&span_path, test_engine_config()).unwrap();
}

#[test]
fn bad_hidden_states_are_rejected_and_the_engine_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut first, mut middle) = spans(dir.path());
    let good = hidden_of(&mut first, &[1, 40, 41, 42]);
    let s = middle.open_session(SessionConfig::default()).unwrap();

    let narrow = Activation::encode(&vec![0.5; 4 * 32], 32, ActivationDtype::F32).unwrap();
    assert!(matches!(
        middle.step(s, StepInput::Hidden(narrow)),
        Err(EngineError::Activation(ActivationError::Width { got: 32, expected: 64 }))
    ));

    let mut mislabelled = good.clone();
    mislabelled.dtype = ActivationDtype::F16; // f32 bytes under an f16 label
    assert!(matches!(
        middle.step(s, StepInput::Hidden(mislabelled)),
        Err(EngineError::Activation(ActivationError::Length { .. }))
    ));

    let mut poisoned = good.clone();
    poisoned.data[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    assert!(matches!(
        middle.step(s, StepInput::Hidden(poisoned)),
        Err(EngineError::Activation(ActivationError::NonFinite { row: 0, col: 2 }))
    ));

    assert!(matches!(middle.step(s, StepInput::Tokens(vec![1, 2])), Err(EngineError::Input(_))));
    assert!(matches!(middle.step(999, StepInput::Hidden(good.clone())), Err(EngineError::UnknownSession(999))));
    assert_eq!(middle.session_len(s).unwrap(), 0, "rejected steps leave no trace in the cache");

    // One bad request in a batch does not spoil the good one beside it.
    let s2 = middle.open_session(SessionConfig::default()).unwrap();
    let results = middle.step_batch(vec![
        StepRequest::new(s, StepInput::Hidden(good.clone())),
        StepRequest::new(12345, StepInput::Hidden(good.clone())),
        StepRequest::new(s2, StepInput::Tokens(vec![3])),
    ]);
    assert!(matches!(&results[0], Ok(StepOutput::Hidden(a)) if a.n_rows == 4));
    assert!(matches!(results[1], Err(EngineError::UnknownSession(12345))));
    assert!(matches!(results[2], Err(EngineError::Input(_))));
    assert_eq!(middle.session_len(s).unwrap(), 4);
}

#[test]
fn first_span_rejects_hidden_states_and_unknown_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (mut first, _) = spans(dir.path());
    let s = first.open_session(SessionConfig::default()).unwrap();
    let h = Activation::encode(&[0.1; 64], 64, ActivationDtype::F32).unwrap();
    assert!(matches!(first.step(s, StepInput::Hidden(h)), Err(EngineError::Input(_))));
    assert!(matches!(first.step(s, StepInput::Tokens(vec![5, 400])), Err(EngineError::Input(m)) if m.contains("400")));
    assert!(matches!(first.step(s, StepInput::Tokens(vec![-1])), Err(EngineError::Input(_))));
    assert!(matches!(first.step(s, StepInput::Tokens(vec![])), Err(EngineError::Input(_))));
    assert!(first.step(s, StepInput::Tokens(vec![1, 5])).is_ok());
}

#[test]
fn a_session_cannot_pass_its_context() {
    let dir = tempfile::tempdir().unwrap();
    let model = small_synth(dir.path());
    let mut engine = SpanEngine::load(&model, EngineConfig { ctx_per_session: 16, ..test_engine_config() }).unwrap();
    let s = engine.open_session(SessionConfig::default()).unwrap();
    engine.step(s, StepInput::Tokens(vec![1; 12])).unwrap();
    match engine.step(s, StepInput::Tokens(vec![7; 5])) {
        Err(EngineError::ContextFull { needed: 17, limit: 16, .. }) => {}
        other => panic!("expected ContextFull, got {other:?}"),
    }
    engine.step(s, StepInput::Tokens(vec![7; 4])).unwrap();
    assert!(matches!(engine.step(s, StepInput::Tokens(vec![7])), Err(EngineError::ContextFull { .. })));
    // Truncating makes room again.
    engine.truncate(s, 8).unwrap();
    assert_eq!(engine.session_len(s).unwrap(), 8);
    engine.step(s, StepInput::Tokens(vec![7; 8])).unwrap();
}

#[test]
fn session_limits_and_ranges_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut middle) = spans(dir.path());
    let bad_range = SessionConfig { layers: Some(0..3), ..SessionConfig::default() };
    assert!(matches!(middle.open_session(bad_range), Err(EngineError::Input(_))));
    let ids: Vec<_> = (0..4).map(|_| middle.open_session(SessionConfig::default()).unwrap()).collect();
    assert!(matches!(middle.open_session(SessionConfig::default()), Err(EngineError::TooManySessions(4))));
    middle.close_session(ids[0]).unwrap();
    assert!(matches!(middle.close_session(ids[0]), Err(EngineError::UnknownSession(_))));
    middle.open_session(SessionConfig::default()).unwrap();
}

//! SmolLM2-135M split into local chains gives token for token what one llama.cpp context gives.
//!
//! Needs `models/SmolLM2-135M-Instruct.Q4_1.gguf` (the README's test command fetches it)
//! or `NAK_TEST_MODEL`.

mod common;

use common::{prompt_config, smollm_path, PROMPTS};
use nak_node::chain::{GenerateOptions, LocalChain};
use nak_node::engine::SpanEngine;
use nak_node::reference::ReferenceModel;
use nak_shard_store::{span, GgufFile};

fn model() -> std::path::PathBuf {
    let path = smollm_path();
    assert!(path.exists(), "{} is missing: run the README's test command, or set NAK_TEST_MODEL", path.display());
    path
}

#[test]
fn local_splits_match_the_whole_model_token_for_token() {
    let model = model();
    let cfg = prompt_config();
    let reference = ReferenceModel::load(&model).unwrap();
    let opts = GenerateOptions { max_tokens: 32, ..GenerateOptions::default() };
    let expected: Vec<Vec<i32>> = PROMPTS
        .iter()
        .map(|p| reference.generate_greedy(&reference.tokenize(p), 32, false, &cfg).unwrap().tokens)
        .collect();
    assert!(expected.iter().any(|t| t.len() == 32), "the reference should generate full answers");

    for cuts in [vec![15], vec![10, 20], vec![1, 2, 29], vec![7, 14, 21, 28]] {
        let mut chain = LocalChain::from_model(&model, &cuts, &cfg).unwrap();
        for (prompt, want) in PROMPTS.iter().zip(&expected) {
            let tokens = chain.tokenize(prompt).unwrap();
            let got = chain.generate(&tokens, &opts).unwrap();
            assert_eq!(&got.tokens, want, "cuts {cuts:?}, prompt {prompt:?}");
        }
    }
}

#[test]
fn middle_span_holds_only_its_layers() {
    let model = model();
    let src = GgufFile::open(&model).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layer_bytes = |range: std::ops::Range<u32>| -> u64 {
        src.tensors
            .iter()
            .filter(|t| span::block_index(&t.name).is_some_and(|(i, _)| range.contains(&i)))
            .map(|t| t.n_bytes().unwrap())
            .sum()
    };
    for range in [10..20, 10..12] {
        let out = dir.path().join("mid.gguf");
        span::write_span(&src, range.clone(), &out).unwrap();
        let mid = GgufFile::open(&out).unwrap();
        assert!(mid.tensors.iter().all(|t| t.name.starts_with("blk.")), "a middle span carries only blocks");
        assert!(mid.get("tokenizer.ggml.tokens").is_none());
        let size = std::fs::metadata(&out).unwrap().len();
        let layers = layer_bytes(range.clone());
        // Layers, their alignment padding, and a header of a few kilobytes.
        assert!(size >= layers && size < layers + 64 * 1024, "{range:?}: file {size} bytes, layers {layers} bytes");
        let engine = SpanEngine::load(&out, prompt_config()).unwrap();
        assert_eq!(engine.span().first, range.start);
        assert_eq!(engine.span().n_layer, range.end - range.start);
        assert!(!engine.span().has_embedding && !engine.span().has_head);
    }
}

#[test]
fn spans_assembled_from_the_store_equal_slices_and_chain_exactly() {
    let model = model();
    let dir = tempfile::tempdir().unwrap();
    let store = nak_shard_store::Store::open(dir.path().join("data")).unwrap();
    let report = nak_shard_store::import_gguf(&store, &model, &mut |_| {}).unwrap();
    assert!(report.manifest.tied_embedding);
    assert_eq!(report.manifest.n_layer, 30);
    let src = GgufFile::open(&model).unwrap();
    let mut paths = Vec::new();
    for (a, b) in [(0, 10), (10, 20), (20, 30)] {
        let sliced = dir.path().join(format!("sliced-{a}-{b}.gguf"));
        span::write_span(&src, a..b, &sliced).unwrap();
        let assembled = nak_shard_store::cached_span(&store, &report.model_id, a..b).unwrap();
        assert!(std::fs::read(&sliced).unwrap() == std::fs::read(&assembled).unwrap(), "span {a}..{b} differs");
        paths.push(assembled);
    }
    let cfg = prompt_config();
    let reference = ReferenceModel::load(&model).unwrap();
    let mut chain = LocalChain::from_spans(&paths, &cfg).unwrap();
    for prompt in &PROMPTS[..3] {
        let tokens = reference.tokenize(prompt);
        let want = reference.generate_greedy(&tokens, 32, false, &cfg).unwrap().tokens;
        let got = chain.generate(&tokens, &GenerateOptions { max_tokens: 32, ..GenerateOptions::default() }).unwrap();
        assert_eq!(got.tokens, want, "prompt {prompt:?}");
    }
}

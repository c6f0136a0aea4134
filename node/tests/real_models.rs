//! Gemma 3 270M (gemma3) and Qwen2.5-0.5B-Instruct (qwen2), the real models of the
//! architectures beyond llama, split into local chains and served by a swarm of
//! processes, give token for token what one llama.cpp context gives.
//!
//! Needs `models/` as the README's test command fills it.

mod common;

use common::{log_tails, nak_json as nak, prompt_config, test_model, Swarm, GEMMA3, PROMPTS, QWEN2};
use nak_node::chain::{GenerateOptions, LocalChain};
use nak_node::engine::Model;
use nak_node::reference::ReferenceModel;

const TOKENS: usize = 24;

/// Greedy tokens of local chains cut at each of `splits` equal the whole model's.
fn local_splits_match(file: &str, splits: &[&[u32]]) {
    let model = test_model(file);
    let cfg = prompt_config();
    let reference = ReferenceModel::load(&model).unwrap();
    let expected: Vec<Vec<i32>> = PROMPTS
        .iter()
        .map(|p| reference.generate_greedy(&reference.tokenize(p), TOKENS, false, &cfg).unwrap().tokens)
        .collect();
    assert!(expected.iter().any(|t| t.len() == TOKENS), "the reference should generate full answers");
    let opts = GenerateOptions { max_tokens: TOKENS, ..GenerateOptions::default() };
    for cuts in splits {
        let mut chain = LocalChain::from_model(&model, cuts, &cfg).unwrap();
        for (prompt, want) in PROMPTS.iter().zip(&expected) {
            let tokens = chain.tokenize(prompt).unwrap();
            assert_eq!(tokens, reference.tokenize(prompt));
            let got = chain.generate(&tokens, &opts).unwrap();
            assert_eq!(&got.tokens, want, "{file}, cuts {cuts:?}, prompt {prompt:?}");
        }
    }
}

#[test]
fn chat_templates_render_each_models_turns() {
    for (file, user_turn, assistant_turn) in [
        (GEMMA3, "<start_of_turn>user\nHello<end_of_turn>", "<start_of_turn>model\n"),
        (QWEN2, "<|im_start|>user\nHello<|im_end|>", "<|im_start|>assistant\n"),
    ] {
        let vocab = Model::load_vocab(&test_model(file)).unwrap();
        let prompt = vocab.apply_chat_template(&[("user", "Hello")], true).unwrap();
        assert!(prompt.contains(user_turn) && prompt.ends_with(assistant_turn), "{file}: {prompt:?}");
    }
}

#[test]
fn gemma3_local_splits_match_the_whole_model() {
    // 5: a first span of only sliding-window layers; 7 and 1,2,13: cuts off the period
    // of six; 6,12: on it.
    local_splits_match(GEMMA3, &[&[5], &[7], &[1, 2, 13], &[6, 12]]);
}

#[test]
fn qwen2_local_splits_match_the_whole_model() {
    local_splits_match(QWEN2, &[&[11], &[1, 12, 23]]);
}

/// Three `run` processes holding `spans` (the first imports the file, the others fetch
/// their blobs from it), clients in ring and client mode through them, and a chat turn
/// (Gemma 3 270M is a base model without a chat template: Gemma's built-in one is used).
fn swarm_matches_the_whole_model(file: &str, spans: [&str; 3]) {
    let model = test_model(file);
    let swarm = Swarm::start(&model, &spans);
    let (dir, addr, id) = (&swarm.dir, &swarm.addr, &swarm.id);
    let tokens = TOKENS.to_string();
    for prompt in &PROMPTS[..3] {
        let path = model.to_str().unwrap();
        let local = nak(&["generate", "--model", path, "--prompt", prompt, "--max-tokens", &tokens, "--json"]);
        for mode in ["ring", "client"] {
            let args = ["generate", "--bootstrap", addr, "--model", id, "--prompt", prompt, "--max-tokens", &tokens];
            let remote = nak(&[&args[..], &["--mode", mode, "--json"]].concat());
            assert_eq!(
                remote["tokens"],
                local["tokens"],
                "{file}, {mode} mode, prompt {prompt:?}\nlogs:\n{}",
                log_tails(dir.path(), 15)
            );
            assert_eq!(remote["route"].as_array().map(Vec::len), Some(3), "{remote}");
        }
    }
    // A chat turn through the swarm, with the model's own template.
    let mut chat = common::nak_command()
        .args(["chat", "--bootstrap", addr, "--model", id, "--max-tokens", "12"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    chat.stdin.take().unwrap().write_all(b"What is the capital of France?\n/quit\n").unwrap();
    let out = chat.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("connected: 3 hops"), "{file}: {text}");
    // The turn ended (a new prompt follows the answer); the instruct model answers it.
    assert!(text.matches("> ").count() >= 2, "{file}: the turn did not end: {text:?}");
    if file == QWEN2 {
        assert!(text.contains("Paris"), "{file}: {text:?}");
    }
}

#[test]
fn gemma3_through_three_processes_matches_the_whole_model() {
    swarm_matches_the_whole_model(GEMMA3, ["0:6", "6:12", "12:18"]);
}

#[test]
fn qwen2_through_three_processes_matches_the_whole_model() {
    swarm_matches_the_whole_model(QWEN2, ["0:8", "8:16", "16:24"]);
}

//! Signed receipts through a swarm of processes: three `nak-node run` servers hold
//! layers 0:10, 10:20 and 20:30 of SmolLM2-135M, and `generate --verify` asks each for a
//! receipt of every step and checks them as they come.
//!
//! - honest servers: the tokens equal the whole model's, in ring and client-sampled
//!   mode, every hop's receipts verify and every hop-to-hop hash matches;
//! - `--verify` with a lossy wire encoding is refused with the reason.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{log_tails, run_node, smollm_path, PROMPTS};

fn nak(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nak-node")).args(args).env("NAK_LOG", "warn").output().unwrap()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn honest_servers_sign_receipts_that_all_check_out() {
    let model = smollm_path();
    assert!(model.exists(), "{} is missing: run the README's test command", model.display());
    let dir = tempfile::tempdir().unwrap();
    let first = run_node(&dir.path().join("a"), model.to_str().unwrap(), "0:10", None, &[]);
    let addr = first.line("listening ", Duration::from_secs(20))["listening ".len()..].to_string();
    let id = first.line("serving ", Duration::from_secs(60)).split_whitespace().nth(1).unwrap().to_string();
    let mut nodes = vec![first];
    for (name, layers) in [("b", "10:20"), ("c", "20:30")] {
        nodes.push(run_node(&dir.path().join(name), &id, layers, Some(&addr), &[]));
    }
    for n in &nodes[1..] {
        n.line("serving ", Duration::from_secs(90));
    }
    let tokens = 16usize;
    for prompt in &PROMPTS[..2] {
        let path = model.to_str().unwrap();
        let local = json(&nak(&["generate", "--model", path, "--prompt", prompt, "--max-tokens", "16", "--json"]));
        for mode in ["ring", "client"] {
            let args = ["generate", "--bootstrap", &addr, "--model", &id, "--prompt", prompt, "--max-tokens", "16"];
            let remote = json(&nak(&[&args[..], &["--mode", mode, "--verify", "--json"]].concat()));
            let logs = || log_tails(dir.path(), 15);
            assert_eq!(remote["tokens"], local["tokens"], "{mode} mode, prompt {prompt:?}\n{}", logs());
            let v = &remote["verification"];
            assert_eq!(v["problems"].as_array().map(Vec::len), Some(0), "{v}");
            // Every step of every hop but the last few (still on their way) was checked.
            let generated = remote["tokens"].as_array().unwrap().len();
            let checked = v["receipts_checked"].as_u64().unwrap() as usize;
            assert!(checked + 3 >= 3 * generated.min(tokens), "{checked} receipts for {generated} tokens: {v}");
            assert!(v["links_checked"].as_u64().unwrap() as usize + 3 >= checked, "{v}");
        }
    }
    let f16 =
        nak(&["generate", "--bootstrap", &addr, "--model", &id, "--prompt", "hi", "--verify", "--wire-dtype", "f16"]);
    let stderr = String::from_utf8_lossy(&f16.stderr);
    assert!(!f16.status.success() && stderr.contains("f32"), "{stderr}");
}

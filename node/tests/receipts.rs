//! Signed receipts through a swarm of processes: three `nak-node run` servers hold
//! layers 0:10, 10:20 and 20:30 of SmolLM2-135M, and `generate --verify` asks each for a
//! receipt of every step and checks them as they come.
//!
//! - honest servers: the tokens equal the whole model's, in ring and client-sampled
//!   mode, every hop's receipts verify and every hop-to-hop hash matches;
//! - `--verify` with a lossy wire encoding is refused with the reason.

mod common;

use common::{log_tails, nak_json, smollm_path, Swarm, PROMPTS};

fn nak(args: &[&str]) -> std::process::Output {
    common::nak_command().args(args).output().unwrap()
}

#[test]
fn honest_servers_sign_receipts_that_all_check_out() {
    let model = smollm_path();
    let swarm = Swarm::start(&model, &["0:10", "10:20", "20:30"]);
    let (dir, addr, id) = (&swarm.dir, swarm.addr.as_str(), swarm.id.as_str());
    let tokens = 16usize;
    for prompt in &PROMPTS[..2] {
        let path = model.to_str().unwrap();
        let local = nak_json(&["generate", "--model", path, "--prompt", prompt, "--max-tokens", "16", "--json"]);
        for mode in ["ring", "client"] {
            let args = ["generate", "--bootstrap", addr, "--model", id, "--prompt", prompt, "--max-tokens", "16"];
            let remote = nak_json(&[&args[..], &["--mode", mode, "--verify", "--audit-rate", "0", "--json"]].concat());
            let logs = || log_tails(dir.path(), 15);
            assert_eq!(remote["tokens"], local["tokens"], "{mode} mode, prompt {prompt:?}\n{}", logs());
            let v = &remote["verification"];
            assert_eq!(v["problems"].as_array().map(Vec::len), Some(0), "{v}");
            // Every step of every hop was checked: the client waits for the last batches.
            let generated = remote["tokens"].as_array().unwrap().len();
            let checked = v["receipts_checked"].as_u64().unwrap() as usize;
            assert!(checked >= 3 * generated.min(tokens), "{checked} receipts for {generated} tokens: {v}");
            assert_eq!(v["links_checked"].as_u64().unwrap() as usize, checked, "{v}");
        }
    }
    let f16 =
        nak(&["generate", "--bootstrap", addr, "--model", id, "--prompt", "hi", "--verify", "--wire-dtype", "f16"]);
    let stderr = String::from_utf8_lossy(&f16.stderr);
    assert!(!f16.status.success() && stderr.contains("f32"), "{stderr}");
}

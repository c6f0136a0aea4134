//! The OpenAI-compatible API (`nak-node api`) on a 3-server loopback swarm, driven by
//! the official `openai` Python client (`interop/python/openai_client.py`, which checks
//! the answers' shapes, stop strings, text parts and errors): its greedy text equals
//! `nak-node generate`'s; the same from a serving node (`run --api`).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{nak_json, run_node, smollm_path, Node, Swarm};

#[test]
fn the_openai_client_gets_the_swarms_text_in_the_shapes_it_expects() {
    let swarm = Swarm::start(&smollm_path(), &["0:10", "10:20", "20:30"]);
    let data = swarm.dir.path().join("api");
    let args = ["--data-dir", data.to_str().unwrap(), "api", "--model", &swarm.id, "--bootstrap", &swarm.addr];
    let api =
        Node::start_logged(&[&args[..], &["--listen", "127.0.0.1:0"]].concat(), Some(&data.with_extension("log")));
    let url = api.line("api ", Duration::from_secs(120))["api ".len()..].to_string();

    let prompt = "The capital of France is";
    let report = openai_checks(&swarm, &url, prompt);
    let client = swarm.dir.path().join("client");
    let gen = ["--data-dir", client.to_str().unwrap(), "generate", "--bootstrap", &swarm.addr, "--model", &swarm.id];
    let local = nak_json(&[&gen[..], &["--prompt", prompt, "--max-tokens", "16", "--json"]].concat());
    assert_eq!(report["text"], local["text"], "the API: {report}\ngenerate: {local}");
    assert!(report["stop"].is_string() && report["chat"].is_string(), "checks skipped: {report}");

    // The same API from a serving node (`run --api`).
    let extra = ["--api", "127.0.0.1:0"];
    let server = run_node(&swarm.dir.path().join("n3"), &swarm.id, "0:10", Some(&swarm.addr), &extra);
    let url = server.line("api ", Duration::from_secs(120))["api ".len()..].to_string();
    let from_server = openai_checks(&swarm, &url, prompt);
    assert_eq!(from_server["text"], local["text"], "run --api: {from_server}");
}

/// Runs the openai client's checks against the API at `url`; returns its report.
fn openai_checks(swarm: &Swarm, url: &str, prompt: &str) -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../interop/python/openai_client.py");
    let out = Command::new("timeout")
        .args(["300", "python3", script.to_str().unwrap(), url, &swarm.id, prompt, "16"])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the openai client's checks failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        common::log_tails(swarm.dir.path(), 20)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

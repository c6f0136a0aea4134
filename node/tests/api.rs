//! The OpenAI-compatible API (`nak-node api`) on a 3-server loopback swarm, driven by
//! the official `openai` Python client (`interop/python/openai_client.py`, which checks
//! the answers' shapes, stop strings, text parts and errors): its greedy text equals
//! `nak-node generate`'s; the same from a serving node (`run --api`). A client that goes
//! away mid-stream frees the session on every hop (the servers' `/metrics` say so);
//! `/health` follows the coverage.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{http, nak_json, run_node, smollm_path, Node, Swarm};

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

/// Servers started with `--metrics`: the nodes, their `/metrics` addresses, the model id
/// and the first server's address.
fn metered_servers(dir: &Path, spans: &[&str]) -> (Vec<Node>, Vec<String>, String, String) {
    let metered = |i: usize, model: &str, bootstrap: Option<&str>| {
        let node = run_node(&dir.join(format!("n{i}")), model, spans[i], bootstrap, &["--metrics", "127.0.0.1:0"]);
        let addr = node.line("listening ", Duration::from_secs(20))["listening ".len()..].to_string();
        let metrics = node.line("metrics ", Duration::from_secs(20));
        let metrics = metrics.trim_start_matches("metrics http://").trim_end_matches("/metrics").to_string();
        (node, addr, metrics)
    };
    let (first, addr, m0) = metered(0, smollm_path().to_str().unwrap(), None);
    let serving = first.line("serving ", Duration::from_secs(120));
    let id = serving.split_whitespace().nth(1).unwrap().to_string();
    let (mut nodes, mut metrics) = (vec![first], vec![m0]);
    for i in 1..spans.len() {
        let (node, _, m) = metered(i, &id, Some(&addr));
        node.line("serving ", Duration::from_secs(120));
        nodes.push(node);
        metrics.push(m);
    }
    (nodes, metrics, id, addr)
}

/// Sessions open on each server, from its metrics.
fn sessions_open(metrics: &[String]) -> Vec<f64> {
    metrics.iter().map(|m| common::metric(&http(m, "GET", "/metrics", None).1, "nak_sessions_open").unwrap()).collect()
}

#[test]
fn a_client_that_goes_away_frees_every_hop_and_health_follows_coverage() {
    let dir = tempfile::tempdir().unwrap();
    let (mut servers, metrics, id, addr) = metered_servers(dir.path(), &["0:10", "10:20", "20:30"]);
    let data = dir.path().join("api");
    // No --model: the API serves the one model the swarm serves.
    let args = ["--data-dir", data.to_str().unwrap(), "api", "--bootstrap", &addr];
    let api =
        Node::start_logged(&[&args[..], &["--listen", "127.0.0.1:0"]].concat(), Some(&data.with_extension("log")));
    let url = api.line("api ", Duration::from_secs(120))["api http://".len()..].to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http(&url, "GET", "/health", None).0 != 200 {
        assert!(Instant::now() < deadline, "never healthy: {}", common::log_tails(dir.path(), 20));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(sessions_open(&metrics), [0.0; 3]);

    // A long streamed answer; the client reads its first text and goes away.
    let body = format!(
        r#"{{"model": "{id}", "prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "stream": true}}"#
    );
    let mut stream = std::net::TcpStream::connect(&url).unwrap();
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {url}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("\"text\":\"") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early: {seen}");
        seen += &String::from_utf8_lossy(&buf[..n]);
    }
    assert_eq!(sessions_open(&metrics), [1.0; 3], "one session on every hop while it streams");
    drop(stream);
    let gone = Instant::now();
    while sessions_open(&metrics) != [0.0; 3] {
        assert!(gone.elapsed() < Duration::from_secs(10), "sessions still open: {:?}", sessions_open(&metrics));
        std::thread::sleep(Duration::from_millis(50));
    }
    let freed = gone.elapsed();
    eprintln!("every hop freed its session {freed:?} after the client went away");
    assert!(freed <= Duration::from_secs(2), "every hop freed its session after {freed:?}");

    // The API's own metrics: the request counted, tokens generated, libp2p's figures.
    let text = http(&url, "GET", "/metrics", None).1;
    let requests = r#"nak_requests_total{endpoint="/v1/completions",status="200"}"#;
    assert!(common::metric(&text, requests).is_some_and(|n| n >= 1.0), "{text}");
    assert!(common::metric(&text, "nak_tokens_generated_total").is_some_and(|n| n >= 1.0), "{text}");
    assert!(text.contains("nak_libp2p_swarm_connections_established_total"), "{text}");
    assert_eq!(common::metric(&text, "nak_generations_active"), Some(0.0), "{text}");
    // Each hop timed its steps.
    for m in &metrics {
        let text = http(m, "GET", "/metrics", None).1;
        assert!(common::metric(&text, "nak_step_seconds_count").is_some_and(|n| n >= 2.0), "{text}");
    }

    // The last span's only server goes: health turns 503 (no full route).
    servers[2].kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http(&url, "GET", "/health", None);
        if status == 503 {
            assert!(body.contains("\"type\":\"unavailable_error\""), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "still healthy without layers 20:30");
        std::thread::sleep(Duration::from_millis(200));
    }
}

//! Audits and fraud proofs through a swarm of processes: three `nak-node run` servers
//! hold layers 0:10, 10:20 and 20:30 of SmolLM2-135M; `generate --verify --audit-rate 1`
//! audits every hop after the generation.
//!
//! - a middle server that corrupts its outputs (`NAK_FAULT_CORRUPT=1`, each fault mode)
//!   while signing honest-looking receipts is proven a liar by the first session, and
//!   only it; the proof reaches every honest server, which bans it, and a client started
//!   afterwards routes around it through a newcomer and gets the whole model's tokens;
//! - honest servers audited in sequential, client-sampled and 8 concurrent (batched)
//!   sessions, with auditors and servers on different thread counts, give no proof;
//! - forged proofs (a bad signature, rows that are not the signed ones, a correct
//!   computation claimed wrong) are rejected by the client's own check and by every
//!   server, and ban nobody.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{log_tails, nak_json, run_node, smollm_path, Swarm, PROMPTS};
use nak_node::audit::{fetch_rows, verify_proof, LocalSpans, Verdict};
use nak_node::client::{RemoteSession, SessionOptions, SwarmModel};
use nak_node::net::{identity, Network, NetworkConfig};
use nak_protocol::{keys, pb};
use nak_shard_store::{ModelId, Store};
use prost::Message;

/// `generate` through the swarm with a client data directory, as JSON.
fn generate(swarm: &Swarm, data: &Path, prompt: &str, extra: &[&str]) -> serde_json::Value {
    let data = data.to_str().unwrap();
    let args = ["--data-dir", data, "generate", "--bootstrap", &swarm.addr, "--model", &swarm.id, "--prompt", prompt];
    nak_json(&[&args[..], &["--max-tokens", "8", "--json"], extra].concat())
}

fn whole_model_tokens(prompt: &str) -> serde_json::Value {
    let model = smollm_path();
    nak_json(&["generate", "--model", model.to_str().unwrap(), "--prompt", prompt, "--max-tokens", "8", "--json"])
        ["tokens"]
        .clone()
}

/// The peer serving layers from `start` in a generation's route.
fn peer_at(out: &serde_json::Value, start: u64) -> String {
    let hop = out["route"].as_array().unwrap().iter().find(|h| h["start"] == start).expect("a hop at that layer");
    hop["peer"].as_str().unwrap().to_string()
}

/// Waits up to `limit` for `data`'s banlist to name `peer`.
fn wait_for_ban(data: &Path, peer: &str, limit: Duration) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < limit {
        if std::fs::read_to_string(data.join("banned.json")).is_ok_and(|s| s.contains(peer)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn a_corrupting_server_is_proven_a_liar_in_every_fault_mode_and_shunned_by_all() {
    let prompt = PROMPTS[0];
    let expected = whole_model_tokens(prompt);
    for (m, mode) in ["bitflip", "noise", "zero", "skip-layer"].into_iter().enumerate() {
        let faulty = |i: usize| match i {
            1 => vec![("NAK_FAULT_CORRUPT", "1".to_string()), ("NAK_FAULT_MODE", mode.to_string())],
            _ => vec![],
        };
        let swarm = Swarm::start_with(&smollm_path(), &["0:10", "10:20", "20:30"], faulty);
        let dir = swarm.dir.path();
        let out = generate(&swarm, &dir.join("c1"), prompt, &["--verify", "--audit-rate", "1"]);
        let logs = || log_tails(dir, 15);
        let v = &out["verification"];
        let liar = peer_at(&out, 10);
        // The receipts hang together (the liar signs what it sends): only the audit can tell.
        assert_eq!(v["problems"].as_array().map(Vec::len), Some(0), "{mode}: {v}");
        assert_eq!(v["sessions_audited"], 3, "{mode}: {v}\n{}", logs());
        let frauds = v["frauds"].as_array().unwrap();
        assert_eq!(frauds.len(), 1, "{mode}: {v}\n{}", logs());
        assert_eq!(frauds[0]["peer"], liar.as_str(), "{mode}: {v}");
        assert_eq!(frauds[0]["layers"], serde_json::json!([10, 20]), "{mode}: {v}");
        assert_eq!(frauds[0]["step"], 0, "{mode}: the first corrupted step is proven: {v}");
        if m > 0 {
            continue;
        }
        // Every honest server verifies the proof from gossip and bans the liar.
        for n in ["n0", "n2"] {
            assert!(wait_for_ban(&dir.join(n), &liar, Duration::from_secs(30)), "{n} did not ban {liar}\n{}", logs());
        }
        let status = nak_json(&["--data-dir", dir.join("n0").to_str().unwrap(), "status", "--wait", "0", "--json"]);
        let banned = status["banned"].as_array().unwrap();
        assert!(banned.iter().any(|b| b["peer"] == liar.as_str() && b["proof"] == frauds[0]["proof"]), "{status}");
        // A newcomer for the liar's layers learns the proof when it joins; a client that
        // knows nothing yet routes around the liar and gets the whole model's tokens.
        let spare = run_node(&dir.join("n3"), &swarm.id, "10:20", Some(&swarm.addr), &[]);
        spare.line("serving ", Duration::from_secs(120));
        assert!(
            wait_for_ban(&dir.join("n3"), &liar, Duration::from_secs(30)),
            "the newcomer did not learn\n{}",
            logs()
        );
        for c in ["c2", "c3"] {
            let after = generate(&swarm, &dir.join(c), prompt, &[]);
            let route: Vec<&str> =
                after["route"].as_array().unwrap().iter().map(|h| h["peer"].as_str().unwrap()).collect();
            assert!(!route.contains(&liar.as_str()), "{c} routed through the liar: {after}");
            assert_eq!(after["tokens"], expected, "{c}: {after}");
        }
    }
}

#[test]
fn honest_servers_audited_in_every_way_give_no_proof() {
    let swarm = Swarm::start(&smollm_path(), &["0:10", "10:20", "20:30"]);
    let dir = swarm.dir.path();
    let client = dir.join("client");
    let audit = ["--verify", "--audit-rate", "1", "--threads", "2"];
    let mut audited = 0;
    for (prompt, mode) in [(PROMPTS[0], "ring"), (PROMPTS[1], "client"), (PROMPTS[2], "ring")] {
        let out = generate(&swarm, &client, prompt, &[&audit[..], &["--mode", mode]].concat());
        let v = &out["verification"];
        assert_eq!(v["frauds"].as_array().map(Vec::len), Some(0), "{mode}: {v}\n{}", log_tails(dir, 15));
        assert_eq!(v["problems"].as_array().map(Vec::len), Some(0), "{v}");
        audited += v["sessions_audited"].as_u64().unwrap();
    }
    // Eight sessions at once: each server batches their steps into shared decodes.
    let out = generate(&swarm, &client, PROMPTS[3], &[&audit[..], &["--parallel", "8"]].concat());
    for v in out["verification"].as_array().unwrap() {
        assert_eq!(v["frauds"].as_array().map(Vec::len), Some(0), "{v}\n{}", log_tails(dir, 15));
        audited += v["sessions_audited"].as_u64().unwrap();
    }
    assert_eq!(audited, 3 * 11, "every hop of every session audited");
    assert!(!client.join("banned.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_proofs_are_rejected_everywhere_and_ban_nobody() {
    let swarm = Swarm::start(&smollm_path(), &["0:10", "10:20", "20:30"]);
    let dir = swarm.dir.path().to_path_buf();
    let data = dir.join("forger");
    let store = Store::open(&data).unwrap();
    let cfg = NetworkConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: vec![swarm.addr.parse().unwrap()],
        ..Default::default()
    };
    let (net, _) = Network::spawn(identity::load_or_create(&data).unwrap(), store.clone(), cfg).await.unwrap();
    let id = ModelId::from_hex(&swarm.id).unwrap();
    let model = SwarmModel::connect(net.clone(), &store, id).await.unwrap();
    let opts = SessionOptions { verify: true, ..Default::default() };
    let mut session = RemoteSession::start(&model, opts, Duration::from_secs(30)).await.unwrap();
    let tokens = model.vocab().tokenize(PROMPTS[0], true).unwrap();
    session.generate(&model, &tokens, 4, |_| true).await.unwrap();
    // The middle hop's honest receipts and rows: a proof that claims its last step wrong.
    let target = session
        .audit_targets()
        .into_iter()
        .find(|t| t.peer == session.route()[1].peer)
        .expect("the middle hop's receipts");
    let rows = fetch_rows(&net, &target).await.unwrap();
    let honest = pb::FraudProof {
        accused: target.peer.to_bytes(),
        batches: target.receipts.clone(),
        inputs: rows,
        reporter: net.peer_id().to_bytes(),
    };
    let mut bad_signature = honest.clone();
    bad_signature.batches.last_mut().unwrap().signature[0] ^= 1;
    let mut bad_rows = honest.clone();
    bad_rows.inputs[0].hidden[0] ^= 1;
    let forgeries = [("bad signature", bad_signature), ("other rows", bad_rows), ("correct claimed wrong", honest)];

    let mut spans = LocalSpans::new(store.clone(), net.clone(), model.manifest().clone(), 1);
    for (what, proof) in &forgeries {
        let verdict = verify_proof(proof, &mut spans).await;
        assert!(matches!(verdict, Verdict::Rejected(_)), "{what}: {verdict:?}");
    }
    let topic = keys::proof_topic(&id.0);
    for (what, proof) in &forgeries {
        net.publish(topic.clone(), proof.encode_to_vec()).await.unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    for n in ["n0", "n1", "n2"] {
        assert!(!dir.join(n).join("banned.json").exists(), "{n} banned someone\n{}", log_tails(&dir, 15));
        let log = std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap();
        assert!(log.contains("rejected a fraud proof"), "{n} did not reject the wrong claim:\n{log}");
    }
    session.close().await;
}

//! Separate `nak-node` processes on loopback form a swarm: the second node is given only
//! the model id and the first node's address, fetches its span's blobs from it, serves,
//! and `status` sees every block covered.

mod common;

use std::time::Duration;

#[test]
fn a_second_node_fetches_its_span_from_the_first_and_the_swarm_covers_every_block() {
    let model = common::smollm_path();
    assert!(model.exists(), "{} is missing: run the README's test command", model.display());
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));

    let a = common::run_node(&a_dir, model.to_str().unwrap(), "0:15", None, &[]);
    let a_addr = a.line("listening ", Duration::from_secs(20))["listening ".len()..].to_string();
    let serving = a.line("serving ", Duration::from_secs(60));
    let id = serving.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(id.len(), 64);

    let b = common::run_node(&b_dir, &id, "15:30", Some(&a_addr), &[]);
    b.line("serving ", Duration::from_secs(90));
    // B holds exactly what it fetched: blocks 15..30, the head, the (tied) embedding, the metadata.
    let b_blobs =
        std::fs::read_dir(b_dir.join("blobs")).unwrap().flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap());
    let fetched = b_blobs.filter(|f| !f.as_ref().unwrap().file_name().to_string_lossy().ends_with(".obao")).count();
    assert_eq!(fetched, 15 + 3);

    let out = common::nak_command()
        // No --model: status finds the model from the topics its peers subscribe to.
        .args(["status", "--bootstrap", &a_addr, "--wait", "4", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["models"].as_array().unwrap().len(), 1);
    assert_eq!(status["models"][0]["model_id"], id);
    let blocks = status["models"][0]["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 30);
    for b in blocks {
        assert_eq!(b["servers"].as_array().unwrap().len(), 1, "block {} coverage: {b}", b["index"]);
    }
    drop(b);
    drop(a);
}

//! Five `nak-node run --serve-layers auto` processes on loopback share a 30-layer
//! synthetic model: they spread out until every block is served, and when one is
//! killed the others move to close the gap it leaves.
//!
//! Two memory budgets. With a bit over half the model each (55 %), every block ends up
//! with at least two servers. Less cannot do it with five nodes: blocks 0 and 29 each
//! need two spans of their own, and the one span left covers the middle only once, so
//! every span must hold at least half the model. With a third of the model each (36 %)
//! the aim is one server per block, and killing a block's only server leaves a real hole.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::Node;
use nak_shard_store::{import_gguf, Store, SynthConfig};

/// Per-block server peer ids, as `status --json` reports them.
fn coverage(bootstrap: &str, model: &str) -> Vec<Vec<String>> {
    let out = common::nak_command()
        .args(["status", "--bootstrap", bootstrap, "--model", model, "--wait", "3", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    status["models"][0]["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["servers"].as_array().unwrap().iter().map(|s| s["peer"].as_str().unwrap().to_string()).collect())
        .collect()
}

/// Polls `status` until every block has at least `want` servers; returns that coverage.
fn wait_for_coverage(bootstrap: &str, model: &str, want: usize, limit: Duration, logs: &Path) -> Vec<Vec<String>> {
    let t0 = Instant::now();
    loop {
        let cov = coverage(bootstrap, model);
        if cov.len() == 30 && cov.iter().all(|servers| servers.len() >= want) {
            return cov;
        }
        let counts: Vec<usize> = cov.iter().map(Vec::len).collect();
        assert!(t0.elapsed() < limit, "coverage still {counts:?} after {limit:?}\n{}", common::log_tails(logs, 20));
    }
}

fn scenario(budget_share: f64, want: usize) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig { n_layer: 30, n_vocab: 320, seed: 30, ..SynthConfig::default() };
    let model = common::synth_model(dir.path(), &cfg);
    let scratch = Store::open(dir.path().join("scratch")).unwrap();
    let report = import_gguf(&scratch, &model, &mut |_| {}).unwrap();
    let id = report.model_id.to_hex();
    let total: u64 = report.manifest.blobs.iter().map(|b| b.size).sum();
    let budget = ((total as f64) * budget_share) as u64;
    let budget = budget.to_string();

    let node = |i: usize, model: &str, bootstrap: Option<&str>| {
        let extra = ["--max-memory", &budget, "--rebalance-interval", "3"];
        common::run_node(&dir.path().join(format!("n{i}")), model, "auto", bootstrap, &extra)
    };
    let first = node(0, model.to_str().unwrap(), None);
    let addr = first.line("listening ", Duration::from_secs(20))["listening ".len()..].to_string();
    let peer_of = |addr: &str| addr.rsplit('/').next().unwrap().to_string();
    let mut nodes: HashMap<String, Node> = HashMap::new();
    nodes.insert(peer_of(&addr), first);
    for i in 1..5 {
        let n = node(i, &id, Some(&addr));
        let peer = peer_of(&n.line("listening ", Duration::from_secs(20)));
        nodes.insert(peer, n);
    }
    for n in nodes.values() {
        n.line("serving ", Duration::from_secs(90));
    }
    let cov = wait_for_coverage(&addr, &id, want, Duration::from_secs(90), dir.path());
    let counts: Vec<usize> = cov.iter().map(Vec::len).collect();
    eprintln!("budget {budget_share}: coverage {counts:?}");

    // Kill a server of a block that has the fewest servers (never the bootstrap node, which
    // `status` joins through and which alone holds every blob), so the swarm is left short
    // there. When every such block is the bootstrap node's alone, no kill can leave a hole:
    // one is killed anyway, and the others need only keep every block covered.
    let bootstrap_peer = peer_of(&addr);
    let hole = cov
        .iter()
        .filter(|servers| servers.len() == want)
        .flat_map(|servers| servers.iter())
        .find(|p| **p != bootstrap_peer)
        .cloned();
    let victim = hole.clone().unwrap_or_else(|| nodes.keys().find(|p| **p != bootstrap_peer).unwrap().clone());
    for n in nodes.values() {
        while n.printed("").is_some() {}
    }
    drop(nodes.remove(&victim));
    let killed = Instant::now();
    if hole.is_none() {
        eprintln!(
            "budget {budget_share}: only the bootstrap node serves the thinnest blocks; {victim} killed, no hole"
        );
        let cov = wait_for_coverage(&addr, &id, want, Duration::from_secs(90), dir.path());
        assert!(cov.iter().all(|servers| !servers.contains(&victim)), "a dead server is still listed");
        return;
    }
    // A survivor prints `serving` again when it has moved; then `status` must agree.
    let (mover, moved) = loop {
        if let Some((peer, _)) = nodes.iter().find_map(|(p, n)| n.printed("serving ").map(|l| (p.clone(), l))) {
            break (peer, killed.elapsed());
        }
        assert!(
            killed.elapsed() < Duration::from_secs(90),
            "nobody moved to close the gap\n{}",
            common::log_tails(dir.path(), 20)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let cov = wait_for_coverage(&addr, &id, want, Duration::from_secs(90), dir.path());
    let confirmed = killed.elapsed();
    assert!(cov.iter().all(|servers| !servers.contains(&victim)), "a dead server is still listed");
    assert!(cov.iter().any(|servers| servers.contains(&mover)));
    let counts: Vec<usize> = cov.iter().map(Vec::len).collect();
    eprintln!(
        "budget {budget_share}: killed {victim}; {mover} moved in {:.2} s; status shows {counts:?} at {:.1} s",
        moved.as_secs_f64(),
        confirmed.as_secs_f64()
    );
}
#[test]
fn five_auto_nodes_cover_every_block_and_close_the_hole_a_killed_one_leaves() {
    scenario(0.55, 2);
    scenario(0.36, 1);
}

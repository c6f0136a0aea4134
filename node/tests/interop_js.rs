//! Interoperability: a js-libp2p peer (`interop/js/find-providers.mjs`: npm `libp2p`,
//! `@libp2p/kad-dht` on `/nakshatra/kad/1.0.0`, noise, yamux, tcp) joins a swarm of two
//! `nak-node run` processes through the first, and finds the servers of blocks in the
//! DHT, including a block only the second node serves.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use nak_protocol::keys;
use nak_shard_store::{Hash, SynthConfig};

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../interop/js")
}

/// Runs the js peer; returns its JSON line.
fn js_find_providers(bootstrap: &str, model: &str, layer: u32) -> serde_json::Value {
    let out = Command::new("node")
        .current_dir(interop_dir())
        .args(["find-providers.mjs", bootstrap, model, &layer.to_string()])
        .output()
        .expect("node runs (scripts/setup.sh installs it)");
    assert!(out.status.success(), "js peer failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

#[test]
fn a_js_libp2p_peer_finds_the_servers_of_a_block() {
    assert!(
        interop_dir().join("node_modules/libp2p").is_dir(),
        "interop/js/node_modules is missing: run scripts/setup.sh (the README's test command does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let model = common::synth_model(dir.path(), &SynthConfig { n_layer: 8, seed: 8, ..SynthConfig::default() });
    let run = |data: &str, model: &str, layers: &str, bootstrap: Option<&str>| {
        common::run_node(&dir.path().join(data), model, layers, bootstrap, &[])
    };
    let a = run("a", model.to_str().unwrap(), "0:4", None);
    let a_addr = a.line("listening ", Duration::from_secs(20))["listening ".len()..].to_string();
    let id = a.line("serving ", Duration::from_secs(60)).split_whitespace().nth(1).unwrap().to_string();
    let b = run("b", &id, "4:8", Some(&a_addr));
    let b_peer = b.line("listening ", Duration::from_secs(20)).rsplit('/').next().unwrap().to_string();
    b.line("serving ", Duration::from_secs(60));
    let a_peer = a_addr.rsplit('/').next().unwrap().to_string();
    let model_id = Hash::from_hex(&id).unwrap();

    // Block 6 is served by B alone; the js peer only knows A.
    let found = js_find_providers(&a_addr, &id, 6);
    let hex: String = keys::block_key(&model_id.0, 6).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(found["key"], hex, "the js peer derives the same DHT key");
    assert_eq!(found["providers"], serde_json::json!([b_peer]));
    let found = js_find_providers(&a_addr, &id, 1);
    assert_eq!(found["providers"], serde_json::json!([a_peer]));
    drop(b);
    drop(a);
}

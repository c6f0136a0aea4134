//! The `nak-node` binary's store commands, end to end.

use std::process::Command;

fn nak(data: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nak-node"))
        .env("NAKSHATRA_NO_MDNS", "1")
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .expect("nak-node runs")
}

#[test]
fn import_models_verify_and_slice_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let model = dir.path().join("m.gguf");
    let out = nak(&data, &["synth", "-o", model.to_str().unwrap(), "--layers", "3", "--seed", "9"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let out = nak(&data, &["import", model.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = report["model_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 64);
    assert_eq!(report["new_blobs"], 6); // meta, embd, 3 blocks, head

    let again: serde_json::Value =
        serde_json::from_slice(&nak(&data, &["import", model.to_str().unwrap(), "--json"]).stdout).unwrap();
    assert_eq!(again["model_id"].as_str(), Some(id.as_str()));
    assert_eq!(again["new_blobs"], 0);

    let listed: serde_json::Value = serde_json::from_slice(&nak(&data, &["models", "--json"]).stdout).unwrap();
    assert_eq!(listed[0]["model_id"].as_str(), Some(id.as_str()));
    assert_eq!(listed[0]["n_layer"], 3);

    let from_store = dir.path().join("a.gguf");
    let from_file = dir.path().join("b.gguf");
    assert!(nak(&data, &["slice", &id[..12], "--layers", "1:3", "-o", from_store.to_str().unwrap()]).status.success());
    assert!(nak(&data, &["slice", model.to_str().unwrap(), "--layers", "1:3", "-o", from_file.to_str().unwrap()])
        .status
        .success());
    assert_eq!(std::fs::read(&from_store).unwrap(), std::fs::read(&from_file).unwrap());

    assert!(nak(&data, &["store", "verify"]).status.success());
    // Corrupt one block blob: verify fails and names it; slicing over it fails.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("manifests").join(format!("{id}.json"))).unwrap()).unwrap();
    let block1 = manifest["blobs"].as_array().unwrap().iter().find(|b| b["layer"] == 1).unwrap()["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let blob_path = data.join("blobs").join(&block1[..2]).join(&block1);
    let mut bytes = std::fs::read(&blob_path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob_path, bytes).unwrap();
    let out = nak(&data, &["store", "verify"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("CORRUPT {block1}")));
    let out = nak(&data, &["slice", &id, "--layers", "0:2", "-o", from_store.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt"), "{}", String::from_utf8_lossy(&out.stderr));

    let out = nak(&data, &["slice", "ffff0000", "--layers", "0:1", "-o", from_store.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither a file nor a model"));
}

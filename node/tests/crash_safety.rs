//! Crash safety of the store: `kill -9` at 50 seeded moments of an import (20), of a
//! node assembling its span from the store (15) and of a node fetching a model's blobs
//! from a peer (15). After each kill `store verify` finds no blob corrupt (and, but for a
//! fetch cut short, none missing); started again, the interrupted work completes, the
//! node serves, and nothing a dead process half wrote is left in `tmp/`.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{nak_command, run_node, smollm_path, Node};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn nak(dir: &Path, args: &[&str]) -> Output {
    nak_command().arg("--data-dir").arg(dir).args(args).output().expect("nak-node runs")
}

/// `store verify --json` of `dir`, checked: no blob corrupt, and (`complete`) none that a
/// manifest names missing. A node killed in the middle of a fetch has the manifest and
/// only some blobs, as a node serving part of a model always does.
fn assert_verifies(dir: &Path, complete: bool, after: &str) {
    let out = nak(dir, &["store", "verify", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{after}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["corrupt"], serde_json::json!([]), "{after}: corrupt blobs");
    if complete {
        assert!(out.status.success(), "{after}: the store does not verify: {report}");
    }
}

/// Files in `dir/tmp` other than resumable downloads.
fn temp_leftovers(dir: &Path) -> Vec<String> {
    let names = std::fs::read_dir(dir.join("tmp")).into_iter().flatten().flatten();
    names.map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| !n.starts_with("partial-")).collect()
}

/// Kills `node` `after` its start and reaps it; whether it was still running then.
fn kill_at(mut node: Node, started: Instant, after: Duration) -> bool {
    std::thread::sleep(after.saturating_sub(started.elapsed()));
    let running = node.running();
    node.kill();
    running
}

/// How long `start` takes until its node prints `serving`.
fn time_to_serving(start: impl Fn() -> Node) -> Duration {
    let t0 = Instant::now();
    let node = start();
    node.line("serving ", Duration::from_secs(180));
    t0.elapsed()
}

#[test]
fn kill_9_during_import_fetch_and_assembly_leaves_a_store_that_verifies_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let model = smollm_path();
    let model = model.to_str().unwrap();
    let mut rng = StdRng::seed_from_u64(19);

    // Import: a reference run times it and gives the model id.
    let reference = dir.path().join("reference");
    let t0 = Instant::now();
    let out = nak(&reference, &["import", model]);
    let import_time = t0.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();

    let imported = dir.path().join("imported");
    let mut interrupted = [0; 3];
    for i in 0..20 {
        let at = import_time.mul_f64(rng.gen_range(0.0..1.0));
        let started = Instant::now();
        let node = Node::spawn(nak_command().arg("--data-dir").arg(&imported).args(["import", model]), None);
        interrupted[0] += usize::from(kill_at(node, started, at));
        assert_verifies(&imported, true, &format!("import killed at {at:?} (moment {i})"));
    }
    let out = nak(&imported, &["import", model]);
    assert!(out.status.success(), "the import after the kills: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id, "the import after the kills names another model");
    assert_verifies(&imported, true, "the import after the kills");
    assert_eq!(temp_leftovers(&imported), Vec::<String>::new(), "half-written files left after the import");

    // Assembly: a node serving layers 0:15 of the imported model assembles its span.
    let serve = |data: &Path, layers: &str, boot: Option<&str>| run_node(data, &id, layers, boot, &[]);
    let (assembled, assembling) = (dir.path().join("assembled"), dir.path().join("assembling"));
    copy_dir(&imported, &assembled);
    copy_dir(&imported, &assembling);
    let assemble_time = time_to_serving(|| serve(&assembled, "0:15", None));
    for i in 0..15 {
        let at = assemble_time.mul_f64(rng.gen_range(0.0..1.0));
        interrupted[1] += usize::from(kill_at(serve(&assembling, "0:15", None), Instant::now(), at));
        assert_verifies(&assembling, true, &format!("assembly killed at {at:?} (moment {i})"));
    }
    let node = serve(&assembling, "0:15", None);
    node.line("serving ", Duration::from_secs(120));
    drop(node);
    assert_verifies(&assembling, true, "the assembly after the kills");
    assert_eq!(temp_leftovers(&assembling), Vec::<String>::new(), "half-written files left after the assembly");

    // Fetch: a node with an empty store takes the whole model from a peer that has it.
    let provider = serve(&imported, "0:30", None);
    let addr = provider.line("listening ", Duration::from_secs(30))["listening ".len()..].to_string();
    provider.line("serving ", Duration::from_secs(120));
    let fetch_time = time_to_serving(|| serve(&dir.path().join("fetched"), "0:30", Some(&addr)));
    let fetching = dir.path().join("fetching");
    for i in 0..15 {
        let at = fetch_time.mul_f64(rng.gen_range(0.0..1.0));
        interrupted[2] += usize::from(kill_at(serve(&fetching, "0:30", Some(&addr)), Instant::now(), at));
        assert_verifies(&fetching, false, &format!("fetch killed at {at:?} (moment {i})"));
    }
    let node = serve(&fetching, "0:30", Some(&addr));
    node.line("serving ", Duration::from_secs(120));
    drop(node);
    assert_verifies(&fetching, true, "the fetch after the kills");
    assert_eq!(temp_leftovers(&fetching), Vec::<String>::new(), "half-written files left after the fetch");
    println!(
        "killed mid-work: {} of 20 imports ({import_time:?} each), {} of 15 assemblies ({assemble_time:?} to serving), \
         {} of 15 fetches ({fetch_time:?} to serving)",
        interrupted[0], interrupted[1], interrupted[2]
    );
    assert!(interrupted.iter().all(|n| *n > 0), "no kill fell inside one of the three: {interrupted:?}");
}

/// Copies a directory tree.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Runs `script` (with `args`) as root of a mount namespace of its own, where it may mount a
/// small tmpfs; None where this machine allows no such namespace.
fn in_mount_namespace(script: &str, args: &[&Path]) -> Option<Output> {
    let probe = std::process::Command::new("unshare").args(["-rm", "true"]).output().ok()?;
    if !probe.status.success() {
        return None;
    }
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["-rm", "sh", "-c", script, "sh"]).args(args);
    Some(cmd.output().expect("unshare runs"))
}

#[test]
fn a_full_disk_fails_an_import_with_a_clear_error_and_corrupts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (data, model) = (dir.path().join("data"), smollm_path());
    let nak = std::path::PathBuf::from(env!("CARGO_BIN_EXE_nak-node"));
    let size = std::fs::metadata(&model).unwrap().len();
    std::fs::create_dir(&data).unwrap();
    // A tmpfs a third the model's size: the import runs out of room part way. Then the
    // same tmpfs made large enough: the import is done again and completes.
    let script = format!(
        r#"set -u
        mount -t tmpfs -o size={small} tmpfs "$1" || exit 77
        "$2" --data-dir "$1" import "$3" > "$4/import-full.out" 2> "$4/import-full.err"; echo $? > "$4/import-full.rc"
        "$2" --data-dir "$1" store verify --json > "$4/verify-full.json" 2>&1
        ls -A "$1/tmp" > "$4/tmp-full.txt" 2>&1
        mount -o remount,size={large} "$1" || exit 78
        "$2" --data-dir "$1" import "$3" > "$4/import.out" 2>&1; echo $? > "$4/import.rc"
        "$2" --data-dir "$1" store verify --json > "$4/verify.json" 2>&1; echo $? > "$4/verify.rc"
        "#,
        small = size / 3,
        large = size * 3,
    );
    let Some(out) = in_mount_namespace(&script, &[&data, &nak, &model, dir.path()]) else {
        eprintln!("SKIPPED: no mount namespace can be made here (unshare -rm failed)");
        return;
    };
    assert!(out.status.success(), "the script failed: {}", String::from_utf8_lossy(&out.stderr));
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    assert_ne!(read("import-full.rc").trim(), "0", "an import onto a full disk reported success");
    let err = read("import-full.err");
    assert!(err.contains("No space left on device"), "the error does not say the disk is full: {err}");
    let verify: serde_json::Value = serde_json::from_str(&read("verify-full.json")).unwrap();
    assert_eq!(verify["corrupt"], serde_json::json!([]), "a full disk left a corrupt blob: {verify}");
    assert_eq!(read("tmp-full.txt").trim(), "", "a failed import left temp files");
    assert_eq!(read("import.rc").trim(), "0", "the import failed once there was room: {}", read("import.out"));
    assert_eq!(read("verify.rc").trim(), "0", "the store does not verify: {}", read("verify.json"));
}

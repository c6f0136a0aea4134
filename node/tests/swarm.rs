//! Separate `nak-node` processes on loopback form a swarm: the second node is given only
//! the model id and the first node's address, fetches its span's blobs from it, serves,
//! and `status` sees every block covered.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A child process that is killed when the test ends, whatever happens.
struct Node {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn start(args: &[&str]) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nak-node"))
            .args(args)
            .env("NAK_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("nak-node starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Node { child, lines }
    }

    /// The first stdout line starting with `prefix`, within `limit`.
    fn line(&self, prefix: &str, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(_) => panic!("no `{prefix}` line within {limit:?}"),
            }
        }
    }
}

#[test]
fn a_second_node_fetches_its_span_from_the_first_and_the_swarm_covers_every_block() {
    let model = common::smollm_path();
    assert!(model.exists(), "{} is missing: run the README's test command", model.display());
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let loopback = "/ip4/127.0.0.1/tcp/0";

    let a = Node::start(&[
        "--data-dir",
        a_dir.to_str().unwrap(),
        "run",
        "--model",
        model.to_str().unwrap(),
        "--serve-layers",
        "0:15",
        "--listen",
        loopback,
        "--announce-interval",
        "1",
        "--threads",
        "1",
    ]);
    let a_addr = a.line("listening ", Duration::from_secs(20))["listening ".len()..].to_string();
    let serving = a.line("serving ", Duration::from_secs(60));
    let id = serving.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(id.len(), 64);

    let b = Node::start(&[
        "--data-dir",
        b_dir.to_str().unwrap(),
        "run",
        "--model",
        &id,
        "--serve-layers",
        "15:30",
        "--listen",
        loopback,
        "--bootstrap",
        &a_addr,
        "--announce-interval",
        "1",
        "--threads",
        "1",
    ]);
    b.line("serving ", Duration::from_secs(90));
    // B holds exactly what it fetched: blocks 15..30, the head, the (tied) embedding, the metadata.
    let b_blobs =
        std::fs::read_dir(b_dir.join("blobs")).unwrap().flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap());
    let fetched = b_blobs.filter(|f| !f.as_ref().unwrap().file_name().to_string_lossy().ends_with(".obao")).count();
    assert_eq!(fetched, 15 + 3);

    let out = Command::new(env!("CARGO_BIN_EXE_nak-node"))
        .args(["status", "--bootstrap", &a_addr, "--model", &id, "--wait", "4", "--json"])
        .env("NAK_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let blocks = status["models"][0]["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 30);
    for b in blocks {
        assert_eq!(b["servers"].as_array().unwrap().len(), 1, "block {} coverage: {b}", b["index"]);
    }
    drop(b);
    drop(a);
}

//! The swarm monitor page (`/` of the API), driven in Debian's headless Chromium by
//! `interop/browser/monitor-check.mjs` (playwright-core): it shows the 3 servers of a
//! loopback swarm with full coverage, streams a chat answer, shows a killed server as
//! gone within one refresh, logs no console error and sends no request off the host.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{smollm_path, Node, Swarm};

/// How often the page gets a new snapshot (`api::monitor::REFRESH`).
const REFRESH: Duration = Duration::from_secs(2);

#[test]
fn the_monitor_page_shows_the_swarm_live_and_chats() {
    let mut swarm = Swarm::start(&smollm_path(), &["0:10", "10:20", "20:30"]);
    let data = swarm.dir.path().join("api");
    let args = ["--data-dir", data.to_str().unwrap(), "api", "--model", &swarm.id, "--bootstrap", &swarm.addr];
    let api =
        Node::start_logged(&[&args[..], &["--listen", "127.0.0.1:0"]].concat(), Some(&data.with_extension("log")));
    let url = api.line("api ", Duration::from_secs(120))["api ".len()..].to_string();

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../interop/browser/monitor-check.mjs");
    let mut browser = Command::new("timeout")
        .args(["300", "node", script.to_str().unwrap(), &url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs (scripts/setup.sh installs it and playwright-core)");
    let mut stdin = browser.stdin.take().unwrap();
    let mut steps = BufReader::new(browser.stdout.take().unwrap()).lines();
    let mut next = |want: &str| -> serde_json::Value {
        let line = steps.next().and_then(Result::ok).unwrap_or_else(|| {
            panic!("the page check ended before `{want}`; logs:\n{}", common::log_tails(swarm.dir.path(), 20))
        });
        let step: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(step["step"], want, "{step}");
        step
    };

    let servers = next("servers");
    assert_eq!(servers["count"], 3, "{servers}");
    assert_eq!(servers["held_cells"], 30, "each of the 30 blocks drawn held once: {servers}");
    let chat = next("chat");
    assert_eq!(chat["error"], false, "{chat}");
    assert!(!chat["text"].as_str().unwrap().trim().is_empty(), "an answer streamed: {chat}");
    next("kill");
    swarm.nodes[2].kill();
    writeln!(stdin, "killed").unwrap();
    let gone = next("gone");
    assert_eq!(gone["coverage"], "partial", "{gone}");
    let ms = gone["ms"].as_u64().unwrap();
    eprintln!("the page showed the killed server gone {ms} ms after the kill");
    assert!(ms <= REFRESH.as_millis() as u64 + 1000, "the killed server was shown gone after {ms} ms");
    let end = next("end");
    assert_eq!(end["console_errors"], serde_json::json!([]), "{end}");
    assert_eq!(end["offhost"], serde_json::json!([]), "{end}");
    drop(stdin);
    assert!(browser.wait().unwrap().success());
}

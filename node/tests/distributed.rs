//! Generation through a swarm of separate processes: three `nak-node run` servers on
//! loopback hold layers 0:10, 10:20 and 20:30 of SmolLM2-135M, and clients that know
//! only the first server's address generate through them.
//!
//! - `generate --bootstrap` gives the whole model's greedy tokens (one process, no
//!   network) for five prompts, in ring and in client-sampled mode, and reports the
//!   route it took; seeded sampling with penalties gives the whole model's tokens too,
//!   and eight sessions at once each get what one gets alone;
//! - `chat`, driven in tmux as a person would: a turn whose answer equals the whole
//!   model's, a second turn, Ctrl-C in the middle of a long answer (the program goes
//!   on), and `/reset`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{log_tails, nak_json as nak, smollm_path, Swarm, PROMPTS};

const TOKENS: &str = "24";

fn swarm() -> Swarm {
    Swarm::start(&smollm_path(), &["0:10", "10:20", "20:30"])
}

#[test]
fn three_processes_generate_the_whole_models_tokens_in_both_modes_and_chat_works_in_a_terminal() {
    let swarm = swarm();
    let model = smollm_path();
    for prompt in PROMPTS {
        let local = nak(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            prompt,
            "--max-tokens",
            TOKENS,
            "--json",
        ]);
        assert!(!local["tokens"].as_array().unwrap().is_empty());
        for mode in ["ring", "client"] {
            let args = ["generate", "--bootstrap", &swarm.addr, "--model", &swarm.id, "--prompt", prompt];
            let remote = nak(&[&args[..], &["--max-tokens", TOKENS, "--mode", mode, "--json"]].concat());
            assert_eq!(
                remote["tokens"],
                local["tokens"],
                "{mode} mode, prompt {prompt:?}\nlogs:\n{}",
                log_tails(swarm.dir.path(), 15)
            );
            assert_eq!(remote["mode"], mode);
            let route: Vec<(u64, u64)> = remote["route"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| (h["start"].as_u64().unwrap(), h["end"].as_u64().unwrap()))
                .collect();
            assert_eq!(route, vec![(0, 10), (10, 20), (20, 30)]);
        }
    }
    sampled_and_parallel(&swarm);
    chat_in_tmux(&swarm);
}

/// Seeded sampling with top-k, top-p and a repetition penalty gives the whole model's
/// tokens in both modes (the last hop's penalties see the prompt through the row tokens
/// each hop passes on), and eight sessions at once each get the greedy tokens of one.
fn sampled_and_parallel(swarm: &Swarm) {
    let model = smollm_path();
    let prompt = PROMPTS[3];
    let sampling =
        ["--temperature", "0.8", "--top-k", "10", "--top-p", "0.9", "--seed", "7", "--repeat-penalty", "1.3"];
    let local_args =
        ["generate", "--model", model.to_str().unwrap(), "--prompt", prompt, "--max-tokens", TOKENS, "--json"];
    let local = nak(&[&local_args[..], &sampling[..]].concat());
    let greedy = nak(&local_args);
    assert_ne!(local["tokens"], greedy["tokens"], "the sampling options change the text");
    let remote_args = ["generate", "--bootstrap", &swarm.addr, "--model", &swarm.id, "--prompt", prompt];
    for mode in ["ring", "client"] {
        let remote =
            nak(&[&remote_args[..], &["--max-tokens", TOKENS, "--mode", mode, "--json"], &sampling[..]].concat());
        assert_eq!(remote["tokens"], local["tokens"], "{mode} mode with sampling options");
    }
    let parallel = nak(&[&remote_args[..], &["--max-tokens", TOKENS, "--parallel", "8", "--json"]].concat());
    let sessions = parallel["session_tokens"].as_array().unwrap();
    assert_eq!(sessions.len(), 8, "{parallel}");
    for tokens in sessions {
        assert_eq!(tokens, &greedy["tokens"], "a session among eight");
    }
}

/// A tmux session running `chat`, killed when dropped.
struct Tmux(String);

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.0]).status();
    }
}

impl Tmux {
    fn keys(&self, keys: &[&str]) {
        let ok = Command::new("tmux").args(["send-keys", "-t", &self.0]).args(keys).status().unwrap().success();
        assert!(ok, "tmux send-keys failed");
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux").args(["capture-pane", "-p", "-J", "-S", "-", "-t", &self.0]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `done` holds for the screen; returns it.
    fn wait(&self, what: &str, limit: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "no {what} within {limit:?}; screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the `n`th input prompt.
    fn prompts(&self, n: usize) -> String {
        self.wait(&format!("prompt #{n}"), Duration::from_secs(60), |s| {
            s.lines().filter(|l| l.starts_with("> ")).count() >= n
        })
    }
}

/// The answer printed after the line `> question` (up to the next prompt).
fn answer_after(screen: &str, question: &str, nth: usize) -> String {
    let lines: Vec<&str> = screen.lines().collect();
    let at = lines.iter().enumerate().filter(|(_, l)| **l == format!("> {question}")).nth(nth).map(|(i, _)| i);
    let at = at.unwrap_or_else(|| panic!("no `> {question}` (#{nth}) on screen:\n{screen}"));
    let rest: Vec<&str> = lines[at + 1..].iter().take_while(|l| !l.starts_with("> ")).copied().collect();
    rest.join("\n")
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect()
}

fn chat_in_tmux(swarm: &Swarm) {
    let model = smollm_path();
    let question = "What is the capital of France?";
    // What the whole model answers, in one process: the same chat template, greedy.
    let vocab = nak_node::engine::Model::load_vocab(&model).unwrap();
    let prompt = vocab.apply_chat_template(&[("user", question)], true).unwrap();
    let local =
        nak(&["generate", "--model", model.to_str().unwrap(), "--prompt", &prompt, "--max-tokens", "300", "--json"]);
    let expected = local["text"].as_str().unwrap().to_string();

    let name = format!("nak-chat-{}", std::process::id());
    let bin = env!("CARGO_BIN_EXE_nak-node");
    let cmd = format!(
        "NAK_LOG=error NAKSHATRA_NO_MDNS=1 NAKSHATRA_DATA_DIR={} {bin} chat --bootstrap {} --model {} --max-tokens 300",
        common::test_data_dir().display(),
        swarm.addr,
        swarm.id
    );
    let ok = Command::new("tmux")
        .args(["new-session", "-d", "-x", "200", "-y", "50", "-s", &name, &cmd])
        .status()
        .unwrap()
        .success();
    assert!(ok, "tmux new-session failed");
    let tmux = Tmux(name);
    tmux.wait("connection", Duration::from_secs(60), |s| s.contains("connected: 3 hops"));
    tmux.prompts(1);

    tmux.keys(&[question, "Enter"]);
    let screen = tmux.prompts(2);
    assert_eq!(squash(&answer_after(&screen, question, 0)), squash(&expected), "screen:\n{screen}");

    tmux.keys(&["And of Italy?", "Enter"]);
    let screen = tmux.prompts(3);
    assert!(!answer_after(&screen, "And of Italy?", 0).trim().is_empty(), "screen:\n{screen}");

    // Ctrl-C once the long answer has started: it stops, the program does not.
    let long = "Write a very long story about a dragon who learns to sing.";
    tmux.keys(&[long, "Enter"]);
    tmux.wait("the answer starting", Duration::from_secs(30), |s| {
        s.contains(&format!("> {long}")) && !answer_after(s, long, 0).trim().is_empty()
    });
    tmux.keys(&["C-c"]);
    let screen = tmux.prompts(4);
    assert!(answer_after(&screen, long, 0).contains("[stopped]"), "screen:\n{screen}");

    tmux.keys(&["/reset", "Enter"]);
    tmux.wait("the reset", Duration::from_secs(10), |s| s.contains("(conversation reset)"));
    tmux.prompts(5);
    // A fresh conversation: the first question gets the first answer again.
    tmux.keys(&[question, "Enter"]);
    let screen = tmux.prompts(6);
    assert_eq!(squash(&answer_after(&screen, question, 1)), squash(&expected), "screen:\n{screen}");
    tmux.keys(&["/quit", "Enter"]);
}

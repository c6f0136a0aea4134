//! Helpers shared by the node's integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nak_node::engine::{EngineConfig, SessionConfig, SpanEngine, StepInput, StepOutput};

/// Prompts the SmolLM2 equality tests generate from.
pub const PROMPTS: [&str; 5] = [
    "The capital of France is",
    "<|im_start|>user\nWrite a haiku about rivers.<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
    "List three primary colors:",
];
use nak_shard_store::{span, write_synthetic, GgufFile, SynthConfig, TensorType};

/// Engine settings small enough for fast tests.
pub fn test_engine_config() -> EngineConfig {
    EngineConfig { ctx_per_session: 256, max_sessions: 4, max_batch_rows: 64, threads: 2, ..EngineConfig::default() }
}

/// Writes a synthetic model into `dir` and returns its path.
pub fn synth_model(dir: &Path, cfg: &SynthConfig) -> PathBuf {
    let path = dir.join(format!("synth-{}L-{}-{}.gguf", cfg.n_layer, cfg.n_embd, cfg.seed));
    write_synthetic(cfg, &path).expect("synthetic model");
    path
}

/// A 6-layer synthetic model with grouped-query attention and Q8_0 weights.
pub fn small_synth(dir: &Path) -> PathBuf {
    synth_model(
        dir,
        &SynthConfig {
            n_layer: 6,
            n_embd: 64,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 160,
            n_vocab: 400,
            weight_type: TensorType::Q8_0,
            seed: 7,
            ..SynthConfig::default()
        },
    )
}

/// The SmolLM2 test model: `NAK_TEST_MODEL`, or `models/SmolLM2-135M-Instruct.Q4_1.gguf` at the workspace root.
pub fn smollm_path() -> PathBuf {
    if let Ok(p) = std::env::var("NAK_TEST_MODEL") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// A test model in `models/` at the workspace root (the README's test command fetches them).
pub fn test_model(file: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models").join(file);
    assert!(path.exists(), "{} is missing: run the README's test command", path.display());
    path
}

/// Gemma 3 270M, Q4_K_M: gemma3, 18 layers, a sliding window with every sixth layer global.
pub const GEMMA3: &str = "gemma-3-270m-Q4_K_M.gguf";
/// Qwen2.5-0.5B-Instruct, Q4_K_M: qwen2, 24 layers, QKV biases, an untied head.
pub const QWEN2: &str = "Qwen2.5-0.5B-Instruct-Q4_K_M.gguf";

/// Slices `model` into span files for `ranges` (in `dir`) and loads an engine for each.
pub fn span_engines(dir: &Path, model: &Path, ranges: &[(u32, u32)], cfg: &EngineConfig) -> Vec<SpanEngine> {
    let src = GgufFile::open(model).expect("model opens");
    ranges
        .iter()
        .map(|&(a, b)| {
            let path = dir.join(format!("span-{a}-{b}.gguf"));
            span::write_span(&src, a..b, &path).expect("span written");
            SpanEngine::load(&path, cfg.clone()).expect("span loads")
        })
        .collect()
}

/// The prompt's last-row logits through a chain of span engines.
pub fn chain_prompt_logits(engines: &mut [SpanEngine], prompt: &[i32]) -> Vec<f32> {
    let mut input = StepInput::Tokens(prompt.to_vec());
    for e in engines.iter_mut() {
        let s = e.open_session(SessionConfig { return_logits: true, ..SessionConfig::default() }).unwrap();
        match e.step(s, input).unwrap() {
            StepOutput::Hidden(a) => input = StepInput::Hidden(a),
            StepOutput::Token { logits, .. } => return logits,
            StepOutput::Cached | StepOutput::Rows(_) => panic!("a one-row step that samples returned no token"),
        }
    }
    panic!("the chain ended without a head");
}

/// A child process that is killed when the test ends, whatever happens.
pub struct Node {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Option<PathBuf>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    pub fn start(args: &[&str]) -> Node {
        Self::start_logged(args, None)
    }

    /// The same, writing the process's log (stderr) to `log`.
    pub fn start_logged(args: &[&str], log: Option<&Path>) -> Node {
        Self::start_with_env(args, log, &[])
    }

    /// The same, with `env` set for the process.
    pub fn start_with_env(args: &[&str], log: Option<&Path>, env: &[(&str, &str)]) -> Node {
        Self::spawn(nak_command().args(args).envs(env.iter().copied()), log)
    }

    /// Starts `cmd` (a nak-node, perhaps through a wrapper) with warnings logged to `log`
    /// and its stdout read line by line.
    pub fn spawn(cmd: &mut Command, log: Option<&Path>) -> Node {
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
            None => Stdio::null(),
        };
        if !cmd.get_envs().any(|(k, _)| k == "NAK_LOG") {
            cmd.env("NAK_LOG", "warn");
        }
        let mut child =
            cmd.env("NO_COLOR", "1").stdout(Stdio::piped()).stderr(stderr).spawn().expect("nak-node starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Node { child, lines, log: log.map(Path::to_path_buf) }
    }

    /// The first stdout line starting with `prefix`, within `limit`.
    pub fn line(&self, prefix: &str, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(_) => {
                    let log = self.log.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
                    // Backtrace frames are indented; the messages are not.
                    let lines: Vec<&str> = log.lines().filter(|l| !l.starts_with(' ')).collect();
                    let tail = &lines[lines.len().saturating_sub(20)..];
                    panic!("no `{prefix}` line within {limit:?} (or the process ended); log:\n{}", tail.join("\n"))
                }
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has not ended yet.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends the process a signal by name (`STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill").args([&format!("-{name}"), &self.pid().to_string()]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -{name} failed");
    }

    /// The next already-printed stdout line starting with `prefix`, without waiting.
    pub fn printed(&self, prefix: &str) -> Option<String> {
        self.lines.try_iter().find(|line| line.starts_with(prefix))
    }
}

/// The last `lines` lines of every `*.log` file in `dir`, for failure messages.
pub fn log_tails(dir: &Path, lines: usize) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out += &format!("--- {}\n{}\n", path.display(), all[all.len().saturating_sub(lines)..].join("\n"));
        }
    }
    out
}

/// A `nak-node` command for a test: mDNS off (tests on one host would otherwise find
/// each other's nodes), warnings logged, and unless `--data-dir` says otherwise a data
/// directory of this test process (the user's own would collect peers of earlier runs).
pub fn nak_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nak-node"));
    cmd.env("NAKSHATRA_NO_MDNS", "1").env("NAK_LOG", "warn").env("NAKSHATRA_DATA_DIR", test_data_dir());
    cmd
}

/// This test process's own default data directory (see [`nak_command`]).
pub fn test_data_dir() -> PathBuf {
    let data = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("data-{}", std::process::id()));
    std::fs::create_dir_all(&data).expect("test data dir");
    data
}

/// `nak-node ARGS` (a command that prints one JSON object), which must succeed.
pub fn nak_json(args: &[&str]) -> serde_json::Value {
    let out = nak_command().args(args).output().unwrap();
    assert!(out.status.success(), "nak-node {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Engine settings for whole prompts of a real model: 512 positions, one session.
pub fn prompt_config() -> EngineConfig {
    EngineConfig { ctx_per_session: 512, max_sessions: 1, max_batch_rows: 512, ..test_engine_config() }
}

/// `run` processes serving `model` on loopback, one per span: the first imports the
/// file, the others fetch their blobs from it. Killed when dropped.
pub struct Swarm {
    /// Data directories and logs.
    pub dir: tempfile::TempDir,
    /// The model id.
    pub id: String,
    /// The first server's address (everyone's bootstrap).
    pub addr: String,
    /// The servers, in the order of their spans.
    pub nodes: Vec<Node>,
}

impl Swarm {
    /// Starts the servers and waits until every one serves.
    pub fn start(model: &Path, spans: &[&str]) -> Swarm {
        Self::start_with(model, spans, |_| vec![])
    }

    /// The same, server `i` started with the environment `env(i)`.
    pub fn start_with(model: &Path, spans: &[&str], env: impl Fn(usize) -> Vec<(&'static str, String)>) -> Swarm {
        Self::start_full(model, spans, |_| vec![], env)
    }

    /// The same, server `i` started with the arguments `extra(i)` too.
    pub fn start_full(
        model: &Path,
        spans: &[&str],
        extra: impl Fn(usize) -> Vec<String>,
        env: impl Fn(usize) -> Vec<(&'static str, String)>,
    ) -> Swarm {
        assert!(model.exists(), "{} is missing: run the README's test command", model.display());
        let dir = tempfile::tempdir().expect("temp dir");
        let run = |i: usize, model: &str, bootstrap: Option<&str>| {
            let (env, extra) = (env(i), extra(i));
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            run_node_env(&dir.path().join(format!("n{i}")), model, spans[i], bootstrap, &extra, &env)
        };
        let first = run(0, model.to_str().expect("utf-8 path"), None);
        let addr = first.line("listening ", Duration::from_secs(20))["listening ".len()..].to_string();
        let serving = first.line("serving ", Duration::from_secs(120));
        let id = serving.split_whitespace().nth(1).expect("a model id").to_string();
        let mut nodes = vec![first];
        for i in 1..spans.len() {
            nodes.push(run(i, &id, Some(&addr)));
        }
        for n in &nodes[1..] {
            n.line("serving ", Duration::from_secs(120));
        }
        Swarm { dir, id, addr, nodes }
    }
}

/// `nak-node --data-dir DATA run --model MODEL --serve-layers LAYERS` on a loopback TCP
/// port with one CPU thread and 1 s announcements, joining through `bootstrap`, with
/// `extra` arguments, logging to `DATA.log`.
pub fn run_node(data: &Path, model: &str, layers: &str, bootstrap: Option<&str>, extra: &[&str]) -> Node {
    run_node_env(data, model, layers, bootstrap, extra, &[])
}

/// The same, with `env` set for the process.
pub fn run_node_env(
    data: &Path,
    model: &str,
    layers: &str,
    bootstrap: Option<&str>,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Node {
    let mut args = vec!["--data-dir", data.to_str().expect("utf-8 path"), "run", "--model", model];
    args.extend(["--serve-layers", layers, "--listen", "/ip4/127.0.0.1/tcp/0", "--announce-interval", "1"]);
    args.extend(["--threads", "1"]);
    if let Some(b) = bootstrap {
        args.extend(["--bootstrap", b]);
    }
    args.extend(extra);
    Node::start_with_env(&args, Some(&data.with_extension("log")), env)
}

/// Network namespaces a test makes (with veth links, bridges and routes between them),
/// removed when dropped. Root only: [`Namespaces::new`] says None elsewhere.
pub struct Namespaces {
    tag: String,
    names: Vec<String>,
}

/// Namespaces made by this process so far, so that tests running at once differ.
static NAMESPACE_SETS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Namespaces {
    /// An empty set, or None where namespaces cannot be made (not root, no iproute2).
    pub fn new() -> Option<Namespaces> {
        let n = NAMESPACE_SETS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut set = Namespaces { tag: format!("{}-{n}", std::process::id()), names: Vec::new() };
        set.add("probe")?;
        Some(set)
    }

    /// Makes namespace `name` (loopback up) and returns its full name; None if it cannot.
    pub fn add(&mut self, name: &str) -> Option<String> {
        let full = format!("nak-{name}-{}", self.tag);
        if !run_ip(&format!("netns add {full}")) {
            return None;
        }
        self.names.push(full.clone());
        assert!(run_ip(&format!("-n {full} link set lo up")), "cannot bring up loopback in {full}");
        Some(full)
    }

    /// Makes namespace `name`, which must succeed once the set exists.
    pub fn make(&mut self, name: &str) -> String {
        self.add(name).unwrap_or_else(|| panic!("cannot make namespace {name}"))
    }

    /// A namespace holding one bridge, `br0`: a switch to [`Namespaces::plug`] hosts into.
    pub fn switch(&mut self, name: &str) -> String {
        let ns = self.make(name);
        assert!(run_ip(&format!("-n {ns} link add br0 type bridge")) && run_ip(&format!("-n {ns} link set br0 up")));
        ns
    }

    /// Plugs `host`'s interface `dev` (with address `cidr`) into `switch`'s bridge.
    pub fn plug(&self, host: &str, dev: &str, cidr: &str, switch: &str) {
        let port = format!("v{}", self.names.iter().position(|n| n == host).expect("a namespace of this set"));
        let ok = run_ip(&format!("-n {host} link add {dev} type veth peer name {port} netns {switch}"))
            && run_ip(&format!("-n {switch} link set {port} master br0"))
            && run_ip(&format!("-n {switch} link set {port} up"))
            && run_ip(&format!("-n {host} addr add {cidr} dev {dev}"))
            && run_ip(&format!("-n {host} link set {dev} up"));
        assert!(ok, "cannot plug {host} into {switch}");
    }

    /// Links `a`'s interface `a_dev` (address `a_cidr`) to `b`'s `b_dev` (`b_cidr`) by a veth pair.
    pub fn link(&self, (a, a_dev, a_cidr): (&str, &str, &str), (b, b_dev, b_cidr): (&str, &str, &str)) {
        let ok = run_ip(&format!("-n {a} link add {a_dev} type veth peer name {b_dev} netns {b}"))
            && run_ip(&format!("-n {a} addr add {a_cidr} dev {a_dev}"))
            && run_ip(&format!("-n {b} addr add {b_cidr} dev {b_dev}"))
            && run_ip(&format!("-n {a} link set {a_dev} up"))
            && run_ip(&format!("-n {b} link set {b_dev} up"));
        assert!(ok, "cannot link {a} and {b}");
    }

    /// Runs `program ARGS` inside `ns`, which must succeed.
    pub fn exec(&self, ns: &str, program: &str, args: &str) {
        let out = Command::new("ip").args(["netns", "exec", ns, program]).args(args.split_whitespace()).output();
        let out = out.unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(out.status.success(), "{program} {args} in {ns}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `nak-node ARGS` in `ns` with `env` (mDNS on unless `env` says otherwise), logging to `log`.
    pub fn node(&self, ns: &str, args: &[&str], log: &Path, env: &[(&str, &str)]) -> Node {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_nak-node")]).args(args);
        Node::spawn(cmd.env("NAKSHATRA_NO_MDNS", "false").envs(env.iter().copied()), Some(log))
    }
}

fn run_ip(args: &str) -> bool {
    Command::new("ip").args(args.split_whitespace()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// One HTTP/1.1 request to `addr` (`host:port`) on a connection of its own: the status
/// and the body (read until the server closes the connection).
pub fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("the HTTP server answers");
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (status, body)
}

/// The value of the metric sample named exactly `name` (labels included) in a
/// `/metrics` text, if present.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

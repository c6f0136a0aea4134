//! Hops that die or stall in the middle of a generation, with real `nak-node run`
//! processes on loopback serving SmolLM2-135M and a client in this process.
//!
//! Two disjoint routes (`0:15`, `15:30`, `0:15`, `15:30`): a hop of the route in use is
//! killed (SIGKILL) at a random step of a 200-token greedy generation; the client routes
//! around it, the replacement rebuilds its cache (exact replay) from the hop before it or
//! from the client's tokens, and the generation ends with the tokens the whole model
//! gives without any failure. Likewise for the middle hop of a 3-hop route, for two
//! failures in one generation, for a hop that stops answering without closing (SIGSTOP),
//! and, with no backup left, the client stops with an error that says so and keeps the
//! tokens so far. A Gemma 3 route (sliding-window layers, a tied head) survives a kill too,
//! and so do drafted trips (prompt lookup and a draft model, ring and client mode).

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{log_tails, run_node, smollm_path, test_model, Node, GEMMA3};
use libp2p::PeerId;
use nak_node::client::{
    DecodeMode, DraftSource, RemoteGeneration, RemoteSession, ReplayPolicy, SessionOptions, Speculation,
    SpeculationReport, SwarmModel,
};
use nak_node::engine::EngineConfig;
use nak_node::net::{identity, Network, NetworkConfig};
use nak_node::speculative::DraftModel;
use nak_shard_store::{ModelId, Store};
use rand::Rng;

const PROMPT: &str = "Once upon a time, in a small village by the sea,";
/// For drafted trips: an answer that copies the prompt, where drafts stand.
const COPY: &str =
    "<|im_start|>user\nCopy this text exactly, word for word, twice: The old lighthouse stood on the edge \
of the cliff, its white paint peeling in the salt wind. Every night the keeper climbed the hundred and twelve steps to \
light the lamp, and every morning he climbed down again to make his tea.<|im_end|>\n<|im_start|>assistant\n";

/// Tokens of the whole model's greedy answer to [`COPY`] (it copies the text once and ends).
const COPY_ANSWER: usize = 47;

/// The prompt of a session with `opts`: one whose answer copies it for prompt lookup. A
/// draft model (the model itself here) is right on any text, but reads the prompt in
/// the background before it drafts, which takes a loaded host more trips than the copy's
/// short answer lasts.
fn prompt_of(opts: &SessionOptions) -> &'static str {
    match &opts.speculation {
        Some(s) if s.source == DraftSource::Lookup => COPY,
        _ => PROMPT,
    }
}
const TOKENS: usize = 200;

/// One scenario at a time: each runs four servers on two cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// Servers of one model, each with its peer id.
struct Cluster {
    dir: tempfile::TempDir,
    id: String,
    addr: String,
    nodes: Vec<(PeerId, Node)>,
}

impl Cluster {
    fn start(spans: &[&str]) -> Cluster {
        Self::start_model(&smollm_path(), spans)
    }

    fn start_model(model: &std::path::Path, spans: &[&str]) -> Cluster {
        Self::start_with(model, spans, |_| vec![])
    }

    /// Server `i` started with the arguments `extra(i)` too.
    fn start_with(model: &std::path::Path, spans: &[&str], extra: impl Fn(usize) -> Vec<String>) -> Cluster {
        assert!(model.exists(), "{} is missing: run the README's test command", model.display());
        let dir = tempfile::tempdir().unwrap();
        let peer_of = |line: &str| line.rsplit('/').next().unwrap().parse::<PeerId>().unwrap();
        fn strs(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        let first = run_node(&dir.path().join("n0"), model.to_str().unwrap(), spans[0], None, &strs(&extra(0)));
        let addr = first.line("listening ", Duration::from_secs(20))["listening ".len()..].to_string();
        let id = first.line("serving ", Duration::from_secs(60)).split_whitespace().nth(1).unwrap().to_string();
        let mut nodes = vec![(peer_of(&addr), first)];
        for (i, span) in spans.iter().enumerate().skip(1) {
            let node = run_node(&dir.path().join(format!("n{i}")), &id, span, Some(&addr), &strs(&extra(i)));
            let listening = node.line("listening ", Duration::from_secs(20));
            nodes.push((peer_of(&listening), node));
        }
        for (_, node) in &nodes[1..] {
            node.line("serving ", Duration::from_secs(90));
        }
        Cluster { dir, id, addr, nodes }
    }

    /// Takes the node of `peer` out of the cluster (to kill or stop it).
    fn take(&mut self, peer: PeerId) -> Node {
        let i = self.nodes.iter().position(|(p, _)| *p == peer).expect("a node of the route");
        self.nodes.remove(i).1
    }

    fn logs(&self) -> String {
        log_tails(self.dir.path(), 12)
    }
}

/// The whole model's greedy tokens, in one process.
fn reference(model: &std::path::Path, prompt: &str) -> Vec<i64> {
    let out = common::nak_command()
        .args(["generate", "--model", model.to_str().unwrap(), "--prompt", prompt, "--max-tokens"])
        .arg(TOKENS.to_string())
        .args(["--json", "--threads", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["tokens"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect()
}

/// A client of the cluster's model.
async fn client(cluster: &Cluster, dir: &std::path::Path) -> SwarmModel {
    let store = Store::open(dir).unwrap();
    let key = identity::load_or_create(dir).unwrap();
    let cfg = NetworkConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: vec![cluster.addr.parse().unwrap()],
        ..Default::default()
    };
    let (net, _) = Network::spawn(key, store.clone(), cfg).await.unwrap();
    let id = ModelId::from_hex(&cluster.id).unwrap();
    tokio::time::timeout(Duration::from_secs(60), SwarmModel::connect(net, &store, id)).await.unwrap().unwrap()
}

/// What to do to a server when the generation has produced some tokens.
enum Fault {
    Kill,
    Stop,
}

/// A route index that stands for the route's last hop, however many it has.
const LAST: usize = usize::MAX;

/// Runs a 200-token generation on a route of `cluster`, doing each `(route index,
/// fault)` in turn, at random steps ([`LAST`]: the last hop); returns the output, the
/// faulted nodes (alive if stopped) and the steps.
async fn generate_with_faults(
    cluster: &mut Cluster,
    opts: SessionOptions,
    faults: Vec<(usize, Fault)>,
) -> (RemoteGeneration, Vec<Node>, Vec<usize>, Vec<Duration>) {
    let scratch = tempfile::tempdir().unwrap();
    let model = client(cluster, scratch.path()).await;
    let prompt = prompt_of(&opts);
    let answer = if prompt == COPY { COPY_ANSWER } else { TOKENS };
    let mut session = RemoteSession::start(&model, opts, Duration::from_secs(20)).await.unwrap();
    let route = session.route();
    // NAK_FAILOVER_STEPS=a,b reproduces a run: the steps are in every failure message.
    let fixed: Option<Vec<usize>> = std::env::var("NAK_FAILOVER_STEPS")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().parse().expect("NAK_FAILOVER_STEPS: numbers")).collect());
    let mut rng = rand::thread_rng();
    let mut steps: Vec<usize> =
        fixed.unwrap_or_else(|| faults.iter().map(|_| rng.gen_range(10..answer - 20)).collect());
    steps.sort_unstable();
    if steps.len() == 2 && steps[1] - steps[0] < 20 {
        steps[1] = steps[0] + 20; // let the first repair finish before the second fault
    }
    let peer = |i: usize| route[i.min(route.len() - 1)].peer;
    let mut victims: Vec<(Node, Fault)> = faults.into_iter().map(|(i, f)| (cluster.take(peer(i)), f)).collect();
    let tokens = model.vocab().tokenize(prompt, true).unwrap();
    let (mut count, mut next) = (0, 0);
    let mut gaps = Vec::new();
    let mut at = Instant::now();
    let out = session
        .generate(&model, &tokens, TOKENS, |_| {
            count += 1;
            gaps.push(at.elapsed());
            at = Instant::now();
            if next < steps.len() && count == steps[next] {
                match &mut victims[next] {
                    (node, Fault::Kill) => node.kill(),
                    (node, Fault::Stop) => node.signal("STOP"),
                }
                next += 1;
            }
            true
        })
        .await
        .unwrap_or_else(|e| panic!("generation failed at steps {steps:?}: {e}\n{}", cluster.logs()));
    session.close().await;
    (out, victims.into_iter().map(|(n, _)| n).collect(), steps, gaps)
}

fn failed_peers(out: &RemoteGeneration) -> Vec<String> {
    out.failovers.iter().flat_map(|f| f.failed.clone()).collect()
}

fn exact(mode: DecodeMode) -> SessionOptions {
    SessionOptions { replay: ReplayPolicy::Exact, mode, ..Default::default() }
}

/// Kills hop `hop` of the route in use in `spans` and checks that the generation goes
/// on to the whole model's tokens.
fn one_kill(spans: &[&str], hop: usize, mode: DecodeMode) {
    one_kill_of(&smollm_path(), spans, hop, exact(mode))
}

/// [`one_kill`] with another model and options.
fn one_kill_of(model: &std::path::Path, spans: &[&str], hop: usize, opts: SessionOptions) {
    one_kill_with(model, spans, |_| vec![], hop, opts);
}

/// [`one_kill_of`] with server `i` started with the arguments `extra(i)` too; returns
/// what speculation did.
fn one_kill_with(
    model: &std::path::Path,
    spans: &[&str],
    extra: impl Fn(usize) -> Vec<String>,
    hop: usize,
    opts: SessionOptions,
) -> Option<SpeculationReport> {
    let mode = opts.mode;
    let which = if hop == LAST { "the last hop".to_string() } else { format!("hop {hop}") };
    // A trip of drafts may bring several tokens past the kill before the failure shows.
    let slack = 2 + opts.speculation.as_ref().map_or(0, |s| s.draft_max as usize);
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let want = reference(model, prompt_of(&opts));
    let mut cluster = Cluster::start_with(model, spans, extra);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (out, _dead, steps, _) = rt.block_on(generate_with_faults(&mut cluster, opts, vec![(hop, Fault::Kill)]));
    let got: Vec<i64> = out.generation.tokens.iter().map(|&t| t as i64).collect();
    assert_eq!(
        got,
        want,
        "{which} killed after {steps:?} tokens; failovers {:?}, error {:?}\n{}",
        out.failovers,
        out.error,
        cluster.logs()
    );
    assert_eq!(out.failovers.len(), 1, "{:?}", out.failovers);
    let f = &out.failovers[0];
    // The hop may finish the step in hand before it dies.
    assert!(
        (steps[0]..=steps[0] + slack).contains(&f.step),
        "detected after {} tokens, killed after {}",
        f.step,
        steps[0]
    );
    assert!(f.recovery_ms.is_some(), "a token came after the repair");
    if let Some(spec) = out.speculation.filter(|s| !s.fell_back) {
        assert!(spec.accepted > 0, "drafts stood: {spec:?}\n{}", cluster.logs());
        eprintln!("{mode:?} mode, drafted: {spec:?}");
    }
    let replaced: HashSet<(u32, u32)> = f.replacement.iter().map(|h| (h.start, h.end)).collect();
    let route: Vec<(u32, u32)> = out.route.iter().map(|h| (h.start, h.end)).collect();
    assert!(replaced.iter().all(|r| route.contains(r)), "the replacement is in the final route");
    eprintln!(
        "{mode:?} mode, {which} of {spans:?} killed after {} tokens: {} positions replayed exactly, next token {:.0} ms after detection",
        steps[0],
        f.positions,
        f.recovery_ms.unwrap_or(f64::NAN)
    );
    out.speculation
}

#[test]
fn the_first_hop_dies_and_exact_replay_from_the_clients_tokens_keeps_the_tokens() {
    one_kill(&["0:15", "15:30", "0:15", "15:30"], 0, DecodeMode::Ring);
}

#[test]
fn the_last_hop_dies_and_exact_replay_from_the_hop_before_keeps_the_tokens() {
    one_kill(&["0:15", "15:30", "0:15", "15:30"], 1, DecodeMode::Ring);
}

#[test]
fn the_last_hop_dies_in_client_sampled_mode_and_the_replacement_sends_logits_from_where_it_stopped() {
    one_kill(&["0:15", "15:30", "0:15", "15:30"], 1, DecodeMode::Client);
}

#[test]
fn a_gemma3_hop_dies_and_exact_replay_keeps_the_tokens() {
    // Sliding-window layers on both sides of the cut, and a tied head on the last span.
    one_kill_of(&test_model(GEMMA3), &["0:9", "9:18", "0:9", "9:18"], 1, exact(DecodeMode::Ring));
}

#[test]
fn drafted_trips_survive_a_dead_hop_in_both_modes() {
    // Ring mode: the last hop drafted and verified, and its replacement goes on drafting;
    // a first hop is rebuilt from the client's tokens, in the shapes of the steps it ran.
    for (mode, hop) in [(DecodeMode::Ring, 1), (DecodeMode::Client, 1), (DecodeMode::Ring, 0)] {
        let opts = SessionOptions { speculation: Some(Speculation::default()), ..exact(mode) };
        one_kill_of(&smollm_path(), &["0:15", "15:30", "0:15", "15:30"], hop, opts);
    }
    // With a draft model (SmolLM2 itself) on all but a third 15:30: the last hop dies (a
    // drafting route may hand a slower drafting server only the last layers, after a hop
    // on the other); in ring mode its replacement is the other server with a draft model,
    // and drafts with it from the context it was rebuilt with.
    let draft = smollm_path();
    let cfg = EngineConfig { threads: 1, max_sessions: 1, ..EngineConfig::default() };
    let model = Arc::new(DraftModel::load(&draft, cfg).expect("the draft model loads"));
    for (mode, draft_model) in [(DecodeMode::Ring, None), (DecodeMode::Client, Some(model))] {
        let speculation = Speculation { source: DraftSource::Draft, draft_model, ..Speculation::default() };
        let opts = SessionOptions { speculation: Some(speculation), ..exact(mode) };
        let serve_draft =
            |i: usize| if i < 4 { vec!["--draft-model".into(), draft.to_str().unwrap().into()] } else { vec![] };
        one_kill_with(&smollm_path(), &["0:15", "15:30", "0:15", "15:30", "15:30"], serve_draft, LAST, opts);
    }
    // Only one of three 15:30s has a draft model: when it dies, another takes its place
    // (one not in the route already) and drafts by prompt lookup, and the report says so.
    let speculation = Speculation { source: DraftSource::Draft, ..Speculation::default() };
    let opts = SessionOptions { speculation: Some(speculation), ..exact(DecodeMode::Ring) };
    let only_one =
        |i: usize| if i == 1 { vec!["--draft-model".into(), draft.to_str().unwrap().into()] } else { vec![] };
    let spans = ["0:15", "15:30", "0:15", "15:30", "15:30"];
    let report = one_kill_with(&smollm_path(), &spans, only_one, LAST, opts);
    let report = report.expect("a speculation report");
    assert!(report.fell_back && report.source == Some(DraftSource::Lookup), "{report:?}");
}

#[test]
fn the_middle_hop_of_three_dies_and_exact_replay_keeps_the_tokens() {
    one_kill(&["0:10", "10:20", "20:30", "10:20"], 1, DecodeMode::Ring);
}

#[test]
fn two_failures_in_one_generation() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let want = reference(&smollm_path(), PROMPT);
    let mut cluster = Cluster::start(&["0:15", "15:30", "0:15", "15:30"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let faults = vec![(0, Fault::Kill), (1, Fault::Kill)];
    let (out, _dead, steps, _) = rt.block_on(generate_with_faults(&mut cluster, exact(DecodeMode::Ring), faults));
    let got: Vec<i64> = out.generation.tokens.iter().map(|&t| t as i64).collect();
    assert_eq!(
        got,
        want,
        "hops killed after {steps:?} tokens; failovers {:?}, error {:?}\n{}",
        out.failovers,
        out.error,
        cluster.logs()
    );
    assert_eq!(out.failovers.len(), 2, "{:?}", out.failovers);
    for (f, killed) in out.failovers.iter().zip(&steps) {
        assert!((*killed..=killed + 2).contains(&f.step), "detected after {} tokens, killed after {killed}", f.step);
    }
    let survivors: HashSet<String> = cluster.nodes.iter().map(|(p, _)| p.to_string()).collect();
    assert!(out.route.iter().all(|h| survivors.contains(&h.peer.to_string())), "the route ends on the backups");
}

#[test]
fn a_stalled_hop_is_detected_and_routed_around() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let want = reference(&smollm_path(), PROMPT);
    let mut cluster = Cluster::start(&["0:15", "15:30", "0:15", "15:30"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (out, stopped, steps, gaps) =
        rt.block_on(generate_with_faults(&mut cluster, exact(DecodeMode::Ring), vec![(1, Fault::Stop)]));
    for node in &stopped {
        node.signal("CONT");
    }
    let got: Vec<i64> = out.generation.tokens.iter().map(|&t| t as i64).collect();
    assert_eq!(
        got,
        want,
        "hop stopped after {steps:?} tokens; failovers {:?}, error {:?}\n{}",
        out.failovers,
        out.error,
        cluster.logs()
    );
    assert_eq!(out.failovers.len(), 1, "{:?}", out.failovers);
    assert_eq!(out.failovers[0].cause, "stalled");
    let stall = gaps.iter().max().unwrap();
    eprintln!(
        "last hop stopped after {} tokens: {:.0} ms without a token, {:.0} ms of it from detection to the next token",
        steps[0],
        stall.as_secs_f64() * 1e3,
        out.failovers[0].recovery_ms.unwrap_or(f64::NAN)
    );
}

#[test]
fn with_no_backup_the_client_says_so_and_keeps_the_tokens_so_far() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let want = reference(&smollm_path(), PROMPT);
    let mut cluster = Cluster::start(&["0:15", "15:30"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (out, _dead, steps, _) =
        rt.block_on(generate_with_faults(&mut cluster, SessionOptions::default(), vec![(1, Fault::Kill)]));
    let error = out.error.clone().expect("the generation reports why it stopped");
    assert!(error.contains("no backup for layers 15:30"), "{error}");
    let got: Vec<i64> = out.generation.tokens.iter().map(|&t| t as i64).collect();
    assert!(got.len() >= steps[0] && got.len() < TOKENS, "{} tokens kept, killed after {}", got.len(), steps[0]);
    assert_eq!(got, want[..got.len()], "the tokens kept are the ones generated");
    assert_eq!(failed_peers(&out), Vec::<String>::new(), "no repair was completed");
}

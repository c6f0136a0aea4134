//! Generation and chat: `nak-node generate` with a whole model, a local chain of spans,
//! or (with `--bootstrap`) through the swarm's servers ([`nak_node::client`]); and
//! `nak-node chat`, a conversation with a model the swarm serves.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use nak_node::audit::Auditor;
use nak_node::chain::{GenerateOptions, LocalChain};
use nak_node::client::{
    DecodeMode, RemoteGeneration, RemoteSession, ReplayPolicy, SessionOptions, Speculation, SwarmModel, TextStream,
};
use nak_node::engine::SamplingParams;
use nak_node::net::{Network, NetworkConfig, NetworkHandle};
use nak_protocol::ActivationDtype;
use nak_shard_store::{ModelId, Store};

use super::audit::{audit_generation, audit_rate, auditor, learn_proofs};
use super::{block_on, open_store, EngineArgs, JoinArgs, SpeculationArgs};

/// How long to listen for announcements before routing.
const ROUTE_WAIT: Duration = Duration::from_secs(15);

/// Generate text with a whole model, with it split into a local chain of spans, or
/// (with --bootstrap) through the swarm's servers.
#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Model GGUF, or the id (or a unique prefix) of a model in the store.
    #[arg(long)]
    model: PathBuf,
    /// Prompt text (tokenized with special tokens added and parsed).
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingParams,
    /// Cut the model at these layer indices into a local chain of spans, e.g. 10,20.
    #[arg(long, value_delimiter = ',')]
    local_split: Vec<u32>,
    /// Hidden-state encoding between spans: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    wire_dtype: ActivationDtype,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    swarm: SwarmClientArgs,
}

/// Running through the swarm instead of locally.
#[derive(clap::Args)]
struct SwarmClientArgs {
    /// Generate through the swarm's servers (`--model` is then a model id): with any of
    /// these flags, or when `--model` is a model id the local store lacks.
    #[command(flatten)]
    join: JoinArgs,
    /// ring: the last server samples and sends the token to the first; client: it sends
    /// its top logits here and this client samples.
    #[arg(long, value_enum, default_value = "ring")]
    mode: DecodeMode,
    /// Client mode: logits the last server returns per token (the client samples among them).
    #[arg(long, default_value_t = 16)]
    top_logits: u32,
    /// Run this many sessions at once on the same route and report their aggregate speed (JSON).
    #[arg(long)]
    parallel: Option<usize>,
    /// How a server that takes over a failed one's layers rebuilds its cache: exact (the
    /// same computation, so the same tokens on CPU) or fast (one batched prefill).
    #[arg(long, value_enum, default_value = "fast")]
    replay: ReplayPolicy,
    /// Ask every server for signed receipts of each step and check them as they come
    /// (signatures, each server's chain, hop-to-hop hashes); needs f32 hidden states.
    #[arg(long)]
    verify: bool,
    /// With --verify: the chance that each server's session is audited afterwards
    /// (its input rows fetched and replayed on a local copy of its span). Default 0.05.
    #[arg(long)]
    audit_rate: Option<f64>,
    #[command(flatten)]
    speculation: SpeculationArgs,
}

/// Chat with a model the swarm serves: streams answers, keeps the conversation,
/// `/reset` starts over, Ctrl-C stops an answer.
#[derive(clap::Args)]
pub struct ChatArgs {
    #[command(flatten)]
    join: JoinArgs,
    /// Model id.
    #[arg(long)]
    model: String,
    /// System message.
    #[arg(long)]
    system: Option<String>,
    /// Longest answer, in tokens.
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingParams,
    #[arg(long, value_enum, default_value = "ring")]
    mode: DecodeMode,
    /// How a server that takes over a failed one's layers rebuilds its cache.
    #[arg(long, value_enum, default_value = "fast")]
    replay: ReplayPolicy,
    /// Ask every server for signed receipts and check them as they come.
    #[arg(long)]
    verify: bool,
    /// With --verify: the chance that each server's session is audited after each answer. Default 0.05.
    #[arg(long)]
    audit_rate: Option<f64>,
    #[command(flatten)]
    speculation: SpeculationArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Sampling options as given, if they are in range.
fn checked(sampling: SamplingParams) -> Result<SamplingParams> {
    sampling.validate().map_err(anyhow::Error::msg)?;
    Ok(sampling)
}

/// Whether `model` names a model of the swarm rather than a local one: a full model id
/// that is neither a file nor in the local store.
fn swarm_model(model: &std::path::Path, data_dir: &Option<PathBuf>) -> bool {
    let text = model.to_string_lossy().to_ascii_lowercase();
    let id = text.len() == 64 && ModelId::from_hex(&text).is_ok();
    let local = || {
        let dir = super::data_dir(data_dir.clone());
        dir.join("manifests").is_dir() && Store::open(&dir).is_ok_and(|s| s.resolve_model(&text).is_ok())
    };
    id && !model.is_file() && !local()
}

/// `nak-node generate`: locally, or through the swarm when a flag of [`JoinArgs`] is
/// given or the model is only the swarm's.
pub fn generate(args: GenerateArgs, data_dir: Option<PathBuf>) -> Result<()> {
    if args.swarm.join.given() || swarm_model(&args.model, &data_dir) {
        let remote = RemoteArgs {
            join: args.swarm.join,
            model: args.model.to_string_lossy().into_owned(),
            mode: args.swarm.mode,
            sampling: checked(args.sampling)?,
            dtype: args.wire_dtype,
            top_logits: args.swarm.top_logits,
            replay: args.swarm.replay,
            verify: args.swarm.verify,
            audit_rate: audit_rate(args.swarm.audit_rate, args.swarm.verify)?,
            threads: args.engine.config().threads,
            speculation: args.swarm.speculation.speculation(args.swarm.mode, args.engine.config().threads)?,
            data_dir,
        };
        return block_on(generate_remote(remote, &args.prompt, args.max_tokens, args.swarm.parallel, args.json));
    }
    if args.swarm.speculation.speculative.is_some() {
        bail!("--speculative decodes through the swarm (name its servers with --bootstrap, or a model id)");
    }
    let cfg = args.engine.config();
    let mut chain = if args.model.is_file() {
        LocalChain::from_model(&args.model, &args.local_split, &cfg)
    } else {
        let store = open_store(data_dir)?;
        let id = store
            .resolve_model(&args.model.to_string_lossy())
            .with_context(|| format!("{} is neither a file nor a model in the store", args.model.display()))?;
        LocalChain::from_store(&store, &id, &args.local_split, &cfg)
    }
    .with_context(|| format!("loading {}", args.model.display()))?;
    let prompt = chain.tokenize(&args.prompt)?;
    let opts = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling: checked(args.sampling)?,
        dtype: args.wire_dtype,
        ignore_eos: false,
    };
    let out = chain.generate(&prompt, &opts)?;
    if args.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!("{}{}", args.prompt, out.text);
        eprintln!(
            "[{} span(s)] prompt {} tokens, prefill {:.1} ms, decode {:.1} tokens/s, {} tokens",
            out.spans,
            out.prompt_tokens,
            out.prefill_ms,
            out.decode_tokens_per_s,
            out.tokens.len()
        );
    }
    Ok(())
}

/// `nak-node chat`.
pub fn chat(args: ChatArgs, data_dir: Option<PathBuf>) -> Result<()> {
    let remote = RemoteArgs {
        join: args.join,
        model: args.model,
        mode: args.mode,
        sampling: checked(args.sampling)?,
        dtype: ActivationDtype::F32,
        top_logits: 16,
        replay: args.replay,
        verify: args.verify,
        audit_rate: audit_rate(args.audit_rate, args.verify)?,
        threads: args.engine.config().threads,
        speculation: args.speculation.speculation(args.mode, args.engine.config().threads)?,
        data_dir,
    };
    block_on(converse(remote, args.system, args.max_tokens))
}

/// What both commands need to reach the model.
struct RemoteArgs {
    /// How to join the swarm.
    join: JoinArgs,
    /// The model id (hex).
    model: String,
    /// Decoding mode.
    mode: DecodeMode,
    /// Sampling.
    sampling: SamplingParams,
    /// Hidden states between hops.
    dtype: ActivationDtype,
    /// Client mode: logits per token.
    top_logits: u32,
    /// How a replacement for a failed hop rebuilds its cache.
    replay: ReplayPolicy,
    /// Ask for receipts and check them.
    verify: bool,
    /// Chance of auditing each hop's session.
    audit_rate: f64,
    /// Threads of the auditor's replays.
    threads: i32,
    /// Speculative decoding.
    speculation: Option<Speculation>,
    /// Where the banlist, the proofs and the spans audits replay on are kept.
    data_dir: Option<PathBuf>,
}

/// A client in the swarm: the model, its auditor, and the throwaway store its identity lives in.
struct Joined {
    model: SwarmModel,
    auditor: Auditor,
    _scratch: tempfile::TempDir,
}

/// Joins the swarm on a throwaway identity and finds the model `model` (an id; None: the
/// one model the peers announce): its manifest and tokenizer, in a scratch store that
/// lives as long as the returned dir.
pub(super) async fn join_model(
    join: &JoinArgs,
    data_dir: Option<PathBuf>,
    model: Option<&str>,
) -> Result<(SwarmModel, tempfile::TempDir)> {
    let id = model
        .map(|m| ModelId::from_hex(&m.to_ascii_lowercase()).context("--model must be a model id (64 hex digits)"))
        .transpose()?;
    let scratch = tempfile::tempdir()?;
    let store = Store::open(scratch.path())?;
    let dir = super::data_dir(data_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // TCP and QUIC on all interfaces, as a server: hops and relays may need to reach the
    // client back, and hole punching from behind a NAT works best with both.
    let network = NetworkConfig { dht_server: false, ..join.network(Vec::new(), &dir, true)? };
    let (net, _) = Network::spawn_in_store(&store, network.clone()).await?;
    join.require_peer(&net, &network, &dir).await?;
    let id = match id {
        Some(id) => id,
        None => only_model(&net).await?,
    };
    let model = tokio::time::timeout(Duration::from_secs(60), SwarmModel::connect(net, &store, id))
        .await
        .context("no answer from the swarm about the model within 60 s")??;
    Ok((model, scratch))
}

/// The one model the peers announce (the topics they subscribe to), asked for when no
/// `--model` was given; with none or several within [`MODEL_WAIT`], an error that lists them.
async fn only_model(net: &NetworkHandle) -> Result<ModelId> {
    let t0 = std::time::Instant::now();
    loop {
        let ids = net.peer_models().await?;
        match ids.as_slice() {
            [id] => return Ok(*id),
            [] if t0.elapsed() < MODEL_WAIT => tokio::time::sleep(Duration::from_millis(100)).await,
            [] => bail!("the peers announce no model within {} s; name one with --model", MODEL_WAIT.as_secs()),
            several => {
                let list: Vec<String> = several.iter().map(|id| id.to_hex()).collect();
                bail!("the swarm serves {} models; choose one with --model: {}", list.len(), list.join(", "))
            }
        }
    }
}

/// How long a command without `--model` looks for the swarm's model.
const MODEL_WAIT: Duration = Duration::from_secs(10);

/// Joins the swarm, finds the model, and learns the fraud proofs the swarm holds (a
/// proven liar is never routed through).
async fn connect(args: &RemoteArgs) -> Result<Joined> {
    let (model, scratch) = join_model(&args.join, args.data_dir.clone(), Some(&args.model)).await?;
    let data = open_store(args.data_dir.clone())?;
    let mut auditor = auditor(model.net(), &data, model.manifest(), args.audit_rate, args.threads).await?;
    learn_proofs(&mut auditor, &model, ROUTE_WAIT, usize::MAX).await?;
    Ok(Joined { model, auditor, _scratch: scratch })
}

async fn open(model: &SwarmModel, args: &RemoteArgs) -> Result<RemoteSession> {
    let opts = SessionOptions {
        mode: args.mode,
        sampling: args.sampling,
        dtype: args.dtype,
        top_logits: args.top_logits,
        replay: args.replay,
        verify: args.verify,
        speculation: args.speculation.clone(),
        ..Default::default()
    };
    Ok(RemoteSession::start(model, opts, ROUTE_WAIT).await?)
}

/// Says on stderr what went wrong with the route during a generation, and what the
/// receipts showed.
fn report_repairs(out: &RemoteGeneration) {
    if let Some(s) = &out.speculation {
        eprintln!(
            "[speculative: {} trips, {} drafted, {} stood ({:.0} %), {:.2} tokens per trip{}]",
            s.trips,
            s.drafted,
            s.accepted,
            100.0 * s.acceptance,
            s.tokens_per_trip,
            if s.fell_back { "; no backup had a draft model, prompt lookup since the failover" } else { "" }
        );
    }
    if let Some(v) = &out.verification {
        eprintln!(
            "[verified: {} receipts, {} hop-to-hop hashes matched, {} problem(s); {} session(s) audited, {} fraud(s)]",
            v.receipts_checked,
            v.links_checked,
            v.problems.len(),
            v.sessions_audited,
            v.frauds.len()
        );
        for f in &v.frauds {
            eprintln!(
                "[fraud proven: {} lied at step {} on layers {}:{} (proof {}); banned]",
                f.peer, f.step, f.layers.0, f.layers.1, f.proof
            );
        }
        for p in &v.problems {
            eprintln!(
                "[receipt problem at step {}, layers {}:{}: {} ({})]",
                p.step,
                p.layers.0,
                p.layers.1,
                p.what,
                p.peers.join(", ")
            );
        }
    }
    for f in &out.failovers {
        let hops: Vec<String> = f.replacement.iter().map(|h| format!("{}:{}@{}", h.start, h.end, h.peer)).collect();
        let recovery = f.recovery_ms.map_or("no token since".to_string(), |ms| format!("next token {ms:.0} ms later"));
        eprintln!(
            "[failover after {} tokens: {} ({}); replaced by {}, {} replay of {} positions; {recovery}]",
            f.step,
            f.failed.join(", "),
            f.cause,
            hops.join(" -> "),
            f.replay,
            f.positions
        );
    }
    if out.resyncs > 0 {
        eprintln!("[route resynchronised {} times: a step was lost between live hops]", out.resyncs);
    }
}

/// `generate --bootstrap`: one prompt, through the swarm; with `parallel`, that many
/// sessions at once on the same route (a throughput benchmark).
async fn generate_remote(
    args: RemoteArgs,
    prompt: &str,
    max_tokens: usize,
    parallel: Option<usize>,
    json: bool,
) -> Result<()> {
    let Joined { model, mut auditor, .. } = connect(&args).await?;
    let tokens = model.vocab().tokenize(prompt, true)?;
    if let Some(n) = parallel {
        return generate_parallel(&model, &mut auditor, &args, &tokens, max_tokens, n.max(1)).await;
    }
    let mut session = open(&model, &args).await?;
    let mut out = session.generate(&model, &tokens, max_tokens, |_| true).await?;
    if args.verify {
        audit_generation(&mut auditor, &mut session, &mut out).await;
    }
    session.close().await;
    if json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        report_repairs(&out);
        println!("{prompt}{}", out.generation.text);
        let route: Vec<String> = out.route.iter().map(|h| format!("{}:{}@{}", h.start, h.end, h.peer)).collect();
        eprintln!(
            "[{} mode, route {}] prompt {} tokens, prefill {:.1} ms, decode {:.1} tokens/s, {} tokens",
            out.mode,
            route.join(" -> "),
            out.generation.prompt_tokens,
            out.generation.prefill_ms,
            out.generation.decode_tokens_per_s,
            out.generation.tokens.len()
        );
    }
    if let Some(error) = &out.error {
        anyhow::bail!("the generation stopped after {} tokens (kept above): {error}", out.generation.tokens.len());
    }
    Ok(())
}

async fn generate_parallel(
    model: &SwarmModel,
    auditor: &mut Auditor,
    args: &RemoteArgs,
    tokens: &[i32],
    max_tokens: usize,
    parallel: usize,
) -> Result<()> {
    let mut sessions = Vec::new();
    for _ in 0..parallel {
        sessions.push(open(model, args).await?);
    }
    let t0 = std::time::Instant::now();
    let runs = futures::future::join_all(sessions.iter_mut().map(|s| s.generate(model, tokens, max_tokens, |_| true)));
    let mut outs = runs.await.into_iter().collect::<Result<Vec<_>, _>>()?;
    let wall = t0.elapsed().as_secs_f64();
    if args.verify {
        for (s, out) in sessions.iter_mut().zip(&mut outs) {
            audit_generation(auditor, s, out).await;
        }
    }
    for s in sessions {
        s.close().await;
    }
    let total: usize = outs.iter().map(|o| o.generation.tokens.len()).sum();
    let report = serde_json::json!({
        "sessions": parallel,
        "tokens": total,
        "wall_s": wall,
        "aggregate_tokens_per_s": total as f64 / wall,
        "decode_tokens_per_s": outs.iter().map(|o| o.generation.decode_tokens_per_s).collect::<Vec<_>>(),
        "session_tokens": outs.iter().map(|o| &o.generation.tokens).collect::<Vec<_>>(),
        "route": outs.first().map(|o| o.route.clone()),
        "verification": outs.iter().map(|o| &o.verification).collect::<Vec<_>>(),
        "discovery_ms": model.discovery_time().map(|d| d.as_secs_f64() * 1e3),
    });
    println!("{report}");
    Ok(())
}

/// Writes text to the terminal at once.
fn show(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// An interactive conversation. `/reset` starts over, `/quit` (or end of input) leaves,
/// Ctrl-C stops the answer being written.
async fn converse(args: RemoteArgs, system: Option<String>, max_tokens: usize) -> Result<()> {
    let Joined { model, mut auditor, .. } = connect(&args).await?;
    let mut session = open(&model, &args).await?;
    let route: Vec<String> = session.route().iter().map(|h| format!("{}:{}", h.start, h.end)).collect();
    println!(
        "connected: {} hops ({}), {} mode. /reset starts over, /quit leaves.",
        route.len(),
        route.join(" "),
        args.mode
    );

    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            flag.store(true, Ordering::SeqCst);
        }
    });
    let base: Vec<(String, String)> = system.into_iter().map(|s| ("system".to_string(), s)).collect();
    let mut messages = base.clone();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
    loop {
        print!("> ");
        std::io::stdout().flush()?;
        interrupted.store(false, Ordering::SeqCst);
        let Some(line) = lines.next_line().await? else { break };
        let line = line.trim();
        match line {
            "" => continue,
            "/quit" | "/exit" => break,
            "/reset" => {
                messages = base.clone();
                println!("(conversation reset)");
                continue;
            }
            _ => {}
        }
        messages.push(("user".into(), line.to_string()));
        let refs: Vec<(&str, &str)> = messages.iter().map(|(r, c)| (r.as_str(), c.as_str())).collect();
        let prompt = model.vocab().apply_chat_template(&refs, true)?;
        let tokens = model.vocab().tokenize(&prompt, false)?;
        let mut text = TextStream::default();
        let mut out = session
            .generate(&model, &tokens, max_tokens, |t| {
                show(&text.push(&model.vocab().token_piece(t.token)));
                !interrupted.load(Ordering::SeqCst)
            })
            .await?;
        if args.verify {
            audit_generation(&mut auditor, &mut session, &mut out).await;
        }
        show(&text.finish());
        println!("{}", if out.cancelled { " [stopped]" } else { "" });
        report_repairs(&out);
        if let Some(error) = &out.error {
            eprintln!("[the answer stopped: {error}]");
        }
        messages.push(("assistant".into(), out.generation.text));
    }
    session.close().await;
    Ok(())
}

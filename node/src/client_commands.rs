//! `nak-node generate --bootstrap …` and `nak-node chat`: text from a model that the
//! swarm serves, through [`nak_node::client`].

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use libp2p::Multiaddr;
use nak_node::client::{DecodeMode, RemoteGeneration, RemoteSession, ReplayPolicy, SessionOptions, SwarmModel};
use nak_node::engine::SamplingParams;
use nak_protocol::ActivationDtype;
use nak_shard_store::{ModelId, Store};

use crate::swarm_commands::{network_config, start_network};

/// How long to listen for announcements before routing.
const ROUTE_WAIT: Duration = Duration::from_secs(15);

/// What both commands need to reach the model.
pub struct RemoteArgs {
    /// Peers to join.
    pub bootstrap: Vec<Multiaddr>,
    /// The model id (hex).
    pub model: String,
    /// Decoding mode.
    pub mode: DecodeMode,
    /// Sampling.
    pub sampling: SamplingParams,
    /// Hidden states between hops.
    pub dtype: ActivationDtype,
    /// Client mode: logits per token.
    pub top_logits: u32,
    /// How a replacement for a failed hop rebuilds its cache.
    pub replay: ReplayPolicy,
}

/// Joins the swarm on a throwaway identity and store, and finds the model.
async fn connect(args: &RemoteArgs) -> Result<(SwarmModel, tempfile::TempDir)> {
    let id =
        ModelId::from_hex(&args.model.to_ascii_lowercase()).context("--model must be a model id (64 hex digits)")?;
    let scratch = tempfile::tempdir()?;
    let store = Store::open(scratch.path())?;
    let listen = vec!["/ip4/0.0.0.0/tcp/0".parse().context("literal multiaddr")?];
    let (net, _) = start_network(&store, network_config(listen, args.bootstrap.clone())).await?;
    let model = tokio::time::timeout(Duration::from_secs(60), SwarmModel::connect(net, &store, id))
        .await
        .context("no answer from the swarm about the model within 60 s")??;
    Ok((model, scratch))
}

async fn open(model: &SwarmModel, args: &RemoteArgs) -> Result<RemoteSession> {
    let opts = SessionOptions {
        mode: args.mode,
        sampling: args.sampling,
        dtype: args.dtype,
        top_logits: args.top_logits,
        replay: args.replay,
        ..Default::default()
    };
    Ok(RemoteSession::start(model, opts, ROUTE_WAIT).await?)
}

/// Says on stderr what went wrong with the route during a generation.
fn report_repairs(out: &RemoteGeneration) {
    for f in &out.failovers {
        let hops: Vec<String> = f.replacement.iter().map(|h| format!("{}:{}@{}", h.start, h.end, h.peer)).collect();
        let recovery = f.recovery_ms.map_or("no token since".to_string(), |ms| format!("next token {ms:.0} ms later"));
        eprintln!(
            "[failover after {} tokens: {} ({}); replaced by {}, {:?} replay of {} positions; {recovery}]",
            f.step,
            f.failed.join(", "),
            f.cause,
            hops.join(" -> "),
            f.replay,
            f.positions
        );
    }
}

/// `generate --bootstrap`: one prompt, through the swarm; with `parallel`, that many
/// sessions at once on the same route (a throughput benchmark).
pub async fn generate(
    args: RemoteArgs,
    prompt: &str,
    max_tokens: usize,
    parallel: Option<usize>,
    json: bool,
) -> Result<()> {
    let (model, _scratch) = connect(&args).await?;
    let tokens = model.vocab().tokenize(prompt, true)?;
    if let Some(n) = parallel {
        return generate_parallel(&model, &args, &tokens, max_tokens, n.max(1)).await;
    }
    let mut session = open(&model, &args).await?;
    let out = session.generate(&model, &tokens, max_tokens, |_| true).await?;
    session.close().await;
    if json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        report_repairs(&out);
        println!("{prompt}{}", out.generation.text);
        let route: Vec<String> = out.route.iter().map(|h| format!("{}:{}@{}", h.start, h.end, h.peer)).collect();
        eprintln!(
            "[{:?} mode, route {}] prompt {} tokens, prefill {:.1} ms, decode {:.1} tokens/s, {} tokens",
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
    let outs = runs.await.into_iter().collect::<Result<Vec<_>, _>>()?;
    let wall = t0.elapsed().as_secs_f64();
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
    });
    println!("{report}");
    Ok(())
}

/// Prints token bytes as they come, holding back an incomplete UTF-8 sequence.
struct Streamer {
    pending: Vec<u8>,
}

impl Streamer {
    fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_some() => self.pending.len(), // invalid, not incomplete: print as is
            Err(e) => e.valid_up_to(),
        };
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&self.pending[..valid]);
        let _ = out.flush();
        self.pending.drain(..valid);
    }
}

/// `chat`: an interactive conversation. `/reset` starts over, `/quit` (or end of input)
/// leaves, Ctrl-C stops the answer being written.
pub async fn chat(args: RemoteArgs, system: Option<String>, max_tokens: usize) -> Result<()> {
    let (model, _scratch) = connect(&args).await?;
    let mut session = open(&model, &args).await?;
    let route: Vec<String> = session.route().iter().map(|h| format!("{}:{}", h.start, h.end)).collect();
    println!(
        "connected: {} hops ({}), {:?} mode. /reset starts over, /quit leaves.",
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
        let mut streamer = Streamer { pending: Vec::new() };
        let out = session
            .generate(&model, &tokens, max_tokens, |t| {
                streamer.push(&model.vocab().token_piece(t));
                !interrupted.load(Ordering::SeqCst)
            })
            .await?;
        streamer.push(&[]);
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

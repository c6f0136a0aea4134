//! `nak-node demo`: a small swarm on this machine in one command. It starts `--servers`
//! `nak-node run` processes on loopback, each serving an equal share of the model's
//! layers (the first imports the file, the others fetch their blobs from it), then joins
//! them as a client, generates a short sample through them, and serves the
//! OpenAI-compatible API, the swarm monitor and `/metrics` on `--listen`. Ctrl-C (or SIGTERM) stops everything; the servers' data lives in a
//! temporary directory removed at the end.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use nak_node::client::{RemoteSession, SessionOptions, SwarmModel};
use nak_shard_store::{GgufFile, SpanPosition};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use super::generate::join_model;
use super::{block_on, JoinArgs};

/// Start a local swarm of the test model (servers on loopback), with the API and the swarm monitor.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// The model file (GGUF) the servers share out.
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    /// Servers to start, each with an equal share of the layers.
    #[arg(long, default_value_t = 3)]
    servers: u32,
    /// Where the API, the monitor and /metrics listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// CPU threads per server.
    #[arg(long, default_value_t = 1)]
    threads: u32,
}

/// How long a server may take to load (or fetch) its span.
const SERVER_START: Duration = Duration::from_secs(180);

/// A server process, killed when dropped, and the lines it prints.
struct ServerProcess {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl ServerProcess {
    fn start(args: &[String]) -> Result<Self> {
        let exe = std::env::current_exe().context("cannot find this program")?;
        let mut child = Command::new(exe)
            .args(args)
            // These servers form their own swarm: no mDNS, no remembered peers of the user's.
            .env("NAKSHATRA_NO_MDNS", "1")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a server")?;
        let stdout = child.stdout.take().context("no stdout")?;
        Ok(Self { _child: child, lines: BufReader::new(stdout).lines() })
    }

    /// The rest of the first line that starts with `prefix`.
    async fn line(&mut self, prefix: &str) -> Result<String> {
        let wait = async {
            while let Some(line) = self.lines.next_line().await? {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return Ok(rest.to_string());
                }
            }
            bail!("a server stopped before printing `{prefix}` (its log is above)")
        };
        tokio::time::timeout(SERVER_START, wait).await.context("a server took too long to start")?
    }
}

/// Generates a few tokens through the swarm, to show it works before the API opens.
async fn sample(model: &SwarmModel) -> Result<()> {
    const PROMPT: &str = "The capital of France is";
    let tokens = model.vocab().tokenize(PROMPT, true)?;
    let mut session = RemoteSession::start(model, SessionOptions::default(), Duration::from_secs(30)).await?;
    let out = session.generate(model, &tokens, 24, |_| true).await;
    session.close().await;
    let out = out?;
    let hops = out.route.len();
    println!("{PROMPT}{}", out.generation.text);
    println!(
        "  ({} tokens at {:.1} tok/s through {hops} servers)",
        out.generation.tokens.len(),
        out.generation.decode_tokens_per_s
    );
    Ok(())
}

/// `nak-node demo`.
pub fn demo(args: DemoArgs) -> Result<()> {
    if !args.model.is_file() {
        bail!("{} is missing: scripts/setup.sh fetches the test models, or pass --model FILE", args.model.display());
    }
    let file = GgufFile::open(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let n_layer = SpanPosition::of(&file)?.total;
    if args.servers == 0 || args.servers > n_layer {
        bail!("--servers must be between 1 and the model's {n_layer} layers");
    }
    let dir = tempfile::tempdir()?;
    block_on(async move {
        let cut = |i: u32| i * n_layer / args.servers;
        let server_args = |i: u32, model: &str| -> Vec<String> {
            let data = dir.path().join(format!("server{i}"));
            let mut a: Vec<String> = vec!["--data-dir".into(), data.display().to_string(), "run".into()];
            a.extend(["--model".into(), model.into(), "--serve-layers".into(), format!("{}:{}", cut(i), cut(i + 1))]);
            a.extend(["--listen".into(), "/ip4/127.0.0.1/tcp/0".into(), "--threads".into(), args.threads.to_string()]);
            a
        };
        let mut first = ServerProcess::start(&server_args(0, &args.model.display().to_string()))?;
        let bootstrap = first.line("listening ").await?;
        let id = first.line("serving ").await?.split_whitespace().next().unwrap_or_default().to_string();
        println!("server 1 of {} serves layers {}:{} of model {id}", args.servers, cut(0), cut(1));
        let mut servers = vec![first];
        for i in 1..args.servers {
            let mut a = server_args(i, &id);
            a.extend(["--bootstrap".into(), bootstrap.clone()]);
            servers.push(ServerProcess::start(&a)?);
        }
        for (i, server) in servers.iter_mut().enumerate().skip(1) {
            server.line("serving ").await?;
            println!("server {} of {} serves layers {}:{}", i + 1, args.servers, cut(i as u32), cut(i as u32 + 1));
        }
        let join = JoinArgs {
            bootstrap: vec![bootstrap.parse().context("a server's listening address")?],
            no_mdns: true,
            swarm: nak_node::net::PUBLIC_SWARM.to_string(),
            swarm_key: None,
        };
        // A data directory of its own: the demo's client must not remember these peers.
        let (model, _scratch) = join_model(&join, Some(dir.path().join("client")), Some(&id)).await?;
        sample(&model).await?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let at = listener.local_addr()?;
        println!("monitor http://{at}/");
        println!("api http://{at}/v1 (model {id})");
        println!("try: curl http://{at}/v1/chat/completions -H 'content-type: application/json' \\");
        println!(
            "       -d '{{\"model\": \"{id}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'"
        );
        println!("Ctrl-C stops the demo");
        // SIGTERM as well as Ctrl-C: either way the servers are stopped on the way out.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            served = nak_node::api::serve(Arc::new(model), listener) => served.context("the API stopped")?,
            _ = tokio::signal::ctrl_c() => println!("stopping"),
            _ = term.recv() => println!("stopping"),
        }
        drop(servers);
        Ok(())
    })
}

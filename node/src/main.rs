//! `nak-node`: the Nakshatra node's command line.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

use libp2p::Multiaddr;
use nak_node::bench::{self, BenchOptions};
use nak_node::chain::{GenerateOptions, LocalChain};
use nak_node::client::{DecodeMode, ReplayPolicy};
use nak_node::engine::{EngineConfig, SamplingParams};
use nak_protocol::ActivationDtype;
use nak_shard_store::{span, GgufFile, Store, SynthConfig, TensorType};

mod batch_bench;
mod child_lines;
mod client_commands;
mod dht_bench;
mod failover_bench;
mod serve_command;
mod store_commands;
mod swarm_commands;

#[derive(Parser)]
#[command(name = "nak-node", version, about = "Run a span of a large language model in the Nakshatra swarm")]
struct Cli {
    /// Data directory of the blob store (default: $NAKSHATRA_DATA_DIR, else the per-user data dir).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text with a whole model, with it split into a local chain of spans, or
    /// (with --bootstrap) through the swarm's servers.
    Generate(GenerateArgs),
    /// Chat with a model the swarm serves: streams answers, keeps the conversation,
    /// `/reset` starts over, Ctrl-C stops an answer.
    Chat {
        /// Peers to join.
        #[arg(long, required = true)]
        bootstrap: Vec<Multiaddr>,
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
    },
    /// Split a GGUF into content-addressed blobs in the store; prints the model id.
    Import {
        /// The whole model.
        model: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List the models in the store.
    Models {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Maintain the store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Write a span GGUF holding layers A:B (end exclusive) of a model.
    Slice {
        /// A whole-model GGUF, or the id (or a unique prefix) of a model in the store.
        model: String,
        /// Layers as A:B, end exclusive.
        #[arg(long)]
        layers: String,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Write a synthetic llama-family model with random weights.
    Synth {
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, default_value_t = 4)]
        layers: u32,
        #[arg(long, default_value_t = 64)]
        embd: u32,
        #[arg(long, default_value_t = 4)]
        heads: u32,
        #[arg(long, default_value_t = 2)]
        kv_heads: u32,
        #[arg(long, default_value_t = 128)]
        ff: u32,
        #[arg(long, default_value_t = 512)]
        vocab: u32,
        /// Weight type: f32, f16 or q8_0.
        #[arg(long, default_value = "f32")]
        weight_type: String,
        /// Tie the output head to the token embedding.
        #[arg(long)]
        tied: bool,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Measure the whole model against local chains of 1, 2 and 3 spans.
    Bench(BenchArgs),
    /// Aggregate decode throughput of concurrent sessions on one engine (continuous batching).
    BenchBatch {
        /// Model GGUF.
        #[arg(long)]
        model: PathBuf,
        /// Concurrent session counts to measure.
        #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
        sessions: Vec<usize>,
        /// Decode steps per session.
        #[arg(long, default_value_t = 64)]
        tokens: usize,
        /// Repetitions (the median is reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Join the swarm and serve a span of a model.
    Run {
        /// A whole-model GGUF (imported), or a model id (fetched from the swarm).
        #[arg(long)]
        model: String,
        /// Layers to serve: auto (the span that most helps the swarm, within --max-memory), all, or A:B (end exclusive).
        #[arg(long, default_value = "all")]
        serve_layers: String,
        /// Addresses to listen on (default: TCP and QUIC on all interfaces).
        #[arg(long)]
        listen: Vec<libp2p::Multiaddr>,
        /// Peers to join through (with their /p2p/ peer id).
        #[arg(long)]
        bootstrap: Vec<libp2p::Multiaddr>,
        /// Most bytes of weights this node may hold (with auto, default: half the available memory).
        #[arg(long)]
        max_memory: Option<u64>,
        /// CPU threads.
        #[arg(long)]
        threads: Option<i32>,
        /// Sessions this server holds at once (each with its own KV cache of 2048 positions).
        #[arg(long, default_value_t = 8)]
        max_sessions: u32,
        /// Seconds between announcements.
        #[arg(long, default_value_t = 10)]
        announce_interval: u64,
        /// With `--serve-layers auto`: mean seconds between placement re-checks (jittered ±50 %).
        #[arg(long, default_value_t = 120)]
        rebalance_interval: u64,
        /// With `--serve-layers auto`: how much a move must lift the weakest blocks' throughput.
        #[arg(long, default_value_t = 1.25)]
        min_gain: f64,
        /// Relay connections for peers that cannot be dialled directly (run this on a public node).
        #[arg(long)]
        relay_server: bool,
    },
    /// Show a model's servers and block coverage as the swarm announces them.
    Status {
        /// Peers to join through.
        #[arg(long)]
        bootstrap: Vec<libp2p::Multiaddr>,
        /// The model id (or a unique prefix of a model in the local store); default: every model the peers announce.
        #[arg(long)]
        model: Option<String>,
        /// Seconds to listen for announcements.
        #[arg(long, default_value_t = 12)]
        wait: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure DHT provider-lookup latency in a swarm of peer processes on loopback.
    BenchDht {
        /// Peer processes.
        #[arg(long, default_value_t = 10)]
        processes: u32,
        /// Timed lookups.
        #[arg(long, default_value_t = 200)]
        lookups: usize,
    },
    /// Time to recover from a hop killed mid-generation, by replay policy and history
    /// (four `run` servers on loopback holding two routes of the model).
    BenchFailover {
        /// Model GGUF.
        #[arg(long)]
        model: PathBuf,
        /// Tokens generated before the hop is killed.
        #[arg(long, value_delimiter = ',', default_value = "50,200,1000")]
        histories: Vec<usize>,
        /// Repetitions (the median is reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// CPU threads of each server.
        #[arg(long, default_value_t = 1)]
        threads: u32,
    },
    /// A peer of `bench-dht` (provides blocks of a test model until killed).
    #[command(hide = true)]
    DhtPeer {
        #[arg(long)]
        bootstrap: Vec<libp2p::Multiaddr>,
        /// Blocks to provide, A:B.
        #[arg(long)]
        blocks: String,
    },
    /// Measure import and verify throughput beside raw blake3 hashing and raw disk writes.
    BenchStore {
        /// Scratch directory (a synthetic model is written here unless --model is given).
        #[arg(long, default_value = "target/bench-store")]
        dir: PathBuf,
        /// Model to import instead of a synthetic one.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Size of the synthetic model in GiB.
        #[arg(long, default_value_t = 4.0)]
        synth_gib: f64,
    },
    /// Describe a model or span file; with --load, load it into llama.cpp and report memory.
    Info {
        /// The GGUF file.
        file: PathBuf,
        /// Load it and report the process's resident memory.
        #[arg(long)]
        load: bool,
        #[command(flatten)]
        engine: EngineArgs,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Re-hash every blob and report corrupt ones (exit status 1 if any).
    Verify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct EngineArgs {
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<i32>,
    /// Layers to offload to the GPU (needs a GPU build).
    #[arg(long, default_value_t = 0)]
    gpu_layers: u32,
    /// Context length per session.
    #[arg(long, default_value_t = 2048)]
    ctx: u32,
}

impl EngineArgs {
    fn config(&self) -> EngineConfig {
        let mut cfg = EngineConfig {
            ctx_per_session: self.ctx,
            gpu_layers: self.gpu_layers,
            max_sessions: 1,
            ..EngineConfig::default()
        };
        if let Some(t) = self.threads {
            cfg.threads = t;
        }
        cfg
    }
}

#[derive(clap::Args)]
struct GenerateArgs {
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
    /// Join the swarm at these addresses and generate through its servers (`--model` is then a model id).
    #[arg(long)]
    bootstrap: Vec<Multiaddr>,
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
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Model GGUF.
    #[arg(long)]
    model: PathBuf,
    /// Tokens generated per measurement.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// Repetitions per configuration (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Prompt lengths in tokens (short and long context).
    #[arg(long, value_delimiter = ',', default_value = "8,450")]
    contexts: Vec<usize>,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Sampling options as given, if they are in range.
fn checked(sampling: SamplingParams) -> Result<SamplingParams> {
    sampling.validate().map_err(anyhow::Error::msg)?;
    Ok(sampling)
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("NAK_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Generate(args) => generate(args, cli.data_dir),
        Command::Chat { bootstrap, model, system, max_tokens, sampling, mode, replay } => {
            let remote = client_commands::RemoteArgs {
                bootstrap,
                model,
                mode,
                sampling: checked(sampling)?,
                dtype: ActivationDtype::F32,
                top_logits: 16,
                replay,
            };
            tokio::runtime::Runtime::new()?.block_on(client_commands::chat(remote, system, max_tokens))
        }
        Command::Import { model, json } => store_commands::import(&open_store(cli.data_dir)?, &model, json),
        Command::Models { json } => store_commands::models(&open_store(cli.data_dir)?, json),
        Command::Store { command: StoreCommand::Verify { json } } => {
            store_commands::verify(&open_store(cli.data_dir)?, json)
        }
        Command::Slice { model, layers, output } => {
            let plan = store_commands::slice(&open_store(cli.data_dir)?, &model, &layers, &output)?;
            let size = std::fs::metadata(&output)?.len();
            println!(
                "wrote {} (layers {}..{} of {}, embedding: {}, head: {}, {} tensors, {size} bytes)",
                output.display(),
                plan.position.first,
                plan.position.first + plan.position.n_layer,
                plan.position.total,
                plan.position.has_embedding,
                plan.position.has_head,
                plan.tensors.len()
            );
            Ok(())
        }
        Command::Synth { output, layers, embd, heads, kv_heads, ff, vocab, weight_type, tied, seed } => {
            let weight_type = match weight_type.to_ascii_lowercase().as_str() {
                "f32" => TensorType::F32,
                "f16" => TensorType::F16,
                "q8_0" => TensorType::Q8_0,
                other => bail!("--weight-type {other}: expected f32, f16 or q8_0"),
            };
            let cfg = SynthConfig {
                n_layer: layers,
                n_embd: embd,
                n_head: heads,
                n_head_kv: kv_heads,
                n_ff: ff,
                n_vocab: vocab,
                weight_type,
                tied_embedding: tied,
                seed,
                ..SynthConfig::default()
            };
            let size = nak_shard_store::write_synthetic(&cfg, &output)?;
            println!("wrote {} ({size} bytes)", output.display());
            Ok(())
        }
        Command::Info { file, load, engine } => info(&file, load, &engine),
        Command::BenchFailover { model, histories, reps, threads } => {
            let rt = tokio::runtime::Runtime::new()?;
            print!("{}", rt.block_on(failover_bench::run(&model, &histories, reps.max(1), threads.max(1)))?);
            Ok(())
        }
        Command::BenchDht { processes, lookups } => {
            print!("{}", tokio::runtime::Runtime::new()?.block_on(dht_bench::run(processes, lookups))?);
            Ok(())
        }
        Command::DhtPeer { bootstrap, blocks } => {
            let range = span::parse_layer_range(&blocks).context("--blocks A:B")?;
            tokio::runtime::Runtime::new()?.block_on(dht_bench::peer(bootstrap, range.start, range.end))
        }
        Command::Run {
            model,
            serve_layers,
            listen,
            bootstrap,
            max_memory,
            threads,
            max_sessions,
            announce_interval,
            rebalance_interval,
            min_gain,
            relay_server,
        } => {
            let store = open_store(cli.data_dir)?;
            let opts = serve_command::RunOptions {
                model,
                serve_layers: serve_layers.parse().map_err(|e| anyhow::anyhow!("--serve-layers {e}"))?,
                listen,
                bootstrap,
                relay_server,
                server: nak_node::server::ServerConfig {
                    max_memory,
                    engine: serve_command::engine_config(threads, max_sessions),
                    announce_every: std::time::Duration::from_secs(announce_interval.max(1)),
                    rebalance_every: std::time::Duration::from_secs(rebalance_interval.max(1)),
                    min_gain: if min_gain.is_finite() && min_gain >= 1.0 {
                        min_gain
                    } else {
                        bail!("--min-gain must be at least 1")
                    },
                    ..Default::default()
                },
            };
            tokio::runtime::Runtime::new()?.block_on(serve_command::run(store, opts))
        }
        Command::Status { bootstrap, model, wait, json } => {
            let dir = cli.data_dir.unwrap_or_else(nak_shard_store::default_data_dir);
            let local = dir.join("manifests").is_dir().then(|| Store::open(&dir)).transpose()?;
            let wait = std::time::Duration::from_secs(wait);
            tokio::runtime::Runtime::new()?.block_on(swarm_commands::status(
                local,
                bootstrap,
                model.as_deref(),
                wait,
                json,
            ))
        }
        Command::BenchStore { dir, model, synth_gib } => {
            print!("{}", store_commands::bench_store(&dir, model.as_deref(), synth_gib)?);
            Ok(())
        }
        Command::BenchBatch { model, sessions, tokens, reps, engine } => {
            let report = tokio::runtime::Runtime::new()?.block_on(batch_bench::run(
                &model,
                &sessions,
                tokens,
                reps,
                engine.config(),
            ))?;
            print!("{report}");
            Ok(())
        }
        Command::Bench(args) => {
            let opts = BenchOptions {
                tokens: args.tokens,
                reps: args.reps,
                contexts: args.contexts,
                engine: args.engine.config(),
            };
            let report = bench::run(&args.model, &opts)?;
            print!("{report}");
            Ok(())
        }
    }
}

fn generate(args: GenerateArgs, data_dir: Option<PathBuf>) -> Result<()> {
    if !args.swarm.bootstrap.is_empty() {
        let remote = client_commands::RemoteArgs {
            bootstrap: args.swarm.bootstrap,
            model: args.model.to_string_lossy().into_owned(),
            mode: args.swarm.mode,
            sampling: checked(args.sampling)?,
            dtype: args.wire_dtype,
            top_logits: args.swarm.top_logits,
            replay: args.swarm.replay,
        };
        let rt = tokio::runtime::Runtime::new()?;
        return rt.block_on(client_commands::generate(
            remote,
            &args.prompt,
            args.max_tokens,
            args.swarm.parallel,
            args.json,
        ));
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

fn open_store(dir: Option<PathBuf>) -> Result<Store> {
    let dir = dir.unwrap_or_else(nak_shard_store::default_data_dir);
    Store::open(&dir).with_context(|| format!("opening the store at {}", dir.display()))
}

fn info(path: &std::path::Path, load: bool, engine: &EngineArgs) -> Result<()> {
    let file = GgufFile::open(path)?;
    let pos = span::SpanPosition::of(&file)?;
    let tensor_bytes: u64 = file.tensors.iter().filter_map(|t| t.n_bytes()).sum();
    println!(
        "{}: {} layers {}..{} of {} (embedding: {}, head: {}), {} tensors, {} tensor bytes, {} file bytes",
        path.display(),
        file.architecture()?,
        pos.first,
        pos.first + pos.n_layer,
        pos.total,
        pos.has_embedding,
        pos.has_head,
        file.tensors.len(),
        tensor_bytes,
        file.file_len()
    );
    if load {
        let before = store_commands::rss_kib().unwrap_or(0);
        let engine = nak_node::engine::SpanEngine::load(path, engine.config())?;
        let after = store_commands::rss_kib().unwrap_or(0);
        println!(
            "loaded: n_embd {}, resident memory {} KiB (+{} KiB for the span and its context)",
            engine.n_embd(),
            after,
            after.saturating_sub(before)
        );
    }
    Ok(())
}

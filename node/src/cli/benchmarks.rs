//! Benchmarks: the arguments of the `bench*` commands, handed to the harnesses in
//! [`crate::bench`], whose reports are printed as they are.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use libp2p::Multiaddr;
use nak_shard_store::span;

use super::{block_on, EngineArgs};
use crate::bench;

/// Measure the whole model against local chains of 1, 2 and 3 spans.
#[derive(clap::Args)]
pub struct BenchArgs {
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

/// Aggregate decode throughput of concurrent sessions on one engine (continuous batching).
#[derive(clap::Args)]
pub struct BenchBatchArgs {
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
}

/// Measure DHT provider-lookup latency in a swarm of peer processes on loopback.
#[derive(clap::Args)]
pub struct BenchDhtArgs {
    /// Peer processes.
    #[arg(long, default_value_t = 10)]
    processes: u32,
    /// Timed lookups.
    #[arg(long, default_value_t = 200)]
    lookups: usize,
}

/// A peer of `bench-dht` (provides blocks of a test model until killed).
#[derive(clap::Args)]
pub struct DhtPeerArgs {
    #[arg(long)]
    bootstrap: Vec<Multiaddr>,
    /// Blocks to provide, A:B.
    #[arg(long)]
    blocks: String,
}

/// Time to recover from a hop killed mid-generation, by replay policy and history
/// (four `run` servers on loopback holding two routes of the model).
#[derive(clap::Args)]
pub struct BenchFailoverArgs {
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
}

/// A generation's speed while idle and garbage TCP connections flood its server (one
/// `run` process serving the whole model on loopback).
#[derive(clap::Args)]
pub struct BenchFloodArgs {
    /// Model GGUF.
    #[arg(long)]
    model: PathBuf,
    /// Idle TCP connections held open (reopened a second after the server closes one).
    #[arg(long, default_value_t = 2000)]
    idle: usize,
    /// TCP connections that send random bytes.
    #[arg(long, default_value_t = 200)]
    garbage: usize,
    /// Tokens per generation.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// Rounds, each an unloaded and a flooded generation (medians reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// CPU threads of the server.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// A soak: concurrent clients generating for minutes through a chain of two `run`
/// servers on loopback; throughput, latency, errors and the servers' memory over time.
#[derive(clap::Args)]
pub struct BenchLoadArgs {
    /// Model GGUF.
    #[arg(long)]
    model: PathBuf,
    /// Concurrent clients (each a node of its own).
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Seconds of warm-up: the servers' memory growth is counted from there.
    #[arg(long, default_value_t = 60)]
    warmup: u64,
    /// Tokens per generation.
    #[arg(long, default_value_t = 32)]
    tokens: usize,
    /// Seconds between readings of the servers' memory.
    #[arg(long, default_value_t = 10)]
    sample_every: u64,
    /// CPU threads of each server.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Measure import and verify throughput beside raw blake3 hashing and raw disk writes.
#[derive(clap::Args)]
pub struct BenchStoreArgs {
    /// Scratch directory (a synthetic model is written here unless --model is given).
    #[arg(long, default_value = "target/bench-store")]
    dir: PathBuf,
    /// Model to import instead of a synthetic one.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Size of the synthetic model in GiB.
    #[arg(long, default_value_t = 4.0)]
    synth_gib: f64,
}

/// `nak-node bench`.
pub fn chain(args: BenchArgs) -> Result<()> {
    let opts = bench::chain::BenchOptions {
        tokens: args.tokens,
        reps: args.reps,
        contexts: args.contexts,
        engine: args.engine.config(),
    };
    print!("{}", bench::chain::run(&args.model, &opts)?);
    Ok(())
}

/// `nak-node bench-batch`.
pub fn batch(args: BenchBatchArgs) -> Result<()> {
    let cfg = args.engine.config();
    print!("{}", block_on(bench::batch::run(&args.model, &args.sessions, args.tokens, args.reps, cfg))?);
    Ok(())
}

/// `nak-node bench-dht`.
pub fn dht(args: BenchDhtArgs) -> Result<()> {
    print!("{}", block_on(bench::dht::run(args.processes, args.lookups))?);
    Ok(())
}

/// `nak-node dht-peer` (hidden): a peer process of `bench-dht`.
pub fn dht_peer(args: DhtPeerArgs) -> Result<()> {
    let range = span::parse_layer_range(&args.blocks).context("--blocks A:B")?;
    block_on(bench::dht::peer(args.bootstrap, range.start, range.end))
}

/// `nak-node bench-failover`.
pub fn failover(args: BenchFailoverArgs) -> Result<()> {
    let run = bench::failover::run(&args.model, &args.histories, args.reps.max(1), args.threads.max(1));
    print!("{}", block_on(run)?);
    Ok(())
}

/// `nak-node bench-store`.
pub fn store(args: BenchStoreArgs) -> Result<()> {
    print!("{}", bench::store::run(&args.dir, args.model.as_deref(), args.synth_gib)?);
    Ok(())
}

/// Prints `report` as text, or as JSON when `json`.
fn print_report<R: std::fmt::Display + serde::Serialize>(report: &R, json: bool) -> Result<()> {
    match json {
        true => println!("{}", serde_json::to_string(report)?),
        false => print!("{report}"),
    }
    Ok(())
}

/// `nak-node bench-flood`.
pub fn flood(args: BenchFloodArgs) -> Result<()> {
    let opts = bench::flood::FloodOptions {
        idle: args.idle,
        garbage: args.garbage,
        tokens: args.tokens.max(2),
        rounds: args.rounds.max(1),
        threads: args.threads.max(1),
    };
    print_report(&block_on(bench::flood::run(&args.model, &opts))?, args.json)
}

/// `nak-node bench-load`.
pub fn load(args: BenchLoadArgs) -> Result<()> {
    let opts = bench::load::LoadOptions {
        clients: args.clients.max(1),
        duration: std::time::Duration::from_secs(args.seconds),
        tokens: args.tokens.max(2),
        warmup: std::time::Duration::from_secs(args.warmup),
        sample_every: std::time::Duration::from_secs(args.sample_every.max(1)),
        threads: args.threads.max(1),
    };
    print_report(&block_on(bench::load::run(&args.model, &opts))?, args.json)
}

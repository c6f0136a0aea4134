//! `nak-node`: the Nakshatra node's command line. This file only parses the command
//! line and dispatches; each command group lives in [`cli`], the benchmark harnesses in
//! [`bench`], and everything else in the `nak_node` library (see docs/ARCHITECTURE.md).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod cli;

use cli::{api, benchmarks, demo, files, generate, serve, status};

#[derive(Parser)]
#[command(name = "nak-node", version, about = "Run a span of a large language model in the Nakshatra swarm")]
struct Cli {
    /// Data directory of the blob store (default: $NAKSHATRA_DATA_DIR, else the per-user data dir).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// The commands, in the order `--help` lists them: serving and using the swarm, then
/// models and files, then benchmarks. Each one's description is its arguments' doc.
#[derive(Subcommand)]
enum Command {
    Demo(demo::DemoArgs),
    Run(serve::RunArgs),
    Relay(serve::RelayArgs),
    Chat(generate::ChatArgs),
    Generate(generate::GenerateArgs),
    Api(api::ApiArgs),
    Status(status::StatusArgs),
    Import(files::ImportArgs),
    Models(files::ModelsArgs),
    Store(files::StoreArgs),
    Slice(files::SliceArgs),
    Synth(files::SynthArgs),
    Info(files::InfoArgs),
    Bench(benchmarks::BenchArgs),
    BenchBatch(benchmarks::BenchBatchArgs),
    BenchDht(benchmarks::BenchDhtArgs),
    BenchFailover(benchmarks::BenchFailoverArgs),
    BenchFlood(benchmarks::BenchFloodArgs),
    BenchLoad(benchmarks::BenchLoadArgs),
    BenchStore(benchmarks::BenchStoreArgs),
    #[command(hide = true)]
    DhtPeer(benchmarks::DhtPeerArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("NAK_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let Cli { data_dir, command } = Cli::parse();
    match command {
        Command::Demo(args) => demo::demo(args),
        Command::Run(args) => serve::run(args, data_dir),
        Command::Relay(args) => serve::relay(args, data_dir),
        Command::Chat(args) => generate::chat(args, data_dir),
        Command::Generate(args) => generate::generate(args, data_dir),
        Command::Api(args) => api::api(args, data_dir),
        Command::Status(args) => status::status(args, data_dir),
        Command::Import(args) => files::import(args, data_dir),
        Command::Models(args) => files::models(args, data_dir),
        Command::Store(args) => files::store(args, data_dir),
        Command::Slice(args) => files::slice(args, data_dir),
        Command::Synth(args) => files::synth(args),
        Command::Info(args) => files::info(args),
        Command::Bench(args) => benchmarks::chain(args),
        Command::BenchBatch(args) => benchmarks::batch(args),
        Command::BenchDht(args) => benchmarks::dht(args),
        Command::BenchFailover(args) => benchmarks::failover(args),
        Command::BenchFlood(args) => benchmarks::flood(args),
        Command::BenchLoad(args) => benchmarks::load(args),
        Command::BenchStore(args) => benchmarks::store(args),
        Command::DhtPeer(args) => benchmarks::dht_peer(args),
    }
}

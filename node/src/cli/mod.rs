//! The `nak-node` command line: one module per group of commands, each holding its
//! clap arguments next to the handler that runs them. `main.rs` parses and dispatches;
//! everything the commands do is the library's (`nak_node`), or a benchmark harness's
//! ([`crate::bench`]).
//!
//! - [`serve`]: `run`, a server in the swarm.
//! - [`generate`]: `generate` (locally or through the swarm) and `chat`.
//! - [`status`]: `status`, the swarm's coverage of a model.
//! - [`files`]: `import`, `models`, `store verify`, `slice`, `synth`, `info`.
//! - [`benchmarks`]: the `bench*` commands.
//! - [`audit`]: the auditor clients and servers run (proofs, bans, `--audit-rate`).

pub mod audit;
pub mod benchmarks;
pub mod files;
pub mod generate;
pub mod serve;
pub mod status;

use std::future::Future;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use nak_node::engine::EngineConfig;
use nak_shard_store::Store;

/// Engine settings of the commands that run a model in this process.
#[derive(clap::Args)]
pub struct EngineArgs {
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
    /// The engine configuration these arguments ask for (one session).
    pub fn config(&self) -> EngineConfig {
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

/// The store in `dir` (default: `$NAKSHATRA_DATA_DIR`, else the per-user data directory).
pub fn open_store(dir: Option<PathBuf>) -> Result<Store> {
    let dir = dir.unwrap_or_else(nak_shard_store::default_data_dir);
    Store::open(&dir).with_context(|| format!("opening the store at {}", dir.display()))
}

/// Runs an async command to completion on a new multi-threaded runtime.
pub fn block_on<T>(command: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Runtime::new().context("starting the async runtime")?.block_on(command)
}

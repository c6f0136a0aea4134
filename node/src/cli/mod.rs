//! The `nak-node` command line: one module per group of commands, each holding its
//! clap arguments next to the handler that runs them. `main.rs` parses and dispatches;
//! everything the commands do is the library's (`nak_node`), or a benchmark harness's
//! ([`crate::bench`]).
//!
//! - [`demo`]: `demo`, a local swarm with the API and the monitor in one command.
//! - [`serve`]: `run`, a server in the swarm, and `relay`, a public node serving none.
//! - [`generate`]: `generate` (locally or through the swarm) and `chat`.
//! - [`status`]: `status`, the swarm's coverage of a model.
//! - [`api`]: `api`, an OpenAI-compatible API over the swarm.
//! - [`files`]: `import`, `models`, `store verify`, `slice`, `synth`, `info`.
//! - [`benchmarks`]: the `bench*` commands.
//! - [`audit`]: the auditor clients and servers run (proofs, bans, `--audit-rate`).

pub mod api;
pub mod audit;
pub mod benchmarks;
pub mod demo;
pub mod files;
pub mod generate;
pub mod serve;
pub mod status;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use libp2p::Multiaddr;
use nak_node::client::{DecodeMode, DraftSource, Speculation};
use nak_node::engine::EngineConfig;
use nak_node::net::{
    bootstrap_file_peers, read_peers_file, read_swarm_key, NetworkConfig, NetworkHandle, SwarmProtocols, BOOTSTRAP_ENV,
    BOOTSTRAP_FILE, PEERS_FILE,
};
use nak_node::speculative::DraftModel;
use nak_shard_store::Store;

/// How a command joins the swarm: where to find peers, and which swarm.
#[derive(clap::Args, Clone)]
pub struct JoinArgs {
    /// Peers to join through (multiaddrs ending in /p2p/<peer id>). Also used: $NAKSHATRA_BOOTSTRAP
    /// (comma-separated), the data dir's `bootstrap` file (one per line), the peers met before, and mDNS.
    #[arg(long)]
    pub bootstrap: Vec<Multiaddr>,
    /// Do not look for peers on the local network by mDNS.
    #[arg(long, env = "NAKSHATRA_NO_MDNS", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_mdns: bool,
    /// The swarm to join: nodes of different swarms never connect (1-32 of a-z, 0-9, '-').
    #[arg(long, default_value = nak_node::net::PUBLIC_SWARM)]
    pub swarm: String,
    /// A private swarm's pre-shared key file (IPFS swarm.key format): peers without it are refused; TCP only.
    #[arg(long)]
    pub swarm_key: Option<PathBuf>,
}

/// How long a client waits for its first peer when it has only mDNS or remembered peers.
const FIRST_PEER_WAIT: Duration = Duration::from_secs(5);

impl JoinArgs {
    /// Network settings listening on `listen` (the defaults when empty) and joining
    /// through every source of peers; `data_dir` holds the `bootstrap` file and the
    /// remembered peers (when `remember`, this node adds the peers it meets there).
    pub fn network(&self, listen: Vec<Multiaddr>, data_dir: &Path, remember: bool) -> Result<NetworkConfig> {
        SwarmProtocols::of(&self.swarm)?;
        let mut peers = self.bootstrap.clone();
        if let Ok(list) = std::env::var(BOOTSTRAP_ENV) {
            for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                peers.push(item.parse().with_context(|| format!("{BOOTSTRAP_ENV}: {item:?} is not a multiaddr"))?);
            }
        }
        peers.extend(bootstrap_file_peers(data_dir)?);
        let mut seen = std::collections::HashSet::new();
        peers.retain(|a| seen.insert(a.clone()));
        let mut remembered = read_peers_file(&data_dir.join(PEERS_FILE));
        remembered.retain(|a| seen.insert(a.clone()));
        let swarm_key = self.swarm_key.as_deref().map(read_swarm_key).transpose()?;
        Ok(NetworkConfig {
            remembered,
            swarm: self.swarm.clone(),
            swarm_key,
            mdns: !self.no_mdns,
            peers_file: (remember && data_dir.is_dir()).then(|| data_dir.join(PEERS_FILE)),
            ..NetworkConfig::joining(listen, peers)
        })
    }

    /// Whether the user pointed this command at a swarm (any flag of these).
    pub fn given(&self) -> bool {
        !self.bootstrap.is_empty() || self.swarm != nak_node::net::PUBLIC_SWARM || self.swarm_key.is_some()
    }

    /// For a client: waits for a first peer, or says exactly how to name one.
    pub async fn require_peer(&self, net: &NetworkHandle, cfg: &NetworkConfig, data_dir: &Path) -> Result<()> {
        let how = format!(
            "pass --bootstrap /ip4/<host>/tcp/<port>/p2p/<peer id> (a server prints its addresses as `listening …`), \
             set {BOOTSTRAP_ENV}=<addr>[,<addr>…], or list addresses in {}",
            data_dir.join(BOOTSTRAP_FILE).display()
        );
        let known = cfg.bootstrap.len() + cfg.remembered.len();
        if known == 0 && !cfg.mdns {
            bail!("no peers to join: {how}");
        }
        if !net.wait_for_peer(FIRST_PEER_WAIT).await? {
            let tried = match (known, cfg.mdns) {
                (0, _) => "mDNS found no node on the local network".to_string(),
                (n, true) => format!("none of {n} known peer address(es) answered and mDNS found no node"),
                (n, false) => format!("none of {n} known peer address(es) answered"),
            };
            bail!("no peers within {} s: {tried}; {how}", FIRST_PEER_WAIT.as_secs());
        }
        Ok(())
    }
}

/// The data directory (`dir`, else `$NAKSHATRA_DATA_DIR`, else the per-user one).
pub fn data_dir(dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(nak_shard_store::default_data_dir)
}

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

/// Speculative decoding: several tokens per trip around the route, the same output.
#[derive(clap::Args)]
pub(super) struct SpeculationArgs {
    /// Draft tokens and have the route verify them in one step: lookup (n-gram matches
    /// in the context) or draft (a small model with the same vocabulary: --draft-model in
    /// client mode; in ring mode the last server drafts, with its own `serve --draft-model`
    /// in the case of draft). Greedy output is the same as without; sampled tokens follow
    /// the same distribution.
    #[arg(long, value_enum)]
    pub(super) speculative: Option<DraftSource>,
    /// Most tokens drafted a trip (fewer while the measured acceptance does not pay for them).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=32))]
    draft_max: u32,
    /// With `--speculative draft --mode client`: the draft model (a whole GGUF whose
    /// vocabulary is the model's), run here.
    #[arg(long)]
    draft_model: Option<PathBuf>,
}

impl SpeculationArgs {
    /// The settings for decoding in `mode`, with the draft model loaded (`threads` CPU threads).
    pub(super) fn speculation(&self, mode: DecodeMode, threads: i32) -> Result<Option<Speculation>> {
        let Some(source) = self.speculative else {
            if self.draft_model.is_some() {
                bail!("--draft-model goes with --speculative draft");
            }
            return Ok(None);
        };
        let draft_model = match &self.draft_model {
            Some(_) if source != DraftSource::Draft => bail!("--draft-model goes with --speculative draft"),
            Some(_) if mode == DecodeMode::Ring => bail!(
                "in ring mode the last server drafts, with the draft model it serves (serve --draft-model): \
                 drop --draft-model, or decode with --mode client"
            ),
            Some(path) => Some(Arc::new(load_draft_model(path, threads, 8)?)),
            None if source == DraftSource::Draft && mode == DecodeMode::Client => {
                bail!("--speculative draft --mode client needs --draft-model")
            }
            None => None,
        };
        Ok(Some(Speculation { source, draft_max: self.draft_max, draft_model }))
    }
}

/// Loads the draft model at `path` for up to `sessions` generations at once.
pub(super) fn load_draft_model(path: &Path, threads: i32, sessions: u32) -> Result<DraftModel> {
    let cfg = EngineConfig { threads, max_sessions: sessions, ..EngineConfig::default() };
    DraftModel::load(path, cfg).with_context(|| format!("loading the draft model {}", path.display()))
}

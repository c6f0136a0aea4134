//! `nak-sim`: runs one simulation scenario and prints its report.

use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use nak_simulations::churn::{self, ChurnConfig, Phases};
use nak_simulations::dht::{self, DhtConfig};
use nak_simulations::plot;

/// Thousands of connections' buffers come and go every second; glibc's allocator spent
/// a fifth of a 200-node run's CPU on them (measured with perf), mimalloc far less.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "nak-sim", about = "Simulate a Nakshatra swarm of many real nodes in one process")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Run(Scenario),
    /// Draws the report's charts (SVG) from runs' `--json` reports, one per line: the
    /// figures against the number of nodes, beside the targets and anchors.
    Plot {
        /// Files of reports, one JSON object per line.
        #[arg(required = true)]
        inputs: Vec<std::path::PathBuf>,
        /// Folder the charts are written to.
        #[arg(long, default_value = ".")]
        out: std::path::PathBuf,
    },
}

/// What every scenario takes.
#[derive(clap::Args)]
struct Common {
    /// Nodes in the swarm.
    #[arg(long, default_value_t = 200)]
    nodes: usize,
    /// Seed of keys, regions, arrivals and the workload.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Round trips are the region table's times this (0: no latency).
    #[arg(long, default_value_t = 1.0)]
    rtt_scale: f64,
    /// Run the swarm this many times slower than wall time (every timer, latency and
    /// modelled compute stretched alike; reported times are the swarm's): a host too
    /// small to keep up with N nodes in real time keeps up with them dilated. ≥ 1.
    #[arg(long, default_value_t = 1.0)]
    dilation: f64,
}

#[derive(Subcommand)]
enum Scenario {
    /// Provider lookups (p50/p95/p99, success) and routing upkeep per node.
    Dht {
        #[command(flatten)]
        common: Common,
        /// Lookups made.
        #[arg(long, default_value_t = 200)]
        lookups: usize,
        /// Mean milliseconds between two joins.
        #[arg(long, default_value_t = 20)]
        join_gap_ms: u64,
        /// Seconds a node keeps an unused connection (default: the node's own default).
        #[arg(long)]
        idle_timeout_s: Option<u64>,
        /// Most connections a node keeps.
        #[arg(long, default_value_t = dht::MAX_CONNECTIONS)]
        max_connections: usize,
    },
    /// Servers joining and leaving with `auto`: time to full coverage, balance quality,
    /// moves per server; then a fifth leave and the rest re-cover.
    Placement {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        swarm: SwarmArgs,
    },
    /// Each client's route cost against the best route a global view allows.
    Routing {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        swarm: SwarmArgs,
    },
    /// Clients generating while servers join, leave and crash: sessions completed,
    /// tokens identical to failure-free runs, recovery times.
    Churn {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        swarm: SwarmArgs,
        /// Seconds the clients generate.
        #[arg(long, default_value_t = 60)]
        workload_s: u64,
        /// Share of the servers replaced per simulated hour.
        #[arg(long, default_value_t = 0.3)]
        churn_per_hour: f64,
        /// Wall seconds that stand for one simulated hour (default: the workload's length).
        #[arg(long)]
        hour_s: Option<u64>,
    },
}

/// What the swarm scenarios take.
#[derive(clap::Args)]
struct SwarmArgs {
    /// Clients among the nodes (default a tenth).
    #[arg(long)]
    clients: Option<usize>,
    /// Layers of the model.
    #[arg(long, default_value_t = 32)]
    layers: u32,
    /// Layers one server can hold.
    #[arg(long, default_value_t = 8)]
    budget_layers: u32,
    /// Seconds between a server's announcements while the swarm is small.
    #[arg(long, default_value_t = 5)]
    announce_s: u64,
    /// Keep that period fixed however many servers announce (the node stretches it past 64).
    #[arg(long)]
    fixed_announce_period: bool,
    /// Mean seconds between placement re-checks.
    #[arg(long, default_value_t = 30)]
    rebalance_s: u64,
    /// Mean milliseconds between two servers' joins.
    #[arg(long, default_value_t = 50)]
    join_gap_ms: u64,
    /// Most connections a node keeps (default: the node's own, 128).
    #[arg(long)]
    max_connections: Option<usize>,
}

impl SwarmArgs {
    fn config(&self, common: &Common) -> ChurnConfig {
        let mut cfg = ChurnConfig::new(common.nodes, common.seed);
        if let Some(c) = self.clients {
            cfg.clients = c.min(common.nodes.saturating_sub(2));
        }
        cfg.rtt_scale = common.rtt_scale;
        cfg.swarm.servers = common.nodes - cfg.clients;
        cfg.swarm.n_layer = self.layers;
        cfg.swarm.budget_layers = self.budget_layers;
        cfg.swarm.announce_every = Duration::from_secs(self.announce_s);
        if self.fixed_announce_period {
            cfg.swarm.announce_stretch_after = None;
        }
        cfg.swarm.rebalance_every = Duration::from_secs(self.rebalance_s);
        cfg.swarm.join_gap = Duration::from_millis(self.join_gap_ms);
        if let Some(max) = self.max_connections {
            cfg.swarm.max_connections = max;
        }
        cfg.settle = cfg.swarm.rebalance_every;
        cfg
    }
}

/// Runs a scenario until it ends or the user interrupts it (Ctrl-C). An interrupted run
/// is dropped, and with it, as the runtime shuts down, the nodes and their stores on
/// tmpfs, which would otherwise stay in memory after the process ends.
async fn or_interrupted<T>(run: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::select! {
        result = run => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; the run's stores are removed")),
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NAK_LOG").unwrap_or_else(|_| "warn,yamux=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // The swarm scenarios' servers run on this thread (see `swarm`); the nodes' network
    // tasks on the runtime's workers.
    let local = tokio::task::LocalSet::new();
    let scenario = match Cli::parse().command {
        Command::Run(scenario) => scenario,
        Command::Plot { inputs, out } => return plot(&inputs, &out),
    };
    let common = match &scenario {
        Scenario::Dht { common, .. }
        | Scenario::Placement { common, .. }
        | Scenario::Routing { common, .. }
        | Scenario::Churn { common, .. } => common,
    };
    nak_node::dilation::set_factor(common.dilation).map_err(anyhow::Error::msg)?;
    let (report, json) = match scenario {
        Scenario::Dht { common, lookups, join_gap_ms, idle_timeout_s, max_connections } => {
            let defaults = DhtConfig::new(common.nodes, common.seed);
            let cfg = DhtConfig {
                lookups,
                idle_timeout: idle_timeout_s.map_or(defaults.idle_timeout, Duration::from_secs),
                rtt_scale: common.rtt_scale,
                join_gap: Duration::from_millis(join_gap_ms),
                max_connections,
                ..defaults
            };
            (runtime.block_on(or_interrupted(dht::run(&cfg)))?, common.json)
        }
        Scenario::Placement { common, swarm } => (
            local.block_on(&runtime, or_interrupted(churn::run(&swarm.config(&common), Phases::Placement)))?,
            common.json,
        ),
        Scenario::Routing { common, swarm } => (
            local.block_on(&runtime, or_interrupted(churn::run(&swarm.config(&common), Phases::Routing)))?,
            common.json,
        ),
        Scenario::Churn { common, swarm, workload_s, churn_per_hour, hour_s } => {
            let mut cfg = swarm.config(&common);
            cfg.workload = Duration::from_secs(workload_s);
            cfg.churn_per_hour = churn_per_hour;
            cfg.hour = Duration::from_secs(hour_s.unwrap_or(workload_s));
            (local.block_on(&runtime, or_interrupted(churn::run(&cfg, Phases::Churn)))?, common.json)
        }
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.text());
    }
    if !report.host_kept_up {
        eprintln!("the host did not keep up (timer lag or CPU over the bounds): these timings are void");
    }
    // The nodes' tasks may still be winding down; the report is out.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

fn plot(inputs: &[std::path::PathBuf], out: &std::path::Path) -> Result<()> {
    let mut reports = Vec::new();
    for input in inputs {
        reports.extend(plot::read_reports(input)?);
    }
    std::fs::create_dir_all(out)?;
    for path in plot::draw(&reports, out)? {
        println!("{}", path.display());
    }
    Ok(())
}

//! `nak-sim`: runs one simulation scenario and prints its report.

use anyhow::Result;
use clap::{Parser, Subcommand};

use nak_simulations::dht::{self, DhtConfig};

#[derive(Parser)]
#[command(name = "nak-sim", about = "Simulate a Nakshatra swarm of many real nodes in one process")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
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
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("NAK_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (report, json) = match Cli::parse().scenario {
        Scenario::Dht { common, lookups, join_gap_ms, idle_timeout_s } => {
            let defaults = DhtConfig::new(common.nodes, common.seed);
            let cfg = DhtConfig {
                lookups,
                idle_timeout: idle_timeout_s.map_or(defaults.idle_timeout, std::time::Duration::from_secs),
                rtt_scale: common.rtt_scale,
                join_gap: std::time::Duration::from_millis(join_gap_ms),
                ..defaults
            };
            (runtime.block_on(dht::run(&cfg))?, common.json)
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
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

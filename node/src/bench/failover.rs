//! `nak-node bench-failover`: how long a route takes to recover from a hop that dies,
//! by replay policy and by how many positions the replacement has to rebuild.
//!
//! Four `nak-node run` processes on loopback hold two disjoint routes of the model (its
//! first and second half, twice). For each replay policy, history length and hop of the
//! route, a client in this process generates until it has that many tokens, kills the
//! hop (SIGKILL), and records the repair: from detecting the failure to the next token.
//! The killed server is started again (same data directory, so the same identity and
//! cached span) before the next run, and each run has a client of its own, so no ban
//! carries over. History is made of generated tokens, each of which the first hop ran
//! as a one-row step: the slowest case for an exact replay.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use nak_node::client::{RemoteSession, ReplayPolicy, SessionOptions, SwarmModel};
use nak_node::net::{Network, NetworkConfig};
use nak_shard_store::{ModelId, Store};

use super::median;
use super::servers::{self, Server};

const PROMPT: &str = "Once upon a time, in a small village by the sea,";

/// One measured repair.
struct Sample {
    policy: ReplayPolicy,
    history: usize,
    hop: usize,
    positions: u32,
    recovery_ms: f64,
}

/// Runs the benchmark; returns the report.
pub async fn run(model: &Path, histories: &[usize], reps: usize, threads: u32) -> Result<String> {
    let work = tempfile::tempdir()?;
    let spans = ["0:15", "15:30", "0:15", "15:30"];
    let mut servers: Vec<Server> =
        spans.iter().enumerate().map(|(i, span)| Server::new(work.path().join(format!("s{i}")), span)).collect();
    let id = servers::start_all(&mut servers, model, threads)?;
    let id_hex = id.to_hex();
    let mut samples = Vec::new();
    for policy in [ReplayPolicy::Fast, ReplayPolicy::Exact] {
        for &history in histories {
            for hop in [0, 1] {
                for _ in 0..reps {
                    restart_dead(&mut servers, &id_hex, threads)?;
                    match measure(&mut servers, id, policy, history, hop).await {
                        Ok(sample) => samples.push(sample),
                        Err(e) => eprintln!("{policy} replay, {history} tokens, hop {hop}: {e:#}"),
                    }
                }
            }
        }
    }
    Ok(report(&samples, reps, threads))
}

fn restart_dead(servers: &mut [Server], id: &str, threads: u32) -> Result<()> {
    for i in 0..servers.len() {
        if !servers[i].running() {
            let boot = servers.iter().find(|s| s.running()).map(|s| s.addr.clone());
            servers[i].start(id, boot.as_deref(), threads)?;
        }
    }
    Ok(())
}

async fn measure(
    servers: &mut [Server],
    id: ModelId,
    policy: ReplayPolicy,
    history: usize,
    hop: usize,
) -> Result<Sample> {
    let scratch = tempfile::tempdir()?;
    let store = Store::open(scratch.path())?;
    let boot: Vec<libp2p::Multiaddr> = servers.iter().map(|s| s.addr.parse()).collect::<Result<_, _>>()?;
    let listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
    let (net, _) = Network::spawn_in_store(&store, NetworkConfig::joining(listen, boot)).await?;
    let model = SwarmModel::connect(net.clone(), &store, id).await?;
    // Every server announced, so the backup is known when the hop dies.
    for _ in 0..50 {
        if model.view(Duration::ZERO).await?.len() >= servers.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let opts = SessionOptions { replay: policy, ..Default::default() };
    let mut session = RemoteSession::start(&model, opts, Duration::from_secs(15)).await?;
    let victim = session.route()[hop].peer;
    let index = servers.iter().position(|s| s.peer == Some(victim)).context("the route's server is not ours")?;
    let tokens = model.vocab().tokenize(PROMPT, true)?;
    let mut count = 0;
    let out = session
        .generate(&model, &tokens, history + 8, |_| {
            count += 1;
            if count == history {
                servers[index].kill();
            }
            true
        })
        .await?;
    session.close().await;
    let _ = net.shutdown().await;
    let f = out
        .failovers
        .first()
        .with_context(|| format!("no repair (error: {})", out.error.as_deref().unwrap_or("none")))?;
    Ok(Sample {
        policy,
        history,
        hop,
        positions: f.positions,
        recovery_ms: f.recovery_ms.context("no token after the repair")?,
    })
}

fn report(samples: &[Sample], reps: usize, threads: u32) -> String {
    let mut out = format!(
        "4 servers (0:15, 15:30, 0:15, 15:30) on loopback, {threads} thread(s) each; a hop of the route killed \
         after N generated tokens; repair = detection to the next token, median of {reps}\n"
    );
    out += "replay  history  hop killed   positions   repair ms (min-max)\n";
    for policy in [ReplayPolicy::Fast, ReplayPolicy::Exact] {
        let mut keys: Vec<(usize, usize)> =
            samples.iter().filter(|s| s.policy == policy).map(|s| (s.history, s.hop)).collect();
        keys.dedup();
        for (history, hop) in keys {
            let picked: Vec<&Sample> =
                samples.iter().filter(|s| s.policy == policy && s.history == history && s.hop == hop).collect();
            let mut ms: Vec<f64> = picked.iter().map(|s| s.recovery_ms).collect();
            let mid = median(&mut ms);
            let positions = picked.first().map_or(0, |s| s.positions);
            out += &format!(
                "{:<7} {history:>7}  {:<11} {positions:>9}   {:>9.0} ({:.0}-{:.0})\n",
                policy.to_string(),
                if hop == 0 { "first" } else { "last" },
                mid,
                ms[0],
                ms[ms.len() - 1]
            );
        }
    }
    out
}

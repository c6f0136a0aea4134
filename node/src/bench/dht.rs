//! `nak-node bench-dht`: provider-lookup latency in a swarm of separate processes on loopback.
//!
//! Peer processes (`nak-node dht-peer`, hidden) each provide the block keys of a slice of
//! a 30-block test model; the first is everyone's bootstrap. The bench then joins as a
//! client and times lookups of random blocks' providers, reporting p50 and p95.

use std::process::{Child, Command};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use libp2p::Multiaddr;
use nak_node::net::{Network, NetworkConfig, NetworkHandle};
use nak_protocol::keys;
use nak_shard_store::Store;

use super::child_lines;

/// Blocks of the test model.
const BLOCKS: u32 = 30;

/// The model id peers and the bench agree on.
fn test_model(seed: u8) -> [u8; 32] {
    [seed; 32]
}

async fn start(dir: &std::path::Path, bootstrap: Vec<Multiaddr>) -> Result<NetworkHandle> {
    let listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
    Ok(Network::spawn_in_store(&Store::open(dir)?, NetworkConfig::joining(listen, bootstrap)).await?.0)
}

/// `nak-node dht-peer`: provide blocks `first..end` of the test model until killed.
pub async fn peer(bootstrap: Vec<Multiaddr>, first: u32, end: u32) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let net = start(dir.path(), bootstrap).await?;
    for a in net.wait_for_listen_addrs(std::time::Duration::from_secs(5)).await? {
        println!("listening {a}");
    }
    // Let the bootstrap connection and the routing table settle before publishing records.
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("ready");
    // Republish on a bench timescale, as the swarm does every few minutes, so records also
    // reach the peers that joined after us.
    loop {
        for layer in first..end {
            net.provide(keys::block_key(&test_model(7), layer)).await?;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

struct Peers(Vec<Child>);

impl Drop for Peers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_peer(bootstrap: Option<&str>, first: u32, end: u32) -> Result<(Child, Receiver<String>)> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["dht-peer", "--blocks", &format!("{first}:{end}")]);
    if let Some(b) = bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    child_lines::spawn(&mut cmd)
}

fn wait_for(rx: &Receiver<String>, prefix: &str) -> Result<String> {
    child_lines::wait_line(rx, prefix, Duration::from_secs(30))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Runs the bench with `processes` peer processes and `lookups` timed lookups.
pub async fn run(processes: u32, lookups: usize) -> Result<String> {
    if processes < 2 {
        bail!("--processes must be at least 2");
    }
    let share = BLOCKS.div_ceil(processes);
    let range = |i: u32| ((i * share).min(BLOCKS), ((i + 1) * share).min(BLOCKS));
    let mut peers = Peers(Vec::new());
    let (first, first_rx) = spawn_peer(None, range(0).0, range(0).1)?;
    peers.0.push(first);
    let boot = wait_for(&first_rx, "listening ")?["listening ".len()..].to_string();
    wait_for(&first_rx, "ready")?;
    let mut rxs = Vec::new();
    for i in 1..processes {
        let (c, rx) = spawn_peer(Some(&boot), range(i).0, range(i).1)?;
        peers.0.push(c);
        rxs.push(rx);
    }
    for rx in &rxs {
        wait_for(rx, "ready")?;
    }

    let dir = tempfile::tempdir()?;
    // Every peer has republished at least once after the last one joined.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let client = start(dir.path(), vec![boot.parse()?]).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut times = Vec::with_capacity(lookups);
    let mut misses = 0;
    let mut seed = 0x9E37_79B9u64;
    for _ in 0..lookups {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let layer = ((seed >> 33) % u64::from(BLOCKS)) as u32;
        let t = Instant::now();
        let found = client.providers(keys::block_key(&test_model(7), layer)).await?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if found.is_empty() {
            misses += 1;
        }
    }
    client.shutdown().await?;
    drop(peers);
    times.sort_by(f64::total_cmp);
    Ok(format!(
        "{processes} peer processes + 1 client on loopback, {BLOCKS} blocks ({share} per peer), {lookups} lookups of a random block's providers\n\
         p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms, lookups that found no provider: {misses}\n",
        percentile(&times, 0.5),
        percentile(&times, 0.95),
        times.last().copied().unwrap_or(f64::NAN),
    ))
}

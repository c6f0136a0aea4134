//! The `dht` scenario: how provider lookups behave as the swarm grows.
//!
//! Data flow: `nodes` real network tasks join one by one (Poisson arrivals over the
//! join window), each through up to three nodes already in; the swarm settles; some
//! nodes provide keys (as servers provide the blocks they hold), and the records are
//! given time to arrive; then other nodes look
//! the keys up, a few at a time, and each lookup's time and whether it found the
//! provider are kept. Last, a quiet window measures what keeping the routing tables
//! costs each node when nobody asks anything.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures::StreamExt as _;
use libp2p::{kad, Multiaddr};
use nak_node::net::NetworkHandle;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

use crate::clock;
use crate::host::HostWatch;
use crate::latency::LatencyMatrix;
use crate::node;
use crate::report::{quantile_ms, Report};
use crate::transport::{LinkConfig, SimNet};

/// Settings of a `dht` run.
#[derive(Debug, Clone)]
pub struct DhtConfig {
    /// Nodes in the swarm.
    pub nodes: usize,
    /// Seed of keys, regions, arrivals and the workload.
    pub seed: u64,
    /// Round trips are the region table's times this (1: real figures). Default 1.
    pub rtt_scale: f64,
    /// Mean time between two joins. Default 20 ms.
    pub join_gap: Duration,
    /// Time to settle after the last join. Default 10 s.
    pub settle: Duration,
    /// Keys provided, each by a different random node. Default nodes / 10, at least 10.
    pub keys: usize,
    /// Lookups made. Default 200.
    pub lookups: usize,
    /// Lookups running at once. Default 8.
    pub concurrency: usize,
    /// Longest a lookup may take before it counts as failed. Default 10 s.
    pub lookup_timeout: Duration,
    /// Quiet window over which upkeep is measured. Default 10 s.
    pub quiet: Duration,
    /// How long the nodes keep an unused connection. Default the node's (120 s).
    pub idle_timeout: Duration,
    /// Most connections a node keeps. Default [`MAX_CONNECTIONS`].
    pub max_connections: usize,
}

impl DhtConfig {
    /// The defaults for `nodes` nodes and `seed`.
    pub fn new(nodes: usize, seed: u64) -> Self {
        Self {
            nodes,
            seed,
            rtt_scale: 1.0,
            join_gap: Duration::from_millis(20),
            settle: Duration::from_secs(10),
            keys: (nodes / 10).max(10),
            lookups: 200,
            concurrency: 8,
            lookup_timeout: Duration::from_secs(10),
            quiet: Duration::from_secs(10),
            idle_timeout: nak_node::net::NetworkConfig::default().idle_connection_timeout,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// Most connections a node keeps (the node's default is for a real host's budget).
pub const MAX_CONNECTIONS: usize = 32;

/// Time between the last provide and the first lookup.
const RECORDS_ARRIVE: Duration = Duration::from_secs(2);

/// How one lookup ended.
#[derive(Debug)]
enum Lookup {
    /// The key's provider was among the answers, after this long.
    Found(Duration),
    /// No provider at all.
    Empty,
    /// Providers, but not the one that provided the key.
    Others,
    /// The network task refused (logged).
    Failed,
    /// No answer within the lookup timeout.
    TimedOut,
}

/// Starts `cfg.nodes` nodes, each joining through up to three earlier ones.
async fn join(
    net: &Arc<SimNet>,
    dir: &std::path::Path,
    cfg: &DhtConfig,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<NetworkHandle>> {
    let (seed, nodes) = (cfg.seed, cfg.nodes);
    let mut handles = Vec::with_capacity(nodes);
    for n in 0..nodes {
        let bootstrap: Vec<Multiaddr> = if n == 0 {
            vec![]
        } else {
            let mut picks: Vec<usize> = (0..3).map(|_| rng.gen_range(0..n)).collect();
            picks.sort();
            picks.dedup();
            picks.into_iter().map(|j| node::dial_addr(seed, j)).collect()
        };
        let net_cfg = nak_node::net::NetworkConfig {
            idle_connection_timeout: cfg.idle_timeout,
            max_connections: cfg.max_connections,
            ..node::config(n, bootstrap)
        };
        handles.push(node::spawn(net, dir, seed, n, net_cfg).await?);
        crate::host::join_progress(net, n + 1, nodes);
        // Exponential gaps: Poisson arrivals.
        let u: f64 = rng.gen_range(f64::EPSILON..1.0);
        clock::sleep(cfg.join_gap.mul_f64(-u.ln())).await;
    }
    Ok(handles)
}

/// Where one key's provider records are, right before the lookups.
struct KeyRecords {
    /// Nodes whose store holds the provider's record (the provider itself included).
    holders: usize,
    /// Of the [`kad::K_VALUE`] nodes closest to the key (every node known), how many hold it:
    /// the peers a lookup's walk ends at.
    closest_holding: usize,
}

/// Asks every node's store which records it holds, against a view of the whole swarm.
async fn census(nodes: &[NetworkHandle], keys: &[(Vec<u8>, usize)], seed: u64) -> Vec<KeyRecords> {
    let peers: Vec<libp2p::PeerId> = (0..nodes.len()).map(|n| node::peer_of(seed, n)).collect();
    let mut out = Vec::with_capacity(keys.len());
    for (key, provider) in keys {
        let provider = peers[*provider];
        let target = kad::KBucketKey::new(kad::RecordKey::new(key));
        let mut by_distance: Vec<usize> = (0..nodes.len()).collect();
        by_distance.sort_by_key(|n| target.distance(&kad::KBucketKey::from(peers[*n])));
        let closest: BTreeSet<usize> = by_distance.into_iter().take(kad::K_VALUE.get()).collect();
        let mut holders = 0;
        let mut closest_holding = 0;
        for (n, handle) in nodes.iter().enumerate() {
            if handle.stored_providers(key.clone()).await.unwrap_or_default().contains(&provider) {
                holders += 1;
                closest_holding += usize::from(closest.contains(&n));
            }
        }
        out.push(KeyRecords { holders, closest_holding });
    }
    out
}

fn mean(values: impl Iterator<Item = usize>) -> f64 {
    let (sum, count) = values.fold((0, 0), |(s, c), v| (s + v, c + 1));
    sum as f64 / count.max(1) as f64
}

/// Runs the scenario.
pub async fn run(cfg: &DhtConfig) -> Result<Report> {
    let t0 = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let latency = LatencyMatrix::new(cfg.nodes, cfg.seed, cfg.rtt_scale);
    let median_rtt = latency.median_rtt(10_000);
    let net = SimNet::new(latency, LinkConfig::default(), cfg.seed);
    let dir = node::run_dir()?;
    let host = HostWatch::start();

    let nodes = join(&net, dir.path(), cfg, &mut rng).await?;
    let join_s = clock::since(t0).as_secs_f64();
    tracing::info!(nodes = nodes.len(), join_s, "joined");
    clock::sleep(cfg.settle).await;

    // Keys and their providers.
    let keys: Vec<(Vec<u8>, usize)> = (0..cfg.keys)
        .map(|k| (format!("key {k} of seed {}", cfg.seed).into_bytes(), rng.gen_range(0..nodes.len())))
        .collect();
    let provides = futures::future::join_all(keys.iter().map(|(key, p)| {
        let node = nodes[*p].clone();
        let key = key.clone();
        async move {
            let t = Instant::now();
            node.provide(key).await.map(|()| clock::since(t))
        }
    }))
    .await;
    let provided: Vec<bool> = provides.iter().map(Result::is_ok).collect();
    let mut provide_times: Vec<Duration> = provides.into_iter().filter_map(Result::ok).collect();
    tracing::info!(provided = provide_times.len(), "keys provided");
    // A provide returns once its records are sent; let them arrive before asking.
    clock::sleep(RECORDS_ARRIVE).await;
    let records = census(&nodes, &keys, cfg.seed).await;

    // Lookups from other nodes.
    let asks: Vec<(usize, usize)> = (0..cfg.lookups)
        .map(|_| {
            let k = rng.gen_range(0..keys.len());
            let from = (keys[k].1 + rng.gen_range(1..nodes.len().max(2))) % nodes.len();
            (from, k)
        })
        .collect();
    let results: Vec<(usize, Lookup)> = futures::stream::iter(asks)
        .map(|(from, k)| {
            let node = nodes[from].clone();
            let (key, provider) = keys[k].clone();
            let want = node::peer_of(cfg.seed, provider);
            let limit = cfg.lookup_timeout;
            async move {
                let t = Instant::now();
                let lookup = match tokio::time::timeout(clock::dilate(limit), node.providers(key)).await {
                    Ok(Ok(found)) if found.contains(&want) => Lookup::Found(clock::since(t)),
                    Ok(Ok(found)) if found.is_empty() => Lookup::Empty,
                    Ok(Ok(_)) => Lookup::Others,
                    Ok(Err(e)) => {
                        tracing::info!(error = %e, "a lookup was refused");
                        Lookup::Failed
                    }
                    Err(_) => Lookup::TimedOut,
                };
                (k, lookup)
            }
        })
        .buffer_unordered(cfg.concurrency)
        .collect()
        .await;
    let mut times: Vec<Duration> =
        results.iter().filter_map(|(_, r)| if let Lookup::Found(t) = r { Some(*t) } else { None }).collect();
    let success = times.len() as f64 / results.len().max(1) as f64;
    for (k, r) in results.iter().filter(|(_, r)| !matches!(r, Lookup::Found(_))) {
        tracing::info!(key = k, provided = provided[*k], ?r, "a lookup failed");
    }
    let failed = |f: fn(&Lookup) -> bool| results.iter().filter(|(_, r)| f(r)).count();
    // Failures on a few keys (every lookup of them) and failures spread over all keys
    // have different causes: where the records went, or how the walks end.
    let keys_where =
        |f: fn(&Lookup) -> bool| -> BTreeSet<usize> { results.iter().filter(|(_, r)| f(r)).map(|(k, _)| *k).collect() };
    let found = keys_where(|r| matches!(r, Lookup::Found(_)));
    let missed = keys_where(|r| !matches!(r, Lookup::Found(_)));
    let lookup_failures = serde_json::json!({
        "empty": failed(|r| matches!(r, Lookup::Empty)),
        "others_only": failed(|r| matches!(r, Lookup::Others)),
        "error": failed(|r| matches!(r, Lookup::Failed)),
        "timed_out": failed(|r| matches!(r, Lookup::TimedOut)),
        "keys_asked": found.union(&missed).count(),
        "keys_missed": missed.len(),
        "keys_never_found": missed.difference(&found).count(),
        "keys_not_provided": provided.iter().filter(|ok| !**ok).count(),
        "records_per_key_mean": mean(records.iter().map(|r| r.holders)),
        "closest_holding_mean": mean(records.iter().map(|r| r.closest_holding)),
        "closest_holding_missed_keys_mean": mean(missed.iter().map(|k| records[*k].closest_holding)),
        "keys_on_no_closest_peer": records.iter().filter(|r| r.closest_holding == 0).count(),
    });

    // Upkeep while nobody asks anything.
    let (upkeep_bytes, upkeep_writes) = net.traffic.per_node_over(nodes.len(), cfg.quiet).await;

    let host = host.finish().await;
    let report = Report {
        scenario: "dht".into(),
        nodes: nodes.len(),
        seed: cfg.seed,
        dilation: clock::factor(),
        median_rtt_ms: median_rtt.as_secs_f64() * 1e3,
        join_s,
        lookups: results.len(),
        lookup_p50_ms: quantile_ms(&mut times, 0.5),
        lookup_p95_ms: quantile_ms(&mut times, 0.95),
        lookup_p99_ms: quantile_ms(&mut times, 0.99),
        lookup_success: Some(success),
        lookup_failures: Some(lookup_failures),
        provide_p50_ms: quantile_ms(&mut provide_times, 0.5),
        upkeep_bytes_per_node_s: Some(upkeep_bytes),
        upkeep_writes_per_node_s: Some(upkeep_writes),
        connections: net.connections(),
        open_connections_per_node: net.open_connections_per_node(nodes.len()),
        memory_per_node_kib: host.rss_mib * 1024.0 / nodes.len() as f64,
        peak_memory_per_node_kib: Some(host.peak_rss_mib * 1024.0 / nodes.len() as f64),
        host_kept_up: host.kept_up,
        host: Some(host),
        wall_s: t0.elapsed().as_secs_f64(),
        ..Report::default()
    };
    for n in nodes {
        let _ = n.shutdown().await;
    }
    Ok(report)
}

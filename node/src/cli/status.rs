//! Swarm status: `nak-node status` shows each model's servers and block coverage as the
//! swarm announces them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use libp2p::{Multiaddr, PeerId};
use nak_node::audit::{Ban, ProofBook};
use nak_node::fetch::fetch_manifest;
use nak_node::net::{Network, NetworkConfig};
use nak_protocol::{keys, pb};
use nak_shard_store::{Hash, ModelId, Store};

use super::block_on;

/// Show a model's servers and block coverage as the swarm announces them.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// Peers to join through.
    #[arg(long)]
    bootstrap: Vec<Multiaddr>,
    /// The model id (or a unique prefix of a model in the local store); default: every model the peers announce.
    #[arg(long)]
    model: Option<String>,
    /// Seconds to listen for announcements.
    #[arg(long, default_value_t = 12)]
    wait: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `nak-node status`. The user's store, if there is one, resolves model id prefixes.
pub fn status(args: StatusArgs, data_dir: Option<PathBuf>) -> Result<()> {
    let dir = data_dir.unwrap_or_else(nak_shard_store::default_data_dir);
    let local = dir.join("manifests").is_dir().then(|| Store::open(&dir)).transpose()?;
    // Peers this node has banned on fraud proofs it verified.
    let banned = if dir.is_dir() { ProofBook::open(&dir)?.banned() } else { vec![] };
    let wait = Duration::from_secs(args.wait);
    block_on(listen_and_report(local, banned, args.bootstrap, args.model.as_deref(), wait, args.json))
}

/// Listens to announcements for `wait`, then shows each model's block coverage. Without
/// `model`, the models are those whose announcement topics the peers we meet subscribe
/// to. `local` (the user's store, if any) resolves id prefixes; other manifests come
/// from the swarm. The network runs on a throwaway identity so it never
/// clashes with a node of this machine.
async fn listen_and_report(
    local: Option<Store>,
    banned: Vec<(PeerId, Ban)>,
    bootstrap: Vec<Multiaddr>,
    model: Option<&str>,
    wait: Duration,
    json: bool,
) -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let store = Store::open(scratch.path())?;
    let lookup = local.as_ref().unwrap_or(&store);
    let mut ids = Vec::new();
    if let Some(model) = model {
        let id = lookup
            .resolve_model(model)
            .or_else(|_| ModelId::from_hex(&model.to_ascii_lowercase()))
            .context("--model must be a model id (or a unique prefix of a local one)")?;
        ids.push(id);
    }
    let listen = vec!["/ip4/0.0.0.0/tcp/0".parse().context("literal multiaddr")?];
    let (net, _) = Network::spawn_in_store(&store, NetworkConfig::joining(listen, bootstrap)).await?;
    for (peer, _) in &banned {
        net.block(*peer).await?;
    }
    for id in &ids {
        net.subscribe(keys::announce_topic(&id.0)).await?;
    }
    let t0 = Instant::now();
    while t0.elapsed() < wait {
        if model.is_none() {
            for topic in net.peer_topics().await? {
                if let Some(id) = keys::model_of_topic(&topic).map(Hash) {
                    if !ids.contains(&id) {
                        net.subscribe(topic).await?;
                        ids.push(id);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let all = net.announcements().await?;
    let mut models = Vec::new();
    for id in ids {
        let anns: Vec<&pb::ServerAnnouncement> = all.iter().filter(|a| a.model_id == id.0).collect();
        let n_layer = match lookup.manifest(&id) {
            Ok(m) => Some(m.n_layer),
            Err(_) => tokio::time::timeout(Duration::from_secs(10), fetch_manifest(&store, &net, id))
                .await
                .ok()
                .and_then(Result::ok)
                .map(|m| m.n_layer),
        }
        .unwrap_or_else(|| anns.iter().map(|a| a.end_layer).max().unwrap_or(0));
        models.push(model_status(id, n_layer, &anns));
    }
    let banned: Vec<serde_json::Value> = banned
        .iter()
        .map(|(peer, b)| {
            serde_json::json!({ "peer": peer.to_string(), "proof": b.proof, "model": b.model, "layers": [b.layers.0, b.layers.1], "step": b.step })
        })
        .collect();
    if json {
        println!("{}", serde_json::json!({ "models": models, "banned": banned }));
        return Ok(());
    }
    for b in &banned {
        println!("banned {} (fraud proof {})", b["peer"], b["proof"]);
    }
    if models.is_empty() {
        println!("no models announced");
    }
    for m in models.iter().filter(|_| !json) {
        let blocks = m["blocks"].as_array().map_or(&[][..], Vec::as_slice);
        let counts: Vec<usize> = blocks.iter().map(|b| b["servers"].as_array().map_or(0, Vec::len)).collect();
        let uncovered = counts.iter().filter(|c| **c == 0).count();
        println!(
            "model {}: {} server(s), {} block(s), {uncovered} uncovered",
            m["model_id"].as_str().unwrap_or_default(),
            m["servers"],
            counts.len()
        );
        for (b, count) in blocks.iter().zip(&counts) {
            let total: f64 =
                b["servers"].as_array().into_iter().flatten().filter_map(|s| s["throughput"].as_f64()).sum();
            println!("  block {:>3}: {count} server(s), {total:.0} tokens/s", b["index"]);
        }
    }
    net.shutdown().await?;
    Ok(())
}

/// One model's coverage as JSON: `{model_id, servers, blocks: [{index, servers: [{peer, throughput, state}]}]}`.
fn model_status(id: ModelId, n_layer: u32, anns: &[&pb::ServerAnnouncement]) -> serde_json::Value {
    let blocks: Vec<serde_json::Value> = (0..n_layer)
        .map(|i| {
            let servers: Vec<serde_json::Value> = anns
                .iter()
                .filter(|a| (a.first_layer..a.end_layer).contains(&i))
                .map(|a| {
                    let peer = PeerId::from_bytes(&a.peer_id).map(|p| p.to_string()).unwrap_or_default();
                    let state = if a.state() == pb::ServerState::Joining { "joining" } else { "online" };
                    serde_json::json!({ "peer": peer, "throughput": a.block_throughput, "state": state })
                })
                .collect();
            serde_json::json!({ "index": i, "servers": servers })
        })
        .collect();
    serde_json::json!({ "model_id": id.to_hex(), "servers": anns.len(), "blocks": blocks })
}

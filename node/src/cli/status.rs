//! Swarm status: `nak-node status` shows each model's servers and block coverage as the
//! swarm announces them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use libp2p::PeerId;
use nak_node::audit::{Ban, ProofBook};
use nak_node::client::{discover_servers, model_status};
use nak_node::fetch::fetch_manifest;
use nak_node::net::{Network, NetworkConfig};
use nak_protocol::{keys, pb};
use nak_shard_store::{ModelId, Store};

use super::{block_on, JoinArgs};

/// Show a model's servers and block coverage as the swarm announces them.
#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    join: JoinArgs,
    /// The model id (or a unique prefix of a model in the local store); default: every model the peers announce.
    #[arg(long)]
    model: Option<String>,
    /// Most seconds to look for models and servers (the answer comes as soon as every
    /// model found has been asked about; a model not named is found through the peers).
    #[arg(long, default_value_t = 12)]
    wait: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// How long `status` waits for more models after the last new one appeared.
const SETTLE: Duration = Duration::from_millis(300);

/// `nak-node status`. The user's store, if there is one, resolves model id prefixes.
pub fn status(args: StatusArgs, data_dir: Option<PathBuf>) -> Result<()> {
    let dir = super::data_dir(data_dir);
    let local = dir.join("manifests").is_dir().then(|| Store::open(&dir)).transpose()?;
    // Peers this node has banned on fraud proofs it verified.
    let banned = if dir.is_dir() { ProofBook::open(&dir)?.banned() } else { vec![] };
    let wait = Duration::from_secs(args.wait);
    block_on(listen_and_report(local, banned, &args.join, &dir, args.model.as_deref(), wait, args.json))
}

/// Finds each model's servers (the DHT's block providers, asked for their current
/// announcements, and gossip), then shows its block coverage. Without `model`, the
/// models are those whose announcement topics the peers we meet subscribe to; the
/// answer comes once every model found has been asked about and no new one has
/// appeared for [`SETTLE`], or after `wait`. `local` (the user's store, if any)
/// resolves id prefixes; other manifests come from the swarm. The network runs on a
/// throwaway identity so it never clashes with a node of this machine.
async fn listen_and_report(
    local: Option<Store>,
    banned: Vec<(PeerId, Ban)>,
    join: &JoinArgs,
    dir: &std::path::Path,
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
    let network = NetworkConfig { dht_server: false, ..join.network(listen, dir, false)? };
    let (net, _) = Network::spawn_in_store(&store, network.clone()).await?;
    join.require_peer(&net, &network, dir).await?;
    for (peer, _) in &banned {
        net.block(*peer).await?;
    }
    for id in &ids {
        net.subscribe(keys::announce_topic(&id.0)).await?;
    }
    let t0 = Instant::now();
    let mut last_new = t0;
    // Layers of each model asked about (None: its manifest could not be had).
    let mut layers: HashMap<ModelId, Option<u32>> = HashMap::new();
    loop {
        if model.is_none() {
            for id in net.peer_models().await? {
                if !ids.contains(&id) {
                    net.subscribe(keys::announce_topic(&id.0)).await?;
                    ids.push(id);
                    last_new = Instant::now();
                }
            }
        }
        for id in ids.iter().filter(|id| !layers.contains_key(id)).copied().collect::<Vec<_>>() {
            let n_layer = match lookup.manifest(&id) {
                Ok(m) => Some(m.n_layer),
                Err(_) => tokio::time::timeout(wait.saturating_sub(t0.elapsed()), fetch_manifest(&store, &net, id))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|m| m.n_layer),
            };
            if let Some(n) = n_layer {
                discover_servers(&net, &id.0, n).await;
            }
            layers.insert(id, n_layer);
        }
        let settled = !ids.is_empty() && last_new.elapsed() >= SETTLE;
        if settled || t0.elapsed() >= wait {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = net.announcements().await?;
    let rtts = net.rtts().await?;
    let mut models = Vec::new();
    for id in ids {
        let anns: Vec<&pb::ServerAnnouncement> = all.iter().filter(|a| a.model_id == id.0).collect();
        let n_layer =
            layers.get(&id).copied().flatten().unwrap_or_else(|| anns.iter().map(|a| a.end_layer).max().unwrap_or(0));
        models.push(model_status(id, n_layer, &anns, &rtts));
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
        for s in m["server_list"].as_array().map_or(&[][..], Vec::as_slice) {
            println!(
                "  server {} layers {}:{}, {:.0} block-tokens/s, {}, reachability {}{}",
                s["peer"].as_str().unwrap_or_default(),
                s["layers"][0],
                s["layers"][1],
                s["throughput"].as_f64().unwrap_or_default(),
                s["state"].as_str().unwrap_or_default(),
                s["reachability"].as_str().unwrap_or_default(),
                if s["draft_model"].as_bool() == Some(true) { ", draft model" } else { "" }
            );
        }
        for (b, count) in blocks.iter().zip(&counts) {
            let total: f64 =
                b["servers"].as_array().into_iter().flatten().filter_map(|s| s["throughput"].as_f64()).sum();
            println!("  block {:>3}: {count} server(s), {total:.0} tokens/s", b["index"]);
        }
    }
    net.shutdown().await?;
    Ok(())
}

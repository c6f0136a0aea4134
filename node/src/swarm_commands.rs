//! What `run` and `status` share (starting the network, fetching a model's manifest and
//! a span's blobs from DHT providers), and `nak-node status`, the swarm as a user sees it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use libp2p::identity::ed25519;
use libp2p::{Multiaddr, PeerId};
use nak_node::net::{identity, Network, NetworkConfig, NetworkHandle, RemoteProvider};
use nak_protocol::{keys, pb};
use nak_shard_store::import::span_blobs;
use nak_shard_store::transfer::{fetch_blob, BlobProvider, FetchConfig};
use nak_shard_store::{BlobRole, Hash, Manifest, ModelId, Store};

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Starts the network on the store's identity; returns its handle and that identity.
pub async fn start_network(store: &Store, cfg: NetworkConfig) -> Result<(NetworkHandle, ed25519::Keypair)> {
    let key = identity::load_or_create(store.root())?;
    let (handle, _task) = Network::spawn(key.clone(), store.clone(), cfg).await?;
    Ok((handle, key))
}

/// Network settings with these peers to join and, if any are given, these listen addresses.
pub fn network_config(listen: Vec<Multiaddr>, bootstrap: Vec<Multiaddr>) -> NetworkConfig {
    let mut cfg = NetworkConfig { bootstrap, ..NetworkConfig::default() };
    if !listen.is_empty() {
        cfg.listen = listen;
    }
    cfg
}

/// The listen addresses, waiting up to 5 s for the first to appear.
pub async fn listen_addrs(net: &NetworkHandle) -> Result<Vec<Multiaddr>> {
    let t0 = Instant::now();
    loop {
        let addrs = net.listen_addrs().await?;
        if !addrs.is_empty() || t0.elapsed() > Duration::from_secs(5) {
            return Ok(addrs);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Retries `f` until it gives something or `limit` passes.
pub async fn retry<T>(limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if t0.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The manifest of `id`: from the local store, else from a DHT provider (checked against the id).
pub async fn fetch_manifest(store: &Store, net: &NetworkHandle, id: ModelId) -> Result<Manifest> {
    if let Ok(m) = store.manifest(&id) {
        return Ok(m);
    }
    let providers = retry(Duration::from_secs(30), async || {
        let p = net.providers(keys::manifest_key(&id.0)).await.ok()?;
        (!p.is_empty()).then_some(p)
    })
    .await
    .with_context(|| format!("no provider of the manifest of {id}"))?;
    for peer in providers {
        let req = pb::BlobRequest { kind: Some(pb::blob_request::Kind::Manifest(id.0.to_vec())) };
        if let Ok(pb::BlobResponse { result: Some(pb::blob_response::Result::Manifest(bytes)) }) =
            net.request(peer, req).await
        {
            match Manifest::from_canonical(&bytes) {
                Ok(m) if m.model_id() == id => {
                    store.put_manifest(&m)?;
                    return Ok(m);
                }
                _ => tracing::warn!(%peer, "sent a manifest that does not match the model id"),
            }
        }
    }
    bail!("no provider sent a valid manifest of {id}")
}

/// Fetches every blob of `range` that the store lacks, from the blob's DHT providers.
pub async fn fetch_span_blobs(
    store: &Store,
    net: &NetworkHandle,
    m: &Manifest,
    range: std::ops::Range<u32>,
) -> Result<()> {
    let mut needed = span_blobs(m, &range);
    needed.extend(m.blob(BlobRole::Meta, None).cloned());
    for blob in needed {
        if store.has(&blob.hash) {
            continue;
        }
        let peers: Vec<PeerId> = retry(Duration::from_secs(30), async || {
            let p = net.providers(keys::blob_key(&blob.hash.0)).await.ok()?;
            let p: Vec<PeerId> = p.into_iter().filter(|p| *p != net.peer_id()).collect();
            (!p.is_empty()).then_some(p)
        })
        .await
        .with_context(|| format!("no provider of blob {}", blob.hash))?;
        let providers: Vec<Arc<dyn BlobProvider>> =
            peers.into_iter().map(|p| Arc::new(RemoteProvider::new(net.clone(), p)) as Arc<dyn BlobProvider>).collect();
        let (store, hash, size) = (store.clone(), blob.hash, blob.size);
        let report =
            tokio::task::spawn_blocking(move || fetch_blob(&store, &hash, size, &providers, &FetchConfig::default()))
                .await??;
        for (peer, reason) in &report.dropped {
            tracing::warn!(%peer, %reason, "dropped a blob provider");
        }
        eprintln!("fetched blob {} ({size} bytes) from {} provider(s)", &hash.to_hex()[..12], report.delivered.len());
    }
    Ok(())
}

/// `nak-node status`: listen to announcements for `wait`, then show each model's block
/// coverage. Without `model`, the models are those whose announcement topics the peers
/// we meet subscribe to. `local` (the user's store, if any) resolves id prefixes; other
/// manifests come from the swarm. The network runs on a throwaway identity so it never
/// clashes with a node of this machine.
pub async fn status(
    local: Option<Store>,
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
    let (net, _) = start_network(&store, network_config(listen, bootstrap)).await?;
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
    if json {
        println!("{}", serde_json::json!({ "models": models }));
    } else if models.is_empty() {
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

//! `nak-node run` and `nak-node status`: joining the swarm as a server, and looking at it.
//!
//! `run`: open the store and identity, start the network, print the listen addresses,
//! get the model (import a file, or fetch the manifest by id from its DHT providers),
//! pick the span, fetch the blobs it needs from their providers (verified), assemble
//! and load it, provide its blobs and blocks in the DHT, and announce it on the model's
//! topic every interval until Ctrl-C, when it stops providing and leaves.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use libp2p::identity::ed25519;
use libp2p::{Multiaddr, PeerId};
use nak_node::engine::{EngineConfig, SessionConfig, SpanEngine, StepInput};
use nak_node::net::{identity, Network, NetworkConfig, NetworkHandle, RemoteProvider};
use nak_protocol::{announce, keys, pb};
use nak_shard_store::import::span_blobs;
use nak_shard_store::transfer::{fetch_blob, BlobProvider, FetchConfig};
use nak_shard_store::{cached_span, import_gguf, BlobRole, Manifest, ModelId, Store};
use prost::Message;

/// Options of `run`.
pub struct RunOptions {
    pub model: String,
    pub serve_layers: String,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub max_memory: Option<u64>,
    pub threads: Option<i32>,
    pub announce_every: Duration,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Starts the network on the store's identity; returns its handle and that identity.
pub async fn start_network(
    store: &Store,
    listen: Vec<Multiaddr>,
    bootstrap: Vec<Multiaddr>,
) -> Result<(NetworkHandle, ed25519::Keypair)> {
    let key = identity::load_or_create(store.root())?;
    let mut cfg = NetworkConfig { bootstrap, ..NetworkConfig::default() };
    if !listen.is_empty() {
        cfg.listen = listen;
    }
    let (handle, _task) = Network::spawn(key.clone(), store.clone(), cfg).await?;
    Ok((handle, key))
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
async fn retry<T>(limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> Option<T> {
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
async fn fetch_manifest(store: &Store, net: &NetworkHandle, id: ModelId) -> Result<Manifest> {
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
async fn fetch_span_blobs(store: &Store, net: &NetworkHandle, m: &Manifest, range: std::ops::Range<u32>) -> Result<()> {
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

/// Tokens per second through one block of the loaded span: a short decode, timed.
fn measure_block_throughput(engine: &mut SpanEngine) -> f64 {
    let Ok(session) = engine.open_session(SessionConfig::default()) else { return 0.0 };
    let width = engine.n_embd();
    let takes_tokens = engine.span().has_embedding;
    let input = |i: usize| {
        if takes_tokens {
            StepInput::Tokens(vec![1 + (i as i32 % 50)])
        } else {
            let row: Vec<f32> = (0..width).map(|j| ((i + j as usize) % 7) as f32 * 0.01).collect();
            match nak_protocol::Activation::encode(&row, width, Default::default()) {
                Ok(a) => StepInput::Hidden(a),
                Err(_) => StepInput::Tokens(vec![]),
            }
        }
    };
    let _ = engine.step(session, input(0));
    let t0 = Instant::now();
    let steps = 16;
    for i in 1..=steps {
        if engine.step(session, input(i)).is_err() {
            break;
        }
    }
    let per_step = t0.elapsed().as_secs_f64() / steps as f64;
    let _ = engine.close_session(session);
    engine.span().n_layer as f64 / per_step.max(1e-9)
}

/// `nak-node run`.
pub async fn run(store: Store, opts: RunOptions) -> Result<()> {
    let (net, key) = start_network(&store, opts.listen.clone(), opts.bootstrap.clone()).await?;
    for addr in listen_addrs(&net).await? {
        println!("listening {addr}");
    }

    let id = if std::path::Path::new(&opts.model).is_file() {
        let path = std::path::PathBuf::from(&opts.model);
        let s = store.clone();
        tokio::task::spawn_blocking(move || import_gguf(&s, &path, &mut |_| {})).await??.model_id
    } else {
        let text = opts.model.to_ascii_lowercase();
        match store.resolve_model(&text) {
            Ok(id) => id,
            Err(_) => {
                ModelId::from_hex(&text).context("--model is neither a file, a local model, nor a full model id")?
            }
        }
    };
    let manifest = fetch_manifest(&store, &net, id).await?;
    let n = manifest.n_layer;
    let range = match opts.serve_layers.as_str() {
        "all" => 0..n,
        "auto" => bail!("--serve-layers auto is not implemented yet; use all or A:B"),
        other => nak_shard_store::span::parse_layer_range(other)
            .filter(|r| r.end <= n)
            .with_context(|| format!("--serve-layers {other}: expected all or A:B within 0:{n}"))?,
    };
    if let Some(budget) = opts.max_memory {
        let need: u64 = span_blobs(&manifest, &range).iter().map(|b| b.size).sum();
        if need > budget {
            bail!("layers {}:{} need {need} bytes of weights, over --max-memory {budget}", range.start, range.end);
        }
    }
    fetch_span_blobs(&store, &net, &manifest, range.clone()).await?;
    let path = {
        let (s, r) = (store.clone(), range.clone());
        tokio::task::spawn_blocking(move || cached_span(&s, &id, r)).await??
    };
    let mut cfg = EngineConfig::default();
    if let Some(t) = opts.threads {
        cfg.threads = t;
    }
    let (engine, throughput) = tokio::task::spawn_blocking(move || -> Result<(SpanEngine, f64)> {
        let mut engine = SpanEngine::load(&path, cfg)?;
        let t = measure_block_throughput(&mut engine);
        Ok((engine, t))
    })
    .await??;

    // Provide what we hold: the manifest, every local blob of the model, the blocks we serve.
    net.provide(keys::manifest_key(&id.0)).await?;
    for blob in &manifest.blobs {
        if store.has(&blob.hash) {
            net.provide(keys::blob_key(&blob.hash.0)).await?;
        }
    }
    for layer in range.clone() {
        net.provide(keys::block_key(&id.0, layer)).await?;
    }
    let topic = keys::announce_topic(&id.0);
    net.subscribe(topic.clone()).await?;
    println!("serving {id} layers {}:{} ({throughput:.0} block-tokens/s)", range.start, range.end);

    let signer = ed25519_dalek::SigningKey::from_bytes(
        &key.secret().as_ref().try_into().context("identity secret is 32 bytes")?,
    );
    let mut sequence = 0u64;
    let mut ticker = tokio::time::interval(opts.announce_every);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                sequence += 1;
                let addrs = listen_addrs(&net).await.unwrap_or_default();
                let ann = pb::ServerAnnouncement {
                    peer_id: net.peer_id().to_bytes(),
                    model_id: id.0.to_vec(),
                    first_layer: range.start,
                    end_layer: range.end,
                    block_throughput: throughput,
                    free_sessions: engine.config().max_sessions.saturating_sub(engine.n_sessions() as u32),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    addrs: addrs.iter().map(|a| a.to_vec()).collect(),
                    timestamp_ms: now_ms(),
                    sequence,
                };
                if let Err(e) = net.publish(topic.clone(), announce::sign(&signer, &ann).encode_to_vec()).await {
                    tracing::debug!(error = %e, "announcement not published (no peers yet?)");
                }
            }
            _ = tokio::signal::ctrl_c() => {
                eprintln!("leaving the swarm");
                net.shutdown().await?;
                return Ok(());
            }
        }
    }
}

/// `nak-node status`: listen to a model's announcements for `wait`, then show block coverage.
/// `local` (the user's store, if any) resolves id prefixes and knows layer counts; the
/// network runs on a throwaway identity so it never clashes with a node of this machine.
pub async fn status(
    local: Option<Store>,
    bootstrap: Vec<Multiaddr>,
    model: &str,
    wait: Duration,
    json: bool,
) -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let store = Store::open(scratch.path())?;
    let lookup = local.as_ref().unwrap_or(&store);
    let id = lookup
        .resolve_model(model)
        .or_else(|_| ModelId::from_hex(&model.to_ascii_lowercase()))
        .context("--model must be a model id (or a unique prefix of a local one)")?;
    let listen = vec!["/ip4/0.0.0.0/tcp/0".parse().context("literal multiaddr")?];
    let (net, _) = start_network(&store, listen, bootstrap).await?;
    net.subscribe(keys::announce_topic(&id.0)).await?;
    tokio::time::sleep(wait).await;
    let anns: Vec<pb::ServerAnnouncement> =
        net.announcements().await?.into_iter().filter(|a| a.model_id == id.0.to_vec()).collect();
    let n_layer = match lookup.manifest(&id) {
        Ok(m) => m.n_layer,
        Err(_) => anns.iter().map(|a| a.end_layer).max().unwrap_or(0),
    };
    let blocks: Vec<serde_json::Value> = (0..n_layer)
        .map(|i| {
            let servers: Vec<serde_json::Value> = anns
                .iter()
                .filter(|a| (a.first_layer..a.end_layer).contains(&i))
                .map(|a| {
                    let peer = PeerId::from_bytes(&a.peer_id).map(|p| p.to_string()).unwrap_or_default();
                    serde_json::json!({ "peer": peer, "throughput": a.block_throughput })
                })
                .collect();
            serde_json::json!({ "index": i, "servers": servers })
        })
        .collect();
    if json {
        println!("{}", serde_json::json!({ "models": [{ "model_id": id.to_hex(), "blocks": blocks }] }));
    } else {
        println!("model {id}: {} server(s)", anns.len());
        for b in &blocks {
            let servers = b["servers"].as_array().map_or(0, Vec::len);
            println!("  block {:>3}: {servers} server(s)", b["index"]);
        }
    }
    net.shutdown().await?;
    Ok(())
}

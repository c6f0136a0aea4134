//! Getting a model from the swarm: its manifest and its blobs, from DHT providers.
//!
//! Servers fetch the blobs of the span they serve; clients fetch the manifest and the
//! metadata blob (the tokenizer). The manifest comes from any provider of
//! `nakshatra/manifest/<id>` and is checked against the id (its blake3). Each blob comes
//! from the providers of `nakshatra/blob/<hash>` and, for a block's blob, from the
//! servers of that block (`nakshatra/block/<id>/<layer>`: a server holds what it serves,
//! so it keeps no blob record for it, see `server`), with verified streaming
//! ([`nak_shard_store::transfer`]), several providers at once; the fetch itself runs on
//! a blocking thread, and only a blob that matches its hash enters the store.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use nak_protocol::{keys, pb};
use nak_shard_store::import::span_blobs;
use nak_shard_store::transfer::{fetch_blob, BlobProvider, FetchConfig, FetchReport, TransferError};
use nak_shard_store::{BlobRef, BlobRole, Manifest, ModelId, Store, StoreError};

use crate::dilation::dilate;
use crate::net::{NetworkError, NetworkHandle, RemoteProvider};

/// Errors of fetching from the swarm.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The network failed.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A verified transfer failed.
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// A blocking task died.
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Nobody in the swarm has what we need.
    #[error("no provider of {0}")]
    NoProvider(String),
}

/// How long to keep asking the DHT for providers before giving up.
const PROVIDER_WAIT: Duration = Duration::from_secs(30);

/// Retries `f` until it gives something or `limit` passes.
async fn retry<T>(limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if t0.elapsed() > dilate(limit) {
            return None;
        }
        tokio::time::sleep(dilate(Duration::from_millis(250))).await;
    }
}

/// The servers of `model` that announce `layer` (any of them for blobs of no layer).
async fn announced_holders(net: &NetworkHandle, model: ModelId, layer: Option<u32>) -> Vec<PeerId> {
    let me = net.peer_id();
    (net.announcements().await.unwrap_or_default().iter())
        .filter(|a| a.model_id == model.0 && layer.is_none_or(|l| (a.first_layer..a.end_layer).contains(&l)))
        .filter_map(|a| PeerId::from_bytes(&a.peer_id).ok())
        .filter(|p| *p != me)
        .collect()
}

/// The manifest of `id`: from the local store, else from a DHT provider (checked against the id).
pub async fn fetch_manifest(store: &Store, net: &NetworkHandle, id: ModelId) -> Result<Manifest, FetchError> {
    if let Ok(m) = store.manifest(&id) {
        return Ok(m);
    }
    // The DHT is asked again until a provider answers: while a swarm's servers join, the
    // providers it names can all be too busy to answer at first (lesson 28 of the
    // simulations: four of 900 joining servers gave up after one round).
    let manifest = retry(PROVIDER_WAIT, async || {
        for peer in net.providers(keys::manifest_key(&id.0)).await.ok()? {
            let req = pb::BlobRequest { kind: Some(pb::blob_request::Kind::Manifest(id.0.to_vec())) };
            if let Ok(pb::BlobResponse { result: Some(pb::blob_response::Result::Manifest(bytes)) }) =
                net.request(peer, req).await
            {
                match Manifest::from_canonical(&bytes) {
                    Ok(m) if m.model_id() == id => return Some(m),
                    _ => tracing::warn!(%peer, "sent a manifest that does not match the model id"),
                }
            }
        }
        None
    })
    .await
    .ok_or_else(|| FetchError::NoProvider(format!("a valid manifest of {id}")))?;
    store.put_manifest(&manifest)?;
    Ok(manifest)
}

/// Fetches every blob of `layers` (and the metadata) that the store lacks, from the
/// blob's DHT providers, calling `progress(bytes done, bytes to fetch)` as blobs arrive.
/// Each fetched blob is provided in the DHT at once: this node now holds it too.
pub async fn fetch_span_blobs(
    store: &Store,
    net: &NetworkHandle,
    m: &Manifest,
    layers: Range<u32>,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<(), FetchError> {
    let mut needed = span_blobs(m, &layers);
    needed.extend(m.blob(BlobRole::Meta, None).cloned());
    fetch_blobs(store, net, m.model_id(), needed, true, progress).await
}

/// Fetches the model's `meta` blob (its GGUF metadata: architecture, tokenizer) if the
/// store lacks it; `provide` as for [`fetch_blobs`].
pub async fn fetch_meta(store: &Store, net: &NetworkHandle, m: &Manifest, provide: bool) -> Result<(), FetchError> {
    let meta = m.blob(BlobRole::Meta, None).cloned().into_iter().collect();
    fetch_blobs(store, net, m.model_id(), meta, provide, &|_, _| {}).await
}

/// Fetches the blobs of `needed` that the store lacks (see [`fetch_span_blobs`]). When
/// `provide` (a server; a passing client does not, or its records would outlive it), each
/// fetched blob of no layer is provided in the DHT at once; a block's blobs are the
/// server's to provide, under the block key while it serves the block and by blob key
/// while it only holds them.
pub async fn fetch_blobs(
    store: &Store,
    net: &NetworkHandle,
    model: ModelId,
    mut needed: Vec<BlobRef>,
    provide: bool,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<(), FetchError> {
    needed.retain(|b| !store.has(&b.hash));
    let total: u64 = needed.iter().map(|b| b.size).sum();
    let mut done = 0;
    if total > 0 {
        progress(0, total);
    }
    for blob in needed {
        let report = fetch_one(store, net, model, &blob).await?;
        if provide && blob.layer.is_none() {
            net.provide(keys::blob_key(&blob.hash.0)).await?;
        }
        done += blob.size;
        progress(done, total);
        for (peer, reason) in &report.dropped {
            tracing::warn!(%peer, %reason, "dropped a blob provider");
        }
        tracing::info!(blob = %blob.hash, size = blob.size, providers = report.delivered.len(), "fetched a blob");
    }
    Ok(())
}

/// The providers of a blob: those of its blob key and, for a block's blob, the servers
/// of the block. `exhaustive` asks the whole neighbourhood of each key.
async fn blob_providers(net: &NetworkHandle, model: ModelId, blob: &BlobRef, exhaustive: bool) -> Vec<PeerId> {
    let ask = |key| async move {
        let found = if exhaustive { net.all_providers(key).await } else { net.providers(key).await };
        found.unwrap_or_default()
    };
    let block = async {
        match blob.layer {
            Some(layer) => ask(keys::block_key(&model.0, layer)).await,
            None => Vec::new(),
        }
    };
    let (mut peers, servers) = futures::join!(ask(keys::blob_key(&blob.hash.0)), block);
    peers.extend(servers);
    peers.sort();
    peers.dedup();
    peers.retain(|p| *p != net.peer_id());
    peers
}

/// Fetches one blob from its DHT providers. Provider records outlive the peers that
/// made them, so when every listed provider fails the DHT is asked again, a few times,
/// each time for every provider it knows rather than the first answer. Records can also
/// be lost with the peers that held them (until the providers republish): then the
/// servers that announce the blob's layer are asked, since a server holds what it serves.
async fn fetch_one(
    store: &Store,
    net: &NetworkHandle,
    model: ModelId,
    blob: &BlobRef,
) -> Result<FetchReport, FetchError> {
    const ATTEMPTS: usize = 3;
    let (hash, size) = (blob.hash, blob.size);
    let mut attempt = 0;
    loop {
        attempt += 1;
        // After a failure, ask the whole neighbourhood of the key, not just the first answer.
        let exhaustive = attempt > 1;
        let peers: Option<Vec<PeerId>> = retry(PROVIDER_WAIT, async || {
            let p = blob_providers(net, model, blob, exhaustive).await;
            (!p.is_empty()).then_some(p)
        })
        .await;
        let peers = match peers {
            Some(peers) => peers,
            None => announced_holders(net, model, blob.layer).await,
        };
        if peers.is_empty() {
            return Err(FetchError::NoProvider(format!("blob {hash}")));
        }
        let providers: Vec<Arc<dyn BlobProvider>> =
            peers.into_iter().map(|p| Arc::new(RemoteProvider::new(net.clone(), p)) as Arc<dyn BlobProvider>).collect();
        let s = store.clone();
        match tokio::task::spawn_blocking(move || fetch_blob(&s, &hash, size, &providers, &FetchConfig::default()))
            .await?
        {
            Ok(report) => {
                if !report.already_present {
                    crate::metrics::global().fetch_bytes.inc_by(size);
                }
                return Ok(report);
            }
            Err(e) if attempt < ATTEMPTS => {
                tracing::warn!(blob = %hash, error = %e, "fetch failed; asking the DHT for providers again");
                tokio::time::sleep(dilate(Duration::from_millis(500))).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

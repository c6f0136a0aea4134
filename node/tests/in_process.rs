//! Two servers in one process, each on an injected in-memory transport and with an
//! injected compute loader (llama.cpp underneath, wrapped to count its loads): the
//! second fetches its span from the first by model id, and each hears the other's
//! announcement. This is how a simulation runs many nodes in one process.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nak_node::engine::{Compute, ComputeLoader, EngineConfig, EngineError, LlamaLoader};
use nak_node::net::{identity, memory_transport, Network, NetworkConfig, NetworkHandle};
use nak_node::server::{ModelSource, ServeLayers, Server, ServerConfig, ServerEvent};
use nak_shard_store::{Store, SynthConfig};

/// The real loader, counting the spans it loads and their layer counts.
#[derive(Default)]
struct CountingLoader {
    loads: AtomicUsize,
    layers: Mutex<Vec<u32>>,
}

impl ComputeLoader for CountingLoader {
    fn load(&self, span: &Path, cfg: &EngineConfig) -> Result<Box<dyn Compute>, EngineError> {
        let compute = LlamaLoader.load(span, cfg)?;
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.layers.lock().unwrap().push(compute.span().n_layer);
        Ok(compute)
    }
}

async fn memory_node(
    dir: &Path,
    port: u64,
    bootstrap: Vec<libp2p::Multiaddr>,
) -> (NetworkHandle, Store, libp2p::identity::ed25519::Keypair) {
    let store = Store::open(dir).unwrap();
    let key = identity::load_or_create(dir).unwrap();
    let transport = memory_transport(&identity::libp2p_keypair(&key)).unwrap();
    let cfg =
        NetworkConfig { listen: vec![format!("/memory/{port}").parse().unwrap()], bootstrap, ..Default::default() };
    let (net, _) = Network::spawn_with_transport(key.clone(), store.clone(), cfg, Some(transport)).await.unwrap();
    (net, store, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_run_in_one_process_on_injected_transport_and_compute() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::synth_model(dir.path(), &SynthConfig { n_layer: 4, seed: 44, ..SynthConfig::default() });
    let port = 1_000_000 + (std::process::id() as u64 % 1_000_000) * 8;
    let loader = Arc::new(CountingLoader::default());
    let events = Arc::new(Mutex::new(Vec::new()));
    let record = |events: &Arc<Mutex<Vec<ServerEvent>>>| {
        let events = events.clone();
        Arc::new(move |e: ServerEvent| events.lock().unwrap().push(e)) as nak_node::server::EventSink
    };
    let cfg = |layers| ServerConfig {
        serve_layers: ServeLayers::Range(layers),
        engine: common::test_engine_config(),
        announce_every: Duration::from_millis(300),
        ..ServerConfig::default()
    };

    let (a_net, a_store, a_key) = memory_node(&dir.path().join("a"), port, vec![]).await;
    let a_addrs = a_net.wait_for_listen_addrs(Duration::from_secs(2)).await.unwrap();
    let a_addr = a_addrs.first().expect("a listen address").clone();
    let a = Server::start(
        a_store,
        a_net.clone(),
        &a_key,
        ModelSource::File(model),
        cfg(0..2),
        loader.clone(),
        record(&events),
    )
    .await
    .unwrap();
    let id = a.model_id();
    let (b_net, b_store, b_key) = memory_node(&dir.path().join("b"), port + 1, vec![a_addr]).await;
    let b = Server::start(
        b_store.clone(),
        b_net.clone(),
        &b_key,
        ModelSource::Id(id),
        cfg(2..4),
        loader.clone(),
        record(&events),
    )
    .await
    .unwrap();
    assert_eq!(b.layers(), 2..4);
    assert_eq!(loader.loads.load(Ordering::SeqCst), 2);
    assert_eq!(*loader.layers.lock().unwrap(), vec![2, 2]);
    // B's store holds what it fetched over the memory transport, verified: layers 2 and 3.
    let manifest = b_store.manifest(&id).unwrap();
    for blob in manifest.blobs.iter().filter(|b| b.layer.is_some_and(|l| l >= 2)) {
        assert!(b_store.has(&blob.hash), "blob of layer {:?} missing", blob.layer);
    }
    for blob in manifest.blobs.iter().filter(|b| b.layer.is_some_and(|l| l < 2)) {
        assert!(!b_store.has(&blob.hash), "B fetched layer {:?} it does not serve", blob.layer);
    }

    // Run both until each has heard the other's announcement.
    let (stop_a, a_stopped) = tokio::sync::oneshot::channel::<()>();
    let (stop_b, b_stopped) = tokio::sync::oneshot::channel::<()>();
    let watch = async {
        let heard = |net: NetworkHandle, peer: libp2p::PeerId, layers: std::ops::Range<u32>| async move {
            for _ in 0..200 {
                let anns = net.announcements().await.unwrap();
                if anns.iter().any(|x| x.peer_id == peer.to_bytes() && (x.first_layer..x.end_layer) == layers) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        };
        let b_heard_a = heard(b_net.clone(), a_net.peer_id(), 0..2).await;
        let a_heard_b = heard(a_net.clone(), b_net.peer_id(), 2..4).await;
        let _ = stop_a.send(());
        let _ = stop_b.send(());
        (b_heard_a, a_heard_b)
    };
    let (ra, rb, heard) = tokio::join!(
        a.run(async {
            let _ = a_stopped.await;
        }),
        b.run(async {
            let _ = b_stopped.await;
        }),
        watch
    );
    ra.unwrap();
    rb.unwrap();
    assert_eq!(heard, (true, true));
    let serving: Vec<_> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Serving { layers, .. } => Some(layers.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(serving, vec![0..2, 2..4]);
    // B reported its fetch: progress up to the whole of what it lacked (A had it all).
    let fetched: Vec<(u64, u64)> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Fetching { layers, done, total } if *layers == (2..4) => Some((*done, *total)),
            _ => None,
        })
        .collect();
    assert!(fetched.len() >= 2 && fetched[0].0 == 0, "{fetched:?}");
    assert!(fetched.windows(2).all(|w| w[0].0 < w[1].0), "progress must grow: {fetched:?}");
    assert_eq!(fetched.last().map(|&(d, t)| d == t), Some(true), "{fetched:?}");
}

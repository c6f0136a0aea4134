//! Two real libp2p nodes on loopback: DHT providers, verified blob exchange, gossip announcements.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nak_node::net::{identity, Network, NetworkConfig, NetworkHandle, RemoteProvider};
use nak_protocol::{announce, keys, pb};
use nak_shard_store::transfer::{fetch_blob, BlobProvider, FetchConfig};
use nak_shard_store::{assemble_span, import_gguf, write_synthetic, Manifest, Store, SynthConfig};
use prost::Message;

fn loopback() -> NetworkConfig {
    NetworkConfig { listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()], ..NetworkConfig::default() }
}

async fn start(
    dir: &std::path::Path,
    bootstrap: Vec<libp2p::Multiaddr>,
) -> (NetworkHandle, Store, libp2p::identity::ed25519::Keypair) {
    let store = Store::open(dir).unwrap();
    let key = identity::load_or_create(dir).unwrap();
    let (handle, _task) =
        Network::spawn(key.clone(), store.clone(), NetworkConfig { bootstrap, ..loopback() }).await.unwrap();
    (handle, store, key)
}

async fn first_addr(h: &NetworkHandle) -> libp2p::Multiaddr {
    h.wait_for_listen_addrs(Duration::from_secs(2)).await.unwrap().into_iter().next().expect("a listen address")
}

async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A 2-layer synthetic model file in `dir`.
fn tiny_model(dir: &std::path::Path, seed: u64) -> std::path::PathBuf {
    let model = dir.join("m.gguf");
    write_synthetic(&SynthConfig { n_layer: 2, seed, ..SynthConfig::default() }, &model).unwrap();
    model
}

/// Asks `peer` for the manifest of `id` over the blob protocol.
async fn manifest_from(net: &NetworkHandle, peer: libp2p::PeerId, id: nak_shard_store::ModelId) -> Manifest {
    let req = pb::BlobRequest { kind: Some(pb::blob_request::Kind::Manifest(id.0.to_vec())) };
    let resp = net.request(peer, req).await.unwrap();
    let Some(pb::blob_response::Result::Manifest(bytes)) = resp.result else { panic!("no manifest: {resp:?}") };
    Manifest::from_canonical(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_finds_providers_and_fetches_verified_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.gguf");
    write_synthetic(&SynthConfig { n_layer: 4, seed: 21, ..SynthConfig::default() }, &model).unwrap();

    let (a, a_store, _) = start(&dir.path().join("a"), vec![]).await;
    let report = import_gguf(&a_store, &model, &mut |_| {}).unwrap();
    let id = report.model_id;
    a.provide(keys::manifest_key(&id.0)).await.unwrap();
    for b in &report.manifest.blobs {
        a.provide(keys::blob_key(&b.hash.0)).await.unwrap();
    }

    let (b, b_store, _) = start(&dir.path().join("b"), vec![first_addr(&a).await]).await;
    let block2 = report.manifest.blobs.iter().find(|x| x.layer == Some(2)).unwrap().clone();
    let providers = eventually("providers of block 2", async || {
        let p = b.providers(keys::blob_key(&block2.hash.0)).await.unwrap();
        (!p.is_empty()).then_some(p)
    })
    .await;
    assert_eq!(providers, vec![a.peer_id()]);

    // The manifest by id, checked against the id.
    let resp = b
        .request(a.peer_id(), pb::BlobRequest { kind: Some(pb::blob_request::Kind::Manifest(id.0.to_vec())) })
        .await
        .unwrap();
    let Some(pb::blob_response::Result::Manifest(bytes)) = resp.result else { panic!("no manifest: {resp:?}") };
    let manifest = Manifest::from_canonical(&bytes).unwrap();
    assert_eq!(manifest.model_id(), id);
    b_store.put_manifest(&manifest).unwrap();

    // Every blob of the span 2..4, fetched over libp2p and verified.
    let handle = b.clone();
    let a_peer = a.peer_id();
    let store = b_store.clone();
    let needed: Vec<_> = manifest.blobs.iter().filter(|x| x.layer.is_none_or(|l| l >= 2)).cloned().collect();
    tokio::task::spawn_blocking(move || {
        let providers: Vec<Arc<dyn BlobProvider>> = vec![Arc::new(RemoteProvider::new(handle, a_peer))];
        for blob in needed {
            fetch_blob(&store, &blob.hash, blob.size, &providers, &FetchConfig { piece_bytes: 16 << 10 }).unwrap();
        }
    })
    .await
    .unwrap();
    let from_a = dir.path().join("from-a.gguf");
    let local = dir.path().join("local.gguf");
    assemble_span(&b_store, &id, 2..4, &from_a).unwrap();
    assemble_span(&a_store, &id, 2..4, &local).unwrap();
    assert_eq!(std::fs::read(&from_a).unwrap(), std::fs::read(&local).unwrap());

    // Asking for a blob A does not have: a clean "not found".
    let resp = b
        .request(
            a.peer_id(),
            pb::BlobRequest {
                kind: Some(pb::blob_request::Kind::Range(pb::BlobRangeRequest {
                    hash: vec![9; 32],
                    size: 10,
                    ranges: vec![pb::ChunkRange { start: 0, end: 1 }],
                })),
            },
        )
        .await
        .unwrap();
    assert!(matches!(resp.result, Some(pb::blob_response::Result::NotFound(_))));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_announcements_are_rejected_and_honest_ones_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _, _) = start(&dir.path().join("a"), vec![]).await;
    let (b, _, b_key) = start(&dir.path().join("b"), vec![first_addr(&a).await]).await;
    let topic = keys::announce_topic(&[5; 32]);
    a.subscribe(topic.clone()).await.unwrap();
    b.subscribe(topic.clone()).await.unwrap();

    let dalek = |k: &libp2p::identity::ed25519::Keypair| {
        ed25519_dalek::SigningKey::from_bytes(&k.secret().as_ref().try_into().unwrap())
    };
    let ann = |peer: &NetworkHandle, seq| pb::ServerAnnouncement {
        peer_id: peer.peer_id().to_bytes(),
        model_id: vec![5; 32],
        first_layer: 0,
        end_layer: 10,
        block_throughput: 50.0,
        free_sessions: 2,
        version: "test".into(),
        addrs: vec![],
        timestamp_ms: announce::now_ms(),
        sequence: seq,
        ..Default::default()
    };
    // B forges one in A's name, then sends its own honest one.
    let forged = announce::sign(&dalek(&b_key), &ann(&a, 1)).encode_to_vec();
    let honest = announce::sign(&dalek(&b_key), &ann(&b, 2)).encode_to_vec();
    eventually("gossip mesh", async || b.publish(topic.clone(), forged.clone()).await.ok()).await;
    eventually("the honest announcement", async || {
        let _ = b.publish(topic.clone(), honest.clone()).await;
        let seen = a.announcements().await.unwrap();
        seen.iter().any(|x| x.peer_id == b.peer_id().to_bytes()).then_some(())
    })
    .await;
    let seen = a.announcements().await.unwrap();
    assert!(seen.iter().all(|x| x.peer_id != a.peer_id().to_bytes()), "the forgery was accepted");
    // The forgery did reach A and was turned away. Gossip knows a message by its content,
    // so each new forgery carries a new sequence number.
    let mut seq = 2;
    eventually("rejections", async || {
        seq += 1;
        let forged = announce::sign(&dalek(&b_key), &ann(&a, seq)).encode_to_vec();
        let _ = b.publish(topic.clone(), forged).await;
        (a.stats().await.unwrap().rejected_announcements >= 2).then_some(())
    })
    .await;
    // A still answers.
    assert!(a.providers(keys::blob_key(&[1; 32])).await.is_ok());
}

/// Whether `net` holds an announcement of `peer`: (among the current ones, set aside as
/// disconnected).
async fn holds(net: &NetworkHandle, peer: libp2p::PeerId) -> (bool, bool) {
    let has = |all: Vec<pb::ServerAnnouncement>| all.iter().any(|a| a.peer_id == peer.to_bytes());
    (has(net.announcements().await.unwrap()), has(net.disconnected_announcements().await.unwrap()))
}

/// A closed connection looks the same whether the server crashed or closed it for room:
/// its announcement is set aside, taken back when the server connects again, and dropped
/// when a dial to it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_server_is_set_aside_until_it_returns_or_a_dial_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _, _) = start(&dir.path().join("a"), vec![]).await;
    let a_addr = first_addr(&a).await;
    let b_dir = dir.path().join("b");
    let (b, _, _) = start(&b_dir, vec![a_addr.clone()]).await;
    let peer = b.peer_id();
    let ann = pb::ServerAnnouncement {
        peer_id: peer.to_bytes(),
        model_id: vec![5; 32],
        end_layer: 2,
        block_throughput: 1.0,
        free_sessions: 1,
        timestamp_ms: announce::now_ms(),
        sequence: 1,
        ..Default::default()
    };
    b.set_announcement(ann).await.unwrap();
    eventually("B's announcement", async || a.ask_announcement(peer, &[5; 32]).await.ok()).await;
    assert_eq!(holds(&a, peer).await, (true, false));

    b.shutdown().await.unwrap();
    eventually("B set aside", async || (holds(&a, peer).await == (false, true)).then_some(())).await;

    // The same server back (same key), on a new port: it connects, and is taken back.
    let (b, _, _) = start(&b_dir, vec![a_addr]).await;
    assert_eq!(b.peer_id(), peer);
    let b_addr = first_addr(&b).await;
    eventually("B taken back", async || (holds(&a, peer).await == (true, false)).then_some(())).await;

    b.shutdown().await.unwrap();
    eventually("B set aside again", async || (holds(&a, peer).await == (false, true)).then_some(())).await;
    assert!(a.connect(peer, vec![b_addr]).await.is_err(), "dialled a node that has stopped");
    assert_eq!(holds(&a, peer).await, (false, false), "the announcement of a server that cannot be dialled");
    a.shutdown().await.unwrap();
}

/// A bare libp2p peer that writes raw bytes on the blob protocol, whatever they are.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl libp2p::request_response::Codec for RawCodec {
    type Protocol = libp2p::StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &Self::Protocol,
        _: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        Err(std::io::ErrorKind::Unsupported.into())
    }

    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        futures::AsyncReadExt::read_to_end(io, &mut out).await?;
        Ok(out)
    }

    async fn write_request<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()> {
        futures::AsyncWriteExt::write_all(io, &req).await?;
        futures::AsyncWriteExt::close(io).await
    }

    async fn write_response<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &Self::Protocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> std::io::Result<()> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// Sends `bytes` as one blob-protocol request from a fresh peer; returns the bytes that
/// came back (none when the stream was reset or closed without an answer).
async fn send_raw(to: libp2p::PeerId, addr: libp2p::Multiaddr, bytes: Vec<u8>) -> Vec<u8> {
    use futures::StreamExt;
    use libp2p::request_response::{self, ProtocolSupport};
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(Default::default(), libp2p::noise::Config::new, libp2p::yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                RawCodec,
                [(nak_node::net::BLOB_PROTOCOL, ProtocolSupport::Outbound)],
                request_response::Config::default(),
            )
        })
        .unwrap()
        .build();
    swarm.add_peer_address(to, addr);
    swarm.behaviour_mut().send_request(&to, bytes);
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match swarm.select_next_some().await {
                libp2p::swarm::SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                }) => return response,
                libp2p::swarm::SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. }) => {
                    return Vec::new()
                }
                _ => {}
            }
        }
    })
    .await;
    outcome.expect("the raw request ended one way or the other")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_blob_frames_are_refused_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), 4);
    let (a, a_store, _) = start(&dir.path().join("a"), vec![]).await;
    let id = import_gguf(&a_store, &model, &mut |_| {}).unwrap().model_id;
    let a_addr = first_addr(&a).await;

    // A length prefix of 100 MiB, then a little data: refused on the prefix alone.
    let mut oversized = Vec::new();
    let mut len = 100u64 << 20;
    while len >= 0x80 {
        oversized.push((len as u8) | 0x80);
        len >>= 7;
    }
    oversized.push(len as u8);
    oversized.extend_from_slice(&[0xee; 4096]);
    assert_eq!(send_raw(a.peer_id(), a_addr.clone(), oversized).await, b"", "an oversized request got an answer");
    // A frame of the right size holding garbage.
    let mut garbage = vec![0x80, 0x08];
    garbage.extend_from_slice(&[0xff; 1024]);
    assert_eq!(send_raw(a.peer_id(), a_addr.clone(), garbage).await, b"", "a garbage request got an answer");
    eventually("both refusals counted", async || (a.stats().await.unwrap().refused_blob_frames >= 2).then_some(()))
        .await;

    // A real peer still gets the manifest.
    let (b, _, _) = start(&dir.path().join("b"), vec![a_addr]).await;
    assert_eq!(manifest_from(&b, a.peer_id(), id).await.model_id(), id);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_a_relay_is_reached_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), 5);
    // R relays for others.
    let r_store = Store::open(dir.path().join("r")).unwrap();
    let r_key = identity::load_or_create(&dir.path().join("r")).unwrap();
    let (r, _) = Network::spawn(r_key, r_store, NetworkConfig { relay_server: true, ..loopback() }).await.unwrap();
    let r_addr = first_addr(&r).await;
    // A listens through R (as a node behind a NAT does once AutoNAT says so). It has a
    // loopback listener too, so that its dials leave from that port and the address R
    // observes is one a hole punch can reach, as a NAT's mapping is.
    let a_dir = dir.path().join("a");
    let a_store = Store::open(&a_dir).unwrap();
    let id = import_gguf(&a_store, &model, &mut |_| {}).unwrap().model_id;
    let a_key = identity::load_or_create(&a_dir).unwrap();
    let (a, _) = Network::spawn(a_key, a_store, loopback()).await.unwrap();
    let circuit = r_addr.clone().with(libp2p::multiaddr::Protocol::P2pCircuit);
    a.listen_on(circuit.clone()).await.unwrap();
    let a_via_r = circuit.with_p2p(a.peer_id()).unwrap();
    // DCUtR's hole punches and their failures are logged; shown if the test fails.
    let filter = tracing_subscriber::EnvFilter::try_from_env("NAK_LOG")
        .unwrap_or_else(|_| "warn,nak_node::net::task=info,libp2p_dcutr=debug".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    // B knows A only by its relayed address. DCUtR then replaces the relayed connection
    // with a direct one (B is directly dialable). It tries on each relayed connection
    // once, with the addresses identify has reported to each side by then; a fresh node
    // on a loaded machine can have its first relayed connection before any, so a B that
    // got no direct connection in 10 s makes way for a new one (three at most).
    let mut punched = false;
    for attempt in 0..3 {
        let (b, _, _) = start(&dir.path().join(format!("b{attempt}")), vec![]).await;
        eventually("a dial through the relay", async || b.dial(a_via_r.clone()).await.ok()).await;
        assert_eq!(manifest_from(&b, a.peer_id(), id).await.model_id(), id);
        let t0 = Instant::now();
        while !punched && t0.elapsed() < Duration::from_secs(10) {
            punched = a.stats().await.unwrap().hole_punches + b.stats().await.unwrap().hole_punches > 0;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        b.shutdown().await.unwrap();
        if punched {
            break;
        }
    }
    assert!(punched, "no hole punch through the relay in three tries");
    for n in [a, r] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_run_on_an_injected_in_memory_transport() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), 6);
    let node = async |name: &str, listen: Vec<libp2p::Multiaddr>, bootstrap: Vec<libp2p::Multiaddr>| {
        let store = Store::open(dir.path().join(name)).unwrap();
        let key = identity::load_or_create(&dir.path().join(name)).unwrap();
        let transport = nak_node::net::memory_transport(&identity::libp2p_keypair(&key)).unwrap();
        let cfg = NetworkConfig { listen, bootstrap, ..NetworkConfig::default() };
        let (h, _) = Network::spawn_with_transport(key, store.clone(), cfg, Some(transport)).await.unwrap();
        (h, store)
    };
    let port = 1 + (std::process::id() as u64 % 1_000_000) * 8;
    let (a, a_store) = node("a", vec![format!("/memory/{port}").parse().unwrap()], vec![]).await;
    let id = import_gguf(&a_store, &model, &mut |_| {}).unwrap().model_id;
    a.provide(keys::manifest_key(&id.0)).await.unwrap();
    let a_addr = first_addr(&a).await;
    assert!(a_addr.to_string().starts_with("/memory/"), "{a_addr}");
    let (b, _) = node("b", vec![format!("/memory/{}", port + 1).parse().unwrap()], vec![a_addr]).await;
    let found = eventually("the manifest's provider", async || {
        let p = b.providers(keys::manifest_key(&id.0)).await.ok()?;
        (!p.is_empty()).then_some(p)
    })
    .await;
    assert_eq!(found, vec![a.peer_id()]);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_streams_carry_frames_both_ways_and_refuse_oversized_ones() {
    use futures::StreamExt;
    use nak_node::net::frames::{read_frame, write_frame, INFERENCE_PROTOCOL, MAX_INFERENCE_FRAME};
    let dir = tempfile::tempdir().unwrap();
    let (a, _, _) = start(&dir.path().join("a"), vec![]).await;
    let (b, _, _) = start(&dir.path().join("b"), vec![first_addr(&a).await]).await;
    // A answers every frame with an error frame naming its session; a bad frame ends that stream only.
    let mut incoming = a.streams().accept(INFERENCE_PROTOCOL).unwrap();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = refused.clone();
    tokio::spawn(async move {
        while let Some((_peer, mut stream)) = incoming.next().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    match read_frame::<pb::InferenceFrame, _>(&mut stream, MAX_INFERENCE_FRAME).await {
                        Ok(pb::InferenceFrame { kind: Some(pb::inference_frame::Kind::Step(step)) }) => {
                            let error = pb::ErrorFrame {
                                session_id: step.session_id,
                                message: "unknown session".into(),
                                ..Default::default()
                            };
                            let reply = pb::InferenceFrame { kind: Some(pb::inference_frame::Kind::Error(error)) };
                            write_frame(&mut stream, &reply, MAX_INFERENCE_FRAME).await.unwrap();
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if e.kind() == std::io::ErrorKind::InvalidData {
                                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            return;
                        }
                    }
                }
            });
        }
    });
    let mut control = b.streams();
    let step = |id| pb::InferenceFrame {
        kind: Some(pb::inference_frame::Kind::Step(pb::Step {
            session_id: id,
            step: 0,
            tokens: vec![1],
            ..Default::default()
        })),
    };
    let mut stream = control.open_stream(a.peer_id(), INFERENCE_PROTOCOL).await.unwrap();
    for id in [7, 8, 9] {
        write_frame(&mut stream, &step(id), MAX_INFERENCE_FRAME).await.unwrap();
        let reply: pb::InferenceFrame = read_frame(&mut stream, MAX_INFERENCE_FRAME).await.unwrap();
        let Some(pb::inference_frame::Kind::Error(e)) = reply.kind else { panic!("{reply:?}") };
        assert_eq!((e.session_id, e.message.as_str()), (id, "unknown session"));
    }
    // A 1 GiB length prefix on a second stream: refused at once, the first stream still works.
    let mut bad = control.open_stream(a.peer_id(), INFERENCE_PROTOCOL).await.unwrap();
    futures::AsyncWriteExt::write_all(&mut bad, &[0x80, 0x80, 0x80, 0x80, 0x04]).await.unwrap();
    futures::AsyncWriteExt::flush(&mut bad).await.unwrap();
    eventually("the oversized frame refused", async || {
        (refused.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    write_frame(&mut stream, &step(10), MAX_INFERENCE_FRAME).await.unwrap();
    let reply: pb::InferenceFrame = read_frame(&mut stream, MAX_INFERENCE_FRAME).await.unwrap();
    assert!(matches!(reply.kind, Some(pb::inference_frame::Kind::Error(e)) if e.session_id == 10));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A client opens its hops' streams all at once, to servers it is not connected to.
/// libp2p-stream's own dial queue holds one request and drops the rest; every stream
/// must still open (the network task dials).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opened_at_once_to_unconnected_peers_all_open() {
    use futures::StreamExt;
    use nak_node::net::frames::INFERENCE_PROTOCOL;
    let dir = tempfile::tempdir().unwrap();
    let mut servers = Vec::new();
    for i in 0..4 {
        let (server, _, _) = start(&dir.path().join(format!("s{i}")), vec![]).await;
        let mut incoming = server.streams().accept(INFERENCE_PROTOCOL).unwrap();
        tokio::spawn(async move {
            while let Some((_peer, mut stream)) = incoming.next().await {
                tokio::spawn(async move {
                    let mut byte = [0u8; 1];
                    if futures::AsyncReadExt::read_exact(&mut stream, &mut byte).await.is_ok() {
                        let _ = futures::AsyncWriteExt::write_all(&mut stream, &byte).await;
                        let _ = futures::AsyncWriteExt::flush(&mut stream).await;
                    }
                });
            }
        });
        let addr = first_addr(&server).await;
        servers.push((server, addr));
    }
    let (client, _, _) = start(&dir.path().join("client"), vec![]).await;
    let opens = servers.iter().map(|(server, addr)| {
        let (client, peer, addrs) = (client.clone(), server.peer_id(), vec![addr.clone()]);
        async move {
            let mut stream = client.open_stream(peer, &addrs, INFERENCE_PROTOCOL).await?;
            futures::AsyncWriteExt::write_all(&mut stream, &[7]).await?;
            futures::AsyncWriteExt::flush(&mut stream).await?;
            let mut echo = [0u8; 1];
            futures::AsyncReadExt::read_exact(&mut stream, &mut echo).await?;
            anyhow::Ok(echo[0])
        }
    });
    let echoes = tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(opens))
        .await
        .expect("every stream opens within 20 s");
    for echo in echoes {
        assert_eq!(echo.unwrap(), 7);
    }
    client.shutdown().await.unwrap();
    for (server, _) in servers {
        server.shutdown().await.unwrap();
    }
}

/// Addresses where nothing answers: QUIC on closed loopback UDP ports, each with a peer
/// id of its own (as a peers file holds after its peers left).
fn dead_quic_peers(n: usize) -> Vec<libp2p::Multiaddr> {
    (0..n)
        .map(|_| {
            let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let peer = libp2p::PeerId::random();
            format!("/ip4/127.0.0.1/udp/{port}/quic-v1/p2p/{peer}").parse().unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_peers_that_are_gone_do_not_hold_up_lookups() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _, _) = start(&dir.path().join("a"), vec![]).await;
    let a_addr = first_addr(&a).await.with(libp2p::multiaddr::Protocol::P2p(a.peer_id()));
    let key = b"a key someone provides".to_vec();
    a.provide(key.clone()).await.unwrap();

    // A client that knows the provider from --bootstrap and 32 departed peers from its peers file.
    let client = async |name: &str, bootstrap: Vec<libp2p::Multiaddr>, remembered: Vec<libp2p::Multiaddr>| {
        let d = dir.path().join(name);
        let cfg = NetworkConfig { bootstrap, remembered, dht_server: false, ..loopback() };
        let store = Store::open(&d).unwrap();
        Network::spawn(identity::load_or_create(&d).unwrap(), store, cfg).await.unwrap().0
    };
    let c = client("c", vec![a_addr.clone()], dead_quic_peers(32)).await;
    assert!(c.wait_for_peer(Duration::from_secs(5)).await.unwrap());
    let t0 = Instant::now();
    let found = c.providers(key.clone()).await.unwrap();
    assert_eq!(found, vec![a.peer_id()]);
    // A dead QUIC address costs a 5 s handshake timeout when a query waits on it.
    assert!(t0.elapsed() < Duration::from_secs(4), "the lookup waited {:?} on gone peers", t0.elapsed());

    // A remembered peer that is still there is all a client needs.
    let mut remembered = dead_quic_peers(8);
    remembered.push(a_addr);
    let d = client("d", vec![], remembered).await;
    let found = eventually("providers through a remembered peer", async || {
        d.providers(key.clone()).await.ok().filter(|p| !p.is_empty())
    })
    .await;
    assert_eq!(found, vec![a.peer_id()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_outside_the_holders_routing_table_is_found_by_its_external_address() {
    let dir = tempfile::tempdir().unwrap();
    let (h, _, _) = start(&dir.path().join("h"), vec![]).await;
    let h_addr = first_addr(&h).await.with(libp2p::multiaddr::Protocol::P2p(h.peer_id()));
    let node = async |name: &str, cfg: NetworkConfig| {
        let d = dir.path().join(name);
        let store = Store::open(&d).unwrap();
        let cfg = NetworkConfig { bootstrap: vec![h_addr.clone()], dht_server: false, ..cfg };
        Network::spawn(identity::load_or_create(&d).unwrap(), store, cfg).await.unwrap().0
    };
    // A DHT client never enters the holder's routing table, as a provider of a large swarm
    // often does not: the holder can name it only with the addresses its record carries.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    let p = node("p", NetworkConfig { listen: vec![addr.clone()], external_addresses: vec![addr], ..loopback() }).await;
    assert!(p.wait_for_peer(Duration::from_secs(5)).await.unwrap());
    let key = b"a key only a client provides".to_vec();
    p.provide(key.clone()).await.unwrap();

    let l = node("l", loopback()).await;
    assert!(l.wait_for_peer(Duration::from_secs(5)).await.unwrap());
    let found =
        eventually("the provider", async || l.providers(key.clone()).await.ok().filter(|p| !p.is_empty())).await;
    assert_eq!(found, vec![p.peer_id()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_bound_spares_a_connection_the_dht_is_using() {
    let dir = tempfile::tempdir().unwrap();
    let node = async |name: &str, cfg: NetworkConfig| {
        let d = dir.path().join(name);
        Network::spawn(identity::load_or_create(&d).unwrap(), Store::open(&d).unwrap(), cfg).await.unwrap().0
    };
    let a = node("a", NetworkConfig { max_connections: 2, ..loopback() }).await;
    let a_addr = first_addr(&a).await.with(libp2p::multiaddr::Protocol::P2p(a.peer_id()));
    let joining = |dht_server: bool| NetworkConfig { bootstrap: vec![a_addr.clone()], dht_server, ..loopback() };
    // B is the only other DHT server A knows; C is a DHT client, which A never asks.
    let b = node("b", joining(true)).await;
    let c = node("c", joining(false)).await;
    for peer in [b.peer_id(), c.peer_id()] {
        eventually("a connection", async || a.connected_peers().await.unwrap().contains(&peer).then_some(())).await;
    }
    // Both connections age past the bound's grace.
    tokio::time::sleep(Duration::from_secs(11)).await;
    // A keeps asking the DHT: requests to B over its old connection.
    let asker = a.clone();
    let asking = tokio::spawn(async move {
        loop {
            let _ = asker.providers(b"a key nobody provides".to_vec()).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A third connection takes A over its bound of two: the trim closes down to one
    // besides the new connection, and may close only the idle one.
    let d = node("d", joining(false)).await;
    assert!(d.wait_for_peer(Duration::from_secs(5)).await.unwrap());
    eventually("the idle connection closed", async || {
        (!a.connected_peers().await.unwrap().contains(&c.peer_id())).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    asking.abort();
    assert_eq!(a.stats().await.unwrap().trimmed_connections, 1, "only the idle connection goes");
    assert!(a.connected_peers().await.unwrap().contains(&b.peer_id()));
}

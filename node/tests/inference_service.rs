//! A client drives sessions on a server's inference service over a real libp2p stream:
//! greedy tokens equal the engine's own, a session split into two layer ranges chains
//! exactly, and every kind of bad input gets an error frame while the rest keeps going.

mod common;

use std::time::Duration;

use nak_node::engine::{ComputeLoader, EngineWorker, LlamaLoader, SessionConfig, StepInput, StepOutput};
use nak_node::inference::{InferenceService, ServiceConfig};
use nak_node::net::frames::{read_frame, write_frame, INFERENCE_PROTOCOL, MAX_INFERENCE_FRAME};
use nak_node::net::{identity, Network, NetworkConfig, NetworkHandle, ResourceLimits};
use nak_protocol::{pb, Activation};
use nak_shard_store::{import_gguf, Store};
use pb::inference_frame::Kind;
use pb::ErrorCode;

const TOKENS: usize = 8;

async fn node(dir: &std::path::Path, bootstrap: Vec<libp2p::Multiaddr>) -> (NetworkHandle, Store) {
    let store = Store::open(dir).unwrap();
    let key = identity::load_or_create(dir).unwrap();
    let cfg = NetworkConfig { listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()], bootstrap, ..Default::default() };
    (Network::spawn(key, store.clone(), cfg).await.unwrap().0, store)
}

async fn ask(stream: &mut libp2p::Stream, kind: Kind) -> Kind {
    write_frame(stream, &pb::InferenceFrame { kind: Some(kind) }, MAX_INFERENCE_FRAME).await.unwrap();
    let reply: pb::InferenceFrame =
        tokio::time::timeout(Duration::from_secs(20), read_frame(stream, MAX_INFERENCE_FRAME))
            .await
            .expect("an answer in time")
            .unwrap();
    reply.kind.expect("a frame with content")
}

fn open(id: u64, model: &[u8; 32], layers: std::ops::Range<u32>) -> Kind {
    Kind::Open(pb::OpenSession {
        session_id: id,
        model_id: model.to_vec(),
        first_layer: layers.start,
        end_layer: layers.end,
        ..Default::default()
    })
}

/// Step `n` of a session fed the 4-token prompt first, one token a step after it.
fn step(id: u64, n: u64, tokens: Vec<i32>, hidden: Vec<u8>) -> Kind {
    step_at(id, n, if n == 0 { 0 } else { 3 + n as u32 }, tokens, hidden)
}

fn step_at(id: u64, n: u64, position: u32, tokens: Vec<i32>, hidden: Vec<u8>) -> Kind {
    Kind::Step(pb::Step { session_id: id, step: n, tokens, hidden, position, ..Default::default() })
}

fn code(kind: &Kind) -> ErrorCode {
    match kind {
        Kind::Error(e) => e.code(),
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_over_a_stream_match_the_engine_and_bad_input_gets_error_frames() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::small_synth(dir.path());
    let cfg = common::test_engine_config();
    let prompt: Vec<i32> = vec![300, 311, 322, 333];

    // What the engine gives on its own.
    let mut direct = LlamaLoader.load(&model, &cfg).unwrap();
    let s = direct.open_session(SessionConfig::default()).unwrap();
    let mut expected = Vec::new();
    let mut input = prompt.clone();
    for _ in 0..TOKENS {
        let StepOutput::Token { token, .. } = direct.step(s, StepInput::Tokens(input)).unwrap() else { panic!() };
        expected.push(token);
        input = vec![token];
    }
    drop(direct);

    let (a, a_store) = node(&dir.path().join("a"), vec![]).await;
    let id = import_gguf(&a_store, &model, &mut |_| {}).unwrap().model_id;
    let worker = EngineWorker::spawn(LlamaLoader.load(&model, &cfg).unwrap()).unwrap();
    let service = InferenceService::spawn(&a, ServiceConfig::default()).unwrap();
    service.serve(id, worker);
    let a_addr = a.wait_for_listen_addrs(Duration::from_secs(2)).await.unwrap();
    assert!(!a_addr.is_empty(), "a listen address");
    let (b, _) = node(&dir.path().join("b"), a_addr).await;
    let mut control = b.streams();
    let mut stream = control.open_stream(a.peer_id(), INFERENCE_PROTOCOL).await.unwrap();

    // One session over every layer: the same greedy tokens.
    assert!(
        matches!(ask(&mut stream, open(1, &id.0, 0..6)).await, Kind::Opened(o) if o.session_id == 1 && o.max_context == 256)
    );
    let mut got = Vec::new();
    let mut input = prompt.clone();
    for n in 0..TOKENS as u64 {
        let Kind::Result(r) = ask(&mut stream, step(1, n, input, vec![])).await else { panic!("no result") };
        assert!(r.has_token && r.step == n);
        got.push(r.token);
        input = vec![r.token];
    }
    assert_eq!(got, expected);

    // The same model as two sessions, 0..3 then 3..6, the client carrying the hidden state.
    assert!(matches!(ask(&mut stream, open(2, &id.0, 0..3)).await, Kind::Opened(_)));
    assert!(matches!(ask(&mut stream, open(3, &id.0, 3..6)).await, Kind::Opened(_)));
    let mut chained = Vec::new();
    let mut input = prompt.clone();
    let mut last_hidden = Vec::new();
    for n in 0..TOKENS as u64 {
        let Kind::Result(h) = ask(&mut stream, step(2, n, input, vec![])).await else { panic!("no hidden state") };
        assert!(!h.has_token && !h.hidden.is_empty());
        let Kind::Result(r) = ask(&mut stream, step(3, n, vec![], h.hidden.clone())).await else { panic!("no token") };
        chained.push(r.token);
        input = vec![r.token];
        last_hidden = h.hidden;
    }
    assert_eq!(chained, expected);

    // A repeat of the last step gets the cached result; a step past the cache is out of order.
    let Kind::Result(again) = ask(&mut stream, step(3, TOKENS as u64 - 1, vec![], last_hidden.clone())).await else {
        panic!("no replay")
    };
    assert_eq!(again.token, *chained.last().unwrap());
    assert_eq!(code(&ask(&mut stream, step_at(3, 99, 99, vec![], last_hidden)).await), ErrorCode::StepOutOfOrder);
    assert_eq!(code(&ask(&mut stream, step(42, 0, vec![1], vec![])).await), ErrorCode::UnknownSession);
    assert_eq!(code(&ask(&mut stream, open(4, &[9; 32], 0..6)).await), ErrorCode::WrongSpan);
    assert_eq!(code(&ask(&mut stream, open(4, &id.0, 2..9)).await), ErrorCode::WrongSpan);

    // Bad inputs to the second half: tokens, a wrong width, NaN. The session survives them.
    let n = TOKENS as u64;
    assert_eq!(code(&ask(&mut stream, step(3, n, vec![5], vec![])).await), ErrorCode::BadInput);
    let narrow = Activation::encode(&[0.5; 32], 32, Default::default()).unwrap().to_bytes();
    assert_eq!(code(&ask(&mut stream, step(3, n, vec![], narrow)).await), ErrorCode::BadInput);
    let mut nan = vec![0.25f32; 64];
    nan[7] = f32::NAN;
    let nan = Activation {
        dtype: Default::default(),
        n_rows: 1,
        width: 64,
        data: nan.iter().flat_map(|x| x.to_le_bytes()).collect(),
    };
    assert_eq!(code(&ask(&mut stream, step(3, n, vec![], nan.to_bytes())).await), ErrorCode::BadInput);
    assert_eq!(code(&ask(&mut stream, step(1, n, vec![1_000_000], vec![])).await), ErrorCode::BadInput);
    // Row tokens (for the last hop's penalties) must match the rows and the vocabulary.
    let good = Activation::encode(&[0.25; 64], 64, Default::default()).unwrap().to_bytes();
    for row_tokens in [vec![1, 2], vec![-3]] {
        let s = pb::Step {
            session_id: 3,
            step: n,
            hidden: good.clone(),
            row_tokens,
            position: 3 + n as u32,
            ..Default::default()
        };
        assert_eq!(code(&ask(&mut stream, Kind::Step(s)).await), ErrorCode::BadInput);
    }
    // Sampling parameters that are not numbers, or out of range, are refused at the open.
    for sampling in [
        pb::Sampling { temperature: f32::NAN, top_p: 1.0, repeat_penalty: 1.0, ..Default::default() },
        pb::Sampling { top_p: 0.0, repeat_penalty: 1.0, ..Default::default() },
    ] {
        let Kind::Open(mut o) = open(7, &id.0, 0..6) else { unreachable!() };
        o.sampling = Some(sampling);
        assert_eq!(code(&ask(&mut stream, Kind::Open(o)).await), ErrorCode::BadInput);
    }

    // Four slots: sessions 1..3 hold three, one more fits, the next is turned away.
    assert!(matches!(ask(&mut stream, open(5, &id.0, 0..6)).await, Kind::Opened(_)));
    assert_eq!(code(&ask(&mut stream, open(6, &id.0, 0..6)).await), ErrorCode::Overloaded);

    // An oversized frame on another stream ends that stream only.
    let mut bad = control.open_stream(a.peer_id(), INFERENCE_PROTOCOL).await.unwrap();
    futures::AsyncWriteExt::write_all(&mut bad, &[0x80, 0x80, 0x80, 0x80, 0x04]).await.unwrap();
    futures::AsyncWriteExt::flush(&mut bad).await.unwrap();
    let reply: pb::InferenceFrame = read_frame(&mut bad, MAX_INFERENCE_FRAME).await.unwrap();
    assert_eq!(code(&reply.kind.unwrap()), ErrorCode::BadFrame);
    let Kind::Result(r) = ask(&mut stream, step(1, n, vec![*got.last().unwrap()], vec![])).await else {
        panic!("session 1 stopped")
    };
    assert!(r.has_token);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A stream from `from` to `to` that answers a hello, or why not.
async fn hello(from: &NetworkHandle, to: libp2p::PeerId) -> Result<(), String> {
    let mut stream = from.streams().open_stream(to, INFERENCE_PROTOCOL).await.map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(5), ask_fallibly(&mut stream, Kind::Hello(pb::Hello {}))).await {
        Ok(Ok(Kind::Hello(_))) => Ok(()),
        Ok(Ok(other)) => Err(format!("answered {other:?}")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("no answer in 5 s".into()),
    }
}

async fn ask_fallibly(stream: &mut libp2p::Stream, kind: Kind) -> Result<Kind, String> {
    write_frame(stream, &pb::InferenceFrame { kind: Some(kind) }, MAX_INFERENCE_FRAME)
        .await
        .map_err(|e| e.to_string())?;
    let reply: pb::InferenceFrame = read_frame(stream, MAX_INFERENCE_FRAME).await.map_err(|e| e.to_string())?;
    reply.kind.ok_or_else(|| "an empty frame".to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_frames_are_refused_is_cut_off_then_banned_for_a_while_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("a")).unwrap();
    let key = identity::load_or_create(&dir.path().join("a")).unwrap();
    let limits = ResourceLimits {
        strikes_to_disconnect: 3,
        strikes_to_ban: 5,
        ban_duration: Duration::from_secs(2),
        ..ResourceLimits::default()
    };
    let listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    let (a, _) = Network::spawn(key, store, NetworkConfig { listen, limits, ..Default::default() }).await.unwrap();
    let _service = InferenceService::spawn(&a, ServiceConfig::default()).unwrap();
    let a_addr = a.wait_for_listen_addrs(Duration::from_secs(2)).await.unwrap();
    let (bad, _) = node(&dir.path().join("bad"), a_addr.clone()).await;
    let (good, _) = node(&dir.path().join("good"), a_addr).await;
    hello(&bad, a.peer_id()).await.expect("served before it misbehaves");

    // Each stream sends a length prefix over the frame bound and is refused.
    let mut refused = 0;
    let banned_after = loop {
        assert!(refused < 20, "still served after {refused} refused frames");
        let Ok(mut stream) = bad.streams().open_stream(a.peer_id(), INFERENCE_PROTOCOL).await else {
            break refused;
        };
        futures::AsyncWriteExt::write_all(&mut stream, &[0x80, 0x80, 0x80, 0x80, 0x04]).await.unwrap();
        let _ = futures::AsyncWriteExt::flush(&mut stream).await;
        if let Ok(Ok(reply)) = tokio::time::timeout(
            Duration::from_secs(5),
            read_frame::<pb::InferenceFrame, _>(&mut stream, MAX_INFERENCE_FRAME),
        )
        .await
        {
            assert_eq!(code(&reply.kind.unwrap()), ErrorCode::BadFrame);
            refused += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(banned_after >= 5, "banned after {banned_after} refused frames, before the 5 strikes it takes");
    let stats = a.stats().await.unwrap();
    assert_eq!(stats.bans, 1);
    assert!(stats.strikes >= 5, "{stats:?}");
    assert!(!a.connected_peers().await.unwrap().contains(&bad.peer_id()));
    assert!(hello(&bad, a.peer_id()).await.is_err(), "a banned peer is refused");
    // Everyone else is served meanwhile.
    hello(&good, a.peer_id()).await.expect("an honest peer is served during the ban");

    // The ban ends (lifted at the next check, every 3 s) and the peer is served again.
    let t0 = std::time::Instant::now();
    while let Err(e) = hello(&bad, a.peer_id()).await {
        assert!(t0.elapsed() < Duration::from_secs(15), "still banned after 15 s: {e}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for n in [a, bad, good] {
        n.shutdown().await.unwrap();
    }
}

//! A client drives sessions on a server's inference service over a real libp2p stream:
//! greedy tokens equal the engine's own, a session split into two layer ranges chains
//! exactly, and every kind of bad input gets an error frame while the rest keeps going.

mod common;

use std::time::Duration;

use nak_node::engine::{ComputeLoader, EngineWorker, LlamaLoader, SessionConfig, StepInput, StepOutput};
use nak_node::inference::{InferenceService, ServiceConfig};
use nak_node::net::frames::{read_frame, write_frame, INFERENCE_PROTOCOL, MAX_INFERENCE_FRAME};
use nak_node::net::{identity, Network, NetworkConfig, NetworkHandle};
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

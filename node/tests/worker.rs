//! The engine worker batches the steps of concurrent sessions into shared decodes and
//! gives each session the tokens it gets alone.

mod common;

use nak_node::engine::{
    Compute, ComputeLoader, EngineConfig, EngineWorker, LlamaLoader, SessionConfig, StepInput, StepOutput,
};

const SESSIONS: usize = 8;
const TOKENS: usize = 12;

fn prompt(i: usize) -> Vec<i32> {
    (0..3 + i).map(|j| 300 + ((i * 37 + j * 11) % 90) as i32).collect()
}

fn token(out: StepOutput) -> i32 {
    match out {
        StepOutput::Token { token, .. } => token,
        StepOutput::Hidden(_) | StepOutput::Cached | StepOutput::Rows(_) => panic!("a whole model returns a token"),
    }
}

/// Greedy generation of one session alone, straight on the engine.
fn alone(compute: &mut dyn Compute, i: usize) -> Vec<i32> {
    let s = compute.open_session(SessionConfig::default()).unwrap();
    let mut out = vec![token(compute.step(s, StepInput::Tokens(prompt(i))).unwrap())];
    while out.len() < TOKENS {
        let last = *out.last().unwrap();
        out.push(token(compute.step(s, StepInput::Tokens(vec![last])).unwrap()));
    }
    compute.close_session(s).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_share_decodes_and_get_their_own_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::small_synth(dir.path());
    let cfg = EngineConfig { max_sessions: SESSIONS as u32, ..common::test_engine_config() };
    let mut direct = LlamaLoader.load(&model, &cfg).unwrap();
    let expected: Vec<Vec<i32>> = (0..SESSIONS).map(|i| alone(direct.as_mut(), i)).collect();
    drop(direct);

    let worker = EngineWorker::spawn(LlamaLoader.load(&model, &cfg).unwrap()).unwrap();
    let runs = (0..SESSIONS).map(|i| {
        let w = worker.clone();
        tokio::spawn(async move {
            let s = w.open_session(SessionConfig::default()).await.unwrap();
            let mut out = vec![token(w.step(s, StepInput::Tokens(prompt(i))).await.unwrap())];
            while out.len() < TOKENS {
                let last = *out.last().unwrap();
                out.push(token(w.step(s, StepInput::Tokens(vec![last])).await.unwrap()));
            }
            w.close_session(s).await.unwrap();
            out
        })
    });
    let got: Vec<Vec<i32>> = futures::future::join_all(runs).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(got, expected);
    let stats = worker.stats().await.unwrap();
    assert_eq!(stats.steps, (SESSIONS * TOKENS) as u64);
    assert_eq!(stats.sessions, 0);
    assert!(stats.batches < stats.steps / 2, "steps were not batched: {stats:?}");

    // A bad step fails alone; the worker keeps serving.
    let s = worker.open_session(SessionConfig::default()).await.unwrap();
    assert!(worker.step(s, StepInput::Tokens(vec![1_000_000])).await.is_err());
    assert!(worker.step(s + 999, StepInput::Tokens(vec![5])).await.is_err());
    assert!(worker.step(s, StepInput::Tokens(vec![300])).await.is_ok());
}

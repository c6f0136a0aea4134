//! `nak-node bench-batch`: aggregate decode throughput of 1, 4, 8… concurrent sessions on
//! one engine worker (continuous batching), against one session alone.
//!
//! Each round opens N sessions with distinct 8-token prompts, prefills them, then times
//! `tokens` greedy decode steps of every session running concurrently; rounds for the
//! different N are interleaved and the median of `reps` is reported.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use nak_node::engine::{ComputeLoader, EngineConfig, EngineWorker, LlamaLoader, SessionConfig, StepInput, StepOutput};

use super::median;

fn token(out: StepOutput) -> i32 {
    match out {
        StepOutput::Token { token, .. } => token,
        StepOutput::Hidden(_) | StepOutput::Cached | StepOutput::Rows(_) => 0,
    }
}

/// Aggregate decode tokens/s of `n` concurrent sessions.
async fn round(worker: &EngineWorker, n: usize, tokens: usize) -> Result<f64> {
    let mut sessions = Vec::new();
    for i in 0..n {
        let s = worker.open_session(SessionConfig::default()).await?;
        let prompt: Vec<i32> = (0..8).map(|j| 1000 + (i * 13 + j * 7) as i32).collect();
        let first = token(worker.step(s, StepInput::Tokens(prompt)).await?);
        sessions.push((s, first));
    }
    let t0 = Instant::now();
    let runs = sessions.iter().map(|&(s, first)| {
        let w = worker.clone();
        async move {
            let mut last = first;
            for _ in 0..tokens {
                last = token(w.step(s, StepInput::Tokens(vec![last])).await?);
            }
            Ok::<_, anyhow::Error>(())
        }
    });
    for r in futures::future::join_all(runs).await {
        r?;
    }
    let secs = t0.elapsed().as_secs_f64();
    for (s, _) in sessions {
        worker.close_session(s).await?;
    }
    Ok((n * tokens) as f64 / secs)
}

/// Runs the benchmark and returns its report.
pub async fn run(model: &Path, sessions: &[usize], tokens: usize, reps: usize, engine: EngineConfig) -> Result<String> {
    let most = sessions.iter().copied().max().unwrap_or(1);
    let cfg = EngineConfig { max_sessions: most as u32, ctx_per_session: (tokens + 64) as u32, ..engine };
    let worker = EngineWorker::spawn(LlamaLoader.load(model, &cfg)?)?;
    round(&worker, 1, 4).await?; // warm-up
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); sessions.len()];
    for _ in 0..reps.max(1) {
        for (i, &n) in sessions.iter().enumerate() {
            rates[i].push(round(&worker, n, tokens).await?);
        }
    }
    let medians: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
    let base = sessions.iter().position(|&n| n == 1).map(|i| medians[i]);
    let mut out = String::new();
    let _ =
        writeln!(out, "{} on one engine worker, {tokens} decode steps per session, median of {reps}", model.display());
    for (&n, &rate) in sessions.iter().zip(&medians) {
        let ratio = base.map_or(String::new(), |b| format!("  ({:.2}x one session)", rate / b));
        let _ = writeln!(out, "{n:>3} session(s): {rate:8.1} tok/s aggregate{ratio}");
    }
    let stats = worker.stats().await?;
    let _ = writeln!(out, "{} steps in {} engine batches", stats.steps, stats.batches);
    Ok(out)
}

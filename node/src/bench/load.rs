//! `nak-node bench-load`: a soak. Many clients generate at once, for minutes, through a
//! chain of two `nak-node run` servers on loopback.
//!
//! Each client is a node of its own (its own identity and connections, as separate users
//! would be) that loops until the time is up: open a session, generate, close it. Every
//! token's arrival is timed; a generation that ends in an error or needed a repair of its
//! route counts as a lost session. Every few seconds each server's resident memory is
//! read from `/proc`; the report gives its growth from the end of the warm-up to the end,
//! so that a leak (memory that grows with the work done) shows.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use nak_node::client::{RemoteSession, SessionOptions};
use nak_shard_store::span::SpanPosition;
use nak_shard_store::{GgufFile, ModelId};
use serde::Serialize;

use super::median;
use super::servers::{self, Server};

const PROMPTS: [&str; 4] = [
    "The history of the printing press begins",
    "Write a short story about a lighthouse keeper:",
    "Explain how a refrigerator works.",
    "Once upon a time, in a small village by the sea,",
];

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Concurrent clients.
    pub clients: usize,
    /// How long they generate.
    pub duration: Duration,
    /// Tokens per generation.
    pub tokens: usize,
    /// Memory after this much time is the baseline of the growth.
    pub warmup: Duration,
    /// How often the servers' memory is read.
    pub sample_every: Duration,
    /// CPU threads of each server.
    pub threads: u32,
}

/// One server's memory over the run.
#[derive(Debug, Serialize)]
pub struct ServerMemory {
    /// Its layers.
    pub span: String,
    /// (seconds since the start, resident MiB), every `sample_every`.
    pub samples: Vec<(f64, f64)>,
    /// Resident MiB at the end of the warm-up, and at the end.
    pub after_warmup_mib: f64,
    pub end_mib: f64,
    /// Growth from the one to the other, in percent.
    pub growth_pct: f64,
}

/// The measurements.
#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub clients: usize,
    pub duration_s: f64,
    /// Generations completed, and tokens in them.
    pub generations: u64,
    pub tokens: u64,
    /// Tokens per second, all clients together.
    pub tokens_per_s: f64,
    /// Time between a client's tokens (ms): median, 95th and 99th percentile.
    pub token_gap_ms: [f64; 3],
    /// Time from opening a session to its first token (ms): median, 95th percentile.
    pub first_token_ms: [f64; 2],
    /// Generations that failed or needed a repair of their route.
    pub sessions_lost: u64,
    /// Errors, each once with its count.
    pub errors: Vec<(String, u64)>,
    /// Each server's memory.
    pub servers: Vec<ServerMemory>,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} clients for {:.0} s through a 2-server chain", self.clients, self.duration_s)?;
        writeln!(
            f,
            "{} generations, {} tokens, {:.1} tok/s in all; token gap p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms; \
             first token p50 {:.0} ms, p95 {:.0} ms",
            self.generations,
            self.tokens,
            self.tokens_per_s,
            self.token_gap_ms[0],
            self.token_gap_ms[1],
            self.token_gap_ms[2],
            self.first_token_ms[0],
            self.first_token_ms[1]
        )?;
        writeln!(f, "sessions lost: {}; errors: {}", self.sessions_lost, self.errors.iter().map(|e| e.1).sum::<u64>())?;
        for (e, n) in &self.errors {
            writeln!(f, "  {n}× {e}")?;
        }
        for s in &self.servers {
            writeln!(
                f,
                "server {}: {:.0} MiB after the warm-up, {:.0} MiB at the end: growth {:+.1} %",
                s.span, s.after_warmup_mib, s.end_mib, s.growth_pct
            )?;
            let series: Vec<String> = s.samples.iter().map(|(t, m)| format!("{t:.0}s {m:.0}")).collect();
            writeln!(f, "  MiB over time: {}", series.join(", "))?;
        }
        Ok(())
    }
}

/// What the clients record, together.
#[derive(Default)]
struct Tally {
    generations: u64,
    tokens: u64,
    gaps_ms: Vec<f64>,
    first_ms: Vec<f64>,
    lost: u64,
    errors: Vec<(String, u64)>,
}

impl Tally {
    fn error(&mut self, e: String) {
        self.lost += 1;
        match self.errors.iter_mut().find(|(k, _)| *k == e) {
            Some((_, n)) => *n += 1,
            None => self.errors.push((e, 1)),
        }
    }
}

/// Runs the soak.
pub async fn run(model_path: &Path, opts: &LoadOptions) -> Result<LoadReport> {
    let work = tempfile::tempdir()?;
    let n = SpanPosition::of_metadata(&GgufFile::open(model_path)?.metadata)?.n_layer;
    let spans = [format!("0:{}", n / 2), format!("{}:{n}", n / 2)];
    let mut servers: Vec<Server> = spans
        .iter()
        .enumerate()
        .map(|(i, span)| {
            let mut s = Server::new(work.path().join(format!("s{i}")), span);
            s.extra = vec!["--max-sessions".into(), (opts.clients + 2).to_string()];
            s
        })
        .collect();
    let id = servers::start_all(&mut servers, model_path, opts.threads)?;
    let boot = servers[0].addr.clone();

    let tally = Mutex::new(Tally::default());
    let t0 = Instant::now();
    let deadline = t0 + opts.duration;
    // The clients run as futures of this task, not spawned tasks: a generation's future
    // borrows its model across awaits, which `tokio::spawn` cannot take.
    let clients = (0..opts.clients).map(|c| {
        let (boot, tally, tokens) = (&boot, &tally, opts.tokens);
        async move {
            if let Err(e) = client_loop(c, boot, id, tokens, deadline, tally).await {
                lock(tally).error(format!("client could not join: {e:#}"));
            }
        }
    });
    let mut samples: Vec<Vec<(f64, f64)>> = vec![Vec::new(); servers.len()];
    let sample = |samples: &mut Vec<Vec<(f64, f64)>>| {
        for (s, series) in servers.iter().zip(samples) {
            series.push((t0.elapsed().as_secs_f64(), s.rss_kib().unwrap_or(0) as f64 / 1024.0));
        }
    };
    let sampler = async {
        while Instant::now() < deadline {
            sample(&mut samples);
            tokio::time::sleep(opts.sample_every.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    };
    tokio::join!(futures::future::join_all(clients), sampler);
    sample(&mut samples);
    let elapsed = t0.elapsed().as_secs_f64();
    let mut t = tally.into_inner().unwrap_or_else(|p| p.into_inner());
    let warm = opts.warmup.as_secs_f64();
    let memory = servers
        .iter()
        .zip(samples)
        .map(|(s, samples)| {
            let after_warmup_mib = samples.iter().find(|(at, _)| *at >= warm).or(samples.last()).map_or(0.0, |x| x.1);
            let end_mib = samples.last().map_or(0.0, |x| x.1);
            ServerMemory {
                span: s.span.clone(),
                growth_pct: (end_mib - after_warmup_mib) / after_warmup_mib.max(1e-9) * 100.0,
                samples,
                after_warmup_mib,
                end_mib,
            }
        })
        .collect();
    Ok(LoadReport {
        clients: opts.clients,
        duration_s: elapsed,
        generations: t.generations,
        tokens: t.tokens,
        tokens_per_s: t.tokens as f64 / elapsed,
        token_gap_ms: [
            percentile(&mut t.gaps_ms, 0.5),
            percentile(&mut t.gaps_ms, 0.95),
            percentile(&mut t.gaps_ms, 0.99),
        ],
        first_token_ms: [median(&mut t.first_ms), percentile(&mut t.first_ms, 0.95)],
        sessions_lost: t.lost,
        errors: t.errors,
        servers: memory,
    })
}

fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(|p| p.into_inner())
}

/// The `q` quantile of `values` (sorted in place); NaN when there are none.
fn percentile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let i = ((values.len() as f64 - 1.0) * q).round() as usize;
    values.get(i).copied().unwrap_or(f64::NAN)
}

/// One client: sessions one after another until `deadline`.
async fn client_loop(
    c: usize,
    boot: &str,
    id: ModelId,
    tokens: usize,
    deadline: Instant,
    tally: &Mutex<Tally>,
) -> Result<()> {
    let (net, model, _scratch) = servers::join_client(boot, id).await?;
    let mut g = c;
    while Instant::now() < deadline {
        let prompt = model.vocab().tokenize(PROMPTS[g % PROMPTS.len()], true)?;
        g += 1;
        let opened = Instant::now();
        let mut session = match RemoteSession::start(&model, SessionOptions::default(), Duration::from_secs(15)).await {
            Ok(s) => s,
            Err(e) => {
                lock(tally).error(format!("open: {e}"));
                continue;
            }
        };
        let mut times = Vec::new();
        let result = session
            .generate(&model, &prompt, tokens, |_| {
                times.push(Instant::now());
                true
            })
            .await;
        session.close().await;
        let mut t = lock(tally);
        match result {
            Ok(out) if out.error.is_none() && out.failovers.is_empty() => {
                t.generations += 1;
                t.tokens += times.len() as u64;
                if let Some(first) = times.first() {
                    t.first_ms.push(first.duration_since(opened).as_secs_f64() * 1e3);
                }
                t.gaps_ms.extend(times.windows(2).map(|w| w[1].duration_since(w[0]).as_secs_f64() * 1e3));
            }
            Ok(out) => t.error(match out.error {
                Some(e) => format!("generation: {e}"),
                None => format!("a route repair ({} failover)", out.failovers.len()),
            }),
            Err(e) => t.error(format!("generation: {e}")),
        }
    }
    let _ = net.shutdown().await;
    Ok(())
}

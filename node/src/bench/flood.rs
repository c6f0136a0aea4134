//! `nak-node bench-flood`: a server's generation speed while an attacker on the same host
//! floods it with idle TCP connections and connections that send garbage.
//!
//! One `nak-node run` process serves the whole model on loopback. A client in this
//! process opens a session before the flood, then generates in rounds, unloaded and
//! flooded in turn (interleaved, so drift in the machine's speed falls on both). The
//! flood holds `idle` connections that send nothing and `garbage` connections that send
//! random bytes after the TCP handshake, all from another loopback address (127.0.0.2); each is opened again a second after the server
//! closes it, as a persistent attacker would. Meanwhile the server's open descriptors
//! and resident memory are sampled, and a new client tries to join and generate through
//! the flooded server. The report gives the speeds, their ratio, whether the tokens stayed
//! the same, and the server's peaks.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use nak_node::client::{RemoteSession, SessionOptions, SwarmModel};
use nak_shard_store::span::SpanPosition;
use nak_shard_store::{GgufFile, ModelId};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

use super::median;
use super::servers::{self, Server};

const PROMPT: &str = "The history of the printing press begins";

/// What to measure.
#[derive(Debug, Clone)]
pub struct FloodOptions {
    /// Idle connections held open.
    pub idle: usize,
    /// Connections that send garbage.
    pub garbage: usize,
    /// Tokens per generation.
    pub tokens: usize,
    /// Rounds (each one unloaded and one flooded generation).
    pub rounds: usize,
    /// CPU threads of the server.
    pub threads: u32,
}

/// The measurements.
#[derive(Debug, Serialize)]
pub struct FloodReport {
    /// The options' idle and garbage connection counts.
    pub idle: usize,
    pub garbage: usize,
    /// Median decode speed (tokens/s) without and with the flood.
    pub unloaded_tok_s: f64,
    pub flooded_tok_s: f64,
    /// flooded / unloaded.
    pub ratio: f64,
    /// Every generation gave the same tokens.
    pub same_tokens: bool,
    /// The server's open descriptors before any flood, and the most seen during one.
    pub server_fds_before: usize,
    pub server_fds_max: usize,
    /// The server's resident memory before any flood and the most seen during one (MiB).
    pub server_rss_before_mib: f64,
    pub server_rss_max_mib: f64,
    /// Flood connections the server closed (refused or timed out), and opened in all.
    pub closed_by_server: u64,
    pub flood_connects: u64,
    /// A new client joining during the flood: seconds to its first token, or its error.
    pub new_client: std::result::Result<f64, String>,
    /// The server still runs at the end.
    pub server_alive: bool,
}

impl std::fmt::Display for FloodReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "flood: {} idle + {} garbage TCP connections (reopened 1 s after each close)",
            self.idle, self.garbage
        )?;
        writeln!(
            f,
            "decode tok/s: unloaded {:.1}, flooded {:.1}, ratio {:.2}; same tokens: {}",
            self.unloaded_tok_s, self.flooded_tok_s, self.ratio, self.same_tokens
        )?;
        writeln!(
            f,
            "server: open descriptors {} before, {} at most during the flood; resident {:.0} MiB before, {:.0} MiB at most",
            self.server_fds_before, self.server_fds_max, self.server_rss_before_mib, self.server_rss_max_mib
        )?;
        writeln!(
            f,
            "flood connections opened {}, closed by the server {}",
            self.flood_connects, self.closed_by_server
        )?;
        match &self.new_client {
            Ok(s) => writeln!(f, "a new client during the flood: first token after {s:.1} s")?,
            Err(e) => writeln!(f, "a new client during the flood: failed: {e}")?,
        }
        writeln!(f, "server alive at the end: {}", self.server_alive)
    }
}

/// The attacker: connections held and reopened until `stop` turns true.
struct Flood {
    stop: watch::Sender<bool>,
    closed: Arc<AtomicU64>,
    connects: Arc<AtomicU64>,
}

impl Flood {
    fn start(addr: SocketAddr, idle: usize, garbage: usize) -> Self {
        let (stop, _) = watch::channel(false);
        let (closed, connects) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        for i in 0..idle + garbage {
            let (mut stop, closed, connects) = (stop.subscribe(), closed.clone(), connects.clone());
            let sends = i >= idle;
            tokio::spawn(async move {
                while !*stop.borrow() {
                    if let Ok(mut socket) = connect_from_elsewhere(addr).await {
                        connects.fetch_add(1, Ordering::Relaxed);
                        let held = async {
                            let mut buf = [0u8; 512];
                            loop {
                                if sends {
                                    buf.iter_mut().for_each(|b| *b = rand::random());
                                    if socket.write_all(&buf).await.is_err() {
                                        return;
                                    }
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                } else if matches!(socket.read(&mut buf).await, Ok(0) | Err(_)) {
                                    return;
                                }
                            }
                        };
                        tokio::select! {
                            _ = held => { closed.fetch_add(1, Ordering::Relaxed); }
                            _ = stop.changed() => return,
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => return,
                    }
                }
            });
        }
        Flood { stop, closed, connects }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Generates `n` tokens after the prompt; the tokens and the decode speed (tokens after
/// the first, per second).
async fn generate(session: &mut RemoteSession, model: &SwarmModel, n: usize) -> Result<(Vec<i32>, f64)> {
    let prompt = model.vocab().tokenize(PROMPT, true)?;
    let mut times = Vec::new();
    let out = session
        .generate(model, &prompt, n, |_| {
            times.push(Instant::now());
            true
        })
        .await?;
    if let Some(e) = out.error {
        anyhow::bail!("the generation failed: {e}");
    }
    let (first, last) = (times.first().context("no token")?, times.last().context("no token")?);
    let speed = (times.len() - 1) as f64 / last.duration_since(*first).as_secs_f64().max(1e-9);
    Ok((out.generation.tokens, speed))
}

/// Runs the benchmark.
pub async fn run(model_path: &Path, opts: &FloodOptions) -> Result<FloodReport> {
    let work = tempfile::tempdir()?;
    let n_layer = SpanPosition::of_metadata(&GgufFile::open(model_path)?.metadata)?.n_layer;
    let mut server = [Server::new(work.path().join("server"), &format!("0:{n_layer}"))];
    let id = servers::start_all(&mut server, model_path, opts.threads)?;
    let server = &mut server[0];
    // The attacker's sockets are this process's: past the usual 1024 once the server (which
    // keeps the limit it started with) runs.
    raise_open_file_limit();
    let tcp: SocketAddr = tcp_socket_addr(&server.addr).context("the server's address is not TCP on IPv4")?;

    let (net, model, _scratch) = servers::join_client(&server.addr, id).await?;
    let mut session = RemoteSession::start(&model, SessionOptions::default(), Duration::from_secs(15)).await?;
    let (fds_before, rss_before) = (server.open_fds().unwrap_or(0), server.rss_kib().unwrap_or(0));
    let (mut unloaded, mut flooded, mut outputs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut fds_max, mut rss_max, mut closed, mut connects) = (0, 0, 0, 0);
    let mut new_client = Err("not tried".to_string());
    for round in 0..opts.rounds.max(1) {
        let (tokens, speed) = generate(&mut session, &model, opts.tokens).await?;
        unloaded.push(speed);
        outputs.push(tokens);

        let flood = Flood::start(tcp, opts.idle, opts.garbage);
        let (peak_tx, peak_rx) = watch::channel((0usize, 0u64));
        let pid = server.pid();
        let sampler = tokio::spawn(async move {
            loop {
                let (fds, rss) = (pid.and_then(servers::open_fds_of), pid.and_then(servers::rss_kib_of));
                let (fds, rss) = (fds.unwrap_or(0), rss.unwrap_or(0));
                peak_tx.send_modify(|(f, r)| (*f, *r) = ((*f).max(fds), (*r).max(rss)));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        // Let the flood arrive before measuring.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (tokens, speed) = generate(&mut session, &model, opts.tokens).await?;
        flooded.push(speed);
        outputs.push(tokens);
        if round == 0 {
            new_client = join_and_generate(&server.addr, id).await.map_err(|e| format!("{e:#}"));
        }
        sampler.abort();
        let (fds, rss) = *peak_rx.borrow();
        (fds_max, rss_max) = (fds_max.max(fds), rss_max.max(rss));
        closed += flood.closed.load(Ordering::Relaxed);
        connects += flood.connects.load(Ordering::Relaxed);
        drop(flood);
        // The server lets go of what the flood left (handshakes time out).
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    session.close().await;
    let _ = net.shutdown().await;
    let (unloaded_tok_s, flooded_tok_s) = (median(&mut unloaded), median(&mut flooded));
    Ok(FloodReport {
        idle: opts.idle,
        garbage: opts.garbage,
        unloaded_tok_s,
        flooded_tok_s,
        ratio: flooded_tok_s / unloaded_tok_s,
        same_tokens: outputs.windows(2).all(|w| w[0] == w[1]),
        server_fds_before: fds_before,
        server_fds_max: fds_max,
        server_rss_before_mib: rss_before as f64 / 1024.0,
        server_rss_max_mib: rss_max as f64 / 1024.0,
        closed_by_server: closed,
        flood_connects: connects,
        new_client,
        server_alive: !server.exited(),
    })
}

/// A new client joins through `boot` and generates one token; seconds it took.
async fn join_and_generate(boot: &str, id: ModelId) -> Result<f64> {
    let t0 = Instant::now();
    let attempt = async {
        let (net, model, _scratch) = servers::join_client(boot, id).await?;
        let mut session = RemoteSession::start(&model, SessionOptions::default(), Duration::from_secs(15)).await?;
        generate(&mut session, &model, 2).await?;
        session.close().await;
        let _ = net.shutdown().await;
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(60), attempt).await.context("no token within 60 s")??;
    Ok(t0.elapsed().as_secs_f64())
}

/// The attacker stands for another host: its connections come from 127.0.0.2 (all of
/// 127/8 is this machine's loopback on Linux), the clients' from 127.0.0.1.
async fn connect_from_elsewhere(addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, 2], 0)))?;
    socket.connect(addr).await
}

/// `/ip4/A/tcp/P/...` as a socket address.
fn tcp_socket_addr(addr: &str) -> Option<SocketAddr> {
    let parts: Vec<&str> = addr.split('/').collect();
    match parts.as_slice() {
        ["", "ip4", ip, "tcp", port, ..] => format!("{ip}:{port}").parse().ok(),
        _ => None,
    }
}

/// Raises this process's soft limit on open files to its hard limit.
fn raise_open_file_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "cannot raise the open-file limit");
    }
}

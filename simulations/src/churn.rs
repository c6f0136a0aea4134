//! The `churn`, `placement` and `routing` scenarios: a swarm of `auto` servers and
//! clients, run in phases.
//!
//! Data flow: the servers join ([`SimSwarm`]) and place themselves; the run waits for
//! every block to be served (time to full coverage) and for placement to settle, and
//! reads the god view's balance. `routing`: each client asks for a route and its cost
//! is compared with the best route a god view allows (every live server, true round
//! trips, announced speeds). `churn`: each client's first route is costed the same way;
//! then clients generate continuously (seeded prompts, greedy, ring or client-sampled
//! mode by turns) while servers leave, crash or vanish silently and replacements join;
//! every completed session's tokens are checked against the modelled model run in one
//! piece ([`crate::compute::reference_tokens`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use nak_node::client::{best_route_between, DecodeMode, RemoteSession, ServerInfo, SessionOptions, SwarmModel};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

use crate::clock;
use crate::compute::{reference_tokens, FIRST_ORDINARY_TOKEN};
use crate::host::HostWatch;
use crate::latency::LatencyMatrix;
use crate::report::{quantile_ms, Report};
use crate::swarm::{Exit, SimSwarm, SwarmConfig, N_VOCAB};
use crate::transport::{LinkConfig, SimNet};

/// Which phases run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phases {
    /// Join, cover, settle; then a fifth of the servers leave and the rest re-cover.
    Placement,
    /// Join, cover; then every client's route against the god view's best.
    Routing,
    /// Join, cover; cost each client's first route; then clients generate while servers
    /// are replaced.
    Churn,
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct ChurnConfig {
    /// Nodes in all: servers and clients.
    pub nodes: usize,
    /// Clients among them. Default a tenth, at least 2.
    pub clients: usize,
    pub seed: u64,
    /// Round trips are the region table's times this. Default 1.
    pub rtt_scale: f64,
    pub swarm: SwarmConfig,
    /// How long clients generate. Default 60 s.
    pub workload: Duration,
    /// Share of the servers replaced per simulated hour. Default 0.3.
    pub churn_per_hour: f64,
    /// Wall time that stands for one simulated hour. Default the workload's length.
    pub hour: Duration,
    /// Prompt and generation lengths. Default 16 and 24.
    pub prompt_tokens: usize,
    pub max_tokens: usize,
    /// Longest wait for full coverage. Default 180 s.
    pub coverage_timeout: Duration,
    /// Time for placement to settle after full coverage. Default one re-check period.
    pub settle: Duration,
}

impl ChurnConfig {
    /// The defaults for `nodes` nodes and `seed`.
    pub fn new(nodes: usize, seed: u64) -> Self {
        let clients = (nodes / 10).max(2).min(nodes.saturating_sub(2));
        let swarm = SwarmConfig::new(nodes - clients);
        Self {
            nodes,
            clients,
            seed,
            rtt_scale: 1.0,
            settle: swarm.rebalance_every,
            swarm,
            workload: Duration::from_secs(60),
            churn_per_hour: 0.3,
            hour: Duration::from_secs(60),
            prompt_tokens: 16,
            max_tokens: 24,
            coverage_timeout: Duration::from_secs(180),
        }
    }
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    started: AtomicU64,
    completed: AtomicU64,
    identical: AtomicU64,
    open_failures: AtomicU64,
    recoveries: Mutex<Vec<Duration>>,
    failovers: AtomicU64,
    resyncs: AtomicU64,
    errors: Mutex<Vec<String>>,
}

/// Runs the scenario.
pub async fn run(cfg: &ChurnConfig, phases: Phases) -> Result<Report> {
    let t0 = Instant::now();
    anyhow::ensure!(cfg.nodes >= cfg.clients + 2, "{} nodes leave no room for two servers", cfg.nodes);
    let replacements = match phases {
        Phases::Churn => {
            let servers = cfg.swarm.servers as f64;
            (servers * cfg.churn_per_hour * cfg.workload.as_secs_f64() / cfg.hour.as_secs_f64().max(1e-3)).round()
                as usize
        }
        _ => 0,
    };
    let total = cfg.nodes + replacements;
    let latency = LatencyMatrix::new(total, cfg.seed, cfg.rtt_scale);
    let median_rtt = latency.median_rtt(10_000);
    let net = SimNet::new(latency, LinkConfig::default(), cfg.seed);
    let host = HostWatch::start();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xc1);

    let swarm = SimSwarm::start(net.clone(), cfg.swarm.clone(), cfg.seed).await?;
    swarm.populate().await?;
    let join_s = clock::since(t0).as_secs_f64();
    let covered_at = wait_for(cfg.coverage_timeout, || swarm.covered()).await;
    let coverage_s = covered_at.map(|t| clock::secs_between(t0, t));
    tracing::info!(?coverage_s, "coverage");
    let mut report = Report {
        nodes: cfg.nodes,
        seed: cfg.seed,
        dilation: clock::factor(),
        median_rtt_ms: median_rtt.as_secs_f64() * 1e3,
        join_s,
        coverage_full: Some(covered_at.is_some()),
        coverage_s,
        ..Report::default()
    };
    if covered_at.is_some() {
        let (bytes, writes) = net.traffic.per_node_over(cfg.nodes, cfg.settle).await;
        report.upkeep_bytes_per_node_s = Some(bytes);
        report.upkeep_writes_per_node_s = Some(writes);
        report.balance_quality = Some(swarm.balance_quality());
        tracing::info!(blocks = ?swarm.block_throughput(), "block throughput once settled");
        let servers = swarm.serving();
        report.moves_per_server = Some(servers.iter().map(|s| s.moves as f64).sum::<f64>() / servers.len() as f64);
    }
    match phases {
        Phases::Placement => placement_leave(&swarm, cfg, &mut report, &mut rng).await,
        Phases::Routing => routing(&swarm, cfg, &mut report).await?,
        Phases::Churn => churn(&swarm, cfg, replacements, &mut report, &mut rng).await?,
    }
    report.scenario = format!("{phases:?}").to_lowercase();
    report.connections = net.connections();
    report.open_connections_per_node = net.open_connections_per_node(total);
    let host = host.finish().await;
    report.memory_per_node_kib = host.rss_mib * 1024.0 / total as f64;
    report.peak_memory_per_node_kib = Some(host.peak_rss_mib * 1024.0 / total as f64);
    report.host_kept_up = host.kept_up;
    report.host = Some(host);
    report.wall_s = t0.elapsed().as_secs_f64();
    swarm.shutdown().await;
    Ok(report)
}

/// Polls `done` every 100 ms until it holds (when) or `limit` (swarm time) passes.
pub async fn wait_for(limit: Duration, done: impl Fn() -> bool) -> Option<Instant> {
    let deadline = Instant::now() + clock::dilate(limit);
    while Instant::now() < deadline {
        if done() {
            return Some(Instant::now());
        }
        clock::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// A fifth of the servers leave; the time until every block is served again.
async fn placement_leave(swarm: &Arc<SimSwarm>, cfg: &ChurnConfig, report: &mut Report, rng: &mut ChaCha8Rng) {
    let mut live = swarm.live();
    let leaving = live.len() / 5;
    for _ in 0..leaving {
        let n = live.swap_remove(rng.gen_range(0..live.len()));
        swarm.remove(n, Exit::Leave);
    }
    let t = Instant::now();
    let again = wait_for(cfg.coverage_timeout, || swarm.covered()).await;
    report.recoverage_s = again.map(|at| clock::secs_between(t, at));
    clock::sleep(cfg.settle).await;
    report.balance_quality_after_leaving = Some(swarm.balance_quality());
}

/// A client's network and its view of the model, retried while the swarm is young.
pub async fn connect_client(swarm: &Arc<SimSwarm>) -> Result<(usize, SwarmModel)> {
    let (n, net, store) = swarm.spawn_client().await?;
    let id = swarm.model;
    let mut last = None;
    for _ in 0..10 {
        match SwarmModel::connect(net.clone(), &store, id).await {
            Ok(model) => return Ok((n, model)),
            Err(e) => last = Some(e),
        }
        clock::sleep(Duration::from_secs(1)).await;
    }
    Err(last.map_or_else(|| anyhow::anyhow!("no attempt"), anyhow::Error::from))
}

/// Every client's chosen route, costed under the god view, over the god view's best.
async fn routing(swarm: &Arc<SimSwarm>, cfg: &ChurnConfig, report: &mut Report) -> Result<()> {
    let mut ratios = Vec::new();
    for _ in 0..cfg.clients {
        let (n, model) = connect_client(swarm).await?;
        ratios.extend(route_cost(swarm, cfg, n, &model).await);
        let _ = model.net().shutdown().await;
    }
    record_route_costs(report, ratios);
    Ok(())
}

/// The route client `n` chooses now, costed under the god view (every live server, true
/// round trips, announced speeds), over the best route that view allows.
async fn route_cost(swarm: &Arc<SimSwarm>, cfg: &ChurnConfig, n: usize, model: &SwarmModel) -> Option<f64> {
    let route = match model.route(Duration::from_secs(10), &HashSet::new(), false).await {
        Ok(route) => route,
        Err(e) => {
            tracing::info!(error = %e, "a client found no route");
            return None;
        }
    };
    let god: Vec<ServerInfo> = swarm
        .serving()
        .into_iter()
        .map(|s| ServerInfo {
            peer: s.peer,
            addrs: vec![],
            layers: s.layers.unwrap_or(0..0),
            block_throughput: s.throughput,
            free_sessions: 1,
            // In wall time, as the client measures it and as the announced speeds are.
            rtt: Some(clock::dilate(swarm.net.latency().rtt(n, s.node))),
            draft_vocab: Vec::new(),
        })
        .collect();
    let none = HashSet::new();
    let (_, best) = best_route_between(&god, 0..cfg.swarm.n_layer, &none, None)?;
    // The chosen hops, each costed alone under the god view.
    let chosen: f64 = route
        .iter()
        .map(|hop| {
            let server: Vec<ServerInfo> = god.iter().filter(|s| s.peer == hop.peer).cloned().collect();
            best_route_between(&server, hop.start..hop.end, &none, None).map(|(_, c)| c)
        })
        .sum::<Option<f64>>()?;
    Some(chosen / best)
}

/// The route cost ratios' count, median and 95th percentile into the report.
fn record_route_costs(report: &mut Report, mut ratios: Vec<f64>) {
    ratios.sort_by(f64::total_cmp);
    report.routes = Some(ratios.len());
    report.route_cost_ratio_p50 = ratios.get(ratios.len() / 2).copied();
    report.route_cost_ratio_p95 = ratios.get((ratios.len() * 95 / 100).min(ratios.len().saturating_sub(1))).copied();
}

/// Clients generate while servers are replaced.
async fn churn(
    swarm: &Arc<SimSwarm>,
    cfg: &ChurnConfig,
    replacements: usize,
    report: &mut Report,
    rng: &mut ChaCha8Rng,
) -> Result<()> {
    let tally = Arc::new(Tally::default());
    let models = futures::future::join_all((0..cfg.clients).map(|_| connect_client(swarm))).await;
    let models: Vec<(usize, SwarmModel)> = models.into_iter().collect::<Result<_>>()?;
    // Each client's first route, as the `routing` scenario costs it.
    let costs = futures::future::join_all(models.iter().map(|(n, model)| route_cost(swarm, cfg, *n, model))).await;
    record_route_costs(report, costs.into_iter().flatten().collect());
    let until = Instant::now() + clock::dilate(cfg.workload);
    tracing::info!(clients = models.len(), "clients connected; the workload starts");
    let mut clients = Vec::new();
    for (c, (_, model)) in models.into_iter().enumerate() {
        let seed = rng.gen();
        let mode = if c % 2 == 0 { DecodeMode::Ring } else { DecodeMode::Client };
        clients.push(tokio::spawn(client_loop(model, cfg.clone(), seed, mode, until, tally.clone())));
    }
    // Replacements spread evenly over the workload; each takes one live server out.
    let exits = [Exit::Crash, Exit::Blackhole, Exit::Leave];
    let gap = cfg.workload.div_f64(replacements.max(1) as f64 + 1.0);
    for r in 0..replacements {
        clock::sleep(gap).await;
        if let Some(n) = swarm.pick_live() {
            swarm.remove(n, exits[r % exits.len()]);
        }
        swarm.add_server().await?;
        tracing::info!(replaced = r + 1, of = replacements, "a server replaced");
    }
    tracing::info!("replacements done; waiting for the clients' last sessions");
    for c in clients {
        let _ = c.await;
    }
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (started, completed) = (load(&tally.started), load(&tally.completed));
    report.sessions_started = Some(started);
    report.sessions_completed = Some(completed);
    report.session_open_failures = Some(load(&tally.open_failures));
    report.tokens_identical = Some(load(&tally.identical) == completed);
    report.servers_replaced = Some(replacements);
    report.failovers = Some(load(&tally.failovers));
    report.resyncs = Some(load(&tally.resyncs));
    let mut recoveries = tally.recoveries.lock().unwrap_or_else(|p| p.into_inner()).clone();
    report.recovery_p50_ms = quantile_ms(&mut recoveries, 0.5);
    report.recovery_p95_ms = quantile_ms(&mut recoveries, 0.95);
    let errors = tally.errors.lock().unwrap_or_else(|p| p.into_inner());
    report.session_errors = (!errors.is_empty()).then(|| errors.iter().take(10).cloned().collect());
    report.coverage_full = Some(report.coverage_full == Some(true) && swarm.covered());
    Ok(())
}

/// Announcements the client holds, for its debug logs; asked of the network only when
/// they are on.
async fn known_servers(model: &SwarmModel) -> usize {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return 0;
    }
    model.net().announcements().await.map_or(0, |a| a.len())
}

/// Longest a session may take to open, to generate, or to close.
const STEP_LIMIT: Duration = Duration::from_secs(120);

/// One client: sessions one after another until `until`.
async fn client_loop(
    model: SwarmModel,
    cfg: ChurnConfig,
    seed: u64,
    mode: DecodeMode,
    until: Instant,
    tally: Arc<Tally>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let opts = SessionOptions { mode, timeout: Duration::from_secs(10), ..SessionOptions::default() };
    let error = |e: String| tally.errors.lock().unwrap_or_else(|p| p.into_inner()).push(e);
    while Instant::now() < until {
        let prompt: Vec<i32> =
            (0..cfg.prompt_tokens).map(|_| rng.gen_range(FIRST_ORDINARY_TOKEN..N_VOCAB) as i32).collect();
        // Every step is bounded: a session that hangs is an error of the run, not a hang of it.
        let opened = Instant::now();
        let start = RemoteSession::start(&model, opts.clone(), Duration::from_secs(10));
        let mut session = match tokio::time::timeout(clock::dilate(STEP_LIMIT), start)
            .await
            .unwrap_or_else(|_| Err(nak_node::client::ClientError::Protocol("opening took over the step limit".into())))
        {
            Ok(s) => s,
            Err(e) => {
                tally.open_failures.fetch_add(1, Ordering::Relaxed);
                let known = known_servers(&model).await;
                tracing::debug!(?mode, known, error = %e, "a session did not open");
                error(format!("open: {e}"));
                clock::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        tally.started.fetch_add(1, Ordering::Relaxed);
        let open_s = clock::since(opened).as_secs_f64();
        let mut tokens = Vec::new();
        let generated = session.generate(&model, &prompt, cfg.max_tokens, |t| {
            tokens.push(t.token);
            true
        });
        let generated = tokio::time::timeout(clock::dilate(STEP_LIMIT), generated).await;
        let _ = tokio::time::timeout(clock::dilate(STEP_LIMIT), session.close()).await;
        // What the tail of a run (its slowest sessions) is made of.
        let known = known_servers(&model).await;
        tracing::debug!(
            ?mode,
            known,
            open_s,
            session_s = clock::since(opened).as_secs_f64(),
            tokens = tokens.len(),
            outcome = ?generated.as_ref().map(|g| g.as_ref().map(|g| (g.failovers.len(), g.resyncs)).map_err(|e| e.to_string())),
            "a session ended"
        );
        let generated = match generated {
            Ok(g) => g,
            Err(_) => {
                error(format!("generation hung after {} tokens", tokens.len()));
                continue;
            }
        };
        match generated {
            Ok(g) if g.error.is_none() && tokens.len() == cfg.max_tokens => {
                tally.completed.fetch_add(1, Ordering::Relaxed);
                let want = reference_tokens(cfg.swarm.n_layer, N_VOCAB, &prompt, cfg.max_tokens);
                if tokens == want {
                    tally.identical.fetch_add(1, Ordering::Relaxed);
                } else {
                    error(format!("tokens differ: {tokens:?} vs {want:?}"));
                }
                tally.failovers.fetch_add(g.failovers.len() as u64, Ordering::Relaxed);
                tally.resyncs.fetch_add(u64::from(g.resyncs), Ordering::Relaxed);
                let mut r = tally.recoveries.lock().unwrap_or_else(|p| p.into_inner());
                r.extend(
                    g.failovers
                        .iter()
                        .filter_map(|f| f.recovery_ms)
                        .map(|ms| clock::undilate(Duration::from_secs_f64(ms / 1e3))),
                );
            }
            Ok(g) => error(format!("ended early after {} tokens: {:?}", tokens.len(), g.error)),
            Err(e) => error(format!("generate: {e}")),
        }
    }
    let _ = model.net().shutdown().await;
}

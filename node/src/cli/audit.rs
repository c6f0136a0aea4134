//! Verification glue of the commands: the auditor a client or server runs, the proofs
//! it learns when it joins, and a server's own audits of others (`run --audit-rate`).

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use nak_node::audit::{Auditor, LocalSpans, ProofBook};
use nak_node::client::{best_route, RemoteGeneration, RemoteSession, SessionOptions, SwarmModel};
use nak_node::engine::SamplingParams;
use nak_node::net::NetworkHandle;
use nak_protocol::keys;
use nak_shard_store::{Manifest, Store};
use tokio::sync::Mutex;

/// Audit rate when `--verify` is given without `--audit-rate`.
pub const DEFAULT_AUDIT_RATE: f64 = 0.05;

/// Checks an `--audit-rate`.
pub fn audit_rate(rate: Option<f64>, verify: bool) -> Result<f64> {
    let rate = rate.unwrap_or(if verify { DEFAULT_AUDIT_RATE } else { 0.0 });
    if !(0.0..=1.0).contains(&rate) {
        anyhow::bail!("--audit-rate must be between 0 and 1");
    }
    if rate > 0.0 && !verify {
        anyhow::bail!("--audit-rate needs --verify (audits replay what the receipts signed)");
    }
    Ok(rate)
}

/// The auditor of a node with data directory `store`: its banlist enforced in the
/// network, the model's proof topic followed.
pub async fn auditor(
    net: &NetworkHandle,
    store: &Store,
    manifest: &Manifest,
    rate: f64,
    threads: i32,
) -> Result<Auditor> {
    let book = Arc::new(ProofBook::open(store.root())?);
    let spans = LocalSpans::new(store.clone(), net.clone(), manifest.clone(), threads);
    let auditor = Auditor::new(net.clone(), book, spans, rate);
    auditor.enforce_bans().await;
    net.subscribe(keys::proof_topic(&manifest.model_id().0)).await?;
    Ok(auditor)
}

/// Asks the model's servers for the proofs they hold, or `at_most` of them picked at
/// random (a node that just joined learns who was caught before it came); returns whether
/// the servers it knows cover the whole model (a newcomer may know only a few of them yet).
pub async fn learn_proofs(auditor: &mut Auditor, model: &SwarmModel, wait: Duration, at_most: usize) -> Result<bool> {
    use rand::seq::SliceRandom as _;
    let servers = model.view(wait).await?;
    let mut peers: Vec<_> = servers.iter().map(|s| s.peer).collect();
    peers.shuffle(&mut rand::thread_rng());
    peers.truncate(at_most);
    let convicted = auditor.learn_from(&peers).await + auditor.check_gossip().await;
    if convicted > 0 {
        eprintln!("[{convicted} server(s) banned on the fraud proofs the swarm holds]");
    }
    Ok(best_route(&servers, model.n_layer(), &HashSet::new()).is_some())
}

/// How soon a server asks for proofs again while the servers it knows do not yet cover
/// the model (a newcomer hears the others' announcements over its first seconds).
const FIRST_SYNC_RETRY: Duration = Duration::from_secs(2);

/// Servers asked in each later sync. Proofs spread by gossip as they are made; the sync
/// only catches what a node missed, and asking every server every round grows with the
/// swarm on both sides.
const RESYNC_SAMPLE: usize = 8;

/// Audits a finished (verified) generation's hops and adds what was found to `out`.
pub async fn audit_generation(auditor: &mut Auditor, session: &mut RemoteSession, out: &mut RemoteGeneration) {
    let report = auditor.audit(session.audit_targets()).await;
    for problem in &report.problems {
        tracing::warn!(%problem, "audit not completed");
    }
    session.record_audit(&report);
    out.verification = session.verification();
}

/// A server's share of verification: checks proofs from gossip as they come and asks
/// the swarm's servers for theirs from time to time; with `rate` > 0, also runs a short
/// verified generation through other servers every `every` and audits them.
pub async fn watch(auditor: Auditor, model: Arc<SwarmModel>, me: Range<u32>, rate: f64, every: Duration) {
    let auditor = Arc::new(Mutex::new(auditor));
    let mut gossip = tokio::time::interval(Duration::from_millis(500));
    let mut sync = tokio::time::interval(Duration::from_secs(30));
    let mut synced = false;
    let mut probe = tokio::time::interval(every);
    probe.tick().await; // the first probe after one interval, once the swarm has formed
    loop {
        tokio::select! {
            _ = gossip.tick() => {
                auditor.lock().await.check_gossip().await;
            }
            _ = sync.tick() => {
                let mut a = auditor.lock().await;
                let ask = if synced { RESYNC_SAMPLE } else { usize::MAX };
                match learn_proofs(&mut a, &model, Duration::ZERO, ask).await {
                    Ok(covered) => synced |= covered,
                    Err(e) => tracing::debug!(error = %e, "could not ask for proofs"),
                }
                if !synced {
                    sync.reset_after(FIRST_SYNC_RETRY);
                }
            }
            _ = probe.tick(), if rate > 0.0 => {
                if let Err(e) = probe_once(&auditor, &model, &me).await {
                    tracing::info!(error = %e, "audit probe failed");
                }
            }
        }
    }
}

/// One verified generation through servers other than this one, then audits of them.
async fn probe_once(auditor: &Mutex<Auditor>, model: &SwarmModel, me: &Range<u32>) -> Result<()> {
    let avoid: HashSet<_> = [model.net().peer_id()].into();
    let route = model.route(Duration::ZERO, &avoid, false).await?;
    let opts = SessionOptions { verify: true, sampling: SamplingParams::default(), ..Default::default() };
    let mut session = RemoteSession::open(model, route, opts).await?;
    let words = ["river", "lamp", "orbit", "copper", "garden", "signal", "winter", "paper"];
    let prompt: Vec<&str> = (0..6).map(|_| words[rand::random::<u64>() as usize % words.len()]).collect();
    let tokens = model.vocab().tokenize(&prompt.join(" "), true)?;
    let mut out = session.generate(model, &tokens, 8, |_| true).await?;
    audit_generation(&mut *auditor.lock().await, &mut session, &mut out).await;
    session.close().await;
    let v = out.verification.unwrap_or_default();
    tracing::info!(layers = ?me, audited = v.sessions_audited, frauds = v.frauds.len(), "audit probe done");
    Ok(())
}

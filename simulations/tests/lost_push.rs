//! A push lost between two live hops: the connection between the first two hops of a
//! route breaks while a hidden state is on its way from one to the other
//! ([`SimNet::sever_in_flight`]), and nothing else would ever send it again (the ring, or
//! the client sampling, waits for its result). Every hop still answers the client's
//! probes; the client resyncs the route (each hop replays what it retained to the next)
//! and the generation ends with the tokens of the model run in one piece, in ring and
//! client-sampled mode. When the bytes caught were not a push, the next push finds the
//! connection broken and is sent again on a new one. Either way no hop is taken for
//! failed. Twelve servers and a client on the simulated network, in real time.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nak_node::client::{DecodeMode, RemoteSession, SessionOptions};
use nak_simulations::churn::{connect_client, wait_for};
use nak_simulations::compute::{reference_tokens, FIRST_ORDINARY_TOKEN};
use nak_simulations::latency::LatencyMatrix;
use nak_simulations::swarm::{SimSwarm, SwarmConfig, N_VOCAB};
use nak_simulations::transport::{LinkConfig, SimNet};

const SEED: u64 = 5;
const TOKENS: usize = 24;

#[test]
fn a_push_lost_between_live_hops_is_sent_again_and_the_tokens_stay_the_same() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let net = SimNet::new(LatencyMatrix::new(16, SEED, 1.0), LinkConfig::default(), SEED);
        let cfg = SwarmConfig { join_gap: Duration::from_millis(20), ..SwarmConfig::new(12) };
        let n_layer = cfg.n_layer;
        let swarm = SimSwarm::start(net.clone(), cfg, SEED).await.unwrap();
        swarm.populate().await.unwrap();
        wait_for(Duration::from_secs(60), || swarm.covered()).await.expect("every block served within a minute");
        let (_, model) = connect_client(&swarm).await.unwrap();
        let prompt: Vec<i32> = (0..16).map(|i| FIRST_ORDINARY_TOKEN as i32 + 3 * i).collect();
        let want = reference_tokens(n_layer, N_VOCAB, &prompt, TOKENS);

        for (mode, in_flight) in [(DecodeMode::Ring, true), (DecodeMode::Client, true), (DecodeMode::Ring, false)] {
            let opts = SessionOptions { mode, timeout: Duration::from_secs(20), ..SessionOptions::default() };
            let mut session = RemoteSession::start(&model, opts, Duration::from_secs(10)).await.unwrap();
            let route = session.route();
            assert!(route.len() >= 2, "a route of {} hops", route.len());
            let node_of = |peer| swarm.all_servers().into_iter().find(|s| s.peer == peer).map(|s| s.node).unwrap();
            let (a, b) = (node_of(route[0].peer), node_of(route[1].peer));

            // From the fourth token on, the first moment bytes go from hop 0 to hop 1 (or,
            // idle, the first moment none do).
            let (seen, severed, done) =
                (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
            let dialled = Arc::new(AtomicU64::new(0));
            let watcher = {
                let (net, seen, severed, done) = (net.clone(), seen.clone(), severed.clone(), done.clone());
                let dialled = dialled.clone();
                tokio::spawn(async move {
                    while !done.load(Ordering::Relaxed) {
                        let sever = |a, b| if in_flight { net.sever_in_flight(a, b) } else { net.sever_idle(a, b) };
                        if seen.load(Ordering::Relaxed) >= 4 && sever(a, b) {
                            dialled.store(net.connections_between(a, b), Ordering::Relaxed);
                            severed.store(true, Ordering::Relaxed);
                            return;
                        }
                        tokio::time::sleep(Duration::from_micros(500)).await;
                    }
                })
            };
            let mut tokens = Vec::new();
            let generated = session.generate(&model, &prompt, TOKENS, |t| {
                tokens.push(t.token);
                seen.fetch_add(1, Ordering::Relaxed);
                true
            });
            let g = tokio::time::timeout(Duration::from_secs(120), generated).await.expect("no hang").unwrap();
            done.store(true, Ordering::Relaxed);
            watcher.await.unwrap();
            session.close().await;

            let case = format!("{mode:?}, {}", if in_flight { "bytes on their way" } else { "idle" });
            assert!(severed.load(Ordering::Relaxed), "{case}: the connection was never broken");
            let failovers: Vec<(String, Vec<String>)> =
                g.failovers.iter().map(|f| (f.cause.clone(), f.failed.clone())).collect();
            assert_eq!(g.error, None, "{case}: failovers {failovers:?}");
            assert!(failovers.is_empty(), "{case}: a hop that answers was taken for failed: {failovers:?}");
            assert_eq!(tokens, want, "{case}: the tokens of the model in one piece");
            let redialled = net.connections_between(a, b) - dialled.load(Ordering::Relaxed);
            assert!(g.resyncs >= 1 || redialled >= 1, "{case}: the break went unnoticed");
            println!("{case}: {} resyncs, {redialled} new connections between the hops", g.resyncs);
        }
        let _ = model.net().shutdown().await;
        swarm.shutdown().await;
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
}

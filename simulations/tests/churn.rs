//! A reduced `churn` run: real servers with `auto` placement on the
//! modelled compute, clients generating through them, and servers replaced as they
//! generate (crashed, blackholed, or leaving) at 30 % per compressed hour. Every block
//! is served at the end, at least 99 % of the sessions complete, every completed
//! session's tokens equal the failure-free run's, and the host kept up.
//!
//! 200 nodes (180 servers, 20 clients), run 8 times slower than wall time (every
//! timer, latency and compute stretched alike, see `nak_node::dilation`): what two cores
//! keep up with in this test build. Joins come 25 ms apart on average, the workload
//! starts as soon as every block is served (the balance is not what this test checks)
//! and lasts 16 s; sessions generate 12 tokens, so the last ones end sooner.
//! `NAK_SIM_NODES`, `NAK_SIM_DILATION` and `NAK_SIM_SEED` change size, dilation and seed; `nak-sim churn` runs
//! the full scenario (docs/SIMULATIONS.md).

use std::time::Duration;

use nak_simulations::churn::{self, ChurnConfig, Phases};

/// As in `nak-sim`: the simulation's allocation churn is cheaper under mimalloc.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn a_churning_swarm_completes_sessions_with_the_failure_free_tokens() {
    // Warnings (or what `NAK_LOG` asks for) are shown when the test fails: the failovers and
    // stalls behind a session that did not complete.
    let filter = tracing_subscriber::EnvFilter::try_from_env("NAK_LOG")
        .unwrap_or_else(|_| "warn,yamux=error,libp2p_kad=error".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    nak_node::dilation::set_factor(env_or("NAK_SIM_DILATION", 8.0)).unwrap();
    let mut cfg = ChurnConfig::new(env_or("NAK_SIM_NODES", 200), env_or("NAK_SIM_SEED", 7));
    cfg.workload = Duration::from_secs(16);
    cfg.max_tokens = 12;
    cfg.hour = cfg.workload;
    cfg.swarm.rebalance_every = Duration::from_secs(10);
    cfg.swarm.join_gap = Duration::from_millis(25);
    cfg.settle = Duration::ZERO;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    let report = local.block_on(&runtime, churn::run(&cfg, Phases::Churn)).unwrap();
    println!("{}", report.text());
    runtime.shutdown_timeout(Duration::from_secs(1));

    assert_eq!(report.coverage_full, Some(true), "some block had no server at the end");
    let started = report.sessions_started.unwrap();
    let completed = report.sessions_completed.unwrap();
    let tried = started + report.session_open_failures.unwrap();
    assert!(started >= cfg.clients as u64, "{started} sessions for {} clients", cfg.clients);
    assert!(
        completed * 100 >= tried * 99,
        "{completed} of {tried} sessions (started or failed to open) completed: {:?}",
        report.session_errors
    );
    assert_eq!(report.tokens_identical, Some(true), "{:?}", report.session_errors);
    assert!(report.servers_replaced.unwrap() > 0);
    assert!(report.host_kept_up, "the host fell behind: {:?}", report.host);
}

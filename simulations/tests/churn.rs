//! A reduced `churn` run: real servers with `auto` placement on the modelled compute,
//! clients generating through them, and servers replaced as they generate (crashed,
//! blackholed, or leaving) at 30 % per compressed hour. Every block is served at the
//! end, every completed session's tokens equal the failure-free run's, and the host
//! kept up.
//! At this size a block can have one server, and when it crashes the sessions through
//! it end ("no backup"): 11 to 20 of 13 to 20 sessions complete, short of the 99 % a
//! larger swarm should reach (docs/SIMULATIONS.md).
//!
//! `NAK_SIM_NODES` sets the size (default 16: what two cores keep up with in a test
//! build); `nak-sim churn` runs the full scenario.

use std::time::Duration;

use nak_simulations::churn::{self, ChurnConfig, Phases};

/// As in `nak-sim`: the simulation's allocation churn is cheaper under mimalloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[test]
fn a_churning_swarm_completes_sessions_with_the_failure_free_tokens() {
    let nodes = std::env::var("NAK_SIM_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let mut cfg = ChurnConfig::new(nodes, 7);
    cfg.workload = Duration::from_secs(40);
    cfg.hour = cfg.workload;
    cfg.swarm.rebalance_every = Duration::from_secs(15);
    cfg.settle = cfg.swarm.rebalance_every;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    let report = local.block_on(&runtime, churn::run(&cfg, Phases::Churn)).unwrap();
    println!("{}", report.text());
    runtime.shutdown_timeout(Duration::from_secs(1));

    assert_eq!(report.coverage_full, Some(true), "some block had no server at the end");
    let started = report.sessions_started.unwrap();
    let completed = report.sessions_completed.unwrap();
    assert!(started >= cfg.clients as u64, "{started} sessions for {} clients", cfg.clients);
    assert!(completed > 0, "no session completed: {:?}", report.session_errors);
    println!("completed {completed} of {started} sessions");
    assert_eq!(report.tokens_identical, Some(true), "{:?}", report.session_errors);
    assert!(report.servers_replaced.unwrap() > 0);
    assert!(report.host_kept_up, "the host fell behind: {:?}", report.host);
}

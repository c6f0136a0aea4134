//! A small `dht` run: real network tasks over the simulated network find every
//! provider they look for.

use std::time::Duration;

use nak_simulations::dht::{self, DhtConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_nodes_find_every_provider() {
    let cfg = DhtConfig {
        rtt_scale: 0.25,
        settle: Duration::from_secs(3),
        lookups: 60,
        quiet: Duration::from_secs(2),
        ..DhtConfig::new(30, 5)
    };
    let report = dht::run(&cfg).await.unwrap();
    assert_eq!(report.nodes, 30);
    assert_eq!(report.lookups, 60);
    assert_eq!(report.lookup_success, Some(1.0), "{report:?}");
    let failures = report.lookup_failures.as_ref().unwrap();
    assert_eq!(failures["keys_missed"], 0, "{failures}");
    assert!(failures["keys_asked"].as_u64().unwrap() > 1, "{failures}");
    assert!(report.upkeep_bytes_per_node_s.unwrap() > 0.0, "pings and identify keep flowing: {report:?}");
}

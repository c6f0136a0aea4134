//! A dial at a high time dilation: every timeout the node hands libp2p must stretch with
//! the swarm, or dials that take longer in wall time than an undilated timeout fail, as
//! half of a 1000-node run's did (lesson 20 in docs/SIMULATIONS.md). Its own test
//! binary, because the dilation is set once for the whole process.

use std::time::{Duration, Instant};

use nak_simulations::latency::LatencyMatrix;
use nak_simulations::node;
use nak_simulations::transport::{LinkConfig, SimNet};

const DILATION: f64 = 30.0;
/// The round trip between the two nodes, in the swarm's time: a dial of about four
/// round trips then takes about 24 s of wall time, past libp2p's 10 s default.
const RTT: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_longer_than_ten_seconds_of_wall_time_succeeds_when_dilated() {
    nak_node::dilation::set_factor(DILATION).unwrap();
    let seed = 1;
    let rtt = LatencyMatrix::new(2, seed, 1.0).one_way(0, 1) * 2;
    let latency = LatencyMatrix::new(2, seed, RTT.as_secs_f64() / rtt.as_secs_f64());
    let net = SimNet::new(latency, LinkConfig::default(), seed);
    let dir = node::run_dir().unwrap();
    let mut nodes = Vec::new();
    for n in 0..2 {
        nodes.push(node::spawn(&net, dir.path(), seed, n, node::config(n, Vec::new())).await.unwrap());
    }

    let t0 = Instant::now();
    let dialled = tokio::time::timeout(Duration::from_secs(120), nodes[1].dial(node::dial_addr(seed, 0))).await;
    let took = t0.elapsed();
    assert!(matches!(dialled, Ok(Ok(()))), "{dialled:?} after {took:?}");
    assert!(took > Duration::from_secs(10), "the dial took {took:?} of wall time: not past libp2p's default");
    for n in nodes {
        let _ = n.shutdown().await;
    }
}

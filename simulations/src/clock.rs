//! The simulation's clock. With time dilation (`--dilation k`, see
//! [`nak_node::dilation`]) the swarm runs k times slower than wall time: the node
//! stretches its own timers, the simulated network and compute stretch their delays,
//! and the scenarios stretch their waits with [`sleep`] and read their measurements
//! back in the swarm's time with [`since`]. At k = 1 all of this is wall time.

use std::time::Duration;

pub use nak_node::dilation::{dilate, factor, undilate};
use tokio::time::Instant;

/// Sleeps `d` of the swarm's time.
pub async fn sleep(d: Duration) {
    tokio::time::sleep(dilate(d)).await;
}

/// The swarm's time since `t`.
pub fn since(t: Instant) -> Duration {
    undilate(t.elapsed())
}

/// The swarm's time between `from` and `to`, seconds.
pub fn secs_between(from: Instant, to: Instant) -> f64 {
    undilate(to.saturating_duration_since(from)).as_secs_f64()
}

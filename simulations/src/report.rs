//! What a scenario reports: one object, printed as JSON (`--json`) or as lines of text.
//! Fields a scenario does not measure are null. Times are the swarm's own (wall time
//! divided by the run's time dilation), except `wall_s` and the host's.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::host::HostReport;

/// The result of one run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub scenario: String,
    pub nodes: usize,
    pub seed: u64,
    /// The swarm ran this many times slower than wall time ([`crate::clock`]).
    pub dilation: f64,
    /// Median round trip between two nodes of the latency matrix.
    pub median_rtt_ms: f64,
    /// Time from the first node's start to the last one's.
    pub join_s: f64,
    pub lookups: usize,
    pub lookup_p50_ms: Option<f64>,
    pub lookup_p95_ms: Option<f64>,
    pub lookup_p99_ms: Option<f64>,
    /// Share of lookups that found the key's provider.
    pub lookup_success: Option<f64>,
    /// How the lookups that did not find the provider ended, by kind, and over how many
    /// keys (`keys_missed`; `keys_never_found`: not one lookup of them succeeded;
    /// `keys_not_provided`: the provide itself failed).
    pub lookup_failures: Option<serde_json::Value>,
    /// Median time to publish a provider record.
    pub provide_p50_ms: Option<f64>,
    /// Traffic per node per second of swarm time while nothing was asked of the swarm:
    /// routing upkeep in `dht`; announcements, re-checks and any moves while placement
    /// settles in the others.
    pub upkeep_bytes_per_node_s: Option<f64>,
    /// Writes to links in the same time, per node per second.
    pub upkeep_writes_per_node_s: Option<f64>,
    /// Connections made over the run.
    pub connections: u64,
    /// Connections open at the end, per node.
    pub open_connections_per_node: f64,
    /// Every block had a live server (at the end of the run, for `churn`).
    pub coverage_full: Option<bool>,
    /// Seconds from the first server's start to every block served.
    pub coverage_s: Option<f64>,
    /// Weakest block's throughput ÷ the best any placement could give it, once settled.
    pub balance_quality: Option<f64>,
    /// Span changes per server after its first, up to the balance reading.
    pub moves_per_server: Option<f64>,
    /// `placement`: seconds until every block is served again after a fifth of the
    /// servers left, and the balance after that.
    pub recoverage_s: Option<f64>,
    pub balance_quality_after_leaving: Option<f64>,
    /// `routing` and `churn`: routes compared (a `churn` client's first), and the chosen
    /// route's cost ÷ the god view's best.
    pub routes: Option<usize>,
    pub route_cost_ratio_p50: Option<f64>,
    pub route_cost_ratio_p95: Option<f64>,
    /// `churn`: sessions opened, completed with every token, and whether every completed
    /// session's tokens equal the failure-free run's.
    pub sessions_started: Option<u64>,
    pub sessions_completed: Option<u64>,
    pub tokens_identical: Option<bool>,
    /// Sessions that could not open (no route, refused), retried by the client.
    pub session_open_failures: Option<u64>,
    pub servers_replaced: Option<usize>,
    pub failovers: Option<u64>,
    /// Times a stalled route whose hops all answered was resynchronised (a push lost
    /// between live hops), over every completed session.
    pub resyncs: Option<u64>,
    /// From a failure's detection to the next token.
    pub recovery_p50_ms: Option<f64>,
    pub recovery_p95_ms: Option<f64>,
    /// The first few session errors, when there were any.
    pub session_errors: Option<Vec<String>>,
    /// Resident memory per node at the end, and at the process's peak.
    pub memory_per_node_kib: f64,
    pub peak_memory_per_node_kib: Option<f64>,
    pub host: Option<HostReport>,
    /// The host kept up (see [`crate::host`]): the timings mean something.
    pub host_kept_up: bool,
    /// Wall seconds the run took.
    pub wall_s: f64,
}

impl Report {
    /// The report as lines of text: `name value` for every field that has one.
    pub fn text(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or_default();
        let mut out = String::new();
        if let serde_json::Value::Object(fields) = value {
            for (k, v) in fields.iter().filter(|(_, v)| !v.is_null()) {
                out.push_str(&format!("{k} {v}\n"));
            }
        }
        out
    }
}

/// The `q` quantile (0..=1) of `values` in milliseconds; None when empty.
pub fn quantile_ms(values: &mut [Duration], q: f64) -> Option<f64> {
    values.sort();
    let i = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len().max(1)) - 1;
    values.get(i).map(|d| d.as_secs_f64() * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&mut v, 0.5), Some(50.0));
        assert_eq!(quantile_ms(&mut v, 0.95), Some(95.0));
        assert_eq!(quantile_ms(&mut v, 1.0), Some(100.0));
        assert_eq!(quantile_ms(&mut [], 0.5), None);
    }
}

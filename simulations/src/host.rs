//! Whether the host kept up with the simulation. Nodes run on real timers (libp2p's
//! own cannot be paused or sped up), so a simulation is only valid while the machine
//! has headroom: a task that sleeps [`TICK`] again and again measures how late it
//! wakes (timer lag), and the process's CPU time is read at both ends of the run.
//!
//! The lag bound holds in the swarm's time (see [`crate::clock`]): every time a run
//! reports is wall time ÷ the dilation k, so a wake-up L late in wall time shifts them
//! by L ÷ k. A run at k = 8 may wake 80 ms late and still be as exact as one in real
//! time that wakes 10 ms late; the CPU bound keeps it from running at the host's limit.

use std::time::Duration;

use tokio::time::Instant;

/// How often the lag probe wakes.
pub const TICK: Duration = Duration::from_millis(10);

/// Largest 99th percentile of timer lag, in the swarm's time, a valid run may show.
pub const MAX_LAG_P99: Duration = Duration::from_millis(10);

/// Largest share of the host's cores a valid run may keep busy.
pub const MAX_CPU_SHARE: f64 = 0.9;

/// Watches the host from [`HostWatch::start`] until [`HostWatch::finish`].
pub struct HostWatch {
    probe: tokio::task::JoinHandle<Vec<Duration>>,
    stop: tokio::sync::watch::Sender<bool>,
    cpu0: Duration,
    t0: std::time::Instant,
}

/// What the host did during a run.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct HostReport {
    /// Timer lag, 99th percentile and largest, wall milliseconds.
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    /// The 99th percentile in the swarm's time (wall ÷ dilation): what the bound is on.
    pub lag_p99_swarm_ms: f64,
    /// Cores kept busy on average (process CPU time ÷ wall time).
    pub cpu_cores: f64,
    /// Cores the host has.
    pub host_cores: usize,
    /// Resident memory at the end, MiB.
    pub rss_mib: f64,
    /// The most resident memory the process held at any moment, MiB (the joins' peak
    /// is what decides whether a size fits the host).
    pub peak_rss_mib: f64,
    /// Lag and CPU were within bounds: the run's timings mean something.
    pub kept_up: bool,
}

impl HostWatch {
    /// Starts the probe.
    pub fn start() -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let probe = tokio::spawn(async move {
            let mut lags = Vec::new();
            while !*stopped.borrow() {
                let due = Instant::now() + TICK;
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {
                        let lag = Instant::now().saturating_duration_since(due);
                        if crate::clock::undilate(lag) > MAX_LAG_P99 {
                            tracing::debug!(lag_ms = lag.as_secs_f64() * 1e3, "timer lag");
                        }
                        lags.push(lag);
                    }
                    _ = stopped.changed() => {}
                }
            }
            lags
        });
        Self { probe, stop, cpu0: process_cpu(), t0: std::time::Instant::now() }
    }

    /// Stops the probe and reports.
    pub async fn finish(self) -> HostReport {
        let _ = self.stop.send(true);
        let mut lags = self.probe.await.unwrap_or_default();
        lags.sort();
        let pick = |q: f64| lags.get(((lags.len() as f64 * q) as usize).min(lags.len().saturating_sub(1))).copied();
        let p99 = pick(0.99).unwrap_or_default();
        let p99_swarm = crate::clock::undilate(p99);
        let cpu = (process_cpu().saturating_sub(self.cpu0)).as_secs_f64() / self.t0.elapsed().as_secs_f64().max(1e-9);
        let host_cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        HostReport {
            lag_p99_ms: p99.as_secs_f64() * 1e3,
            lag_max_ms: lags.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            lag_p99_swarm_ms: p99_swarm.as_secs_f64() * 1e3,
            cpu_cores: cpu,
            host_cores,
            rss_mib: rss_bytes() as f64 / (1 << 20) as f64,
            peak_rss_mib: status_kib("VmHWM:") as f64 / 1024.0,
            kept_up: p99_swarm <= MAX_LAG_P99 && cpu <= MAX_CPU_SHARE * host_cores as f64,
        }
    }
}

/// The process's CPU time so far (user and system), from /proc/self/stat.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) begin past the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of the line, 11 and 12 counting the state letter as 0.
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(11) + field(12);
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

/// Logs (at info) how far the joins are, every twentieth of them: open connections per
/// node and resident memory, the figures that decide whether a size fits the host.
pub fn join_progress(net: &crate::transport::SimNet, joined: usize, of: usize) {
    if joined.is_multiple_of((of / 20).max(1)) || joined == of {
        let per_node = net.open_connections_per_node(joined);
        let rss_mib = rss_bytes() >> 20;
        tracing::info!(joined, of, open_connections_per_node = per_node, rss_mib, "joining");
    }
}

/// The process's resident memory, from /proc/self/status.
pub fn rss_bytes() -> u64 {
    status_kib("VmRSS:") * 1024
}

/// One KiB figure of /proc/self/status (0 where it cannot be read).
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_counts_a_busy_loop() {
        let before = process_cpu();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let used = process_cpu().saturating_sub(before);
        assert!(used >= Duration::from_millis(200), "{used:?} of CPU for 300 ms of spinning");
        assert!(rss_bytes() > 0);
        assert!(status_kib("VmHWM:") * 1024 >= rss_bytes());
    }
}

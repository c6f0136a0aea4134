//! The harnesses behind `nak-node`'s benchmark commands (their arguments live in
//! [`crate::cli::benchmarks`]). Each runs real parts — llama.cpp engines, `nak-node`
//! processes on loopback, the blob store on disk — and returns a printable report with
//! medians; the figures are recorded in `docs/BENCHMARKS.md`. None of them asserts a
//! speed: timing goals are read off the reports, never checked by tests.
//!
//! - [`chain`]: the whole model against local chains of 1, 2 and 3 spans.
//! - [`batch`]: concurrent sessions on one engine worker (continuous batching).
//! - [`dht`]: provider lookups in a swarm of peer processes.
//! - [`failover`]: recovery from a hop killed mid-generation.
//! - [`flood`]: a generation while idle and garbage TCP connections flood the server.
//! - [`load`]: many concurrent clients through a 2-server chain for minutes (a soak).
//! - [`store`]: import and verify throughput.

pub mod batch;
pub mod chain;
mod child_lines;
pub mod dht;
pub mod failover;
pub mod flood;
pub mod load;
mod servers;
pub mod store;

/// The median of `values` (the upper one of an even count); NaN when there are none.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Megabytes (10^6 bytes) per second.
pub fn mb_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / 1e6 / seconds.max(1e-9)
}

/// Peak resident memory of this process in KiB (Linux), if it can be read.
pub fn peak_rss_kib() -> Option<u64> {
    proc_status_kib("/proc/self/status", "VmHWM:")
}

/// Current resident memory of this process in KiB (Linux), if it can be read.
pub fn rss_kib() -> Option<u64> {
    proc_status_kib("/proc/self/status", "VmRSS:")
}

/// A field in KiB of a process's status file (`/proc/<pid>/status`).
fn proc_status_kib(path: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

//! Time dilation: one process-wide factor that stretches every period and timeout the
//! node sets, its own and those it hands to libp2p (heartbeats, pings, query and
//! request timeouts, idle connections), and every configured duration at the point
//! where it becomes a timer.
//!
//! A real node leaves it at 1 and nothing changes. A simulation that runs hundreds of
//! nodes in one process on a small host sets it to k before any node starts and
//! stretches its simulated latencies and compute by the same k: the whole swarm then
//! runs k times slower in wall time, as it would on hosts k times faster, and every
//! duration it measures is divided back by k ([`undilate`]). The host's own work
//! (decoding, routing tables, allocation) is the only thing that does not stretch,
//! which is the point: it is what a shared host cannot give each node in full.
//!
//! Why one factor for the process and not a field of each config: the timers sit in
//! a dozen modules and inside libp2p's configs, and they must all agree with each other
//! and with the simulated network's clock; a node that missed one would time out
//! k times too early.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The factor's bits (an `f64`); 1.0 until [`set_factor`].
static FACTOR_BITS: AtomicU64 = AtomicU64::new(0x3ff0_0000_0000_0000);

/// Sets the factor: every duration the node uses from now on is `factor` times longer.
/// Call it before starting any node; values below 1 or not finite are refused.
pub fn set_factor(factor: f64) -> Result<(), String> {
    if !factor.is_finite() || factor < 1.0 {
        return Err(format!("a time dilation factor must be a finite number ≥ 1, not {factor}"));
    }
    FACTOR_BITS.store(factor.to_bits(), Ordering::Relaxed);
    Ok(())
}

/// The factor (1 for a real node).
pub fn factor() -> f64 {
    f64::from_bits(FACTOR_BITS.load(Ordering::Relaxed))
}

/// `d` in wall time: `d` times the factor.
pub fn dilate(d: Duration) -> Duration {
    stretch(d, factor())
}

fn stretch(d: Duration, k: f64) -> Duration {
    if k == 1.0 {
        d
    } else {
        Duration::try_from_secs_f64(d.as_secs_f64() * k).unwrap_or(Duration::MAX)
    }
}

/// A wall-time duration back in the swarm's own time: `d` divided by the factor.
pub fn undilate(d: Duration) -> Duration {
    d.div_f64(factor())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The factor is process-wide and other tests of this binary run at 1: these tests
    // never change it.
    #[test]
    fn a_factor_stretches_and_undilate_inverts_it() {
        assert_eq!(stretch(Duration::from_millis(250), 4.0), Duration::from_secs(1));
        assert_eq!(stretch(Duration::from_secs(3), 1.0), Duration::from_secs(3));
        assert_eq!(stretch(Duration::MAX, 4.0), Duration::MAX);
        assert_eq!(undilate(Duration::from_secs(1)), Duration::from_secs(1));
    }

    #[test]
    fn bad_factors_are_refused() {
        for bad in [0.5, 0.0, -2.0, f64::NAN, f64::INFINITY] {
            assert!(set_factor(bad).is_err(), "{bad}");
        }
        assert_eq!(factor(), 1.0);
    }
}

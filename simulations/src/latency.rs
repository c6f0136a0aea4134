//! One-way latencies between simulated nodes: each node sits in a region (drawn from
//! the seed, weighted as public swarms are spread), and a pair's round trip is the
//! round trip between their regions (typical figures between cloud regions) with a
//! little per-pair jitter, fixed by the seed.

use std::time::Duration;

use rand::{Rng, SeedableRng};

/// Regions, and the share of nodes in each.
pub const REGIONS: [(&str, f64); 7] = [
    ("us-east", 0.30),
    ("us-west", 0.15),
    ("eu-west", 0.20),
    ("eu-central", 0.15),
    ("ap-southeast", 0.08),
    ("ap-northeast", 0.08),
    ("sa-east", 0.04),
];

/// Round trips between regions, milliseconds (in the order of [`REGIONS`]).
const RTT_MS: [[u32; 7]; 7] = [
    [8, 65, 75, 90, 215, 150, 115],
    [65, 8, 135, 150, 170, 105, 175],
    [75, 135, 8, 20, 160, 210, 180],
    [90, 150, 20, 8, 155, 225, 200],
    [215, 170, 160, 155, 8, 70, 320],
    [150, 105, 210, 225, 70, 8, 255],
    [115, 175, 180, 200, 320, 255, 8],
];

/// Per-pair jitter: round trips vary by up to this fraction either way.
const JITTER: f64 = 0.1;

/// Where each node is and how far apart they are.
#[derive(Debug, Clone)]
pub struct LatencyMatrix {
    region: Vec<usize>,
    /// Multiplies every round trip (1: the figures above; 0: no latency).
    scale: f64,
    seed: u64,
}

impl LatencyMatrix {
    /// `nodes` nodes placed by `seed`, round trips multiplied by `scale`.
    pub fn new(nodes: usize, seed: u64, scale: f64) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let region = (0..nodes)
            .map(|_| {
                let mut x: f64 = rng.gen();
                for (i, (_, weight)) in REGIONS.iter().enumerate() {
                    if x < *weight {
                        return i;
                    }
                    x -= weight;
                }
                REGIONS.len() - 1 // rounding left x past the last weight
            })
            .collect();
        Self { region, scale, seed }
    }

    /// Nodes it places.
    pub fn nodes(&self) -> usize {
        self.region.len()
    }

    /// Node `n`'s region.
    pub fn region(&self, n: usize) -> &'static str {
        REGIONS[self.region.get(n).copied().unwrap_or(0)].0
    }

    /// Round trip between `a` and `b`.
    pub fn rtt(&self, a: usize, b: usize) -> Duration {
        let (ra, rb) = (self.region.get(a).copied().unwrap_or(0), self.region.get(b).copied().unwrap_or(0));
        let (lo, hi) = (a.min(b) as u64, a.max(b) as u64);
        // A pair's jitter is a pure function of the seed and the pair.
        let mut rng =
            rand_chacha::ChaCha8Rng::seed_from_u64(self.seed ^ (lo << 32 | hi).wrapping_mul(0x2545_f491_4f6c_dd1d));
        let jitter = 1.0 + rng.gen_range(-JITTER..=JITTER);
        Duration::from_secs_f64(RTT_MS[ra][rb] as f64 * 1e-3 * jitter * self.scale)
    }

    /// One-way latency from `a` to `b` (half the round trip).
    pub fn one_way(&self, a: usize, b: usize) -> Duration {
        self.rtt(a, b) / 2
    }

    /// The median round trip over `samples` random pairs.
    pub fn median_rtt(&self, samples: usize) -> Duration {
        let n = self.nodes();
        if n < 2 {
            return Duration::ZERO;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed.wrapping_add(1));
        let mut rtts: Vec<Duration> = (0..samples)
            .map(|_| {
                let a = rng.gen_range(0..n);
                let b = (a + rng.gen_range(1..n)) % n;
                self.rtt(a, b)
            })
            .collect();
        rtts.sort();
        rtts[rtts.len() / 2]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_are_symmetric_seeded_and_near_the_table() {
        let m = LatencyMatrix::new(200, 7, 1.0);
        assert_eq!(m.rtt(3, 150), m.rtt(150, 3));
        assert_eq!(m.rtt(3, 150), LatencyMatrix::new(200, 7, 1.0).rtt(3, 150));
        for (a, b) in [(0, 1), (5, 77), (10, 199)] {
            let table = RTT_MS[m.region[a]][m.region[b]] as f64;
            let ms = m.rtt(a, b).as_secs_f64() * 1e3;
            assert!((ms - table).abs() <= table * JITTER + 1e-9, "{ms} vs {table}");
        }
        let median = m.median_rtt(5000).as_secs_f64() * 1e3;
        assert!((40.0..=160.0).contains(&median), "median round trip {median} ms");
        assert_eq!(LatencyMatrix::new(10, 1, 0.0).rtt(0, 9), Duration::ZERO);
    }
}

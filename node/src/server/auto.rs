//! `--serve-layers auto`: the placement policy ([`crate::placement`]) fed with what
//! this server can hold and what the other servers announce.

use std::ops::Range;
use std::time::Duration;

use nak_shard_store::import::span_blobs;
use nak_shard_store::{BlobRole, Manifest, ModelId};

use super::ServeError;
use crate::net::NetworkHandle;
use crate::placement::{self, BlockLoad, Placement};

/// Bytes of weights a span needs (what the memory budget bounds).
pub fn span_bytes(manifest: &Manifest, layers: &Range<u32>) -> u64 {
    span_blobs(manifest, layers).iter().map(|b| b.size).sum::<u64>()
        + manifest.blob(BlobRole::Meta, None).map_or(0, |b| b.size)
}

/// Half of the memory the kernel says is available: the budget when none is given.
pub fn default_budget() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024 / 2)
}

/// What the other servers of the model announce.
pub async fn others(net: &NetworkHandle, model: &ModelId) -> Vec<Placement> {
    let me = net.peer_id().to_bytes();
    net.announcements()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.model_id == model.0 && a.peer_id != me && a.first_layer < a.end_layer)
        .map(|a| Placement { layers: a.first_layer..a.end_layer, throughput: a.block_throughput })
        .collect()
}

/// `mean` scaled by a random factor in [0.5, 1.5).
pub fn jitter(mean: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // std seeds every `RandomState` from the OS's randomness: enough for spreading timers.
    let bits = std::collections::hash_map::RandomState::new().build_hasher().finish();
    mean.mul_f64(0.5 + (bits >> 11) as f64 / (1u64 << 53) as f64)
}

/// Placement policy of an `auto` server.
pub struct AutoPlacer {
    candidates: Vec<Range<u32>>,
    n_layer: u32,
    seed: Vec<u8>,
    min_gain: f64,
}

impl AutoPlacer {
    /// Candidates are the longest spans from each first block that fit in `budget`;
    /// `seed` (the peer id) breaks ties differently on every node.
    pub fn new(manifest: &Manifest, budget: u64, seed: Vec<u8>, min_gain: f64) -> Result<Self, ServeError> {
        let candidates = placement::candidate_spans(manifest.n_layer, |r| span_bytes(manifest, r) <= budget);
        if candidates.is_empty() {
            return Err(ServeError::Config(format!("a memory budget of {budget} bytes holds no block of this model")));
        }
        Ok(Self { candidates, n_layer: manifest.n_layer, seed, min_gain })
    }

    /// The span that most raises the weakest blocks, given the other servers.
    pub fn best(&self, others: &[Placement], throughput: f64) -> Range<u32> {
        self.best_for(&placement::block_loads(self.n_layer, others), throughput)
    }

    fn best_for(&self, loads: &[BlockLoad], throughput: f64) -> Range<u32> {
        let tie_break = |start: u32| {
            let h = blake3::Hasher::new().update(&self.seed).update(&start.to_le_bytes()).finalize();
            u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or_default())
        };
        placement::best_span(loads, &self.candidates, throughput, tie_break)
            .unwrap_or_else(|| self.candidates[0].clone())
    }

    /// Where to move from `current`, if moving clearly helps.
    pub fn recheck(&self, others: &[Placement], current: &Range<u32>, throughput: f64) -> Option<Range<u32>> {
        let loads = placement::block_loads(self.n_layer, others);
        let best = self.best_for(&loads, throughput);
        placement::should_move(&loads, current, &best, throughput, self.min_gain).then_some(best)
    }
}

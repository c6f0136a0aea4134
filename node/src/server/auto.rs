//! `--serve-layers auto`: the placement policy ([`crate::placement`]) fed with what
//! this server can hold and what the other servers announce.

use std::ops::Range;
use std::time::Duration;

use nak_protocol::pb;
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
        .filter(|a| a.state() != pb::ServerState::Leaving)
        .map(|a| Placement { layers: a.first_layer..a.end_layer, throughput: a.block_throughput })
        .collect()
}

/// `mean` scaled by a random factor in [0.5, 1.5).
pub fn jitter(mean: Duration) -> Duration {
    mean.mul_f64(0.5 + uniform())
}

/// A random number in [0, 1).
fn uniform() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    // std seeds every `RandomState` from the OS's randomness: enough for spreading timers
    // and moves.
    let bits = std::collections::hash_map::RandomState::new().build_hasher().finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Placement policy of an `auto` server.
pub struct AutoPlacer {
    candidates: Vec<Range<u32>>,
    /// Blocks that can run as a span of their own (where a speed probe can load).
    alone: Vec<bool>,
    n_layer: u32,
    seed: Vec<u8>,
    min_gain: f64,
}

impl AutoPlacer {
    /// Candidates are the longest spans from each first block that fit in `budget` and
    /// that the architecture can run (`runnable` says why not: a model that runs only
    /// whole, a span of only global-attention layers); `seed` (the peer id) breaks ties
    /// differently on every node.
    pub fn new(
        manifest: &Manifest,
        budget: u64,
        seed: Vec<u8>,
        min_gain: f64,
        runnable: impl Fn(&Range<u32>) -> Result<(), String>,
    ) -> Result<Self, ServeError> {
        let fitting = placement::candidate_spans(manifest.n_layer, |r| span_bytes(manifest, r) <= budget);
        let mut refusal = None;
        let candidates: Vec<Range<u32>> =
            fitting.into_iter().filter(|r| runnable(r).map_err(|e| refusal.get_or_insert(e)).is_ok()).collect();
        if candidates.is_empty() {
            return Err(ServeError::Config(match refusal {
                Some(why) => format!("no span within a memory budget of {budget} bytes can run: {why}"),
                None => format!("a memory budget of {budget} bytes holds no block of this model"),
            }));
        }
        let alone = (0..manifest.n_layer).map(|i| runnable(&(i..i + 1)).is_ok()).collect();
        Ok(Self { candidates, alone, n_layer: manifest.n_layer, seed, min_gain })
    }

    /// Where to measure this node's speed, near `start`: the first block from there
    /// that runs on its own, or the first candidate when none does.
    pub fn probe_span(&self, start: u32) -> Range<u32> {
        let n = self.n_layer;
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.alone.get(i as usize).copied().unwrap_or(false))
            .map_or_else(|| self.candidates[0].clone(), |i| i..i + 1)
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

    /// Where to move from `current`, if moving clearly helps and this server drew the move
    /// ([`placement::move_chance`]).
    pub fn recheck(&self, others: &[Placement], current: &Range<u32>, throughput: f64) -> Option<Range<u32>> {
        let loads = placement::block_loads(self.n_layer, others);
        let best = self.best_for(&loads, throughput);
        let helps = placement::should_move(&loads, current, &best, throughput, self.min_gain);
        (helps && uniform() < placement::move_chance(&loads, current, throughput, others.len() + 1)).then_some(best)
    }
}

#[cfg(test)]
mod tests {
    use nak_shard_store::import::model_metadata;
    use nak_shard_store::{import_gguf, span, write_synthetic, Store, SynthArch, SynthConfig};

    use super::*;

    #[test]
    fn candidates_and_probes_skip_spans_the_architecture_cannot_run() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gemma3.gguf");
        let cfg = SynthConfig { arch: SynthArch::Gemma3, n_layer: 13, ..SynthConfig::default() };
        write_synthetic(&cfg, &file).unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let id = import_gguf(&store, &file, &mut |_| {}).unwrap().model_id;
        let manifest = store.manifest(&id).unwrap();
        let metadata = model_metadata(&store, &id).unwrap();
        let runnable = |r: &Range<u32>| span::check_splittable(&metadata, r.clone()).map_err(|e| e.to_string());

        // Room for one middle block: every middle block but the global ones (5, 11).
        let budget = span_bytes(&manifest, &(3..4));
        let placer = AutoPlacer::new(&manifest, budget, vec![1], 1.25, runnable).unwrap();
        let starts: Vec<u32> = placer.candidates.iter().map(|r| r.start).collect();
        assert_eq!(starts, [1, 2, 3, 4, 6, 7, 8, 9, 10]);
        assert!(placer.candidates.iter().all(|r| r.len() == 1));
        assert_eq!(placer.probe_span(5), 6..7);
        assert_eq!(placer.probe_span(11), 12..13);

        // A model that runs only whole, with no room for it: the reason, not a bad span.
        let whole_only = |r: &Range<u32>| {
            if r.len() == 13 {
                Ok(())
            } else {
                Err("architecture x cannot be split into spans".to_string())
            }
        };
        match AutoPlacer::new(&manifest, budget, vec![1], 1.25, whole_only) {
            Err(ServeError::Config(msg)) => assert!(msg.contains("cannot be split"), "{msg}"),
            other => panic!("expected a refusal, got {:?}", other.map(|p| p.candidates)),
        }
    }
}

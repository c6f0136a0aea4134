//! Where a server should sit in the model: choosing its span, and re-checking it.
//!
//! Input: the swarm as the other servers announce it (each one's layer range and
//! per-block throughput), this node's own per-block throughput, and which spans fit in
//! its memory. Output: the span whose addition most raises the swarm's weakest blocks,
//! and whether moving there from the span it serves now clearly helps.
//!
//! A block's strength is the pair (its servers, counted up to [`REDUNDANCY`]; the sum of
//! their throughputs). A block below the redundancy floor is weaker than any block at
//! it, whatever the speeds: one failure would leave it unserved, and speeds measured on
//! a busy machine are noisy. Above the floor, throughput decides.
//!
//! "Most raises the weakest blocks" is leximin: add this node to every block of a
//! candidate span, sort the model's block strengths ascending, and prefer the candidate
//! whose sorted list is lexicographically largest. That first lifts the weakest block,
//! then the next weakest, and so on. A move must also never leave a block that no one
//! else serves, and must beat staying clearly where the two outcomes first differ: a
//! block gains a server below the floor, or its throughput rises by more than
//! `min_gain - 1` times this server's own throughput (so that measurement noise does not
//! make servers wander).
//!
//! The gain is measured against the server's own throughput, not the block's: at 900
//! servers a block holds about 225 of them, no one server lifts it by a quarter, and a
//! rule relative to the block moved no one (the simulations' balance stayed where the
//! joins left it). Since many servers see the same weak block at once, a server for
//! which a throughput move helps makes it only by chance ([`move_chance`]): in each round
//! of re-checks about as many servers move as the weakest block needs, not all of them.
//!
//! These are pure functions, so the policy is tested without a network; the server
//! feeds them the announcements it hears.

use std::cmp::Ordering;
use std::ops::Range;

/// Servers per block the placement aims for before it weighs throughput.
pub const REDUNDANCY: u32 = 2;

/// One server of the swarm as announced.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// Layers served, end exclusive.
    pub layers: Range<u32>,
    /// Tokens per second through one block.
    pub throughput: f64,
}

/// What serves one block: how many servers, and their summed throughput.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BlockLoad {
    /// Servers holding the block.
    pub servers: u32,
    /// Sum of their per-block throughputs.
    pub throughput: f64,
}

impl BlockLoad {
    fn strength_cmp(&self, other: &Self) -> Ordering {
        let floor = |b: &Self| b.servers.min(REDUNDANCY);
        floor(self).cmp(&floor(other)).then_with(|| self.throughput.total_cmp(&other.throughput))
    }
}

/// Each of the `n_layer` blocks' load under `servers`. Ranges past the model's end are
/// clipped; a throughput that is not a finite positive number counts as zero.
pub fn block_loads(n_layer: u32, servers: &[Placement]) -> Vec<BlockLoad> {
    let mut loads = vec![BlockLoad::default(); n_layer as usize];
    for s in servers {
        let t = if s.throughput.is_finite() { s.throughput.max(0.0) } else { 0.0 };
        for b in s.layers.start.min(n_layer)..s.layers.end.min(n_layer) {
            loads[b as usize].servers += 1;
            loads[b as usize].throughput += t;
        }
    }
    loads
}

/// Candidate spans: for every first block, the longest span from it that `fits` accepts
/// (none where even one block does not fit). `fits` must be monotone: if a span fits,
/// so does any shorter span with the same start.
pub fn candidate_spans(n_layer: u32, mut fits: impl FnMut(&Range<u32>) -> bool) -> Vec<Range<u32>> {
    let mut out = Vec::new();
    let mut end = 0;
    for start in 0..n_layer {
        // The longest span from `start` ends no earlier than the one from `start - 1`.
        end = end.max(start);
        while end < n_layer && fits(&(start..end + 1)) {
            end += 1;
        }
        if end > start {
            out.push(start..end);
        }
    }
    out
}

/// The blocks' loads with one more server of `throughput` on `span`, weakest first.
fn sorted_with(loads: &[BlockLoad], span: &Range<u32>, throughput: f64) -> Vec<BlockLoad> {
    let mut v = loads.to_vec();
    for b in span.start..span.end.min(loads.len() as u32) {
        v[b as usize].servers += 1;
        v[b as usize].throughput += throughput;
    }
    v.sort_by(BlockLoad::strength_cmp);
    v
}

fn leximin_cmp(a: &[BlockLoad], b: &[BlockLoad]) -> Ordering {
    a.iter().zip(b).map(|(x, y)| x.strength_cmp(y)).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
}

/// The candidate whose addition makes the swarm's sorted block strengths largest, given
/// the other servers' `loads`. Exact ties (typically: nothing is served yet) go to the
/// candidate with the smallest `tie_break(start)`, so nodes choosing at the same moment
/// spread out.
pub fn best_span(
    loads: &[BlockLoad],
    candidates: &[Range<u32>],
    throughput: f64,
    tie_break: impl Fn(u32) -> u64,
) -> Option<Range<u32>> {
    let scored: Vec<(Vec<BlockLoad>, &Range<u32>)> =
        candidates.iter().map(|c| (sorted_with(loads, c, throughput), c)).collect();
    scored
        .iter()
        .max_by(|(a, ra), (b, rb)| leximin_cmp(a, b).then_with(|| tie_break(rb.start).cmp(&tie_break(ra.start))))
        .map(|(_, r)| (*r).clone())
}

/// Whether a server now on `current` should move to `best`, given the *other* servers'
/// `loads` (see the module documentation for the rule).
pub fn should_move(
    loads: &[BlockLoad],
    current: &Range<u32>,
    best: &Range<u32>,
    throughput: f64,
    min_gain: f64,
) -> bool {
    if current == best {
        return false;
    }
    let n = loads.len() as u32;
    if (current.start..current.end.min(n)).any(|b| !best.contains(&b) && loads[b as usize].servers == 0) {
        return false;
    }
    let stay = sorted_with(loads, current, throughput);
    let go = sorted_with(loads, best, throughput);
    match stay.iter().zip(&go).find(|(s, g)| s.strength_cmp(g).is_ne()) {
        Some((s, g)) if s.servers.min(REDUNDANCY) != g.servers.min(REDUNDANCY) => g.servers > s.servers,
        Some((s, g)) if s.throughput <= 0.0 => g.throughput > 0.0,
        Some((s, g)) => g.throughput - s.throughput > (min_gain - 1.0) * throughput,
        None => false,
    }
}

/// The chance that a server of `throughput` now on `current`, for which a move helps
/// ([`should_move`]), makes it on this re-check, given the other `loads` and how many
/// `servers` the swarm has (this one included). A block below the redundancy floor is
/// filled at once (1). Otherwise the weakest block needs about (mean − weakest) ÷
/// `throughput` servers like this one, and roughly half the servers (those on blocks
/// above the mean) could each be the one: the chance spreads the need over them.
pub fn move_chance(loads: &[BlockLoad], current: &Range<u32>, throughput: f64, servers: usize) -> f64 {
    let stay = sorted_with(loads, current, throughput);
    let Some(weakest) = stay.first() else { return 0.0 };
    if weakest.servers < REDUNDANCY || throughput.partial_cmp(&0.0) != Some(Ordering::Greater) {
        return 1.0;
    }
    let mean = stay.iter().map(|b| b.throughput).sum::<f64>() / stay.len() as f64;
    let needed = (mean - weakest.throughput) / throughput;
    (2.0 * needed / servers.max(1) as f64).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(layers: Range<u32>, throughput: f64) -> Placement {
        Placement { layers, throughput }
    }

    fn throughputs(loads: &[BlockLoad]) -> Vec<f64> {
        loads.iter().map(|l| l.throughput).collect()
    }

    #[test]
    fn loads_count_and_sum_the_servers_of_each_block_and_ignore_junk() {
        let l = block_loads(6, &[at(0..3, 10.0), at(2..9, 5.0), at(1..2, f64::NAN), at(4..5, -3.0)]);
        assert_eq!(throughputs(&l), vec![10.0, 10.0, 15.0, 5.0, 5.0, 5.0]);
        assert_eq!(l.iter().map(|l| l.servers).collect::<Vec<_>>(), vec![1, 2, 2, 1, 2, 1]);
    }

    #[test]
    fn candidates_are_the_longest_fitting_span_from_each_start() {
        // Blocks cost 1, the first block 3 more (the embedding), budget 5.
        let fits = |r: &Range<u32>| r.len() as u32 + if r.start == 0 { 3 } else { 0 } <= 5;
        assert_eq!(candidate_spans(8, fits), vec![0..2, 1..6, 2..7, 3..8, 4..8, 5..8, 6..8, 7..8]);
        assert!(candidate_spans(8, |_| false).is_empty());
    }

    #[test]
    fn the_weakest_blocks_are_covered_first() {
        let loads = block_loads(9, &[at(0..3, 10.0), at(6..9, 10.0)]);
        let spans = candidate_spans(9, |r| r.len() <= 3);
        assert_eq!(best_span(&loads, &spans, 7.0, |_| 0), Some(3..6));
        // With a wider budget the span reaches over the hole and onto the slower side.
        let loads = block_loads(9, &[at(0..3, 10.0), at(6..9, 20.0)]);
        let spans = candidate_spans(9, |r| r.len() <= 4);
        assert_eq!(best_span(&loads, &spans, 7.0, |_| 0), Some(2..6));
    }

    #[test]
    fn a_block_below_the_redundancy_floor_comes_before_throughput() {
        // 0..5 has one very fast server, 5..10 two slow ones: the lone block is weaker.
        let loads = block_loads(10, &[at(0..5, 1000.0), at(5..10, 10.0), at(5..10, 10.0)]);
        let spans = candidate_spans(10, |r| r.len() <= 5);
        assert_eq!(best_span(&loads, &spans, 10.0, |_| 0), Some(0..5));
        // Once both halves have two servers, throughput decides.
        let loads = block_loads(10, &[at(0..5, 1000.0), at(0..5, 1000.0), at(5..10, 10.0), at(5..10, 10.0)]);
        assert_eq!(best_span(&loads, &spans, 10.0, |_| 0), Some(5..10));
    }

    #[test]
    fn ties_are_broken_by_the_given_key() {
        let loads = vec![BlockLoad::default(); 8];
        let spans = candidate_spans(8, |r| r.len() <= 4);
        assert_eq!(best_span(&loads, &spans, 1.0, |s| s as u64), Some(0..4));
        assert_eq!(best_span(&loads, &spans, 1.0, |s| 100 - s as u64), Some(4..8));
    }

    #[test]
    fn a_server_moves_to_fill_a_hole_but_never_strands_a_block() {
        // Others: 0..4 and 4..8 once each; this node doubles 0..4; block 8..10 is a hole.
        let loads = block_loads(10, &[at(0..4, 10.0), at(4..8, 10.0)]);
        assert!(should_move(&loads, &(0..4), &(6..10), 10.0, 1.25));
        // The only server of 0..4 stays put even though 8..10 is empty.
        let loads = block_loads(10, &[at(4..8, 10.0)]);
        assert!(!should_move(&loads, &(0..4), &(6..10), 10.0, 1.25));
    }

    #[test]
    fn small_gains_do_not_move_a_server() {
        // Two servers on each half; this one on 5..10 would gain 10 % on 0..5.
        let loads = block_loads(10, &[at(0..5, 10.0), at(5..10, 11.0), at(0..5, 10.0), at(5..10, 11.0)]);
        assert!(!should_move(&loads, &(5..10), &(0..5), 10.0, 1.25));
        assert!(!should_move(&loads, &(0..5), &(0..5), 10.0, 1.25));
        // But a half whose two servers are slow is worth moving for.
        let loads = block_loads(10, &[at(0..5, 2.0), at(0..5, 2.0), at(5..10, 11.0), at(5..10, 11.0)]);
        assert!(should_move(&loads, &(5..10), &(0..5), 10.0, 1.25));
    }

    #[test]
    fn in_a_large_swarm_a_move_is_weighed_against_the_servers_own_throughput() {
        // 50 servers on 0..2, 30 on 2..4, all alike; this one is one of the 50.
        let mut others = vec![at(0..2, 10.0); 49];
        others.extend(vec![at(2..4, 10.0); 30]);
        let loads = block_loads(4, &others);
        // Moving lifts 2..4 from 300 to 310: 3 % of the block, all of this server.
        assert!(should_move(&loads, &(0..2), &(2..4), 10.0, 1.25));
        assert!(!should_move(&loads, &(2..4), &(0..2), 10.0, 1.25));
        // 2..4 needs about 10 servers (the mean is 400): 10 of the 40 or so above it.
        let chance = move_chance(&loads, &(0..2), 10.0, 80);
        assert!((chance - 0.25).abs() < 1e-9, "{chance}");
        // Ten times the servers and 2..4 only five short of the mean: a small chance each.
        let mut others = vec![at(0..2, 10.0); 404];
        others.extend(vec![at(2..4, 10.0); 395]);
        let chance = move_chance(&block_loads(4, &others), &(0..2), 10.0, 800);
        assert!((chance - 0.0125).abs() < 1e-9, "{chance}");
        // A block below the redundancy floor is filled at once.
        let loads = block_loads(4, &[at(0..2, 10.0), at(0..2, 10.0), at(2..4, 10.0)]);
        assert_eq!(move_chance(&loads, &(0..2), 10.0, 4), 1.0);
    }

    #[test]
    fn a_lone_server_gets_company_even_from_a_slow_node() {
        // 0..5 has one fast server, 5..10 three; this slow node is the third on 5..10.
        let loads = block_loads(10, &[at(0..5, 100.0), at(5..10, 100.0), at(5..10, 100.0)]);
        assert!(should_move(&loads, &(5..10), &(0..5), 5.0, 1.25));
        let spans = candidate_spans(10, |r| r.len() <= 5);
        assert_eq!(best_span(&loads, &spans, 5.0, |_| 0), Some(0..5));
    }
}

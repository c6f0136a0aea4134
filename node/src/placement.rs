//! Where a server should sit in the model: choosing its span, and re-checking it.
//!
//! Input: the swarm as the other servers announce it (each one's layer range and
//! per-block throughput), this node's own per-block throughput, and which spans fit in
//! its memory. Output: the span whose addition most raises the swarm's weakest blocks,
//! and whether moving there from the span it serves now clearly helps.
//!
//! "Most raises the weakest blocks" is leximin: add this node's throughput to every
//! block of a candidate span, sort the model's per-block totals ascending, and prefer
//! the candidate whose sorted totals are lexicographically largest. That first lifts
//! the weakest block, then the next weakest, and so on. A move must also never leave a
//! block that no one else serves, and must beat staying by a clear margin (so that
//! measurement noise does not make servers wander) or give a second server to a block
//! where the swarm is thinnest (so that noise cannot keep a lone server lonely).
//!
//! These are pure functions, so the policy is tested without a network; the `run`
//! command feeds them the announcements it hears.

use std::cmp::Ordering;
use std::ops::Range;

/// One server of the swarm as announced.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// Layers served, end exclusive.
    pub layers: Range<u32>,
    /// Tokens per second through one block.
    pub throughput: f64,
}

/// Per-block throughput of the swarm: for each of `n_layer` blocks, the sum over the
/// servers that hold it. Ranges past the model's end are clipped.
pub fn block_totals(n_layer: u32, servers: &[Placement]) -> Vec<f64> {
    let mut totals = vec![0.0; n_layer as usize];
    for s in servers {
        let t = if s.throughput.is_finite() { s.throughput.max(0.0) } else { 0.0 };
        for b in s.layers.start.min(n_layer)..s.layers.end.min(n_layer) {
            totals[b as usize] += t;
        }
    }
    totals
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

/// The model's per-block totals with `throughput` added on `span`, sorted ascending.
fn sorted_with(totals: &[f64], span: &Range<u32>, throughput: f64) -> Vec<f64> {
    let mut v = totals.to_vec();
    for b in span.start..span.end.min(totals.len() as u32) {
        v[b as usize] += throughput;
    }
    v.sort_by(f64::total_cmp);
    v
}

fn leximin_cmp(a: &[f64], b: &[f64]) -> Ordering {
    a.iter().zip(b).map(|(x, y)| x.total_cmp(y)).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
}

/// The candidate whose addition makes the swarm's sorted per-block totals largest.
/// Exact ties (typically: nothing is served yet) go to the candidate with the smallest
/// `tie_break(start)`, so nodes choosing at the same moment spread out.
pub fn best_span(
    totals: &[f64],
    candidates: &[Range<u32>],
    throughput: f64,
    tie_break: impl Fn(u32) -> u64,
) -> Option<Range<u32>> {
    let scored: Vec<(Vec<f64>, &Range<u32>)> =
        candidates.iter().map(|c| (sorted_with(totals, c, throughput), c)).collect();
    scored
        .iter()
        .max_by(|(a, ra), (b, rb)| leximin_cmp(a, b).then_with(|| tie_break(rb.start).cmp(&tie_break(ra.start))))
        .map(|(_, r)| (*r).clone())
}

/// Fewest servers of any block when this node serves `span`.
fn min_servers(n_layer: u32, others: &[Placement], span: &Range<u32>) -> usize {
    (0..n_layer)
        .map(|b| others.iter().filter(|s| s.layers.contains(&b)).count() + usize::from(span.contains(&b)))
        .min()
        .unwrap_or(0)
}

/// Whether a server now on `current` should move to `best`, given the *other* servers.
/// It moves only if no block of `current` outside `best` would be left without a
/// server, and either the first place where the two sorted throughput outcomes differ
/// improves by more than `min_gain` (e.g. 1.25 = 25 %) or fills a block nobody served,
/// or the move adds a server where the swarm is thinnest. The last rule keeps
/// redundancy even when noisy measurements make a slow-looking node's gain look small.
pub fn should_move(
    n_layer: u32,
    others: &[Placement],
    current: &Range<u32>,
    best: &Range<u32>,
    throughput: f64,
    min_gain: f64,
) -> bool {
    if current == best {
        return false;
    }
    let totals = block_totals(n_layer, others);
    let orphans = (current.start..current.end.min(n_layer)).any(|b| !best.contains(&b) && totals[b as usize] <= 0.0);
    if orphans {
        return false;
    }
    let stay = sorted_with(&totals, current, throughput);
    let go = sorted_with(&totals, best, throughput);
    let clear_gain = match stay.iter().zip(&go).find(|(s, g)| s != g) {
        Some((&s, &g)) if s <= 0.0 => g > 0.0,
        Some((&s, &g)) => g > s * min_gain,
        None => false,
    };
    clear_gain || min_servers(n_layer, others, best) > min_servers(n_layer, others, current)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(layers: Range<u32>, throughput: f64) -> Placement {
        Placement { layers, throughput }
    }

    #[test]
    fn totals_sum_the_servers_of_each_block_and_ignore_junk() {
        let t = block_totals(6, &[at(0..3, 10.0), at(2..9, 5.0), at(1..2, f64::NAN), at(4..5, -3.0)]);
        assert_eq!(t, vec![10.0, 10.0, 15.0, 5.0, 5.0, 5.0]);
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
        let totals = block_totals(9, &[at(0..3, 10.0), at(6..9, 10.0)]);
        let spans = candidate_spans(9, |r| r.len() <= 3);
        assert_eq!(best_span(&totals, &spans, 7.0, |_| 0), Some(3..6));
        // With a wider budget the span reaches over the hole and onto the weaker side.
        let totals = block_totals(9, &[at(0..3, 10.0), at(6..9, 20.0)]);
        let spans = candidate_spans(9, |r| r.len() <= 4);
        assert_eq!(best_span(&totals, &spans, 7.0, |_| 0), Some(2..6));
    }

    #[test]
    fn ties_are_broken_by_the_given_key() {
        let totals = vec![0.0; 8];
        let spans = candidate_spans(8, |r| r.len() <= 4);
        assert_eq!(best_span(&totals, &spans, 1.0, |s| s as u64), Some(0..4));
        assert_eq!(best_span(&totals, &spans, 1.0, |s| 100 - s as u64), Some(4..8));
    }

    #[test]
    fn a_server_moves_to_fill_a_hole_but_never_strands_a_block() {
        // Others: 0..4 and 4..8 once each; this node doubles 0..4; block 8..10 is a hole.
        let others = [at(0..4, 10.0), at(4..8, 10.0)];
        assert!(should_move(10, &others, &(0..4), &(6..10), 10.0, 1.25));
        // The only server of 0..4 stays put even though 8..10 is empty.
        assert!(!should_move(10, &[at(4..8, 10.0)], &(0..4), &(6..10), 10.0, 1.25));
    }

    #[test]
    fn small_gains_do_not_move_a_server() {
        // Two servers each on both halves; a third on 0..5 measured 10 % faster than on 5..10.
        let others = [at(0..5, 10.0), at(5..10, 11.0), at(0..5, 10.0), at(5..10, 11.0)];
        assert!(!should_move(10, &others, &(5..10), &(0..5), 10.0, 1.25));
        assert!(!should_move(10, &others, &(0..5), &(0..5), 10.0, 1.25));
        // But a block down to one slow server is worth moving for.
        let others = [at(0..5, 4.0), at(5..10, 11.0), at(5..10, 11.0)];
        assert!(should_move(10, &others, &(5..10), &(0..5), 10.0, 1.25));
    }

    #[test]
    fn a_thin_block_gets_a_second_server_even_from_a_slow_node() {
        // 0..5 has one fast server, 5..10 three; this slow node sits on 5..10.
        let others = [at(0..5, 100.0), at(5..10, 100.0), at(5..10, 100.0)];
        assert!(should_move(10, &others, &(5..10), &(0..5), 5.0, 1.25));
        // Where every block already has two, the slow node's small gain is not worth a move.
        let others = [at(0..5, 100.0), at(0..5, 100.0), at(5..10, 100.0), at(5..10, 100.0)];
        assert!(!should_move(10, &others, &(5..10), &(0..5), 5.0, 1.25));
    }
}

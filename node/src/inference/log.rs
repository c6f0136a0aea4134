//! The outputs a session sent down the route, kept so that a replacement for the next
//! hop can rebuild its cache.
//!
//! Every hidden state a session pushes on is recorded as it was sent (the wire bytes,
//! so an f32 route replays exactly what the failed hop received) with its step, cache
//! position, generation and row tokens ([`OutputLog::record`]). When the next hop fails,
//! the client retargets the session to the replacement and [`OutputLog::replay`] turns
//! the log into steps: one per recorded output (exact: the replacement runs the same
//! shapes the failed hop ran), or as few as fit in a frame (fast). A new generation that
//! keeps a prefix truncates the log with the cache. The sessions of a service share one
//! byte budget ([`RetainBudget`]); a session whose log would pass it stops retaining,
//! and a replay then fails so that the client replays from further up the route.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nak_protocol::{pb, Activation};

/// Most rows in one step of a fast replay, whoever replays: a hop from its retained
/// outputs, or the client from its tokens.
pub(crate) const FAST_REPLAY_ROWS: u32 = 512;

/// Groups consecutive steps, given as `(rows, kind)`, into the runs a fast replay joins:
/// ranges of indices, each of steps of one kind and at most `most` rows in all. Steps are
/// never split; one larger than `most` is a run of its own.
pub(crate) fn replay_runs<K: PartialEq>(steps: impl IntoIterator<Item = (u32, K)>, most: u32) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    let (mut rows, mut kind) = (0u32, None);
    for (i, (n, k)) in steps.into_iter().enumerate() {
        match runs.last_mut() {
            Some(run) if kind.as_ref() == Some(&k) && rows.saturating_add(n) <= most => {
                run.end = i + 1;
                rows += n;
            }
            _ => {
                runs.push(i..i + 1);
                (rows, kind) = (n, Some(k));
            }
        }
    }
    runs
}

/// Bytes of retained outputs a service may hold across its sessions.
#[derive(Debug)]
pub(super) struct RetainBudget {
    limit: u64,
    used: AtomicU64,
}

impl RetainBudget {
    pub(super) fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self { limit, used: AtomicU64::new(0) })
    }

    fn take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: u64) {
        let _ = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| Some(used.saturating_sub(bytes)));
    }

    /// Bytes held now.
    pub(super) fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// One output as it was pushed on.
struct Recorded {
    generation: u32,
    step: u64,
    position: u32,
    more: bool,
    /// Trailing rows that were drafts.
    draft: u32,
    hidden: Activation,
    row_tokens: Vec<i32>,
}

impl Recorded {
    fn cost(&self) -> u64 {
        (self.hidden.data.len() + 4 * self.row_tokens.len() + 64) as u64
    }
}

/// How a replay is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// One step per recorded output.
    Exact,
    /// Consecutive outputs joined into steps of up to this many rows.
    Joined(u32),
}

impl Shape {
    /// The shape for a replay policy and a row of `row_bytes` bytes; `None` for no replay.
    pub(super) fn of(policy: pb::ReplayPolicy, row_bytes: usize) -> Option<Self> {
        match policy {
            pb::ReplayPolicy::None => None,
            pb::ReplayPolicy::Exact => Some(Shape::Exact),
            pb::ReplayPolicy::Fast => {
                // Half a frame, so a joined step always fits whatever the hidden size.
                let fit = (crate::net::frames::MAX_INFERENCE_FRAME / 2 / row_bytes.max(1)).max(1);
                Some(Shape::Joined(FAST_REPLAY_ROWS.min(u32::try_from(fit).unwrap_or(u32::MAX))))
            }
        }
    }
}

/// A session's retained outputs, in position order.
pub(super) struct OutputLog {
    budget: Arc<RetainBudget>,
    entries: VecDeque<Recorded>,
    bytes: u64,
    complete: bool,
}

impl OutputLog {
    pub(super) fn new(budget: Arc<RetainBudget>) -> Self {
        Self { budget, entries: VecDeque::new(), bytes: 0, complete: true }
    }

    /// Whether every output since the session opened is here.
    pub(super) fn complete(&self) -> bool {
        self.complete
    }

    /// Keeps an output that was pushed on (or failed to be); `kind` is the step's `more`
    /// and `draft`.
    pub(super) fn record(
        &mut self,
        generation: u32,
        step: u64,
        position: u32,
        (more, draft): (bool, u32),
        hidden: &Activation,
        row_tokens: &[i32],
    ) {
        if !self.complete {
            return;
        }
        let entry = Recorded {
            generation,
            step,
            position,
            more,
            draft,
            hidden: hidden.clone(),
            row_tokens: row_tokens.to_vec(),
        };
        let cost = entry.cost();
        if !self.budget.take(cost) {
            tracing::debug!(bytes = self.bytes, "retained outputs over the budget; this session stops retaining");
            self.drop_all();
            self.complete = false;
            return;
        }
        self.bytes += cost;
        self.entries.push_back(entry);
    }

    /// Forgets outputs at positions from `keep` on (the cache was truncated there).
    pub(super) fn truncate(&mut self, keep: u32) {
        while let Some(last) = self.entries.back_mut() {
            if last.position >= keep {
                let cost = last.cost();
                self.entries.pop_back();
                self.release(cost);
                continue;
            }
            let rows = keep - last.position;
            if rows < last.hidden.n_rows {
                let before = last.cost();
                last.draft = last.draft.saturating_sub(last.hidden.n_rows - rows);
                match last.hidden.slice_rows(0..rows) {
                    Ok(h) => last.hidden = h,
                    Err(_) => {
                        // Recorded outputs are well formed; if not, do not pretend to retain.
                        self.drop_all();
                        self.complete = false;
                        return;
                    }
                }
                last.row_tokens.truncate(rows as usize);
                let after = last.cost();
                self.release(before - after);
            }
            break;
        }
    }

    fn release(&mut self, cost: u64) {
        self.bytes -= cost;
        self.budget.give_back(cost);
    }

    fn drop_all(&mut self) {
        self.entries.clear();
        self.budget.give_back(self.bytes);
        self.bytes = 0;
    }

    /// The retained outputs as steps for a replacement next hop, tagged with the current
    /// `generation`: outputs of earlier generations (the kept prefix of a conversation)
    /// become prompt rows (`more`), so the replacement emits no token for them.
    pub(super) fn replay(&self, shape: Shape, generation: u32, stop_at: u32) -> Vec<pb::Step> {
        let step_of = |e: &Recorded, hidden: &Activation, row_tokens: Vec<i32>| pb::Step {
            step: e.step,
            hidden: hidden.to_bytes(),
            generation,
            more: e.more || e.generation < generation,
            row_tokens,
            position: e.position,
            stop_at,
            draft: e.draft,
            ..Default::default()
        };
        match shape {
            Shape::Exact => self.entries.iter().map(|e| step_of(e, &e.hidden, e.row_tokens.clone())).collect(),
            Shape::Joined(most) => {
                // Row tokens are per row or absent; a joined step mixes neither.
                let steps = self.entries.iter().map(|e| (e.hidden.n_rows, e.row_tokens.is_empty()));
                let join = |run: Range<usize>| {
                    let group = self.entries.range(run);
                    let (first, last) = (group.clone().next()?, group.clone().last()?);
                    let hidden = Activation::concat(group.clone().map(|e| &e.hidden)).ok()?;
                    let tokens = group.flat_map(|e| e.row_tokens.iter().copied()).collect();
                    Some(pb::Step { position: first.position, ..step_of(last, &hidden, tokens) })
                };
                replay_runs(steps, most).into_iter().filter_map(join).collect()
            }
        }
    }
}

impl Drop for OutputLog {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: u32, first: f32) -> Activation {
        let v: Vec<f32> = (0..n * 2).map(|i| first + i as f32).collect();
        Activation::encode(&v, 2, Default::default()).unwrap()
    }

    /// A prompt chunk of 3 rows then three one-row steps, all of generation 1.
    fn sample_log(budget: &Arc<RetainBudget>) -> OutputLog {
        let mut log = OutputLog::new(budget.clone());
        log.record(1, 0, 0, (false, 0), &rows(3, 0.0), &[10, 11, 12]);
        for (i, p) in (3..6).enumerate() {
            log.record(1, 1 + i as u64, p, (false, 0), &rows(1, 100.0 * p as f32), &[20 + p as i32]);
        }
        log
    }

    #[test]
    fn exact_replay_gives_the_recorded_steps_and_fast_joins_them() {
        let budget = RetainBudget::new(1 << 20);
        let log = sample_log(&budget);
        let exact = log.replay(Shape::Exact, 1, 40);
        assert_eq!(exact.iter().map(|s| (s.step, s.position)).collect::<Vec<_>>(), [(0, 0), (1, 3), (2, 4), (3, 5)]);
        assert!(exact.iter().all(|s| s.generation == 1 && s.stop_at == 40 && !s.more));
        let fast = log.replay(Shape::Joined(512), 1, 40);
        assert_eq!(fast.len(), 1);
        let joined = Activation::from_bytes(&fast[0].hidden).unwrap();
        let parts: Vec<Activation> = exact.iter().map(|s| Activation::from_bytes(&s.hidden).unwrap()).collect();
        assert_eq!(joined, Activation::concat(&parts).unwrap());
        assert_eq!((fast[0].step, fast[0].position), (3, 0));
        assert_eq!(fast[0].row_tokens, [10, 11, 12, 23, 24, 25]);
        assert_eq!(log.replay(Shape::Joined(4), 1, 40).iter().map(|s| s.position).collect::<Vec<_>>(), [0, 4]);
        // A later generation replays the earlier outputs as prompt rows.
        assert!(log.replay(Shape::Exact, 2, 0).iter().all(|s| s.more && s.generation == 2));
    }

    #[test]
    fn replay_runs_hold_at_most_the_limit_and_one_kind() {
        let steps = [(3, true), (1, true), (1, false), (600, false), (1, false), (1, false)];
        assert_eq!(replay_runs(steps, 4), [0..2, 2..3, 3..4, 4..6]);
    }

    #[test]
    fn truncation_cuts_through_a_step_and_returns_its_bytes() {
        let budget = RetainBudget::new(1 << 20);
        let mut log = sample_log(&budget);
        let full = budget.used();
        log.truncate(2);
        let left = log.replay(Shape::Exact, 1, 0);
        assert_eq!(left.len(), 1);
        assert_eq!(Activation::from_bytes(&left[0].hidden).unwrap().n_rows, 2);
        assert_eq!(left[0].row_tokens, [10, 11]);
        assert!(budget.used() < full);
        drop(log);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn drafted_rows_replay_as_drafts_until_truncated_away() {
        let budget = RetainBudget::new(1 << 20);
        let mut log = sample_log(&budget);
        // Position 6 with three drafts behind it.
        log.record(1, 4, 6, (false, 3), &rows(4, 600.0), &[26, 27, 28, 29]);
        assert_eq!(log.replay(Shape::Exact, 1, 0).last().map(|s| (s.position, s.draft)), Some((6, 3)));
        assert_eq!(log.replay(Shape::Joined(512), 1, 0)[0].draft, 3, "the drafts trail the joined step");
        // One draft stood: the rows from position 8 on go, and with them two drafts.
        log.truncate(8);
        let last = log.replay(Shape::Exact, 1, 0).pop().unwrap();
        assert_eq!((last.position, last.draft, last.row_tokens), (6, 1, vec![26, 27]));
    }

    #[test]
    fn a_session_over_the_budget_stops_retaining_and_frees_what_it_held() {
        let budget = RetainBudget::new(200);
        let mut log = sample_log(&budget);
        assert!(!log.complete());
        assert_eq!(budget.used(), 0);
        log.record(1, 9, 9, (false, 0), &rows(1, 0.0), &[]);
        assert_eq!(budget.used(), 0, "an incomplete log records nothing more");
    }
}

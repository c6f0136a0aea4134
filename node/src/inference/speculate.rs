//! Speculative steps on a server: which held rows a step replaces, and a ring's drafts.
//!
//! A step may end in drafted rows (`Step.draft`). Every hop runs them one row a decode
//! (so their numbers are those of plain decoding; see `StepRequest::row_by_row`) and
//! remembers where they start; the next step that reaches back into them, and whose
//! tokens differ from them there (a draft that was rejected, and what follows it), makes
//! the hop drop its rows from the first difference on ([`replaced_from`]) before running
//! it. Overlaps elsewhere stay replays, whose held rows are skipped.
//!
//! In ring mode the last hop also drafts: after it has verified a trip's drafts
//! ([`crate::speculative::accept`]), [`RingDrafter`] looks up the next ones in the
//! context by prompt lookup and pushes them behind the token it sampled, as many as
//! [`DraftLength`] finds worth a trip, from the time between its pushes (one trip around
//! the ring) and how many drafts stood.

use std::time::Instant;

use crate::speculative::length::DraftLength;
use crate::speculative::lookup::PromptLookup;

/// The first position from which a step at `at` of `rows` rows replaces the rows a hop
/// holds: the first position, from the start of the drafts it holds on (`drafts_from`),
/// where the step's tokens differ from the `held` ones (a step's or a held row's token
/// that is unknown, empty or negative, counts as differing). None when the step reaches
/// no drafted row, or agrees with every one it reaches.
pub(super) fn replaced_from(held: &[i32], drafts_from: Option<u32>, at: u32, rows: u32, tokens: &[i32]) -> Option<u32> {
    let from = at.max(drafts_from?);
    let end = at.saturating_add(rows).min(held.len() as u32);
    (from..end).find(|&q| {
        let step = tokens.get((q - at) as usize);
        let held = held.get(q as usize).filter(|&&t| t >= 0);
        step.is_none() || held != step
    })
}

/// The drafting of a ring's last hop.
pub(super) struct RingDrafter {
    lookup: PromptLookup,
    length: DraftLength,
    /// When the last drafts went out, and how many.
    sent: Option<(Instant, usize)>,
}

impl RingDrafter {
    /// A drafter of at most `max` tokens a trip.
    pub(super) fn new(max: usize) -> Self {
        Self { lookup: PromptLookup::default(), length: DraftLength::new(max), sent: None }
    }

    /// A trip has come back with `stood` of the drafts sent last standing: records it,
    /// and returns the drafts to send behind the next token (the last of `context`), at
    /// most `room`.
    pub(super) fn next(&mut self, context: &[i32], stood: usize, room: usize) -> Vec<i32> {
        let now = Instant::now();
        if let Some((at, drafted)) = self.sent.take() {
            self.length.record(drafted, stood, now - at);
        }
        let drafts = self.lookup.draft(context, self.length.choose().min(room));
        self.sent = Some((now, drafts.len()));
        drafts
    }

    /// The ring stopped: the next trip's time would include the wait for a new generation.
    pub(super) fn pause(&mut self) {
        self.sent = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_replaces_held_drafts_from_its_first_different_token() {
        // Positions 0..6 held; 3, 4, 5 are drafts 7, 8, 9.
        let held = [1, 2, 3, 7, 8, 9];
        // The token after draft 7 was 5, not 8: the next step starts at 4.
        assert_eq!(replaced_from(&held, Some(3), 4, 2, &[5, 6]), Some(4));
        // Every draft stood: the next step starts past them.
        assert_eq!(replaced_from(&held, Some(3), 6, 1, &[4]), None);
        // The same drafted step again (a repeat): nothing differs, the rows are skipped.
        assert_eq!(replaced_from(&held, Some(3), 2, 4, &[3, 7, 8, 9]), None);
        // A step with other drafts at the same place replaces from the first difference.
        assert_eq!(replaced_from(&held, Some(3), 2, 4, &[3, 7, 1, 1]), Some(4));
        // Unknown tokens replace the drafts they reach.
        assert_eq!(replaced_from(&held, Some(3), 4, 2, &[]), Some(4));
        assert_eq!(replaced_from(&[1, 2, 3, -1], Some(3), 3, 1, &[7]), Some(3));
    }

    #[test]
    fn rows_before_the_drafts_are_never_replaced() {
        let held = [1, 2, 3, 7, 8, 9];
        // A replay that differs before the drafts: those rows are confirmed, and kept.
        assert_eq!(replaced_from(&held, Some(3), 0, 3, &[4, 4, 4]), None);
        assert_eq!(replaced_from(&held, None, 4, 2, &[5, 6]), None, "no drafts held");
        assert_eq!(replaced_from(&held, Some(3), 1, 4, &[9, 9, 7, 8]), None);
    }

    #[test]
    fn the_ring_drafter_continues_a_repeated_context_and_respects_the_room() {
        let mut drafter = RingDrafter::new(4);
        let context = [10, 11, 12, 13, 14, 10, 11];
        assert!(drafter.next(&context, 0, 8).is_empty(), "the first trip measures the route without drafts");
        let drafts = drafter.next(&context, 0, 8);
        assert!(!drafts.is_empty() && drafts.len() <= 4, "{drafts:?}");
        assert_eq!(drafts, [12, 13, 14, 10][..drafts.len()]);
        assert!(drafter.next(&context, drafts.len(), 1).len() <= 1, "no more than the room");
        assert!(drafter.next(&context, 0, 0).is_empty());
    }
}

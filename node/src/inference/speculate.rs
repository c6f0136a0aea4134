//! Speculative steps on a server: which held rows a step replaces.
//!
//! A step may end in drafted rows (`Step.draft`). Every hop runs them one row a decode
//! (so their numbers are those of plain decoding; see `StepRequest::row_by_row`) and
//! remembers where they start; the next step that reaches back into them, and whose
//! tokens differ from them there (a draft that was rejected, and what follows it), makes
//! the hop drop its rows from the first difference on ([`replaced_from`]) before running
//! it. Overlaps elsewhere stay replays, whose held rows are skipped.
//!
//! In ring mode the last hop also drafts: after it has verified a trip's drafts, its
//! [`crate::speculative::Drafter`] proposes the next ones, which it pushes behind the
//! token it sampled; the time between its pushes is one trip around the ring.
//! [`drafter_for`] makes it when the session is opened.

use nak_protocol::pb;
use pb::ErrorCode;

use super::code_of;
use crate::engine::EngineError;
use crate::speculative::{DraftModel, Drafter};

/// The drafter a session `open` asks for: none without `draft_max`; by prompt lookup;
/// or, with `draft_vocab`, with this server's `draft_model`, which must exist and have
/// that vocabulary. Refusals come with their error code.
pub(super) async fn drafter_for(
    draft_model: Option<&DraftModel>,
    open: &pb::OpenSession,
) -> Result<Option<Drafter>, (ErrorCode, String)> {
    let max = open.draft_max as usize;
    if max == 0 {
        return Ok(None);
    }
    if open.draft_vocab.is_empty() {
        return Ok(Some(Drafter::lookup(max)));
    }
    let model = draft_model.ok_or((ErrorCode::BadInput, "this server has no draft model".to_string()))?;
    let drafter = Drafter::with_model(model, &open.draft_vocab, max).await.map_err(|e| match e {
        EngineError::Input(_) => (ErrorCode::BadInput, e.to_string()),
        e => (code_of(&e), format!("the draft model: {e}")),
    })?;
    Ok(Some(drafter))
}

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
}

//! The drafting of one generation, wherever it runs (a client in client-sampled mode, a
//! ring's last hop): where drafts come from, how many to send, and what came of them.
//!
//! Each trip: [`Drafter::next`] proposes drafts to follow the newest token, as many as
//! [`DraftLength`] finds worth a trip, and notes when they went out; when the trip is
//! back, [`Drafter::settle`] (the drafter judges the rows itself) or [`Drafter::landed`]
//! (someone else judged them) records how many stood and how long the trip took. The
//! clock starts before the drafting, so a draft model's time counts as the drafts' cost.
//! A draft model reads the context in the background ahead of the trips that may draft
//! ([`DraftSession::follow`]), and a trip drafts only once that read is done.

use std::time::Instant;

use serde::Serialize;
use tracing::{debug, warn};

use super::length::DraftLength;
use super::lookup::PromptLookup;
use super::model::{DraftModel, DraftSession};
use crate::engine::EngineError;

/// Most trips between two probes of a draft model that does not pay.
const MODEL_PROBE_CEILING: u32 = 256;
/// Trips ahead of one that may draft that a draft model starts to read the context.
const READ_AHEAD: u32 = 8;

/// Where drafts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DraftSource {
    /// n-gram matches in the context so far (no model).
    Lookup,
    /// A small model with the same vocabulary, decoding greedily.
    Draft,
}

/// What proposes the drafts.
pub enum Proposer {
    /// Prompt lookup.
    Lookup(PromptLookup),
    /// A draft model's session.
    Model(DraftSession),
}

/// The drafting of one generation.
pub struct Drafter {
    proposer: Proposer,
    length: DraftLength,
    /// The drafts of the trip out, and when drafting them began.
    out: Option<(Instant, Vec<i32>)>,
}

impl Drafter {
    /// Drafts by prompt lookup, at most `max` tokens a trip.
    pub fn lookup(max: usize) -> Self {
        Self::new(Proposer::Lookup(PromptLookup::default()), max)
    }

    /// Drafts with `model`, for a generation whose model has the vocabulary `digest`:
    /// refused when it is not the draft model's ([`DraftModel::check_vocab`]).
    pub async fn with_model(model: &DraftModel, digest: &[u8], max: usize) -> Result<Self, EngineError> {
        model.check_vocab(digest)?;
        Ok(Self::new(Proposer::Model(model.open().await?), max))
    }

    /// Drafts from `proposer`, at most `max` tokens a trip.
    pub fn new(proposer: Proposer, max: usize) -> Self {
        let length = match proposer {
            Proposer::Lookup(_) => DraftLength::new(max),
            // Its probes read the context skipped since the last (a decode of the draft
            // model), so they back off while drafting does not pay.
            Proposer::Model(_) => DraftLength::new(max).with_probe_ceiling(MODEL_PROBE_CEILING),
        };
        Self { proposer, length, out: None }
    }

    /// The drafts to send behind `last`, the newest token after `context`: at most
    /// `room`, none on the first trips (they time the route). A draft model that
    /// fails proposes none (the log says why); the generation goes on without.
    pub async fn next(&mut self, context: &[i32], last: i32, room: usize) -> Vec<i32> {
        // A draft model still reading the context would make the trip wait: no drafts yet.
        let reading = match &mut self.proposer {
            Proposer::Model(model) => model.is_reading(),
            Proposer::Lookup(_) => false,
        };
        let max = if reading { 0 } else { self.length.choose().min(room) };
        if let (Proposer::Model(model), 0) = (&mut self.proposer, max) {
            // It reads ahead of the trips that may draft soon, on its own thread; not on
            // every trip, as each read costs the draft model a decode.
            if self.length.may_draft_within(READ_AHEAD) {
                if let Err(e) = model.follow(context).await {
                    warn!("the draft model could not take the context: {e}");
                }
            }
        }
        let began = Instant::now();
        let drafts = match &mut self.proposer {
            Proposer::Lookup(lookup) => lookup.draft(context, last, max),
            Proposer::Model(model) => model.draft(context, last, max).await.unwrap_or_else(|e| {
                warn!("the draft model failed, drafting nothing this trip: {e}");
                Vec::new()
            }),
        };
        self.out = Some((began, drafts.clone()));
        drafts
    }

    /// The trip that carried the last drafts is back, `stood` of them standing.
    pub fn landed(&mut self, stood: usize) {
        if let Some((began, drafts)) = self.out.take() {
            let trip = began.elapsed();
            debug!(drafted = drafts.len(), stood, trip_ms = trip.as_secs_f64() * 1e3, "a drafted trip landed");
            self.length.record(drafts.len(), stood, trip);
        }
    }

    /// Judges the trip's `rows` (one per draft, then one more): `draw(i)` samples row
    /// `i`, in order; each draft stands while the draw picks it, and the first draw that
    /// does not (or the one after the last draft) ends the trip. Returns the trip's
    /// tokens and how many drafts stood; None when no drafts are out or the rows do not
    /// fit them.
    pub fn settle(&mut self, rows: usize, mut draw: impl FnMut(usize) -> i32) -> Option<(Vec<i32>, usize)> {
        let drafts = &self.out.as_ref()?.1;
        if rows != drafts.len() + 1 {
            return None;
        }
        let mut tokens = Vec::with_capacity(rows);
        for i in 0..rows {
            let pick = draw(i);
            tokens.push(pick);
            if drafts.get(i) != Some(&pick) {
                break;
            }
        }
        let stood = tokens.len() - 1;
        self.landed(stood);
        Some((tokens, stood))
    }

    /// The generation stopped: the next trip's time would include the wait for another.
    pub fn pause(&mut self) {
        self.out = None;
    }
}

#[cfg(test)]
mod tests {
    use super::super::length::PLAIN_FIRST;
    use super::*;

    /// A prompt-lookup drafter past the trips without drafts a generation starts with.
    async fn lookup(max: usize) -> Drafter {
        let mut drafter = Drafter::lookup(max);
        for _ in 0..PLAIN_FIRST {
            assert!(drafter.next(&[1, 2, 1], 2, 8).await.is_empty(), "the first trips time the route");
            drafter.landed(0);
        }
        drafter
    }

    #[tokio::test]
    async fn drafts_continue_the_context_within_the_room() {
        let mut drafter = lookup(4).await;
        let context = [10, 11, 12, 13, 14, 10];
        let drafts = drafter.next(&context, 11, 8).await;
        assert!(!drafts.is_empty() && drafts.len() <= 4, "{drafts:?}");
        assert_eq!(drafts, [12, 13, 14, 10][..drafts.len()]);
        drafter.landed(drafts.len());
        assert!(drafter.next(&context, 11, 1).await.len() <= 1, "no more than the room");
        drafter.landed(1);
        assert!(drafter.next(&context, 11, 0).await.is_empty());
    }

    #[tokio::test]
    async fn settling_keeps_the_agreeing_drafts_and_the_first_different_pick() {
        let mut drafter = lookup(3).await;
        assert_eq!(drafter.settle(1, |_| 0), None, "nothing out");
        let drafts = drafter.next(&[1, 2, 3, 1], 2, 3).await;
        assert!(!drafts.is_empty() && [3, 1, 2].starts_with(&drafts), "{drafts:?}");
        // The target agrees with the first draft only.
        let picks = |i: usize| if i == 0 { drafts[0] } else { 9 };
        assert_eq!(drafter.settle(drafts.len() + 1, picks), Some((vec![drafts[0], 9], 1)));
        assert_eq!(drafter.settle(drafts.len() + 1, picks), None, "judged once");
        // Every draft stands: one more token from the last row.
        let drafts = drafter.next(&[1, 2, 3, 1], 2, 2).await;
        let all: Vec<i32> = drafts.iter().copied().chain([7]).collect();
        assert_eq!(drafter.settle(all.len(), |i| all[i]), Some((all.clone(), drafts.len())));
        // Rows that do not fit the drafts are refused.
        let drafts = drafter.next(&[1, 2, 3, 1], 2, 2).await;
        assert_eq!(drafter.settle(drafts.len() + 2, |_| 3), None, "rows for more drafts");
    }
}

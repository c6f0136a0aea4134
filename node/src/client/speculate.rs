//! Speculative decoding as a client runs it: what it asks of the route, and in
//! client-sampled mode the drafting and the judging of drafts.
//!
//! Ring mode: the session's last hop drafts by prompt lookup and verifies
//! (`OpenSession.draft_max`); the client only adds up the `drafted` and `accepted` its
//! results report. Client-sampled mode: after each token the client drafts the next
//! ones ([`ClientDrafter::next`]) and sends them behind it as one step; the last hop
//! returns the top logits of every row; the client samples the rows in order, keeping
//! each draft its draw agrees with ([`ClientDrafter::judge`]). A draft is one token for
//! sure, so keeping it when an ordinary draw picks it is standard speculative sampling
//! with a certain draft: the tokens follow the model's distribution, and greedy
//! decoding gives the tokens it gives without drafts.

use std::time::Instant;

use nak_protocol::pb;
use serde::Serialize;

use crate::engine::Sampler;
use crate::speculative::length::DraftLength;
use crate::speculative::lookup::PromptLookup;

/// Where drafts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DraftSource {
    /// n-gram matches in the context so far (no model).
    Lookup,
}

/// Speculative decoding settings of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Speculation {
    /// Where drafts come from.
    pub source: DraftSource,
    /// Most tokens drafted a trip; fewer when the measured acceptance and trip times
    /// say they do not pay. Default 8.
    pub draft_max: u32,
}

impl Default for Speculation {
    fn default() -> Self {
        Self { source: DraftSource::Lookup, draft_max: 8 }
    }
}

/// What speculation did in a generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct SpeculationReport {
    /// Where the drafts came from.
    pub source: Option<DraftSource>,
    /// Trips around the route that brought tokens (the prompt's included).
    pub trips: u32,
    /// Tokens drafted.
    pub drafted: u32,
    /// Drafted tokens that stood.
    pub accepted: u32,
    /// Tokens generated per trip.
    pub tokens_per_trip: f64,
    /// Share of drafted tokens that stood.
    pub acceptance: f64,
}

impl SpeculationReport {
    /// Counts a trip that drafted `drafted` tokens, of which `accepted` stood.
    pub(super) fn trip(&mut self, drafted: u32, accepted: u32) {
        self.trips += 1;
        self.drafted += drafted;
        self.accepted += accepted;
    }

    /// Fills in the rates, for `tokens` generated.
    pub(super) fn finish(&mut self, tokens: usize) {
        self.tokens_per_trip = tokens as f64 / f64::from(self.trips.max(1));
        self.acceptance = f64::from(self.accepted) / f64::from(self.drafted.max(1));
    }
}

/// Client-sampled drafting: the drafts of the trip out and the controller of their number.
pub(super) struct ClientDrafter {
    lookup: PromptLookup,
    length: DraftLength,
    /// The drafts sent with the step out, and when.
    pending: Option<(Instant, Vec<i32>)>,
}

impl ClientDrafter {
    pub(super) fn new(spec: Speculation) -> Self {
        Self { lookup: PromptLookup::default(), length: DraftLength::new(spec.draft_max as usize), pending: None }
    }

    /// The drafts to send behind the last token of `context`, at most `room`.
    pub(super) fn next(&mut self, context: &[i32], room: usize) -> Vec<i32> {
        let drafts = self.lookup.draft(context, self.length.choose().min(room));
        self.pending = Some((Instant::now(), drafts.clone()));
        drafts
    }

    /// The tokens a drafted step's result brings: each row's top logits sampled in
    /// order, each draft kept while the draw agrees, then the draw that did not (or
    /// the one after the last draft). None when the result does not fit the drafts.
    /// Returns the tokens and how many drafts stood.
    pub(super) fn judge(&mut self, rows: &[pb::RowLogits], sampler: &mut Sampler) -> Option<(Vec<i32>, usize)> {
        let (sent, drafts) = self.pending.take()?;
        if rows.len() != drafts.len() + 1 || rows.iter().any(|r| r.top.is_empty()) {
            return None;
        }
        let mut tokens = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let pick = sampler.sample_candidates(row.top.iter().map(|t| (t.token, t.logit)));
            tokens.push(pick);
            if drafts.get(i) != Some(&pick) {
                break;
            }
        }
        let stood = tokens.len() - 1;
        self.length.record(drafts.len(), stood, sent.elapsed());
        Some((tokens, stood))
    }

    /// The result of a step without drafts came: its trip time prices the drafts.
    pub(super) fn plain_trip(&mut self) {
        if let Some((sent, drafts)) = self.pending.take() {
            self.length.record(drafts.len(), 0, sent.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SamplingParams;

    fn row(best: i32) -> pb::RowLogits {
        let top = [(best, 5.0), (best + 1, 1.0)];
        pb::RowLogits {
            top: top.iter().map(|&(token, logit)| pb::TokenLogprob { token, logprob: 0.0, logit }).collect(),
        }
    }

    #[test]
    fn greedy_judging_keeps_the_agreeing_drafts_and_the_first_different_pick() {
        let mut sampler = Sampler::new(&SamplingParams::default());
        let mut drafter = ClientDrafter::new(Speculation::default());
        assert!(drafter.next(&[1, 2, 3, 1, 2], 3).is_empty(), "the first trip goes without drafts");
        drafter.plain_trip();
        // "1 2 3 1 2" continues with 3 1 2 …, as many as the controller finds worth it.
        let drafts = drafter.next(&[1, 2, 3, 1, 2], 3);
        assert!(!drafts.is_empty() && [3, 1, 2].starts_with(&drafts), "{drafts:?}");
        // The target agrees with the first draft only.
        let rows: Vec<pb::RowLogits> = [row(3)].into_iter().chain(drafts.iter().map(|_| row(9))).collect();
        assert_eq!(drafter.judge(&rows, &mut sampler), Some((vec![3, 9], 1)));
        assert_eq!(drafter.judge(&rows, &mut sampler), None, "judged once");
        // Every draft stands: one more token from the last row.
        let drafts = drafter.next(&[1, 2, 3, 1, 2], 2);
        let rows: Vec<pb::RowLogits> = drafts.iter().map(|&d| row(d)).chain([row(7)]).collect();
        let all: Vec<i32> = drafts.iter().copied().chain([7]).collect();
        assert_eq!(drafter.judge(&rows, &mut sampler), Some((all, drafts.len())));
    }

    #[test]
    fn a_result_that_does_not_fit_the_drafts_is_refused() {
        let mut sampler = Sampler::new(&SamplingParams::default());
        let mut drafter = ClientDrafter::new(Speculation::default());
        assert_eq!(drafter.judge(&[row(1)], &mut sampler), None, "no drafts out");
        drafter.next(&[1, 2, 3, 1, 2], 2);
        drafter.plain_trip();
        assert_eq!(drafter.next(&[1, 2, 3, 1, 2], 2).len(), 2);
        assert_eq!(drafter.judge(&[row(3)], &mut sampler), None, "rows for fewer drafts");
    }

    #[test]
    fn the_report_counts_trips_and_rates() {
        let mut report = SpeculationReport::default();
        report.trip(4, 3);
        report.trip(0, 0);
        report.finish(7);
        assert_eq!((report.trips, report.drafted, report.accepted), (2, 4, 3));
        assert!((report.tokens_per_trip - 3.5).abs() < 1e-9);
        assert!((report.acceptance - 0.75).abs() < 1e-9);
    }
}

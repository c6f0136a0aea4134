//! Speculative decoding as a client runs it: its settings, what it asks of the route,
//! and the report of what it did.
//!
//! Ring mode: the session's last hop drafts (by prompt lookup, or with the draft model
//! it serves) and verifies (`OpenSession.draft_max`, `draft_vocab`); the client only
//! adds up the `drafted` and `accepted` its results report. Client-sampled mode: after
//! each token the client drafts the next ones ([`crate::speculative::Drafter`]) and
//! sends them behind it as one step; the last hop returns the top logits of every row;
//! the client samples the rows in order, keeping each draft its draw agrees with. A
//! draft is one token for sure, so keeping it when an ordinary draw picks it is standard
//! speculative sampling with a certain draft: the tokens follow the model's
//! distribution, and greedy decoding gives the tokens it gives without drafts.

use std::sync::Arc;

use serde::Serialize;

use super::{ClientError, SwarmModel};
use crate::engine::EngineError;
pub use crate::speculative::DraftSource;
use crate::speculative::{DraftModel, Drafter};

/// Speculative decoding settings of a session.
#[derive(Debug, Clone)]
pub struct Speculation {
    /// Where drafts come from.
    pub source: DraftSource,
    /// Most tokens drafted a trip; fewer when the measured acceptance and trip times
    /// say they do not pay. Default 8.
    pub draft_max: u32,
    /// With [`DraftSource::Draft`] in client-sampled mode: the draft model the client
    /// runs (in ring mode the last hop drafts with the one it serves). Default none.
    pub draft_model: Option<Arc<DraftModel>>,
}

impl Default for Speculation {
    fn default() -> Self {
        Self { source: DraftSource::Lookup, draft_max: 8, draft_model: None }
    }
}

/// How a session drafts: in client-sampled mode its own drafter; in ring mode none, and
/// what the last hop is to draft with (`OpenSession.draft_vocab`: empty for prompt
/// lookup, else the vocabulary digest its draft model must have).
pub(super) async fn drafting(
    spec: &Speculation,
    ring: bool,
    model: &SwarmModel,
) -> Result<(Option<Drafter>, Vec<u8>), ClientError> {
    let max = spec.draft_max as usize;
    match (spec.source, ring, &spec.draft_model) {
        (DraftSource::Lookup, true, _) => Ok((None, Vec::new())),
        (DraftSource::Lookup, false, _) => Ok((Some(Drafter::lookup(max)), Vec::new())),
        (DraftSource::Draft, true, None) => Ok((None, model.vocab_digest().to_vec())),
        (DraftSource::Draft, true, Some(_)) => Err(ClientError::Input(
            "in ring mode the last server drafts with the draft model it serves (serve --draft-model); \
             a draft model here is for client-sampled mode"
                .into(),
        )),
        (DraftSource::Draft, false, None) => {
            Err(ClientError::Input("drafting with a model in client-sampled mode needs the draft model".into()))
        }
        (DraftSource::Draft, false, Some(draft)) => {
            let drafter = Drafter::with_model(draft, &model.vocab_digest(), max).await.map_err(|e| match e {
                EngineError::Input(_) => ClientError::Input(e.to_string()),
                e => ClientError::Input(format!("the draft model: {e}")),
            })?;
            Ok((Some(drafter), Vec::new()))
        }
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
    /// A ring's drafting last hop failed and no backup had a draft model: its replacement
    /// drafted by prompt lookup from then on (`source` says lookup).
    pub fell_back: bool,
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

#[cfg(test)]
mod tests {
    use super::*;

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

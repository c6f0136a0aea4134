//! What a caller of the client sets and gets back: the settings of a session and the
//! report of a generation, with the repairs made during it.
//!
//! These types sit apart from [`super::session`] (which generates) and
//! [`super::recovery`] (which repairs) because both use them.

use std::time::{Duration, Instant};

use nak_protocol::{pb, ActivationDtype};
use serde::Serialize;

use super::speculate::{Speculation, SpeculationReport};
use super::verify::Verification;
use super::RouteHop;
use crate::chain::Generation;
use crate::engine::SamplingParams;
use crate::speculative::DraftSource;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DecodeMode {
    /// The last hop samples and sends the token straight to the first hop.
    Ring,
    /// The last hop sends its top logits to the client, which samples.
    Client,
}

impl std::fmt::Display for DecodeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DecodeMode::Ring => "ring",
            DecodeMode::Client => "client",
        })
    }
}

/// How a replacement hop rebuilds its cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ReplayPolicy {
    /// In the shapes the failed hop computed them: on CPU the same bits, so the tokens
    /// are those the route would have produced without the failure.
    Exact,
    /// In as few steps as fit: one batched prefill, quicker.
    #[default]
    Fast,
}

impl ReplayPolicy {
    pub(super) fn wire(self) -> pb::ReplayPolicy {
        match self {
            ReplayPolicy::Exact => pb::ReplayPolicy::Exact,
            ReplayPolicy::Fast => pb::ReplayPolicy::Fast,
        }
    }
}

impl std::fmt::Display for ReplayPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReplayPolicy::Exact => "exact",
            ReplayPolicy::Fast => "fast",
        })
    }
}

/// Settings of a session.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Decoding mode. Default ring.
    pub mode: DecodeMode,
    /// Sampling (in ring mode done by the last hop, in client mode here). Default greedy.
    pub sampling: SamplingParams,
    /// Hidden-state encoding between hops. Default f32 (exact).
    pub dtype: ActivationDtype,
    /// Client mode: logits the last hop returns with each token. Default 16.
    pub top_logits: u32,
    /// Longest wait for any answer from a route that answers probes. Default 60 s.
    pub timeout: Duration,
    /// How a replacement hop rebuilds its cache. Default fast.
    pub replay: ReplayPolicy,
    /// Ask every hop for signed receipts and check them live (needs f32 hidden
    /// states). Default off.
    pub verify: bool,
    /// With each token, its log-probability and this many most likely alternatives
    /// ([`SampledToken`]). Default none.
    pub logprobs: Option<u32>,
    /// Speculative decoding: several tokens a trip, the same output. Default off.
    pub speculation: Option<Speculation>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            mode: DecodeMode::Ring,
            sampling: SamplingParams::default(),
            dtype: ActivationDtype::F32,
            top_logits: 16,
            timeout: Duration::from_secs(60),
            replay: ReplayPolicy::Fast,
            verify: false,
            logprobs: None,
            speculation: None,
        }
    }
}

impl SessionOptions {
    /// Whether the route's last hop must draft with a draft model: ring mode under
    /// [`DraftSource::Draft`].
    pub(super) fn last_hop_drafts(&self) -> bool {
        self.mode == DecodeMode::Ring && self.speculation.as_ref().is_some_and(|s| s.source == DraftSource::Draft)
    }
}

/// A token as it arrives from the route.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    /// The token.
    pub token: i32,
    /// Its log-probability under the model's logits, when the session asks for them.
    pub logprob: Option<f32>,
    /// The most likely tokens at its position with their log-probabilities, most likely
    /// first (as many as the session asks for).
    pub top: Vec<(i32, f32)>,
}

impl SampledToken {
    /// `token` as the last hop's result `r` brings it, with what `logprobs` asks for.
    pub(super) fn new(r: &pb::StepResult, token: i32, logprobs: Option<u32>, ring: bool) -> Self {
        let Some(n) = logprobs else { return Self { token, logprob: None, top: vec![] } };
        // In client mode the client chose among the top logits; in ring mode the last hop chose.
        let logprob = if ring { Some(r.logprob) } else { r.top.iter().find(|t| t.token == token).map(|t| t.logprob) };
        let top = r.top.iter().take(n as usize).map(|t| (t.token, t.logprob)).collect();
        Self { token, logprob, top }
    }
}

/// One generation through the swarm: the local generation's report plus the route.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteGeneration {
    /// What any generation reports.
    #[serde(flatten)]
    pub generation: Generation,
    /// The hops used at the end.
    pub route: Vec<RouteHop>,
    /// How tokens were chosen.
    pub mode: DecodeMode,
    /// The caller stopped it before an end token or `max_tokens`.
    pub cancelled: bool,
    /// It ended on an end token (not at `max_tokens`, the context's end or the caller's word).
    pub ended: bool,
    /// Repairs of the route during this generation.
    pub failovers: Vec<Failover>,
    /// Times every hop answered while no token came and the route was resynchronised
    /// (each hop replayed what it retained to the next: a push had been lost between
    /// live hops).
    pub resyncs: u32,
    /// Why the generation ended early, keeping the tokens so far (no backup for a
    /// failed hop).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the hops' receipts showed, in a verified session (cumulative over it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// How long after joining the swarm the client knew a full route (manifest,
    /// tokenizer and the servers' announcements): the cold-start cost before any work.
    pub discovery_ms: Option<f64>,
    /// What speculative decoding did, when the session drafts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speculation: Option<SpeculationReport>,
}

/// One repair of the route.
#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    /// The servers that failed.
    pub failed: Vec<String>,
    /// How the failure showed.
    pub cause: String,
    /// Tokens generated before it was detected.
    pub step: usize,
    /// Positions the replacement rebuilt.
    pub positions: u32,
    /// The hops that took over the failed ones' layers.
    pub replacement: Vec<RouteHop>,
    /// How they rebuilt their caches.
    pub replay: ReplayPolicy,
    /// From detecting the failure to the next token; absent when none came.
    pub recovery_ms: Option<f64>,
    #[serde(skip)]
    pub(super) detected: Instant,
}

//! A modelled compute: spans that take the time a device would and compute a toy model
//! that is exact, so failover can be checked token for token.
//!
//! The toy model: every layer keeps, per session and position, a 64-bit state; a row's
//! state after layer `l` at position `p` is `mix(l, input of p, state of p - 1)`. So a
//! layer is causal (it needs the cache of earlier positions, as attention does), and
//! layers compose: layers `a..c` in one span give exactly what `a..b` then `b..c` give on
//! two servers. The embedding turns a token into its id; the head turns the last layer's
//! state into a token id among the ordinary tokens (never a control token, so runs end
//! when they are told to). A state crosses the network as hidden rows of 8 bytes, one
//! per value, which every activation encoding carries exactly.
//!
//! [`reference_tokens`] runs the same model in one piece: the failure-free answer that
//! every completed session must equal.
//!
//! Time: a step sleeps `layers × (per_layer + rows × per_row_layer) / speed` on the
//! span's compute thread, so batching, queueing and slow servers behave as they would.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use nak_node::engine::{
    Compute, ComputeLoader, EngineConfig, EngineError, LoadedSpan, SessionConfig, SessionId, StepInput, StepOutput,
    StepRequest,
};
use nak_protocol::Activation;
use nak_shard_store::{GgufFile, SpanPosition};

/// How fast a device runs a layer.
#[derive(Debug, Clone, Copy)]
pub struct DeviceProfile {
    /// Time of one layer for a step, whatever its rows. Default 0.5 ms.
    pub per_layer: Duration,
    /// Time of one layer for each row of a step. Default 0.05 ms.
    pub per_row_layer: Duration,
    /// Multiplier of speed (2.0 = twice as fast). Default 1.
    pub speed: f64,
}

impl Default for DeviceProfile {
    fn default() -> Self {
        Self { per_layer: Duration::from_micros(500), per_row_layer: Duration::from_micros(50), speed: 1.0 }
    }
}

impl DeviceProfile {
    /// Time of a step of `rows` rows through `layers` layers.
    pub fn step_time(&self, layers: u32, rows: usize) -> Duration {
        (self.per_layer + self.per_row_layer * rows as u32).mul_f64(layers as f64 / self.speed.max(1e-3))
    }
}

/// Width of the hidden rows the toy model sends (bytes of a state, one per value).
const STATE_VALUES: usize = 8;
/// Token ids below this are control and byte tokens of the synthetic vocabulary.
pub const FIRST_ORDINARY_TOKEN: u32 = 300;

/// splitmix64: a well-mixed 64-bit function (a few arithmetic steps; no crate needed).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// State after `layer` of a row with input `input`, after `previous` at the position before.
fn layer_state(layer: u32, input: u64, previous: u64) -> u64 {
    mix(mix(input ^ (layer as u64).rotate_left(40)) ^ previous)
}

/// The token the head makes of a last-layer state.
fn head_token(state: u64, n_vocab: u32) -> i32 {
    (FIRST_ORDINARY_TOKEN + (state % (n_vocab - FIRST_ORDINARY_TOKEN) as u64) as u32) as i32
}

/// The tokens a failure-free run generates after `prompt` (greedy, `n` tokens).
pub fn reference_tokens(n_layer: u32, n_vocab: u32, prompt: &[i32], n: usize) -> Vec<i32> {
    let mut caches: Vec<u64> = vec![0; n_layer as usize];
    let mut out = Vec::with_capacity(n);
    let feed = |token: i32, caches: &mut Vec<u64>| {
        let mut x = token as u64;
        for (l, prev) in caches.iter_mut().enumerate() {
            x = layer_state(l as u32, x, *prev);
            *prev = x;
        }
        head_token(x, n_vocab)
    };
    let mut next = 0;
    for &t in prompt {
        next = feed(t, &mut caches);
    }
    while out.len() < n {
        out.push(next);
        next = feed(next, &mut caches);
    }
    out
}

struct Session {
    /// Whole-model layers.
    layers: Range<u32>,
    /// Per layer of the session, the state of every cached position.
    states: Vec<Vec<u64>>,
    return_logits: bool,
}

/// A span of the toy model on a modelled device.
pub struct ModelledCompute {
    span: LoadedSpan,
    n_embd: u32,
    n_vocab: u32,
    cfg: EngineConfig,
    profile: DeviceProfile,
    sessions: HashMap<SessionId, Session>,
    next_id: SessionId,
}

fn encode_states(states: &[u64], n_embd: u32) -> Result<Activation, EngineError> {
    let width = n_embd as usize;
    let mut rows = vec![0f32; states.len() * width];
    for (row, s) in rows.chunks_mut(width).zip(states) {
        for (i, byte) in s.to_le_bytes().iter().enumerate() {
            row[i] = *byte as f32;
        }
    }
    Ok(Activation::encode(&rows, n_embd, Default::default())?)
}

/// The states of hidden rows: exact for rows this model made; any other row (a speed
/// probe's made-up input) becomes a hash of its values, so every input has an answer.
fn decode_states(a: &Activation, n_embd: u32) -> Result<Vec<u64>, EngineError> {
    let rows = a.decode(n_embd)?;
    Ok(rows
        .chunks(n_embd as usize)
        .map(|row| {
            let mut bytes = [0u8; STATE_VALUES];
            let exact = row.iter().zip(bytes.iter_mut()).all(|(v, b)| {
                *b = *v as u8;
                (0.0..=255.0).contains(v) && v.fract() == 0.0
            });
            if exact {
                u64::from_le_bytes(bytes)
            } else {
                row.iter().fold(0, |h, v| mix(h ^ v.to_bits() as u64))
            }
        })
        .collect())
}

impl ModelledCompute {
    fn run(&mut self, req: StepRequest) -> Result<(StepOutput, usize), EngineError> {
        let s = self.sessions.get_mut(&req.session).ok_or(EngineError::UnknownSession(req.session))?;
        let takes_tokens = s.layers.start == 0;
        let inputs: Vec<u64> = match (req.input, takes_tokens) {
            (StepInput::Tokens(t), true) => {
                if let Some(bad) = t.iter().find(|&&t| t < 0 || t as u32 >= self.n_vocab) {
                    return Err(EngineError::Input(format!("token id {bad} is outside the vocabulary")));
                }
                t.iter().map(|&t| t as u64).collect()
            }
            (StepInput::Hidden(a), false) => decode_states(&a, self.n_embd)?,
            _ => return Err(EngineError::Input("input kind does not match where the session starts".into())),
        };
        if inputs.is_empty() {
            return Err(EngineError::Input("a step needs at least one row".into()));
        }
        let n_past = s.states.first().map_or(0, Vec::len) as u32;
        let needed = n_past + inputs.len() as u32;
        if needed > self.cfg.ctx_per_session {
            return Err(EngineError::ContextFull { session: req.session, needed, limit: self.cfg.ctx_per_session });
        }
        let rows = inputs.len();
        let mut outs = inputs;
        for (i, layer) in s.layers.clone().enumerate() {
            let cache = &mut s.states[i];
            for x in outs.iter_mut() {
                *x = layer_state(layer, *x, cache.last().copied().unwrap_or(0));
                cache.push(*x);
            }
        }
        let at_head = s.layers.end == self.span.total;
        let out = if !at_head {
            StepOutput::Hidden(encode_states(&outs, self.n_embd)?)
        } else if !req.sample {
            StepOutput::Cached
        } else {
            let token = head_token(*outs.last().unwrap_or(&0), self.n_vocab);
            let logits = if s.return_logits {
                let mut l = vec![0f32; self.n_vocab as usize];
                l[token as usize] = 10.0;
                l
            } else {
                Vec::new()
            };
            StepOutput::Token { token, logits, raw_logits: None }
        };
        Ok((out, rows))
    }
}

impl Compute for ModelledCompute {
    fn span(&self) -> LoadedSpan {
        self.span
    }
    fn n_embd(&self) -> u32 {
        self.n_embd
    }
    fn max_sessions(&self) -> u32 {
        self.cfg.max_sessions
    }
    fn ctx_per_session(&self) -> u32 {
        self.cfg.ctx_per_session
    }
    fn n_sessions(&self) -> usize {
        self.sessions.len()
    }
    fn open_session(&mut self, cfg: SessionConfig) -> Result<SessionId, EngineError> {
        let all = self.span.first..self.span.first + self.span.n_layer;
        let layers = cfg.layers.unwrap_or(all.clone());
        if layers.start >= layers.end || layers.start < all.start || layers.end > all.end {
            return Err(EngineError::Input(format!("session layers {layers:?} are not within the span's {all:?}")));
        }
        if self.sessions.len() >= self.cfg.max_sessions as usize {
            return Err(EngineError::TooManySessions(self.cfg.max_sessions));
        }
        let id = self.next_id;
        self.next_id += 1;
        let states = vec![Vec::new(); layers.len()];
        self.sessions.insert(id, Session { layers, states, return_logits: cfg.return_logits });
        Ok(id)
    }
    fn step(&mut self, session: SessionId, input: StepInput) -> Result<StepOutput, EngineError> {
        self.step_batch(vec![StepRequest::new(session, input)]).pop().unwrap_or(Err(EngineError::NoOutput("result")))
    }
    fn step_batch(&mut self, requests: Vec<StepRequest>) -> Vec<Result<StepOutput, EngineError>> {
        // One batch costs one pass over the layers plus each row's share, as on a device.
        let mut rows = 0;
        let mut layers = 0;
        let results: Vec<_> = requests
            .into_iter()
            .map(|r| {
                let n = self.sessions.get(&r.session).map_or(0, |s| s.layers.len() as u32);
                self.run(r).map(|(out, k)| {
                    rows += k;
                    layers = layers.max(n);
                    out
                })
            })
            .collect();
        std::thread::sleep(crate::clock::dilate(self.profile.step_time(layers, rows)));
        results
    }
    fn close_session(&mut self, session: SessionId) -> Result<(), EngineError> {
        self.sessions.remove(&session).map(|_| ()).ok_or(EngineError::UnknownSession(session))
    }
    fn truncate(&mut self, session: SessionId, n_keep: u32) -> Result<(), EngineError> {
        let s = self.sessions.get_mut(&session).ok_or(EngineError::UnknownSession(session))?;
        for cache in &mut s.states {
            cache.truncate(n_keep as usize);
        }
        Ok(())
    }
}

/// Loads spans as [`ModelledCompute`]s on one device profile.
#[derive(Debug, Clone)]
pub struct ModelledLoader {
    /// The device.
    pub profile: DeviceProfile,
    /// Hidden width of the model (at least 8).
    pub n_embd: u32,
    /// Vocabulary of the model (more than [`FIRST_ORDINARY_TOKEN`]).
    pub n_vocab: u32,
}

impl ComputeLoader for ModelledLoader {
    fn load(&self, span: &Path, cfg: &EngineConfig) -> Result<Box<dyn Compute>, EngineError> {
        if (self.n_embd as usize) < STATE_VALUES || self.n_vocab <= FIRST_ORDINARY_TOKEN {
            return Err(EngineError::Load(format!("the modelled compute needs n_embd ≥ {STATE_VALUES}")));
        }
        // The span file says where it sits, as it does for llama.cpp.
        let file = GgufFile::open(span).map_err(|e| EngineError::Load(e.to_string()))?;
        let p = SpanPosition::of(&file).map_err(|e| EngineError::Load(e.to_string()))?;
        let span = LoadedSpan {
            first: p.first,
            n_layer: p.n_layer,
            total: p.total,
            has_embedding: p.has_embedding,
            has_head: p.has_head,
        };
        Ok(Box::new(ModelledCompute {
            span,
            n_embd: self.n_embd,
            n_vocab: self.n_vocab,
            cfg: cfg.clone(),
            profile: self.profile,
            sessions: HashMap::new(),
            next_id: 1,
        }))
    }
}

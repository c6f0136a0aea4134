//! Replaying a hop's steps on a local copy of its span, to recompute the output hashes
//! it signed.
//!
//! [`replay`] opens a session on the same layers, runs each receipt's input rows in the
//! same shape (a receipt of a newer generation first truncates the cache to its
//! position, as the hop did), and hashes each output as a hop hashes it for its receipt:
//! the hidden state's f32 bytes, or the raw logits a token would be drawn from. On CPU a
//! span is bit-exact whatever the batch or the thread count, so in one execution class
//! an honest hop's hashes come out equal. [`LocalSpans`] holds the span engines an
//! auditor replays on, fetching and assembling spans it lacks.

use std::collections::HashMap;
use std::ops::Range;

use nak_protocol::receipt::{rows_hash, Receipt};
use nak_protocol::{pb, Activation, ActivationDtype};
use nak_shard_store::import::span_blobs;
use nak_shard_store::{cached_span, BlobRole, Manifest, Store};

use super::AuditError;
use crate::engine::{EngineConfig, EngineError, SessionConfig, SpanEngine, StepInput, StepRequest};
use crate::fetch::fetch_blobs;
use crate::inference::output_hash;
use crate::net::NetworkHandle;

/// The output hashes of `receipts`' steps replayed from `inputs` on `engine`, up to and
/// including the first that differs from its receipt's (the rest are not run).
pub fn replay(
    engine: &mut SpanEngine,
    receipts: &[Receipt],
    inputs: &[pb::StepRows],
) -> Result<Vec<[u8; 32]>, EngineError> {
    let Some(first) = receipts.first() else { return Ok(vec![]) };
    let cfg = SessionConfig {
        layers: Some(first.first_layer..first.end_layer),
        raw_logits: true,
        ..SessionConfig::default()
    };
    let session = engine.open_session(cfg)?;
    let result = replay_session(engine, session, receipts, inputs);
    let _ = engine.close_session(session);
    result
}

fn replay_session(
    engine: &mut SpanEngine,
    session: u64,
    receipts: &[Receipt],
    inputs: &[pb::StepRows],
) -> Result<Vec<[u8; 32]>, EngineError> {
    let empty = rows_hash(&[]);
    let mut hashes = Vec::with_capacity(receipts.len());
    let mut generation = first_generation(receipts);
    for (r, rows) in receipts.iter().zip(inputs) {
        if r.generation != generation {
            engine.truncate(session, r.position)?;
            generation = r.generation;
        }
        if engine.session_len(session)? != r.position {
            return Err(EngineError::Input(format!(
                "step {} starts at {}, not where the cache ends",
                r.step, r.position
            )));
        }
        let input = if rows.tokens.is_empty() {
            let width = (rows.hidden.len() / 4 / r.rows.max(1) as usize) as u32;
            StepInput::Hidden(Activation {
                dtype: ActivationDtype::F32,
                n_rows: r.rows,
                width,
                data: rows.hidden.clone(),
            })
        } else {
            StepInput::Tokens(rows.tokens.clone())
        };
        // A hop that only filled its cache signed the hash of nothing; one that drew a token, its logits.
        let sample = r.output_hash != empty;
        let out = engine.step_request(StepRequest { sample, ..StepRequest::new(session, input) })?;
        let hash = output_hash(&out);
        hashes.push(hash);
        if hash != r.output_hash {
            break;
        }
    }
    Ok(hashes)
}

fn first_generation(receipts: &[Receipt]) -> u32 {
    receipts.first().map_or(0, |r| r.generation)
}

/// The index of the first replayed hash that differs from its receipt's.
pub fn first_mismatch(receipts: &[Receipt], replayed: &[[u8; 32]]) -> Option<usize> {
    receipts.iter().zip(replayed).position(|(r, h)| r.output_hash != *h)
}

/// Span engines loaded for replays, by layer range, fetched and assembled on demand.
pub struct LocalSpans {
    store: Store,
    net: NetworkHandle,
    manifest: Manifest,
    cfg: EngineConfig,
    engines: HashMap<(u32, u32), SpanEngine>,
}

/// Span engines kept loaded at once.
const MAX_LOADED: usize = 4;

impl LocalSpans {
    /// Replays of `manifest`'s layers, on engines with `threads` threads, from blobs in
    /// `store` (fetched from the swarm when missing, without providing them).
    pub fn new(store: Store, net: NetworkHandle, manifest: Manifest, threads: i32) -> Self {
        let cfg = EngineConfig { max_sessions: 1, ctx_per_session: 4096, threads, ..EngineConfig::default() };
        Self { store, net, manifest, cfg, engines: HashMap::new() }
    }

    /// The model these spans belong to.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Replays `receipts` from `inputs` (see [`replay`]) on the span of their layers.
    pub async fn replay(&mut self, receipts: &[Receipt], inputs: &[pb::StepRows]) -> Result<Vec<[u8; 32]>, AuditError> {
        let Some(first) = receipts.first() else { return Ok(vec![]) };
        let mut engine = self.take(first.first_layer..first.end_layer).await?;
        let (receipts, inputs) = (receipts.to_vec(), inputs.to_vec());
        let (engine, out) = tokio::task::spawn_blocking(move || {
            let out = replay(&mut engine, &receipts, &inputs);
            (engine, out)
        })
        .await
        .map_err(|e| AuditError::Refused(e.to_string()))?;
        self.engines.insert((engine.span().first, engine.span().first + engine.span().n_layer), engine);
        Ok(out?)
    }

    /// The engine holding exactly `layers`, out of the cache (loaded if needed).
    async fn take(&mut self, layers: Range<u32>) -> Result<SpanEngine, AuditError> {
        let key = (layers.start, layers.end);
        if let Some(engine) = self.engines.remove(&key) {
            return Ok(engine);
        }
        {
            if layers.is_empty() || layers.end > self.manifest.n_layer {
                return Err(AuditError::Refused(format!(
                    "layers {}:{} are not in the model",
                    layers.start, layers.end
                )));
            }
            // Assembling a span reads the manifest from the store.
            self.store.put_manifest(&self.manifest).map_err(|e| AuditError::Refused(e.to_string()))?;
            let mut needed = span_blobs(&self.manifest, &layers);
            needed.extend(self.manifest.blob(BlobRole::Meta, None).cloned());
            fetch_blobs(&self.store, &self.net, self.manifest.model_id(), needed, false, &|_, _| {}).await?;
            let (store, id, cfg) = (self.store.clone(), self.manifest.model_id(), self.cfg.clone());
            let engine = tokio::task::spawn_blocking(move || -> Result<SpanEngine, AuditError> {
                let path = cached_span(&store, &id, layers)?;
                Ok(SpanEngine::load(&path, cfg)?)
            })
            .await
            .map_err(|e| AuditError::Refused(e.to_string()))??;
            if self.engines.len() >= MAX_LOADED {
                self.engines.clear();
            }
            Ok(engine)
        }
    }
}

//! Receipts on the server side: a session opened with `receipts` signs, for every step
//! it computes, a [`Receipt`] of its input and output rows, chained to the previous
//! one, and records the step's input rows for audits ([`AuditRetention`]). Receipts go
//! to the opener on the control stream in signed batches ([`ReceiptSigner::batch`]):
//! every [`RECEIPT_BATCH`] steps, when the session goes quiet, and when it ends, so that
//! verification adds neither a frame nor a signature per token. Steps the cache already held compute nothing
//! and get none.

use std::sync::{Arc, OnceLock};

use ed25519_dalek::SigningKey;
use nak_protocol::pb;
use nak_protocol::receipt::{f32_rows_hash, rows_hash, sign_batch, tokens_hash, Receipt};

use super::retention::{AuditRetention, SessionKey};
use crate::engine::{StepInput, StepOutput};

/// Receipts sent in one frame while a session keeps stepping.
pub(super) const RECEIPT_BATCH: usize = 32;

use pb::inference_frame::Kind;

/// The pinned llama.cpp (the crate that vendors it), part of the execution class.
const LLAMA_CPP_SYS_2: &str = "0.1.161";

/// What makes two results of a span bit-comparable: this build of the node and of
/// llama.cpp, its compute backend and the CPU features its kernels may use. Two hops of
/// one class compute the same bits for the same steps; across classes they may not.
/// Worked out once per process.
pub fn exec_class() -> [u8; 32] {
    static CLASS: OnceLock<[u8; 32]> = OnceLock::new();
    *CLASS.get_or_init(describe_exec_class)
}

fn describe_exec_class() -> [u8; 32] {
    let backend = if cfg!(feature = "cuda") {
        "cuda"
    } else if cfg!(feature = "metal") {
        "metal"
    } else if cfg!(feature = "vulkan") {
        "vulkan"
    } else {
        "cpu"
    };
    let mut features: Vec<&str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        let detected = [
            ("avx", std::arch::is_x86_feature_detected!("avx")),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("f16c", std::arch::is_x86_feature_detected!("f16c")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            ("avx512bw", std::arch::is_x86_feature_detected!("avx512bw")),
            ("avx512vnni", std::arch::is_x86_feature_detected!("avx512vnni")),
        ];
        features.extend(detected.iter().filter(|(_, on)| *on).map(|(name, _)| *name));
    }
    let class = format!(
        "nak-node {} / llama-cpp-sys-2 {} / {} / {} / {}",
        env!("CARGO_PKG_VERSION"),
        LLAMA_CPP_SYS_2,
        std::env::consts::ARCH,
        backend,
        features.join(",")
    );
    *blake3::hash(class.as_bytes()).as_bytes()
}

/// A session's receipt signer: the fields every receipt of the session shares, the
/// chain so far, and the receipts not yet signed and sent.
pub(super) struct ReceiptSigner {
    key: Arc<SigningKey>,
    base: Receipt,
    pending: Vec<Receipt>,
    retention: Arc<AuditRetention>,
    owner: SessionKey,
}

impl ReceiptSigner {
    /// Receipts of session `session_id` of `owner` running `layers` of `model_id`.
    pub(super) fn new(
        key: Arc<SigningKey>,
        model_id: [u8; 32],
        layers: std::ops::Range<u32>,
        owner: SessionKey,
        retention: Arc<AuditRetention>,
    ) -> Self {
        let base = Receipt {
            model_id,
            first_layer: layers.start,
            end_layer: layers.end,
            exec_class: exec_class(),
            session_id: owner.1,
            step: 0,
            generation: 0,
            position: 0,
            rows: 0,
            input_hash: [0; 32],
            output_hash: [0; 32],
            prev: [0; 32],
        };
        Self { key, base, pending: Vec::new(), retention, owner }
    }

    /// Makes the receipt of one computed step with input `rows` (kept for audits); the
    /// next receipt will name this one as its predecessor.
    pub(super) fn record(&mut self, shape: StepShape, rows: pb::StepRows, output_hash: [u8; 32]) {
        let input_hash = match rows.tokens.is_empty() {
            false => tokens_hash(&rows.tokens),
            true => rows_hash(&rows.hidden),
        };
        let receipt = Receipt {
            step: shape.step,
            generation: shape.generation,
            position: shape.position,
            rows: shape.rows,
            input_hash,
            output_hash,
            ..self.base
        };
        self.base.prev = receipt.hash();
        self.pending.push(receipt);
        self.retention.record(self.owner, rows);
    }

    /// The receipts to send now, signed as one batch in one frame: when a batch is full,
    /// or (`flush`) any.
    pub(super) fn batch(&mut self, flush: bool) -> Option<pb::InferenceFrame> {
        let due = self.pending.len() >= RECEIPT_BATCH || (flush && !self.pending.is_empty());
        if !due {
            return None;
        }
        let batch = sign_batch(&std::mem::take(&mut self.pending), &self.key);
        let receipts = pb::Receipts { session_id: self.owner.1, batch: Some(batch) };
        Some(pb::InferenceFrame { kind: Some(Kind::Receipts(receipts)) })
    }

    /// Whether receipts wait to be sent.
    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The session ended: its rows stay for the retention window.
    pub(super) fn end(&self) {
        self.retention.end(self.owner);
    }
}

/// Which step a receipt covers.
#[derive(Debug, Clone, Copy)]
pub(super) struct StepShape {
    pub(super) step: u64,
    pub(super) generation: u32,
    pub(super) position: u32,
    pub(super) rows: u32,
}

/// A step's input rows as computed, as a receipt hashes them and an audit replays them:
/// token ids, or the hidden state's f32 bytes.
pub(super) fn input_rows(input: &StepInput) -> pb::StepRows {
    match input {
        StepInput::Tokens(tokens) => pb::StepRows { tokens: tokens.clone(), ..Default::default() },
        StepInput::Hidden(a) => pb::StepRows { hidden: a.data.clone(), ..Default::default() },
    }
}

/// blake3 of a step's output as computed: the hidden state's f32 bytes, or (the last
/// hop) the raw logits the token was drawn from; for a step that only filled the cache,
/// the hash of nothing.
pub(crate) fn output_hash(output: &StepOutput) -> [u8; 32] {
    match output {
        StepOutput::Hidden(a) => rows_hash(&a.data),
        StepOutput::Token { raw_logits: Some(raw), .. } => f32_rows_hash(raw),
        // Sessions with receipts take no drafts, so no step of theirs samples several rows.
        StepOutput::Token { raw_logits: None, .. } | StepOutput::Cached | StepOutput::Rows(_) => rows_hash(&[]),
    }
}

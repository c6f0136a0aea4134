//! Receipts on the server side: a session opened with `receipts` signs, for every step
//! it computes, a [`Receipt`] of its input and output rows, chained to the previous
//! one, and sends it to its opener on the control stream right after the step's
//! result (or push). Steps the cache already held compute nothing and get none.

use std::sync::{Arc, OnceLock};

use ed25519_dalek::SigningKey;
use nak_protocol::pb;
use nak_protocol::receipt::{rows_hash, tokens_hash, Receipt};

use crate::engine::{StepInput, StepOutput};

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

/// A session's receipt signer: the fields every receipt of the session shares, and the
/// chain so far.
pub(super) struct ReceiptSigner {
    key: Arc<SigningKey>,
    base: Receipt,
}

impl ReceiptSigner {
    /// Receipts of session `session_id` running `layers` of `model_id`.
    pub(super) fn new(key: Arc<SigningKey>, model_id: [u8; 32], layers: std::ops::Range<u32>, session_id: u64) -> Self {
        let base = Receipt {
            model_id,
            first_layer: layers.start,
            end_layer: layers.end,
            exec_class: exec_class(),
            session_id,
            step: 0,
            generation: 0,
            position: 0,
            rows: 0,
            input_hash: [0; 32],
            output_hash: [0; 32],
            prev: [0; 32],
        };
        Self { key, base }
    }

    /// The signed receipt of one computed step, as a frame for the opener; the next
    /// receipt will name this one as its predecessor.
    pub(super) fn sign(&mut self, shape: StepShape, input_hash: [u8; 32], output_hash: [u8; 32]) -> pb::InferenceFrame {
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
        pb::InferenceFrame { kind: Some(Kind::Receipt(receipt.sign(&self.key))) }
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

/// blake3 of a step's input rows as computed: token ids, or the hidden state's f32 bytes.
pub(super) fn input_hash(input: &StepInput) -> [u8; 32] {
    match input {
        StepInput::Tokens(tokens) => tokens_hash(tokens),
        StepInput::Hidden(a) => rows_hash(&a.data),
    }
}

/// blake3 of a step's output as computed: the hidden state's f32 bytes, or (the last
/// hop) the sampled token then the logits it came from; none for a step held already.
pub(super) fn output_hash(output: &StepOutput) -> Option<[u8; 32]> {
    match output {
        StepOutput::Hidden(a) => Some(rows_hash(&a.data)),
        StepOutput::Token { token, logits } => {
            let mut bytes = Vec::with_capacity(4 + logits.len() * 4);
            bytes.extend_from_slice(&token.to_le_bytes());
            bytes.extend(logits.iter().flat_map(|x| x.to_le_bytes()));
            Some(rows_hash(&bytes))
        }
        StepOutput::Cached => None,
    }
}

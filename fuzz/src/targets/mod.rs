//! The fuzz targets: one per decoder that reads bytes from a peer or a user's file.
//!
//! A target takes an input and returns its [`Outcome`]: `Ok` when the decoder accepted it
//! (and the target checked what came out), `Err` with the decoder's reason when it was
//! refused. A property that fails panics; the runner catches it as a finding.

mod node;
mod protocol;
mod store;

use nak_protocol::pb;

pub(crate) use protocol::{key, NOW_MS};
pub use store::{stream_blob, stream_range};

/// What a target made of one input: accepted, or refused with a reason.
pub type Outcome = Result<(), String>;

/// The reason an input was refused, as a decoder gave it.
pub(crate) fn refused(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A fuzz target.
#[derive(Clone, Copy)]
pub struct Target {
    /// Its name, also the name of its corpus folder.
    pub name: &'static str,
    /// Runs one input.
    pub run: fn(&[u8]) -> Outcome,
}

/// Every target, in the order the runner takes them.
pub const TARGETS: &[Target] = &[
    Target { name: "frames", run: protocol::frames },
    Target { name: "inference_stream", run: node::inference_stream },
    Target { name: "inference_frame", run: protocol::message::<pb::InferenceFrame> },
    Target { name: "blob_request", run: node::blob_request },
    Target { name: "blob_response", run: node::blob_response },
    Target { name: "activation", run: protocol::activation },
    Target { name: "announcement", run: protocol::announcement },
    Target { name: "announcement_body", run: protocol::announcement_body },
    Target { name: "receipt", run: protocol::receipt },
    Target { name: "receipts", run: protocol::receipts },
    Target { name: "fraud_proof", run: protocol::fraud_proof },
    Target { name: "fraud_proofs", run: protocol::message::<pb::FraudProofs> },
    Target { name: "gguf", run: store::gguf },
    Target { name: "metadata", run: store::metadata },
    Target { name: "tensor_blob", run: store::tensor_blob },
    Target { name: "manifest", run: store::manifest },
    Target { name: "blob_stream", run: store::blob_stream },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|t| t.name == name).copied()
}

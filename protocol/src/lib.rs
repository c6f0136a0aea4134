//! Nakshatra's wire types: every byte that crosses the network is defined, framed,
//! signed or checked here. No I/O happens here, and nothing here knows libp2p's
//! runtime, the store or llama.cpp; the node does the sending. See the code map in
//! `docs/ARCHITECTURE.md` for where this crate sits.
//!
//! - [`pb`]: the protobuf messages of `proto/nakshatra.proto` (prost), every message
//!   that crosses the network: announcements, blob exchange, inference frames.
//! - [`frame`]: length-delimited frames with a size limit, decoded from partial input.
//! - [`keys`]: DHT keys (sha2-256 multihashes of namespaced strings) and gossip topics.
//! - [`announce`]: signing and checking server announcements (ed25519).
//! - [`activation`]: hidden states between spans (f32 / f16 / bf16 encodings, checked decoding).
//! - [`receipt`]: signed per-step activation receipts (what a hop computed, chained).
//! - [`proof`]: fraud proofs (a hop's own receipts and inputs) and their checks.

pub mod activation;
pub mod announce;
pub mod frame;
pub mod keys;
pub mod proof;
pub mod receipt;

/// Generated protobuf types (package `nakshatra.v1`).
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/nakshatra.v1.rs"));

    /// The code as the schema names it, without the enum's prefix: `NEXT_HOP`.
    impl std::fmt::Display for ErrorCode {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.as_str_name().trim_start_matches("ERROR_CODE_"))
        }
    }
}

pub use activation::{Activation, ActivationDtype, ActivationError};
pub use frame::{FrameCodec, FrameError};

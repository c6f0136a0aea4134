//! Nakshatra's wire types. No I/O happens here.
//!
//! - [`pb`]: the protobuf messages of `proto/nakshatra.proto` (prost), every message
//!   that crosses the network: announcements, blob exchange, inference frames.
//! - [`frame`]: length-delimited frames with a size limit, decoded from partial input.
//! - [`keys`]: DHT keys (sha2-256 multihashes of namespaced strings) and gossip topics.
//! - [`announce`]: signing and checking server announcements (ed25519).
//! - [`activation`]: hidden states between spans (f32 / f16 / bf16 encodings, checked decoding).

pub mod activation;
pub mod announce;
pub mod frame;
pub mod keys;

/// Generated protobuf types (package `nakshatra.v1`).
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/nakshatra.v1.rs"));
}

pub use activation::{Activation, ActivationDtype, ActivationError};
pub use frame::{FrameCodec, FrameError};

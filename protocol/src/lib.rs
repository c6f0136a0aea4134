//! Nakshatra's wire types. No I/O happens here.
//!
//! - [`activation`]: hidden states between spans (f32 / f16 / bf16 encodings, checked decoding).

pub mod activation;

pub use activation::{Activation, ActivationDtype, ActivationError};

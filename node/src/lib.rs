//! The Nakshatra node: a span engine over patched llama.cpp, and local chains of spans.
//!
//! - [`engine`]: load a span GGUF, hold sessions, run batched steps (tokens or hidden
//!   states in; hidden states or logits and a sampled token out).
//! - [`chain`]: several engines run as a pipeline in one process, passing encoded hidden
//!   states, with text generation on top (the `generate` command).
//! - [`net`]: the libp2p network task (DHT providers, gossip announcements, blob exchange).

pub mod bench;
pub mod chain;
pub mod client;
pub mod engine;
pub mod inference;
pub mod net;
pub mod placement;
pub mod reference;
pub mod server;

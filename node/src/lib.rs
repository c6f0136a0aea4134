//! The Nakshatra node: serve a span of a model's layers with llama.cpp, meet other
//! nodes in a libp2p swarm, and route tokens through a chain of spans that equals one
//! llama.cpp process.
//!
//! This crate owns everything that runs on a node; wire types and signing live in
//! `nak_protocol`, model files and the blob store in `nak_shard_store`. The code map,
//! the invariants that hold across modules and where to start reading for each kind of
//! change are in `docs/ARCHITECTURE.md`. In dependency order:
//!
//! - [`engine`]: a span GGUF loaded into patched llama.cpp; sessions, batched steps,
//!   sampling, and the worker thread that batches concurrent sessions.
//! - [`reference`], [`chain`]: the whole model through plain llama-cpp-2, and local
//!   chains of spans in one process (the baseline every chain is compared with).
//! - [`net`]: the libp2p network task that owns the swarm (DHT, gossip, blob exchange,
//!   NAT traversal) and the handle everything else talks to it through.
//! - [`fetch`]: a model's manifest and blobs from the swarm, verified (servers and
//!   clients both use it).
//! - [`inference`]: the server side of `/nakshatra/inference/1`: sessions on long-lived
//!   streams, outputs pushed hop to hop, replays after a failure.
//! - [`placement`]: where a server should sit in the model (pure policy).
//! - [`server`]: a swarm server: gets a span, serves it, announces it, moves it.
//! - [`client`]: routing, sessions through a chain of servers, ring and client-sampled
//!   decoding, and failover.
//! - [`speculative`]: drafting tokens (prompt lookup, a draft model), judging which stand,
//!   and how many to draft a trip; used by client sessions and by a ring's last hop.
//! - [`api`]: an OpenAI-compatible HTTP API on a client's sessions, with the swarm
//!   monitor page.
//! - [`metrics`]: the Prometheus metrics every part counts into.
//! - [`dilation`]: the process-wide time factor simulations stretch every timer by.
//!
//! `client` and `server` do not know each other; both build on `net`, `fetch` and the
//! protocol. The `nak-node` binary (`src/main.rs`, `src/cli/`, `src/bench/`) is a thin
//! command line over this library.

pub mod api;
pub mod audit;
pub mod chain;
pub mod client;
pub mod dilation;
pub mod engine;
pub mod fetch;
pub mod inference;
pub mod metrics;
pub mod net;
pub mod placement;
pub mod reference;
pub mod server;
pub mod speculative;

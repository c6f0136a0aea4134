//! Nakshatra's swarm simulations: many real nodes in one process over a simulated
//! network, measured.
//!
//! Each simulated node runs the node's own code (the network task with Kademlia,
//! gossipsub, identify and ping, and the blob exchange) on a [`transport::SimTransport`]
//! instead of TCP and QUIC: a shared [`transport::SimNet`] delivers every byte after
//! the latency between the two nodes' regions ([`latency`]), limited by each node's
//! uplink, and lets nodes die at once or vanish silently. Everything random comes from
//! the run's seed: keys, regions, arrivals, the workload. Timers are real (libp2p's
//! cannot be paused), so a run is valid only if the host kept up, which [`host`]
//! measures and every [`report::Report`] states; a host too small for a swarm's size
//! runs it slower than real time, every timer stretched alike ([`clock`]).
//!
//! Scenarios: [`dht`] (provider lookups and routing upkeep as the swarm grows);
//! [`churn`]'s `placement`, `routing` and `churn` (servers of one model on the modelled
//! [`compute`], placing themselves, routed through, and replaced under clients' sessions).
//! `nak-sim SCENARIO --nodes N --seed S [--json]` runs one; [`plot`] draws the
//! report's charts from runs' JSON.

pub mod churn;
pub mod clock;
pub mod compute;
pub mod dht;
pub mod host;
pub mod latency;
pub mod node;
pub mod plot;
pub mod report;
pub mod swarm;
pub mod transport;

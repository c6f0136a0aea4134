//! Audits, fraud proofs and bans: what makes a lying server caught, proven and shunned.
//!
//! Receipts (signed by every hop per step, checked live by the client in
//! [`crate::client`]) pin each output to one signer. This module checks that the
//! outputs were right:
//!
//! - [`replay`]: rerun a hop's steps from its input rows on a local copy of its span
//!   ([`LocalSpans`], fetched and assembled on demand) and hash the outputs as the hop
//!   did; on CPU a span is bit-exact, so in one execution class any difference is a lie;
//! - [`auditor`]: the [`Auditor`] picks finished sessions' hops at random, fetches the
//!   rows they retained, replays them, and turns a mismatch into a fraud proof that it
//!   publishes on the model's proof topic; it also checks the proofs others publish or
//!   hold;
//! - [`book`]: [`verify_proof`] (nothing taken on the reporter's word) and the
//!   [`ProofBook`], the verified proofs and the banlist kept in the data directory.

pub mod auditor;
pub mod book;
pub mod replay;

pub use auditor::{fetch_rows, AuditReport, AuditTarget, Auditor, Fraud};
pub use book::{verify_proof, Ban, ProofBook, Verdict};
pub use replay::{first_mismatch, replay, LocalSpans};

/// Errors of audits and proofs.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The span would not run the rows.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// Getting the span failed.
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
    /// Assembling the span failed.
    #[error(transparent)]
    Import(#[from] nak_shard_store::ImportError),
    /// Reading or writing the data directory failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The audit or proof could not go on.
    #[error("{0}")]
    Refused(String),
}

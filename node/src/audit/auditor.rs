//! Audits of finished sessions, and what follows from a proven lie.
//!
//! After a verified session the client hands [`Auditor::audit`] each hop's receipts.
//! Each hop is audited with the audit rate's probability (drawn from the OS's random
//! source, which the servers cannot predict; a peer not yet audited clean
//! [`CLEAN_AUDITS`] times gets [`NEW_PEER_FACTOR`] times the rate). An audit asks the hop
//! for the session's input rows on a new inference stream, checks them against the
//! hop's own signed input hashes, and replays them on a local copy of the span
//! ([`LocalSpans`]). The first output that differs makes a fraud proof: the hop's
//! receipts up to it and their rows. The proof is verified like any other
//! ([`verify_proof`]), kept, its accused banned (in the [`ProofBook`] and the network),
//! and published on the model's proof topic.
//!
//! The same auditor checks the proofs others publish ([`Auditor::check_gossip`]) and
//! asks peers for the proofs they hold when it joins ([`Auditor::learn_from`]), so a
//! node that was not there when a liar was caught still shuns it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use nak_protocol::receipt::{self, Receipt};
use nak_protocol::{keys, pb, proof};
use prost::Message;
use serde::Serialize;

use super::book::{verify_proof, ProofBook, Verdict};
use super::replay::{first_mismatch, LocalSpans};
use super::AuditError;
use crate::inference::{connect, exec_class};
use crate::net::frames::{read_frame, write_frame, MAX_INFERENCE_FRAME};
use crate::net::NetworkHandle;

use pb::inference_frame::Kind;

/// Clean audits after which a peer is audited at the plain rate.
pub const CLEAN_AUDITS: u32 = 3;
/// How much more often a peer with fewer clean audits is audited.
pub const NEW_PEER_FACTOR: f64 = 4.0;
/// Peers asked for their proofs at once.
const PROOF_ASKS_AT_ONCE: usize = 16;
/// Longest wait for a hop's rows.
const ROWS_TIMEOUT: Duration = Duration::from_secs(30);

/// One hop of a finished session, as an audit needs it.
#[derive(Debug, Clone)]
pub struct AuditTarget {
    /// The server.
    pub peer: PeerId,
    /// Where to reach it.
    pub addrs: Vec<Multiaddr>,
    /// The session's id at that server.
    pub session_id: u64,
    /// Its signed receipt batches of the session, in order.
    pub receipts: Vec<pb::SignedReceipts>,
}

/// A lie an audit proved.
#[derive(Debug, Clone, Serialize)]
pub struct Fraud {
    /// The liar.
    pub peer: String,
    /// The step it lied about.
    pub step: u64,
    /// Its layers.
    pub layers: (u32, u32),
    /// The proof's id (hex).
    pub proof: String,
}

/// What the audits of one session found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditReport {
    /// Hops audited (rows fetched and replayed).
    pub audited: u64,
    /// Audited hops in another execution class: compared for information only.
    pub other_class: u64,
    /// Proven lies.
    pub frauds: Vec<Fraud>,
    /// Audits that could not be completed, and why (no proof follows from them).
    pub problems: Vec<String>,
    /// Wall time of the audits, in milliseconds.
    pub ms: f64,
}

/// Audits sessions and handles proofs, for one model.
pub struct Auditor {
    net: NetworkHandle,
    book: Arc<ProofBook>,
    spans: LocalSpans,
    rate: f64,
    clean: HashMap<PeerId, u32>,
}

impl Auditor {
    /// An auditor of `spans`' model, auditing each hop with probability `rate`.
    pub fn new(net: NetworkHandle, book: Arc<ProofBook>, spans: LocalSpans, rate: f64) -> Self {
        Self { net, book, spans, rate: rate.clamp(0.0, 1.0), clean: HashMap::new() }
    }

    /// The proofs and banlist this auditor keeps.
    pub fn book(&self) -> &Arc<ProofBook> {
        &self.book
    }

    fn model_id(&self) -> [u8; 32] {
        self.spans.manifest().model_id().0
    }

    /// The chance that a hop of `peer` is audited.
    pub fn rate_for(&self, peer: &PeerId) -> f64 {
        if self.clean.get(peer).copied().unwrap_or(0) < CLEAN_AUDITS {
            (self.rate * NEW_PEER_FACTOR).min(1.0)
        } else {
            self.rate
        }
    }

    /// Audits the hops of a finished session, each with its audit chance.
    pub async fn audit(&mut self, targets: Vec<AuditTarget>) -> AuditReport {
        let mut report = AuditReport::default();
        let t0 = std::time::Instant::now();
        for t in targets {
            if t.receipts.is_empty() || rand::random::<f64>() >= self.rate_for(&t.peer) {
                continue;
            }
            match self.audit_hop(&t, &mut report).await {
                Ok(()) => {}
                Err(e) => report.problems.push(format!("{}: {e}", t.peer)),
            }
        }
        report.ms = t0.elapsed().as_secs_f64() * 1e3;
        report
    }

    async fn audit_hop(&mut self, t: &AuditTarget, report: &mut AuditReport) -> Result<(), AuditError> {
        let mut receipts: Vec<Receipt> = Vec::new();
        for batch in &t.receipts {
            let batch = receipt::verify_batch(batch, &t.peer.to_bytes())
                .map_err(|e| AuditError::Refused(format!("its receipts: {e}")))?;
            receipts.extend(batch);
        }
        let rows = fetch_rows(&self.net, t).await?;
        if rows.len() != receipts.len() {
            return Err(AuditError::Refused(format!("it sent {} rows for {} receipts", rows.len(), receipts.len())));
        }
        let full = pb::FraudProof {
            accused: t.peer.to_bytes(),
            batches: t.receipts.clone(),
            inputs: rows,
            reporter: self.net.peer_id().to_bytes(),
        };
        proof::check(&full).map_err(|e| AuditError::Refused(format!("its rows or receipts do not hold up: {e}")))?;
        if receipts[0].exec_class != exec_class() {
            report.audited += 1;
            report.other_class += 1;
            return Ok(());
        }
        let replayed = self.spans.replay(&receipts, &full.inputs).await?;
        report.audited += 1;
        let Some(k) = first_mismatch(&receipts, &replayed) else {
            *self.clean.entry(t.peer).or_insert(0) += 1;
            return Ok(());
        };
        // The batches up to the one holding receipt k, and the rows up to k.
        let mut batches = Vec::new();
        let mut covered = 0;
        for batch in &full.batches {
            if covered > k {
                break;
            }
            covered += batch.bodies.len();
            batches.push(batch.clone());
        }
        let proof = pb::FraudProof { batches, inputs: full.inputs[..=k].to_vec(), ..full };
        match self.consider(proof.clone(), None).await {
            Some(fraud) => {
                let data = proof.encode_to_vec();
                if let Err(e) = self.net.publish(keys::proof_topic(&self.model_id()), data).await {
                    tracing::warn!(error = %e, "could not publish a fraud proof (it is kept and served on request)");
                }
                report.frauds.push(fraud);
                Ok(())
            }
            None => Err(AuditError::Refused("its output differed, but the proof did not verify".into())),
        }
    }

    /// Verifies a proof (from `from`, when another peer sent it); a proven one is kept
    /// and its accused banned here and in the network.
    async fn consider(&mut self, proof: pb::FraudProof, from: Option<PeerId>) -> Option<Fraud> {
        match verify_proof(&proof, &mut self.spans).await {
            Verdict::Proven(checked) => match self.book.convict(&proof, &checked) {
                Ok(accused) => {
                    let r = checked.accused_receipt();
                    tracing::warn!(peer = %accused, step = r.step, layers = ?(r.first_layer, r.end_layer), "proven liar banned");
                    let _ = self.net.block(accused).await;
                    Some(Fraud {
                        peer: accused.to_string(),
                        step: r.step,
                        layers: (r.first_layer, r.end_layer),
                        proof: checked.id.iter().map(|b| format!("{b:02x}")).collect(),
                    })
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not keep a verified proof");
                    None
                }
            },
            Verdict::Rejected(why) => {
                if let Some(peer) = from {
                    let n = self.book.blame(peer);
                    tracing::warn!(%peer, wrong_proofs = n, %why, "rejected a fraud proof");
                }
                None
            }
            Verdict::Unchecked(why) => {
                tracing::info!(%why, "cannot check a fraud proof here");
                None
            }
        }
    }

    /// Verifies a proof someone else found; true when it convicted its accused.
    async fn learn(&mut self, proof: pb::FraudProof, from: PeerId) -> bool {
        let known = proof::check(&proof).is_ok_and(|c| self.book.knows(&self.model_id(), &c.id));
        !known && self.consider(proof, Some(from)).await.is_some()
    }

    /// Checks the proofs received on gossip since the last call; returns the convictions.
    pub async fn check_gossip(&mut self) -> usize {
        let Ok(proofs) = self.net.take_proofs().await else { return 0 };
        let mut n = 0;
        for (from, proof) in proofs {
            n += usize::from(self.learn(proof, from).await);
        }
        n
    }

    /// Asks `peers` for the proofs they hold about the model and checks those it does
    /// not know; returns the convictions.
    pub async fn learn_from(&mut self, peers: &[PeerId]) -> usize {
        use futures::StreamExt as _;
        let request = pb::BlobRequest { kind: Some(pb::blob_request::Kind::Proofs(self.model_id().to_vec())) };
        // Asked a few at a time: one after another, a thousand servers take minutes.
        let answers: Vec<_> = futures::stream::iter(peers.iter().copied())
            .map(|peer| {
                let (net, request) = (self.net.clone(), request.clone());
                async move { (peer, net.request(peer, request).await) }
            })
            .buffer_unordered(PROOF_ASKS_AT_ONCE)
            .collect()
            .await;
        let mut n = 0;
        for (peer, answer) in answers {
            let Ok(pb::BlobResponse { result: Some(pb::blob_response::Result::Proofs(bytes)) }) = answer else {
                continue;
            };
            for proof in pb::FraudProofs::decode(bytes.as_slice()).map(|p| p.proofs).unwrap_or_default() {
                n += usize::from(self.learn(proof, peer).await);
            }
        }
        n
    }

    /// Bans, in the network, every peer the book has banned (at start).
    pub async fn enforce_bans(&self) {
        for (peer, _) in self.book.banned() {
            let _ = self.net.block(peer).await;
        }
    }
}

/// The input rows a hop retained of a session, asked for on a new stream (only the
/// session's opener gets them).
pub async fn fetch_rows(net: &NetworkHandle, t: &AuditTarget) -> Result<Vec<pb::StepRows>, AuditError> {
    let mut stream = connect(net, t.peer, &t.addrs).await.map_err(AuditError::Refused)?;
    let request = pb::InferenceFrame { kind: Some(Kind::Audit(pb::AuditRequest { session_id: t.session_id })) };
    let exchange = async {
        write_frame(&mut stream, &request, MAX_INFERENCE_FRAME).await?;
        let mut rows = Vec::new();
        loop {
            match read_frame::<pb::InferenceFrame, _>(&mut stream, MAX_INFERENCE_FRAME).await?.kind {
                Some(Kind::AuditRows(part)) if part.session_id == t.session_id && part.first == rows.len() as u64 => {
                    rows.extend(part.steps);
                    if part.last {
                        return Ok(Ok(rows));
                    }
                }
                Some(Kind::Error(e)) => return Ok(Err(AuditError::Refused(format!("{}: {}", e.code(), e.message)))),
                _ => return Ok(Err(AuditError::Refused("it answered the audit with another frame".into()))),
            }
        }
    };
    match tokio::time::timeout(ROWS_TIMEOUT, exchange).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(AuditError::Io(e)),
        Err(_) => Err(AuditError::Refused(format!("no rows within {} s", ROWS_TIMEOUT.as_secs()))),
    }
}

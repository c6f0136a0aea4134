//! Live checks of a verified session's receipts (`--verify`).
//!
//! Every hop of a session opened with receipts signs one per step it computes and
//! sends it on its control stream. [`ReceiptCheck`] takes each as it comes and checks:
//!
//! - the signature, and that the signer is the hop's peer;
//! - that it is about this session: the model, the hop's layers and session id;
//! - the hop's chain: each receipt names the previous one's hash, so no step of the
//!   record can be dropped or reordered unnoticed;
//! - hop to hop: a hop's input hash equals the output hash of the hop before it (the
//!   one whose layers end where its begin) for the same step shape; the first hop's
//!   input hash equals the hash of the tokens this client fed or the ring brought.
//!
//! A failed check is recorded with the peers it concerns ([`Verification::problems`]);
//! what it proves on its own is limited: a broken signature or chain is the signer's
//! doing, a hop-to-hop mismatch says one of the two lied, not which. Proving who
//! computed wrongly takes an audit that replays the step.

use std::collections::HashMap;

use libp2p::{Multiaddr, PeerId};
use nak_protocol::pb;
use nak_protocol::receipt::{self, Receipt};
use serde::Serialize;

use super::route::RouteHop;
use crate::audit::{AuditTarget, Fraud};

/// The step shape two hops' receipts are matched on: generation, position, rows.
type Shape = (u32, u32, u32);

/// What the receipts of a session showed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verification {
    /// Receipts that passed every check.
    pub receipts_checked: u64,
    /// Hop-to-hop (and client-to-first-hop) hash comparisons that matched.
    pub links_checked: u64,
    /// Hops whose session was audited (rows fetched and replayed).
    pub sessions_audited: u64,
    /// Lies the audits proved.
    pub frauds: Vec<Fraud>,
    /// Wall time the audits took, in milliseconds (fetching rows and replaying).
    pub audit_ms: f64,
    /// What failed, in order.
    pub problems: Vec<ReceiptProblem>,
}

/// A receipt that failed a check.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiptProblem {
    /// The peers it concerns: the signer, or both sides of a hop-to-hop mismatch.
    pub peers: Vec<String>,
    /// The step.
    pub step: u64,
    /// The layers of the (downstream) hop.
    pub layers: (u32, u32),
    /// What failed.
    pub what: String,
}

/// One hop as its receipts must describe it.
struct HopState {
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    start: u32,
    end: u32,
    session_id: u64,
    prev: [u8; 32],
    /// Its receipt batches whose signature verified, in order (what an audit replays).
    signed: Vec<pb::SignedReceipts>,
    /// Generation and end position of the last of them.
    reached: (u32, u32),
}

/// The checks of one session's receipts, across its hops and their replacements.
pub(super) struct ReceiptCheck {
    model_id: [u8; 32],
    hops: HashMap<u64, HopState>,
    /// Output hashes by (end layer, shape), with the peer that signed them.
    outputs: HashMap<(u32, Shape), ([u8; 32], PeerId)>,
    /// Input hashes by (first layer, shape), waiting for the output they must equal.
    inputs: HashMap<(u32, Shape), ([u8; 32], PeerId, u64)>,
    report: Verification,
}

impl ReceiptCheck {
    pub(super) fn new(model_id: [u8; 32]) -> Self {
        Self {
            model_id,
            hops: HashMap::new(),
            outputs: HashMap::new(),
            inputs: HashMap::new(),
            report: Verification::default(),
        }
    }

    /// Expects receipts on control stream `link` from `hop`'s server, for session
    /// `session_id`.
    pub(super) fn expect(&mut self, link: u64, hop: &RouteHop, session_id: u64) {
        let state = HopState {
            peer: hop.peer,
            addrs: hop.addrs.clone(),
            start: hop.start,
            end: hop.end,
            session_id,
            prev: [0; 32],
            signed: Vec::new(),
            reached: (0, 0),
        };
        self.hops.insert(link, state);
    }

    /// Whether every hop of `links` has sent the receipts of its steps up to position
    /// `end` of `generation`.
    pub(super) fn settled(&self, links: &[u64], generation: u32, end: u32) -> bool {
        links.iter().all(|l| self.hops.get(l).is_none_or(|h| h.reached >= (generation, end)))
    }

    /// Every hop's session so far, for audits.
    pub(super) fn targets(&self) -> Vec<AuditTarget> {
        self.hops
            .values()
            .map(|h| AuditTarget {
                peer: h.peer,
                addrs: h.addrs.clone(),
                session_id: h.session_id,
                receipts: h.signed.clone(),
            })
            .collect()
    }

    /// Adds what audits found to the report.
    pub(super) fn audited(&mut self, sessions: u64, frauds: Vec<Fraud>, ms: f64) {
        self.report.sessions_audited += sessions;
        self.report.audit_ms += ms;
        self.report.frauds.extend(frauds);
    }

    /// What the checks found so far.
    pub(super) fn report(&self) -> Verification {
        self.report.clone()
    }

    fn problem(&mut self, peers: &[PeerId], step: u64, layers: (u32, u32), what: impl Into<String>) {
        let what = what.into();
        tracing::warn!(?peers, step, ?layers, %what, "receipt check failed");
        let peers = peers.iter().map(PeerId::to_string).collect();
        self.report.problems.push(ReceiptProblem { peers, step, layers, what });
    }

    /// Checks a signed batch of receipts that came on `link`; `fed` gives the tokens at a
    /// position range when this client knows them (what the first hop must have taken
    /// as input).
    pub(super) fn batch(&mut self, link: u64, signed: &pb::SignedReceipts, fed: impl Fn(u32, u32) -> Option<Vec<i32>>) {
        let Some(hop) = self.hops.get_mut(&link) else { return };
        let (peer, layers) = (hop.peer, (hop.start, hop.end));
        let receipts = match receipt::verify_batch(signed, &peer.to_bytes()) {
            Ok(r) => r,
            Err(e) => return self.problem(&[peer], 0, layers, e.to_string()),
        };
        hop.signed.push(signed.clone());
        for r in receipts {
            let Some(hop) = self.hops.get_mut(&link) else { return };
            let about_us =
                r.model_id == self.model_id && (r.first_layer, r.end_layer) == layers && r.session_id == hop.session_id;
            if !about_us {
                return self.problem(&[peer], r.step, layers, "a receipt about another model, layers or session");
            }
            if r.prev != hop.prev {
                let what = "the receipt chain is broken (a step left out or reordered)";
                return self.problem(&[peer], r.step, layers, what);
            }
            hop.prev = r.hash();
            hop.reached = (r.generation, r.position + r.rows);
            self.report.receipts_checked += 1;
            self.link_check(&r, peer, &fed);
        }
    }

    /// Matches `r` against its neighbours' receipts for the same step shape.
    fn link_check(&mut self, r: &Receipt, peer: PeerId, fed: &impl Fn(u32, u32) -> Option<Vec<i32>>) {
        let shape = (r.generation, r.position, r.rows);
        let layers = (r.first_layer, r.end_layer);
        if r.first_layer == 0 {
            if let Some(tokens) = fed(r.position, r.rows) {
                if receipt::tokens_hash(&tokens) == r.input_hash {
                    self.report.links_checked += 1;
                } else {
                    self.problem(&[peer], r.step, layers, "the first hop signed other input tokens than it was fed");
                }
            }
        } else {
            match self.outputs.get(&(r.first_layer, shape)) {
                Some(&(out, upstream)) => self.compare(out, upstream, r.input_hash, peer, r.step, layers),
                None => {
                    self.inputs.insert((r.first_layer, shape), (r.input_hash, peer, r.step));
                }
            }
        }
        if let Some((input, downstream, step)) = self.inputs.remove(&(r.end_layer, shape)) {
            self.compare(r.output_hash, peer, input, downstream, step, layers);
        }
        self.outputs.insert((r.end_layer, shape), (r.output_hash, peer));
    }

    fn compare(
        &mut self,
        out: [u8; 32],
        upstream: PeerId,
        input: [u8; 32],
        downstream: PeerId,
        step: u64,
        layers: (u32, u32),
    ) {
        if out == input {
            self.report.links_checked += 1;
        } else {
            let what = "a hop's signed input differs from the signed output of the hop before it";
            self.problem(&[upstream, downstream], step, layers, what);
        }
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;
    use nak_protocol::receipt::{rows_hash, sign_batch, tokens_hash};

    use super::*;

    /// A hop's key and peer id.
    fn hop(seed: u8) -> (SigningKey, PeerId) {
        let secret = [seed; 32];
        let key = SigningKey::from_bytes(&secret);
        let keypair = libp2p::identity::Keypair::ed25519_from_bytes(secret).unwrap();
        (key, keypair.public().to_peer_id())
    }

    fn receipt(layers: (u32, u32), session_id: u64, step: u64, input: [u8; 32], output: [u8; 32]) -> Receipt {
        Receipt {
            model_id: [7; 32],
            first_layer: layers.0,
            end_layer: layers.1,
            exec_class: [1; 32],
            session_id,
            step,
            generation: 1,
            position: step as u32,
            rows: 1,
            input_hash: input,
            output_hash: output,
            prev: [0; 32],
        }
    }

    #[test]
    fn honest_receipts_pass_and_each_kind_of_lie_is_named() {
        let (k1, p1) = hop(1);
        let (k2, p2) = hop(2);
        let mut check = ReceiptCheck::new([7; 32]);
        check.expect(10, &route_hop(p1, 0, 5), 100);
        check.expect(20, &route_hop(p2, 5, 9), 200);
        let fed = |at: u32, rows: u32| Some((at..at + rows).map(|p| p as i32 + 40).collect::<Vec<i32>>());
        let hidden = rows_hash(b"hidden rows of step 0");
        let mut first = receipt((0, 5), 100, 0, tokens_hash(&[40]), hidden);
        let second = receipt((5, 9), 200, 0, hidden, rows_hash(b"token"));
        check.batch(20, &sign_batch(&[second], &k2), fed);
        check.batch(10, &sign_batch(&[first], &k1), fed);
        let report = check.report();
        assert_eq!((report.receipts_checked, report.links_checked), (2, 2));
        assert!(report.problems.is_empty(), "{:?}", report.problems);

        // The first hop's next step names the previous receipt; leaving it out breaks the chain.
        let mut skipped = receipt((0, 5), 100, 2, tokens_hash(&[42]), hidden);
        skipped.prev = [0; 32];
        check.batch(10, &sign_batch(&[skipped], &k1), fed);
        // Signed by the other hop's key, on the first hop's stream.
        first.step = 1;
        check.batch(10, &sign_batch(&[first], &k2), fed);
        // A second hop that claims another input than the first hop's output.
        let (mut step1_first, mut step1_second) =
            (receipt((0, 5), 100, 1, tokens_hash(&[41]), hidden), receipt((5, 9), 200, 1, rows_hash(b"x"), hidden));
        step1_first.prev = first_hash(&check, 10);
        step1_second.prev = receipt((5, 9), 200, 0, hidden, rows_hash(b"token")).hash();
        check.batch(10, &sign_batch(&[step1_first], &k1), fed);
        check.batch(20, &sign_batch(&[step1_second], &k2), fed);
        let problems: Vec<String> = check.report().problems.iter().map(|p| p.what.clone()).collect();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("chain is broken"), "{problems:?}");
        assert!(problems[1].contains("another peer"), "{problems:?}");
        assert!(problems[2].contains("differs from the signed output"), "{problems:?}");
        assert_eq!(check.report().problems[2].peers, [p1.to_string(), p2.to_string()]);
    }

    fn route_hop(peer: PeerId, start: u32, end: u32) -> RouteHop {
        RouteHop { peer, addrs: vec![], start, end, expected_s: 0.0 }
    }

    fn first_hash(check: &ReceiptCheck, link: u64) -> [u8; 32] {
        check.hops[&link].prev
    }
}

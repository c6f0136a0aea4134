//! Fraud proofs: evidence that a server signed an output it did not compute.
//!
//! A proof carries the accused's own signed receipt batches of one session, from its
//! first step up to the batch holding the wrong receipt, and the input rows of each
//! receipt up to the wrong one (the last receipt with rows is the one claimed wrong).
//! [`check`] verifies everything that needs no model: every signature is the
//! accused's, the receipts form one chain of one session with consistent step shapes,
//! and each input's hash equals the one the accused signed. What remains, replaying the rows on the same layers in the same
//! execution class and getting another output hash for the last receipt, needs the
//! span; the node does it. Nothing in a proof is taken on the reporter's word.

use crate::pb;
use crate::receipt::{self, rows_hash, tokens_hash, Receipt, ReceiptError};

/// Largest encoded proof accepted (a gossip message, and under the blob exchange's
/// answer limit so a peer can hand it to a newcomer).
pub const MAX_PROOF_BYTES: usize = 3 << 20;
/// Domain of a proof's id.
const ID_DOMAIN: &[u8] = b"nakshatra/fraud-proof/v1\0";

/// Why a proof fails the model-free checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// Its structure is wrong.
    #[error("malformed fraud proof: {0}")]
    Malformed(String),
    /// A receipt batch is not validly signed by the accused.
    #[error("receipt batch {index} of the proof: {error}")]
    Receipt {
        /// Which.
        index: usize,
        /// Why.
        error: ReceiptError,
    },
    /// The receipts are not one chain of one session.
    #[error("receipt {0} of the proof does not follow the one before it")]
    BrokenChain(usize),
    /// An input's hash is not the one the accused signed.
    #[error("the input rows of receipt {0} do not match the accused's signed input hash")]
    RowsMismatch(usize),
}

/// A proof that passed [`check`].
#[derive(Debug, Clone)]
pub struct CheckedProof {
    /// Its id (see [`proof_id`]).
    pub id: [u8; 32],
    /// The accused's binary peer id.
    pub accused: Vec<u8>,
    /// The receipts that have input rows, in order; the last is the one claimed wrong.
    pub receipts: Vec<Receipt>,
}

impl CheckedProof {
    /// The receipt claimed wrong.
    pub fn accused_receipt(&self) -> &Receipt {
        // `check` refuses a proof without receipts.
        &self.receipts[self.receipts.len() - 1]
    }
}

/// A proof's id: the same lie proven by two auditors has one id.
pub fn proof_id(accused: &[u8], wrong: &Receipt) -> [u8; 32] {
    rows_hash(&[ID_DOMAIN, accused, &wrong.to_bytes()].concat())
}

/// blake3 of a step's input rows as its receipt hashes them; the number of rows they
/// hold for a hidden state of `width` floats (tokens: one row each).
pub fn step_rows_hash(rows: &pb::StepRows) -> Result<[u8; 32], ProofError> {
    match (rows.tokens.is_empty(), rows.hidden.is_empty()) {
        (false, true) => Ok(tokens_hash(&rows.tokens)),
        (true, false) => Ok(rows_hash(&rows.hidden)),
        _ => Err(ProofError::Malformed("a step's input is either tokens or a hidden state".into())),
    }
}

/// Checks everything about a proof that needs no model (see the module doc).
pub fn check(proof: &pb::FraudProof) -> Result<CheckedProof, ProofError> {
    let malformed = |m: &str| ProofError::Malformed(m.into());
    let mut receipts: Vec<Receipt> = Vec::new();
    for (index, batch) in proof.batches.iter().enumerate() {
        let batch =
            receipt::verify_batch(batch, &proof.accused).map_err(|error| ProofError::Receipt { index, error })?;
        receipts.extend(batch);
    }
    let last_batch = proof.batches.last().map_or(0, |b| b.bodies.len());
    let n = proof.inputs.len();
    // The claimed-wrong receipt (the last with rows) is in the last batch.
    if n == 0 || n > receipts.len() || n + last_batch <= receipts.len() {
        return Err(malformed("a proof needs rows for its receipts up to one in its last batch"));
    }
    let mut width: Option<usize> = None;
    for (index, r) in receipts.iter().enumerate() {
        let follows = match index.checked_sub(1).map(|i| &receipts[i]) {
            None => r.prev == [0; 32],
            Some(before) => {
                let same = (r.model_id, r.first_layer, r.end_layer, r.exec_class, r.session_id)
                    == (before.model_id, before.first_layer, before.end_layer, before.exec_class, before.session_id);
                let end = before.position.saturating_add(before.rows);
                let shape_follows = if r.generation == before.generation {
                    r.position == end
                } else {
                    r.generation > before.generation && r.position <= end
                };
                r.prev == before.hash() && same && shape_follows
            }
        };
        if !follows {
            return Err(ProofError::BrokenChain(index));
        }
        if r.rows == 0 || r.first_layer >= r.end_layer {
            return Err(malformed("a receipt with no rows or no layers"));
        }
        let Some(rows) = proof.inputs.get(index) else { continue };
        if step_rows_hash(rows)? != r.input_hash {
            return Err(ProofError::RowsMismatch(index));
        }
        if !rows.tokens.is_empty() && rows.tokens.len() != r.rows as usize {
            return Err(malformed("a step's token count differs from its receipt's rows"));
        }
        if !rows.hidden.is_empty() {
            let row_bytes = rows.hidden.len() / r.rows as usize;
            if row_bytes == 0 || !row_bytes.is_multiple_of(4) || row_bytes * r.rows as usize != rows.hidden.len() {
                return Err(malformed("a step's hidden state is not its receipt's rows of f32"));
            }
            if *width.get_or_insert(row_bytes) != row_bytes {
                return Err(malformed("the steps' hidden states differ in width"));
            }
        }
    }
    receipts.truncate(n);
    let id = proof_id(&proof.accused, &receipts[n - 1]);
    Ok(CheckedProof { id, accused: proof.accused.clone(), receipts })
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::announce::peer_id_of_ed25519;
    use crate::receipt::sign_batch;

    /// A two-step session of a hop on layers 3..6: a 2-row prompt, then one token.
    fn proof(key: &SigningKey) -> pb::FraudProof {
        let inputs = vec![
            pb::StepRows {
                hidden: [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect(),
                ..Default::default()
            },
            pb::StepRows { hidden: [5.0f32, 6.0].iter().flat_map(|x| x.to_le_bytes()).collect(), ..Default::default() },
        ];
        let mut prev = [0; 32];
        let mut receipts = Vec::new();
        for (i, rows) in inputs.iter().enumerate() {
            let r = Receipt {
                model_id: [1; 32],
                first_layer: 3,
                end_layer: 6,
                exec_class: [2; 32],
                session_id: 9,
                step: i as u64,
                generation: 1,
                position: if i == 0 { 0 } else { 2 },
                rows: if i == 0 { 2 } else { 1 },
                input_hash: rows_hash(&rows.hidden),
                output_hash: [i as u8; 32],
                prev,
            };
            prev = r.hash();
            receipts.push(r);
        }
        let accused = peer_id_of_ed25519(&key.verifying_key().to_bytes());
        // Two batches: the first step alone, then the second.
        let batches = vec![sign_batch(&receipts[..1], key), sign_batch(&receipts[1..], key)];
        pb::FraudProof { accused, batches, inputs, reporter: vec![] }
    }

    #[test]
    fn a_well_formed_proof_passes_and_each_forgery_is_named() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let good = proof(&key);
        let checked = check(&good).unwrap();
        assert_eq!(checked.receipts.len(), 2);
        assert_eq!(checked.id, proof_id(&good.accused, checked.accused_receipt()));

        // Signed by someone else than the accused.
        let mut p = proof(&SigningKey::from_bytes(&[4; 32]));
        p.accused = good.accused.clone();
        assert!(matches!(check(&p), Err(ProofError::Receipt { index: 0, .. })));
        // Rows that are not what the accused signed.
        let mut p = good.clone();
        p.inputs[1].hidden[0] ^= 1;
        assert_eq!(check(&p).unwrap_err(), ProofError::RowsMismatch(1));
        // A batch left out of the chain.
        let mut p = good.clone();
        p.batches.remove(0);
        p.inputs.remove(0);
        assert_eq!(check(&p).unwrap_err(), ProofError::BrokenChain(0));
        // The claimed-wrong receipt outside the last batch; no rows; an empty proof.
        let mut p = good.clone();
        p.inputs.pop();
        assert!(matches!(check(&p), Err(ProofError::Malformed(_))));
        p.inputs.clear();
        assert!(matches!(check(&p), Err(ProofError::Malformed(_))));
        assert!(matches!(check(&pb::FraudProof::default()), Err(ProofError::Malformed(_))));
        // Claiming the first receipt wrong when both are in one batch: fine.
        let mut p = good.clone();
        let receipts: Vec<Receipt> = checked.receipts.clone();
        p.batches = vec![sign_batch(&receipts, &key)];
        p.inputs.pop();
        assert_eq!(check(&p).unwrap().accused_receipt().step, 0);
    }
}

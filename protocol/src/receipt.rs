//! Signed activation receipts: what a hop says it computed for one step of a session.
//!
//! A server that serves a session with receipts signs, per step it computes, a
//! [`Receipt`]: the model and layers, its execution class (what makes results
//! bit-comparable: llama.cpp build, backend, CPU features), the session, the step's
//! shape (step, generation, cache position, rows), blake3 of the input rows and of the
//! output rows as computed (f32 hidden states, little-endian; token ids as i32), and the
//! hash of its previous receipt in the session, so that steps cannot be dropped from
//! the record unnoticed. The body has one fixed byte layout ([`Receipt::to_bytes`]).
//! Receipts are signed in batches of consecutive steps ([`sign_batch`]): one signature
//! with the server's node identity (Ed25519, the key its peer id is made of) over a
//! domain tag, the count and the bodies, so a signature cannot be replayed as one over
//! anything else, and signing and checking cost one signature per batch, not per token.
//!
//! Hop k's input hash must equal hop k−1's output hash for the same step: with both
//! signatures, a lie about what was computed is pinned to one server.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::announce::peer_id_of_ed25519;
use crate::pb;

/// Bytes prefixed to a batch of receipt bodies before signing.
const DOMAIN: &[u8] = b"nakshatra/receipts/v1\0";
/// Most receipts in one signed batch.
pub const MAX_BATCH: usize = 1024;
/// Length of a receipt body: version, 5 hashes, layers, session, step, shape.
pub const RECEIPT_BYTES: usize = 1 + 32 * 5 + 4 * 2 + 8 * 2 + 4 * 3;

/// Why a receipt was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// The body is not a receipt of this version.
    #[error("malformed receipt: {0}")]
    Malformed(String),
    /// The signature does not verify.
    #[error("bad receipt signature")]
    BadSignature,
    /// A batch with no receipt, or more than [`MAX_BATCH`].
    #[error("a receipt batch of {0} receipts (1 to {MAX_BATCH})")]
    BatchSize(usize),
    /// Signed by a key that is not the expected peer's.
    #[error("receipt signed by another peer's key")]
    WrongSigner,
}

/// blake3 of rows as computed: f32 hidden states or token ids, little-endian.
pub fn rows_hash(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// blake3 of f32 values as little-endian bytes: [`rows_hash`] of their bytes, without
/// copying them all at once.
pub fn f32_rows_hash(values: &[f32]) -> [u8; 32] {
    if cfg!(target_endian = "little") {
        // In memory, f32s on a little-endian machine are their little-endian bytes.
        return rows_hash(bytemuck::cast_slice(values));
    }
    let mut hasher = blake3::Hasher::new();
    for chunk in values.chunks(1024) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
        hasher.update(&bytes);
    }
    *hasher.finalize().as_bytes()
}

/// blake3 of token ids as little-endian i32s (the input of a first hop).
pub fn tokens_hash(tokens: &[i32]) -> [u8; 32] {
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    rows_hash(&bytes)
}

/// One step as a hop signs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The model id.
    pub model_id: [u8; 32],
    /// The whole-model layers this hop ran: `[first_layer, end_layer)`.
    pub first_layer: u32,
    /// End of them.
    pub end_layer: u32,
    /// What makes two results bit-comparable (see [`Receipt`]).
    pub exec_class: [u8; 32],
    /// The session at this server.
    pub session_id: u64,
    /// The client's step number.
    pub step: u64,
    /// The generation (turn) of the step.
    pub generation: u32,
    /// Cache position of the first row computed.
    pub position: u32,
    /// Rows computed.
    pub rows: u32,
    /// blake3 of the input rows.
    pub input_hash: [u8; 32],
    /// blake3 of the output rows (the last hop: the sampled token and its logits).
    pub output_hash: [u8; 32],
    /// [`Receipt::hash`] of the session's previous receipt (zeros for the first).
    pub prev: [u8; 32],
}

impl Receipt {
    /// The canonical body: a version byte, then every field in declaration order
    /// (integers little-endian), [`RECEIPT_BYTES`] long.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECEIPT_BYTES);
        out.push(1);
        out.extend_from_slice(&self.model_id);
        out.extend_from_slice(&self.first_layer.to_le_bytes());
        out.extend_from_slice(&self.end_layer.to_le_bytes());
        out.extend_from_slice(&self.exec_class);
        out.extend_from_slice(&self.session_id.to_le_bytes());
        out.extend_from_slice(&self.step.to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.position.to_le_bytes());
        out.extend_from_slice(&self.rows.to_le_bytes());
        out.extend_from_slice(&self.input_hash);
        out.extend_from_slice(&self.output_hash);
        out.extend_from_slice(&self.prev);
        out
    }

    /// Reads a canonical body.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ReceiptError> {
        if bytes.len() != RECEIPT_BYTES || bytes[0] != 1 {
            return Err(ReceiptError::Malformed(format!("{} bytes, version {:?}", bytes.len(), bytes.first())));
        }
        let mut at = 1;
        let mut take = |n: usize| {
            let s = &bytes[at..at + n];
            at += n;
            s
        };
        let h = |s: &[u8]| <[u8; 32]>::try_from(s).unwrap_or_default();
        let u32_of = |s: &[u8]| u32::from_le_bytes(<[u8; 4]>::try_from(s).unwrap_or_default());
        let u64_of = |s: &[u8]| u64::from_le_bytes(<[u8; 8]>::try_from(s).unwrap_or_default());
        Ok(Receipt {
            model_id: h(take(32)),
            first_layer: u32_of(take(4)),
            end_layer: u32_of(take(4)),
            exec_class: h(take(32)),
            session_id: u64_of(take(8)),
            step: u64_of(take(8)),
            generation: u32_of(take(4)),
            position: u32_of(take(4)),
            rows: u32_of(take(4)),
            input_hash: h(take(32)),
            output_hash: h(take(32)),
            prev: h(take(32)),
        })
    }

    /// The hash a session's next receipt names as `prev`: blake3 of the body.
    pub fn hash(&self) -> [u8; 32] {
        *blake3::hash(&self.to_bytes()).as_bytes()
    }
}

fn signed_message(bodies: &[Vec<u8>]) -> Vec<u8> {
    let mut message = Vec::with_capacity(DOMAIN.len() + 4 + bodies.len() * RECEIPT_BYTES);
    message.extend_from_slice(DOMAIN);
    message.extend_from_slice(&(bodies.len() as u32).to_le_bytes());
    for body in bodies {
        message.extend_from_slice(body);
    }
    message
}

/// Signs consecutive receipts as one batch with the server's identity key.
pub fn sign_batch(receipts: &[Receipt], key: &SigningKey) -> pb::SignedReceipts {
    let bodies: Vec<Vec<u8>> = receipts.iter().map(Receipt::to_bytes).collect();
    let signature = key.sign(&signed_message(&bodies));
    pb::SignedReceipts {
        bodies,
        public_key: key.verifying_key().to_bytes().to_vec(),
        signature: signature.to_bytes().to_vec(),
    }
}

/// Checks a signed batch: its size, every body, the signature (strict Ed25519), and that
/// the key is the one `peer_id` (binary libp2p peer id) is made of. Returns the receipts.
pub fn verify_batch(signed: &pb::SignedReceipts, peer_id: &[u8]) -> Result<Vec<Receipt>, ReceiptError> {
    if signed.bodies.is_empty() || signed.bodies.len() > MAX_BATCH {
        return Err(ReceiptError::BatchSize(signed.bodies.len()));
    }
    let receipts = signed.bodies.iter().map(|b| Receipt::from_bytes(b)).collect::<Result<Vec<_>, _>>()?;
    let key: [u8; 32] = signed.public_key.as_slice().try_into().map_err(|_| ReceiptError::BadSignature)?;
    if peer_id_of_ed25519(&key) != peer_id {
        return Err(ReceiptError::WrongSigner);
    }
    let key = VerifyingKey::from_bytes(&key).map_err(|_| ReceiptError::BadSignature)?;
    let signature = Signature::from_slice(&signed.signature).map_err(|_| ReceiptError::BadSignature)?;
    key.verify_strict(&signed_message(&signed.bodies), &signature).map_err(|_| ReceiptError::BadSignature)?;
    Ok(receipts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt() -> Receipt {
        Receipt {
            model_id: [1; 32],
            first_layer: 10,
            end_layer: 20,
            exec_class: [2; 32],
            session_id: 7,
            step: 3,
            generation: 1,
            position: 40,
            rows: 1,
            input_hash: tokens_hash(&[5, 6]),
            output_hash: rows_hash(&[0; 8]),
            prev: [9; 32],
        }
    }

    #[test]
    fn bodies_round_trip_and_signatures_bind_every_byte_to_the_signer() {
        let key = SigningKey::from_bytes(&[4; 32]);
        let peer = peer_id_of_ed25519(&key.verifying_key().to_bytes());
        let r = receipt();
        let mut next = r;
        next.step += 1;
        assert_eq!(Receipt::from_bytes(&r.to_bytes()), Ok(r));
        let signed = sign_batch(&[r, next], &key);
        assert_eq!(signed.bodies[1].len(), RECEIPT_BYTES);
        assert_eq!(verify_batch(&signed, &peer), Ok(vec![r, next]));
        for (b, i) in [0, 1].into_iter().flat_map(|b| (0..RECEIPT_BYTES).map(move |i| (b, i))) {
            let mut bad = signed.clone();
            bad.bodies[b][i] ^= 1;
            assert!(verify_batch(&bad, &peer).is_err(), "byte {i} of body {b} is not covered");
        }
        let mut dropped = signed.clone();
        dropped.bodies.pop();
        assert_eq!(verify_batch(&dropped, &peer), Err(ReceiptError::BadSignature));
        let other = SigningKey::from_bytes(&[5; 32]);
        let other_peer = peer_id_of_ed25519(&other.verifying_key().to_bytes());
        assert_eq!(verify_batch(&signed, &other_peer), Err(ReceiptError::WrongSigner));
        let mut forged = sign_batch(&[r], &other);
        forged.public_key = signed.public_key.clone();
        assert_eq!(verify_batch(&forged, &peer), Err(ReceiptError::BadSignature));
        assert_eq!(verify_batch(&pb::SignedReceipts::default(), &peer), Err(ReceiptError::BatchSize(0)));
        let mut malformed = signed.clone();
        malformed.bodies[0].pop();
        assert!(matches!(verify_batch(&malformed, &peer), Err(ReceiptError::Malformed(_))));
    }

    #[test]
    fn f32_rows_hash_is_the_hash_of_their_little_endian_bytes() {
        let values = [1.5f32, -0.25, 3e-8];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(f32_rows_hash(&values), rows_hash(&bytes));
    }

    #[test]
    fn a_receipt_chain_changes_with_any_field() {
        let r = receipt();
        let mut next = r;
        next.step += 1;
        assert_ne!(r.hash(), next.hash());
        assert_ne!(tokens_hash(&[1, 2]), tokens_hash(&[2, 1]));
    }
}

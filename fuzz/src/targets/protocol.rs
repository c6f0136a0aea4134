//! Targets for the wire types of `nak-protocol`: frames, every protobuf message a node
//! reads from a peer, hidden states, signed announcements, receipts and fraud proofs.
//!
//! Each target decodes the input and, where it is accepted, checks a property of what
//! came out: re-encoding gives back what was decoded, a hidden state holds exactly its
//! rows of finite values, a signature-checked message was signed by the key it names.
//! Signed messages have a second target that signs the fuzzed body with a known key,
//! so the checks behind the signature see fuzzed data too.

use ed25519_dalek::SigningKey;
use nak_protocol::announce::{self, peer_id_of_ed25519};
use nak_protocol::frame::FrameCodec;
use nak_protocol::receipt::{self, Receipt, RECEIPT_BYTES};
use nak_protocol::{pb, proof, Activation, ActivationDtype};
use prost::Message;

use super::{refused, Outcome};

/// The key fuzzed bodies (and the seeds) are signed with.
pub(crate) fn key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn peer_id() -> Vec<u8> {
    peer_id_of_ed25519(&key().verifying_key().to_bytes())
}

/// Time the announcement targets check ages against.
pub(crate) const NOW_MS: u64 = 1_800_000_000_000;

/// Decodes a protobuf message; if accepted, its encoding decodes to the same encoding.
pub fn message<M: Message + Default>(data: &[u8]) -> Outcome {
    let m = M::decode(data).map_err(refused)?;
    let bytes = m.encode_to_vec();
    let again = M::decode(bytes.as_slice()).map_err(|e| format!("a re-encoded message no longer decodes: {e}"));
    assert_eq!(again.map(|m| m.encode_to_vec()), Ok(bytes), "decode∘encode is not a fixed point");
    Ok(())
}

/// A stream of inference frames as a session's reader takes them from the front of its
/// buffer: each frame's length is checked before its body, and a frame decoded from a
/// buffer is decoded the same from any longer one.
pub fn frames(data: &[u8]) -> Outcome {
    let codec = FrameCodec::new(64 << 10);
    let mut rest = data;
    while !rest.is_empty() {
        let Some((frame, used)) = codec.decode::<pb::InferenceFrame>(rest).map_err(refused)? else {
            return Err("a truncated frame".into());
        };
        assert!(used > 0 && used <= rest.len(), "a frame of {used} bytes from {} bytes", rest.len());
        assert_eq!(
            codec.decode::<pb::InferenceFrame>(&rest[..used - 1]).ok().flatten(),
            None,
            "a frame before its end"
        );
        let again = codec.encode(&frame).map_err(|e| format!("a decoded frame no longer encodes: {e}"))?;
        let (decoded, _) = codec.decode::<pb::InferenceFrame>(&again).ok().flatten().expect("an encoded frame decodes");
        assert_eq!(decoded.encode_to_vec(), frame.encode_to_vec());
        rest = &rest[used..];
    }
    Ok(())
}

/// A hidden state as a hop receives it: its frame, then its rows at the width it expects.
pub fn activation(data: &[u8]) -> Outcome {
    let a = Activation::from_bytes(data).map_err(refused)?;
    assert_eq!(a.to_bytes(), data, "a hidden state's frame does not round-trip");
    let values = a.decode(a.width).map_err(refused)?;
    assert_eq!(values.len(), a.n_rows as usize * a.width as usize);
    assert!(values.iter().all(|v| v.is_finite()), "a decoded hidden state holds a non-finite value");
    // Finite values of every encoding convert to f32 and back without loss.
    let again = Activation::encode(&values, a.width, a.dtype).map_err(|e| format!("re-encoding failed: {e}"))?;
    assert_eq!(again, a, "a hidden state changed through decode and encode");
    let half = Activation::encode(&values, a.width, ActivationDtype::F16);
    assert!(half.is_ok() || values.iter().any(|v| v.abs() > 65_504.0), "f16 refused values within its range");
    Ok(())
}

/// A signed announcement as gossip delivers it.
pub fn announcement(data: &[u8]) -> Outcome {
    let ann = announce::verify(data, NOW_MS, 60_000).map_err(refused)?;
    let signed = pb::SignedAnnouncement::decode(data).expect("a verified announcement decodes");
    assert_eq!(ann.peer_id, peer_id_of_ed25519(signed.public_key.as_slice().try_into().expect("a 32-byte key")));
    Ok(())
}

/// An announcement body, signed with a known key, so its checks see fuzzed fields.
pub fn announcement_body(data: &[u8]) -> Outcome {
    let mut ann = pb::ServerAnnouncement::decode(data).map_err(refused)?;
    // Half the inputs get their signer's peer id, so the later checks run.
    if data.first().is_some_and(|b| b & 1 == 0) {
        ann.peer_id = peer_id();
    }
    let signed = announce::sign(&key(), &ann).encode_to_vec();
    let checked = announce::verify(&signed, NOW_MS, 60_000).map_err(refused)?;
    assert_eq!(checked, ann, "a verified announcement differs from what was signed");
    assert!(checked.first_layer < checked.end_layer && checked.model_id.len() == 32);
    assert!(checked.block_throughput.is_finite() && checked.block_throughput >= 0.0);
    Ok(())
}

/// A receipt's canonical body.
pub fn receipt(data: &[u8]) -> Outcome {
    let r = Receipt::from_bytes(data).map_err(refused)?;
    assert_eq!(data.len(), RECEIPT_BYTES);
    assert_eq!(r.to_bytes(), data, "a receipt does not round-trip");
    Ok(())
}

/// A signed receipt batch as a hop streams it.
pub fn receipts(data: &[u8]) -> Outcome {
    let signed = pb::SignedReceipts::decode(data).map_err(refused)?;
    let checked = receipt::verify_batch(&signed, &peer_id()).map_err(refused)?;
    assert_eq!(checked.len(), signed.bodies.len());
    Ok(())
}

/// A fraud proof as gossip delivers it, every batch signed again by the accused's key.
pub fn fraud_proof(data: &[u8]) -> Outcome {
    if data.len() > proof::MAX_PROOF_BYTES {
        return Err("over the proof size limit".into());
    }
    let mut p = pb::FraudProof::decode(data).map_err(refused)?;
    p.accused = peer_id();
    for batch in &mut p.batches {
        let bodies: Result<Vec<Receipt>, _> = batch.bodies.iter().map(|b| Receipt::from_bytes(b)).collect();
        if let Ok(bodies) = bodies.as_deref() {
            if !bodies.is_empty() && bodies.len() <= receipt::MAX_BATCH {
                *batch = receipt::sign_batch(bodies, &key());
            }
        }
    }
    let checked = proof::check(&p).map_err(refused)?;
    assert_eq!(checked.accused, p.accused);
    assert!(!checked.receipts.is_empty() && checked.receipts.len() == p.inputs.len());
    let last = checked.accused_receipt();
    assert_eq!(checked.id, proof::proof_id(&p.accused, last), "a proof's id is not its accused receipt's");
    Ok(())
}

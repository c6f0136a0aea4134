//! Signed server announcements.
//!
//! A server signs its [`pb::ServerAnnouncement`] with its node identity (an Ed25519
//! key, the same key its libp2p peer id is made from). A receiver checks, in order:
//! the frame's size, the signature over a domain tag and the exact announcement bytes,
//! that the peer id inside is the peer id of the signing key (so nobody can announce
//! for someone else), that the announcement is fresh, and that its layer range makes
//! sense. Anything else is rejected with a reason the node logs.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use prost::Message;

use crate::pb;

/// Bytes prefixed to an announcement before signing, so the signature cannot be replayed
/// as a signature over anything else.
const DOMAIN: &[u8] = b"nakshatra/announcement/v1\0";

/// Largest encoded [`pb::SignedAnnouncement`] accepted: 64 KiB.
pub const MAX_ANNOUNCEMENT_BYTES: usize = 64 << 10;

/// Why an announcement was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnounceError {
    /// Over the size limit.
    #[error("announcement of {0} bytes is over the limit")]
    TooLarge(usize),
    /// Not a valid message.
    #[error("malformed announcement: {0}")]
    Malformed(String),
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// Signed by a key that is not the announcing peer's.
    #[error("signed by another peer's key")]
    WrongSigner,
    /// Too old, or dated in the future.
    #[error("stale or future-dated announcement ({age_ms} ms old)")]
    Stale {
        /// Age (negative when in the future).
        age_ms: i64,
    },
    /// The content makes no sense (empty layer range, bad model id).
    #[error("invalid announcement: {0}")]
    Invalid(String),
}

/// The libp2p peer id (binary) of an Ed25519 public key: the identity multihash of the
/// key's protobuf encoding (`KeyType = Ed25519`, `Data = key`), as libp2p computes it.
pub fn peer_id_of_ed25519(public_key: &[u8; 32]) -> Vec<u8> {
    let mut encoded = Vec::with_capacity(36);
    encoded.extend_from_slice(&[0x08, 0x01, 0x12, 0x20]);
    encoded.extend_from_slice(public_key);
    let mut out = Vec::with_capacity(38);
    out.push(0x00); // identity multihash
    out.push(encoded.len() as u8);
    out.extend_from_slice(&encoded);
    out
}

/// Milliseconds since the Unix epoch: the clock announcements are dated and checked by.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Signs an announcement with the node's identity key.
pub fn sign(key: &SigningKey, announcement: &pb::ServerAnnouncement) -> pb::SignedAnnouncement {
    let payload = announcement.encode_to_vec();
    let signature = key.sign(&signed_bytes(&payload));
    pb::SignedAnnouncement {
        announcement: payload,
        public_key: key.verifying_key().to_bytes().to_vec(),
        signature: signature.to_bytes().to_vec(),
    }
}

fn signed_bytes(payload: &[u8]) -> Vec<u8> {
    [DOMAIN, payload].concat()
}

/// Checks a received announcement (encoded `SignedAnnouncement` bytes) at time `now_ms`,
/// accepting ages up to `max_age_ms` (and clocks up to `max_age_ms / 4` ahead).
pub fn verify(bytes: &[u8], now_ms: u64, max_age_ms: u64) -> Result<pb::ServerAnnouncement, AnnounceError> {
    if bytes.len() > MAX_ANNOUNCEMENT_BYTES {
        return Err(AnnounceError::TooLarge(bytes.len()));
    }
    let signed = pb::SignedAnnouncement::decode(bytes).map_err(|e| AnnounceError::Malformed(e.to_string()))?;
    let key_bytes: [u8; 32] = signed.public_key.as_slice().try_into().map_err(|_| AnnounceError::BadSignature)?;
    let sig_bytes: [u8; 64] = signed.signature.as_slice().try_into().map_err(|_| AnnounceError::BadSignature)?;
    let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| AnnounceError::BadSignature)?;
    key.verify(&signed_bytes(&signed.announcement), &Signature::from_bytes(&sig_bytes))
        .map_err(|_| AnnounceError::BadSignature)?;
    let ann = pb::ServerAnnouncement::decode(signed.announcement.as_slice())
        .map_err(|e| AnnounceError::Malformed(e.to_string()))?;
    if ann.peer_id != peer_id_of_ed25519(&key_bytes) {
        return Err(AnnounceError::WrongSigner);
    }
    let age_ms = now_ms as i64 - ann.timestamp_ms as i64;
    if age_ms > max_age_ms as i64 || -age_ms > (max_age_ms / 4) as i64 {
        return Err(AnnounceError::Stale { age_ms });
    }
    if ann.model_id.len() != 32 {
        return Err(AnnounceError::Invalid("model id is not 32 bytes".into()));
    }
    if ann.first_layer >= ann.end_layer {
        return Err(AnnounceError::Invalid(format!("empty layer range {}..{}", ann.first_layer, ann.end_layer)));
    }
    if !ann.block_throughput.is_finite() || ann.block_throughput < 0.0 {
        return Err(AnnounceError::Invalid("throughput is not a finite, non-negative number".into()));
    }
    if !matches!(ann.draft_vocab.len(), 0 | 32) {
        return Err(AnnounceError::Invalid("draft vocabulary digest is neither empty nor 32 bytes".into()));
    }
    Ok(ann)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn announcement(key: &SigningKey, now: u64) -> pb::ServerAnnouncement {
        pb::ServerAnnouncement {
            peer_id: peer_id_of_ed25519(&key.verifying_key().to_bytes()),
            model_id: vec![7; 32],
            first_layer: 0,
            end_layer: 15,
            block_throughput: 120.0,
            free_sessions: 3,
            version: "0.1.0".into(),
            addrs: vec![],
            timestamp_ms: now,
            sequence: 1,
            draft_vocab: vec![9; 32],
            ..Default::default()
        }
    }

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn peer_ids_match_libp2p() {
        for seed in [1u8, 2, 200] {
            let k = key(seed);
            let secret = libp2p_identity::ed25519::SecretKey::try_from_bytes([seed; 32]).unwrap();
            let public = libp2p_identity::ed25519::Keypair::from(secret).public();
            assert_eq!(public.to_bytes(), k.verifying_key().to_bytes());
            let peer = libp2p_identity::PeerId::from_public_key(&libp2p_identity::PublicKey::from(public));
            assert_eq!(peer.to_bytes(), peer_id_of_ed25519(&k.verifying_key().to_bytes()));
        }
    }

    #[test]
    fn a_signed_announcement_verifies() {
        let k = key(1);
        let signed = sign(&k, &announcement(&k, NOW));
        let ann = verify(&signed.encode_to_vec(), NOW + 1000, 60_000).unwrap();
        assert_eq!((ann.end_layer, ann.draft_vocab.len()), (15, 32));
    }

    #[test]
    fn forgeries_are_rejected() {
        let (k, other) = (key(1), key(2));
        // Tampered content.
        let mut signed = sign(&k, &announcement(&k, NOW));
        let last = signed.announcement.len() - 1;
        signed.announcement[last] ^= 1;
        assert_eq!(verify(&signed.encode_to_vec(), NOW, 60_000), Err(AnnounceError::BadSignature));
        // Signed by another peer, claiming k's peer id.
        let forged = sign(&other, &announcement(&k, NOW));
        assert_eq!(verify(&forged.encode_to_vec(), NOW, 60_000), Err(AnnounceError::WrongSigner));
        // A valid signature moved onto another key.
        let mut swapped = sign(&k, &announcement(&k, NOW));
        swapped.public_key = other.verifying_key().to_bytes().to_vec();
        assert_eq!(verify(&swapped.encode_to_vec(), NOW, 60_000), Err(AnnounceError::BadSignature));
        // Stale and future-dated.
        let old = sign(&k, &announcement(&k, NOW - 120_000));
        assert!(matches!(verify(&old.encode_to_vec(), NOW, 60_000), Err(AnnounceError::Stale { .. })));
        let future = sign(&k, &announcement(&k, NOW + 60_000));
        assert!(matches!(verify(&future.encode_to_vec(), NOW, 60_000), Err(AnnounceError::Stale { .. })));
        // Nonsense content, validly signed.
        let mut empty = announcement(&k, NOW);
        empty.end_layer = 0;
        assert!(matches!(verify(&sign(&k, &empty).encode_to_vec(), NOW, 60_000), Err(AnnounceError::Invalid(_))));
        let mut short_digest = announcement(&k, NOW);
        short_digest.draft_vocab = vec![1; 31];
        let signed = sign(&k, &short_digest).encode_to_vec();
        assert!(matches!(verify(&signed, NOW, 60_000), Err(AnnounceError::Invalid(_))));
        // Oversized and garbage.
        assert!(matches!(verify(&vec![0u8; MAX_ANNOUNCEMENT_BYTES + 1], NOW, 60_000), Err(AnnounceError::TooLarge(_))));
        assert!(verify(&[0xff, 0x01, 0x02], NOW, 60_000).is_err());
    }
}

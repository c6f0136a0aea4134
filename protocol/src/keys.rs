//! DHT keys and gossip topics.
//!
//! Provider records are keyed by the sha2-256 multihash of a namespaced string, so any
//! libp2p implementation can compute and read them:
//!
//! - `nakshatra/blob/<blob hash hex>`: who holds a blob (a block's blob only while the
//!   holder does not serve that block);
//! - `nakshatra/manifest/<model id hex>`: who holds a model's manifest;
//! - `nakshatra/block/<model id hex>/<layer>`: who serves a block of a model, and so
//!   holds the block's blobs.
//!
//! Server announcements for a model travel on the gossipsub topic
//! `nakshatra/model/<model id hex>/announce`.

use sha2::{Digest, Sha256};

/// Multihash code of sha2-256.
const SHA2_256: u8 = 0x12;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha2-256 multihash (code, length, digest) of `text`.
pub fn multihash_sha256(text: &str) -> Vec<u8> {
    let digest = Sha256::digest(text.as_bytes());
    let mut out = Vec::with_capacity(34);
    out.push(SHA2_256);
    out.push(32);
    out.extend_from_slice(&digest);
    out
}

/// Key of the providers of a blob.
pub fn blob_key(blob_hash: &[u8; 32]) -> Vec<u8> {
    multihash_sha256(&format!("nakshatra/blob/{}", hex(blob_hash)))
}

/// Key of the providers of a model's manifest.
pub fn manifest_key(model_id: &[u8; 32]) -> Vec<u8> {
    multihash_sha256(&format!("nakshatra/manifest/{}", hex(model_id)))
}

/// Key of the servers of block `layer` of a model.
pub fn block_key(model_id: &[u8; 32], layer: u32) -> Vec<u8> {
    multihash_sha256(&format!("nakshatra/block/{}/{layer}", hex(model_id)))
}

/// Gossipsub topic of a model's server announcements.
pub fn announce_topic(model_id: &[u8; 32]) -> String {
    format!("nakshatra/model/{}/announce", hex(model_id))
}

/// Gossipsub topic of a model's fraud proofs.
pub fn proof_topic(model_id: &[u8; 32]) -> String {
    format!("nakshatra/model/{}/proofs", hex(model_id))
}

/// Whether `topic` is a fraud-proof topic.
pub fn is_proof_topic(topic: &str) -> bool {
    topic.starts_with("nakshatra/model/") && topic.ends_with("/proofs")
}

/// The model id of an announcement topic, if `topic` is one.
pub fn model_of_topic(topic: &str) -> Option<[u8; 32]> {
    let hex_id = topic.strip_prefix("nakshatra/model/")?.strip_suffix("/announce")?;
    if hex_id.len() != 64 || !hex_id.is_ascii() {
        return None;
    }
    let mut id = [0u8; 32];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex_id[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_topics_give_back_their_model() {
        let id = [0x5c; 32];
        assert_eq!(model_of_topic(&announce_topic(&id)), Some(id));
        for bad in [
            "nakshatra/model/5c/announce",
            "other",
            "nakshatra/model/zz5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c/announce",
        ] {
            assert_eq!(model_of_topic(bad), None, "{bad}");
        }
        let multibyte = format!("nakshatra/model/{}é/announce", "0".repeat(62));
        assert_eq!(model_of_topic(&multibyte), None);
    }

    #[test]
    fn keys_are_sha256_multihashes_of_namespaced_strings() {
        let id = [0xab; 32];
        let k = block_key(&id, 7);
        assert_eq!(&k[..2], &[0x12, 0x20]);
        assert_eq!(k.len(), 34);
        let text = format!("nakshatra/block/{}/7", "ab".repeat(32));
        assert_eq!(&k[2..], Sha256::digest(text.as_bytes()).as_slice());
        assert_ne!(block_key(&id, 7), block_key(&id, 8));
        assert_ne!(blob_key(&id), manifest_key(&id));
        // The empty string's sha-256, a fixed point anyone can check.
        assert_eq!(hex(&multihash_sha256("")[2..]), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert!(announce_topic(&id).starts_with("nakshatra/model/abab"));
    }
}

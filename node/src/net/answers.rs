//! Answers to the blob requests a peer sends: ranges of blobs (verified streams),
//! manifests and the fraud proofs kept, read from the local store. The network task
//! hands each request to a blocking thread that calls [`answer`] (a peer asking for its
//! announcement is answered by the task itself, which holds it).

use nak_protocol::pb;
use nak_shard_store::transfer::{BlobProvider, ChunkNum, ChunkRanges, ProviderError, StoreProvider};
use nak_shard_store::Hash;
use prost::Message;

/// Answers one blob request from the local store.
pub(super) fn answer(provider: &StoreProvider, request: pb::BlobRequest) -> pb::BlobResponse {
    use pb::blob_request::Kind;
    use pb::blob_response::Result as R;
    let result = match request.kind {
        Some(Kind::Range(r)) => match <[u8; 32]>::try_from(r.hash.as_slice()) {
            Ok(hash) => {
                let mut ranges = ChunkRanges::empty();
                for range in r.ranges.iter().take(1024) {
                    if range.start < range.end {
                        ranges |= ChunkRanges::from(ChunkNum(range.start)..ChunkNum(range.end));
                    }
                }
                match provider.fetch(&Hash(hash), r.size, &ranges) {
                    Ok(encoded) => R::Encoded(encoded),
                    Err(ProviderError::NotFound) => R::NotFound(pb::NotFound {}),
                    Err(ProviderError::Unavailable(e)) => R::Error(e),
                }
            }
            Err(_) => R::Error("blob hash must be 32 bytes".into()),
        },
        Some(Kind::Manifest(id)) => match <[u8; 32]>::try_from(id.as_slice()) {
            Ok(id) => match provider.store().manifest(&Hash(id)) {
                Ok(m) => R::Manifest(m.canonical_bytes()),
                Err(_) => R::NotFound(pb::NotFound {}),
            },
            Err(_) => R::Error("model id must be 32 bytes".into()),
        },
        Some(Kind::Proofs(id)) => match <[u8; 32]>::try_from(id.as_slice()) {
            Ok(id) => R::Proofs(stored_proofs(&super::proofs_dir(provider.store().root(), &id)).encode_to_vec()),
            Err(_) => R::Error("model id must be 32 bytes".into()),
        },
        // Answered by the network task itself, which holds the announcements.
        Some(Kind::Announcement(_)) => R::NotFound(pb::NotFound {}),
        None => R::Error("empty request".into()),
    };
    pb::BlobResponse { result: Some(result) }
}

/// Most bytes of proofs in one answer (under the blob codec's response limit).
const PROOFS_ANSWER_BYTES: usize = 3 << 20;

/// The fraud proofs stored in `dir` (each file one encoded proof), as many as fit in
/// one answer.
fn stored_proofs(dir: &std::path::Path) -> pb::FraudProofs {
    let mut out = pb::FraudProofs::default();
    let mut bytes = 0;
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let Ok(data) = std::fs::read(entry.path()) else { continue };
        if bytes + data.len() > PROOFS_ANSWER_BYTES {
            break;
        }
        if let Ok(p) = pb::FraudProof::decode(data.as_slice()) {
            bytes += data.len();
            out.proofs.push(p);
        }
    }
    out
}

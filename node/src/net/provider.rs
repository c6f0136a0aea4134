//! A remote peer as a [`BlobProvider`]: verified blob fetches over `/nakshatra/blobs/1`.

use libp2p::PeerId;
use nak_protocol::pb;
use nak_shard_store::transfer::{BlobProvider, ChunkRanges, ProviderError};
use nak_shard_store::Hash;

use super::NetworkHandle;

/// Fetches blob ranges from one peer. Its calls block: use it from the fetch's worker
/// threads (e.g. inside `spawn_blocking`), never on the async runtime.
pub struct RemoteProvider {
    handle: NetworkHandle,
    peer: PeerId,
}

impl RemoteProvider {
    /// A provider for `peer`, reached through `handle`.
    pub fn new(handle: NetworkHandle, peer: PeerId) -> Self {
        Self { handle, peer }
    }
}

impl BlobProvider for RemoteProvider {
    fn name(&self) -> String {
        self.peer.to_string()
    }

    fn fetch(&self, hash: &Hash, size: u64, ranges: &ChunkRanges) -> Result<Vec<u8>, ProviderError> {
        // A range set is its boundaries: start, end, start, end...; an odd last one runs to the end.
        let bounds = ranges.boundaries();
        let total_chunks = size.div_ceil(1024);
        let ranges = bounds
            .chunks(2)
            .map(|pair| pb::ChunkRange { start: pair[0].0, end: pair.get(1).map_or(total_chunks, |e| e.0) })
            .collect();
        let req = pb::BlobRequest {
            kind: Some(pb::blob_request::Kind::Range(pb::BlobRangeRequest { hash: hash.0.to_vec(), size, ranges })),
        };
        match self.handle.request_blocking(self.peer, req) {
            Ok(pb::BlobResponse { result: Some(pb::blob_response::Result::Encoded(bytes)) }) => Ok(bytes),
            Ok(pb::BlobResponse { result: Some(pb::blob_response::Result::NotFound(_)) }) => {
                Err(ProviderError::NotFound)
            }
            Ok(_) => {
                Err(ProviderError::Unavailable("the provider answered with something other than blob data".into()))
            }
            Err(e) => Err(ProviderError::Unavailable(e.to_string())),
        }
    }
}

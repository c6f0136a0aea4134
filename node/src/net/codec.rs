//! The blob-exchange protocol's codec: one size-limited protobuf frame each way.
//!
//! Requests are small; responses carry up to a piece of verified-streaming data. Both
//! directions read the varint length first and refuse a frame over the limit before
//! reading its body, so a peer cannot make us buffer more than the limit.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{AsyncRead, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use nak_protocol::pb;
use prost::Message;

use super::frames::{self, read_frame};

/// Protocol name of blob exchange.
pub const BLOB_PROTOCOL: StreamProtocol = StreamProtocol::new("/nakshatra/blobs/1");

/// Largest request frame: 64 KiB.
pub const MAX_REQUEST: usize = 64 << 10;

/// Codec of `/nakshatra/blobs/1`.
#[derive(Debug, Clone)]
pub struct BlobCodec {
    /// Largest response frame accepted.
    pub max_response: usize,
    /// Frames refused as oversized or malformed, shared by every clone. libp2p's
    /// request-response does not report a request that fails to read, so we count here.
    refused: Arc<AtomicU64>,
}

impl Default for BlobCodec {
    fn default() -> Self {
        // A 1 MiB piece plus its proof and framing.
        Self { max_response: 4 << 20, refused: Arc::default() }
    }
}

impl BlobCodec {
    /// Frames refused so far, in either direction.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Logs and counts a frame we refuse; other errors (a peer hanging up) pass quietly.
    fn note<M>(&self, what: &str, r: io::Result<M>) -> io::Result<M> {
        if let Err(e) = &r {
            if e.kind() == io::ErrorKind::InvalidData {
                tracing::warn!(error = %e, "refused a blob {what} frame");
                self.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        r
    }
}

async fn write_frame<M: Message, T: AsyncWrite + Unpin + Send>(io: &mut T, msg: &M, max: usize) -> io::Result<()> {
    frames::write_frame(io, msg, max).await?;
    io.close().await
}

impl libp2p::request_response::Codec for BlobCodec {
    type Protocol = StreamProtocol;
    type Request = pb::BlobRequest;
    type Response = pb::BlobResponse;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Self::Request> {
        self.note("request", read_frame(io, MAX_REQUEST).await)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Self::Response> {
        self.note("response", read_frame(io, self.max_response).await)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Self::Request,
    ) -> io::Result<()> {
        write_frame(io, &req, MAX_REQUEST).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Self::Response,
    ) -> io::Result<()> {
        write_frame(io, &res, self.max_response).await
    }
}

//! The blob-exchange protocol's codec: one size-limited protobuf frame each way.
//!
//! Requests are small; responses carry up to a piece of verified-streaming data. Both
//! directions read the varint length first and refuse a frame over the limit before
//! reading its body, so a peer cannot make us buffer more than the limit.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use nak_protocol::frame::{read_varint, FrameCodec};
use nak_protocol::pb;
use prost::Message;

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

async fn read_frame<M: Message + Default, T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<M> {
    let mut prefix = Vec::with_capacity(10);
    let len = loop {
        let mut byte = [0u8; 1];
        io.read_exact(&mut byte).await?;
        prefix.push(byte[0]);
        match read_varint(&prefix) {
            Ok(Some((len, _))) => break len,
            Ok(None) => continue,
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    };
    if len > max as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {max}"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    io.read_exact(&mut body).await?;
    M::decode(body.as_slice()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_frame<M: Message, T: AsyncWrite + Unpin + Send>(io: &mut T, msg: &M, max: usize) -> io::Result<()> {
    let bytes = FrameCodec::new(max).encode(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    io.write_all(&bytes).await?;
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

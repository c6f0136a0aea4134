//! Size-limited protobuf frames on a libp2p stream: a varint length, then the message.
//!
//! The reader takes the length first and refuses a frame over the limit before reading
//! its body, so a peer cannot make us buffer more than the limit. Blob exchange uses one
//! frame each way; inference streams (`/nakshatra/inference/1`) carry many, both ways,
//! for as long as a session lives.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use nak_protocol::frame::{read_varint, FrameCodec};
use prost::Message;

/// Protocol of inference sessions: long-lived streams of `InferenceFrame`s.
pub const INFERENCE_PROTOCOL: StreamProtocol = StreamProtocol::new("/nakshatra/inference/1");

/// Largest inference frame: 32 MiB (a 512-row prefill of 8192-wide f32 hidden states is 16 MiB).
pub const MAX_INFERENCE_FRAME: usize = 32 << 20;

/// Reads one frame of at most `max` bytes. `UnexpectedEof` before the first byte means
/// the peer closed the stream cleanly; an oversized or malformed frame is `InvalidData`.
pub async fn read_frame<M: Message + Default, T: AsyncRead + Unpin>(io: &mut T, max: usize) -> io::Result<M> {
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
    // Grown as bytes arrive, not reserved at the declared length: a peer that sends a
    // length and then nothing holds no more of our memory than it sent.
    let mut body = Vec::new();
    (&mut *io).take(len).read_to_end(&mut body).await?;
    if body.len() as u64 != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("a frame cut off after {} of {len} bytes", body.len()),
        ));
    }
    M::decode(body.as_slice()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes one frame (refusing a message over `max` bytes) and flushes it.
pub async fn write_frame<M: Message, T: AsyncWrite + Unpin>(io: &mut T, msg: &M, max: usize) -> io::Result<()> {
    let bytes = FrameCodec::new(max).encode(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    io.write_all(&bytes).await?;
    io.flush().await
}

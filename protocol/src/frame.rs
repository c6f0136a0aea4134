//! Length-delimited frames with a size limit.
//!
//! A frame is an unsigned LEB128 varint length followed by that many bytes of an
//! encoded protobuf message. [`FrameCodec::decode`] works on whatever bytes have
//! arrived: it returns `Ok(None)` until a whole frame is there, and refuses a frame
//! whose declared length is over the limit as soon as the length is read, before any
//! of it is buffered. No I/O happens here; the node's streams feed it.

use prost::Message;

/// Default largest frame: 16 MiB (a 4096-token prompt of 8192-wide f32 hidden states is 128 MiB,
/// so long prompts are sent in chunks).
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// Errors of framing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame is larger than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Declared or actual length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The length prefix is not a valid varint.
    #[error("malformed frame length")]
    BadLength,
    /// The payload is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Encodes and decodes frames of at most `max` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCodec {
    /// Largest payload accepted or produced.
    pub max: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self { max: DEFAULT_MAX_FRAME }
    }
}

impl FrameCodec {
    /// A codec with limit `max`.
    pub fn new(max: usize) -> Self {
        Self { max }
    }

    /// Encodes `msg` as a frame; refuses messages over the limit.
    pub fn encode(&self, msg: &impl Message) -> Result<Vec<u8>, FrameError> {
        let len = msg.encoded_len();
        if len > self.max {
            return Err(FrameError::TooLarge { len: len as u64, max: self.max });
        }
        Ok(msg.encode_length_delimited_to_vec())
    }

    /// Decodes one frame from the front of `buf`: `Ok(Some((msg, consumed)))` when a whole
    /// frame is present, `Ok(None)` when more bytes are needed.
    pub fn decode<M: Message + Default>(&self, buf: &[u8]) -> Result<Option<(M, usize)>, FrameError> {
        let Some((len, prefix)) = read_varint(buf)? else { return Ok(None) };
        if len > self.max as u64 {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        let end = prefix + len as usize;
        if buf.len() < end {
            return Ok(None);
        }
        let msg = M::decode(&buf[prefix..end]).map_err(|e| FrameError::Malformed(e.to_string()))?;
        Ok(Some((msg, end)))
    }

    /// Decodes a buffer that must hold exactly one frame.
    pub fn decode_exact<M: Message + Default>(&self, buf: &[u8]) -> Result<M, FrameError> {
        match self.decode(buf)? {
            Some((msg, used)) if used == buf.len() => Ok(msg),
            Some(_) => Err(FrameError::Malformed("trailing bytes after the frame".into())),
            None => Err(FrameError::Malformed("truncated frame".into())),
        }
    }
}

/// Reads a varint length: `Ok(None)` if `buf` ends inside it.
pub fn read_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, FrameError> {
    let mut value = 0u64;
    for (i, byte) in buf.iter().enumerate() {
        if i == 10 {
            return Err(FrameError::BadLength);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 10 {
        return Err(FrameError::BadLength);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[test]
    fn frames_round_trip_even_when_split() {
        let codec = FrameCodec::default();
        let msg = pb::CloseSession { session_id: 77 };
        let mut bytes = codec.encode(&msg).unwrap();
        bytes.extend(codec.encode(&pb::CloseSession { session_id: 78 }).unwrap());
        for cut in 0..3 {
            assert_eq!(codec.decode::<pb::CloseSession>(&bytes[..cut]).unwrap(), None);
        }
        let (first, used) = codec.decode::<pb::CloseSession>(&bytes).unwrap().unwrap();
        assert_eq!(first, msg);
        let (second, _) = codec.decode::<pb::CloseSession>(&bytes[used..]).unwrap().unwrap();
        assert_eq!(second.session_id, 78);
    }

    #[test]
    fn oversized_frames_are_refused_before_buffering() {
        let codec = FrameCodec::new(1000);
        // Only the length prefix has arrived: it already says too much.
        let prefix = [0x80, 0x80, 0x40]; // 1 MiB
        assert_eq!(codec.decode::<pb::Step>(&prefix), Err(FrameError::TooLarge { len: 1 << 20, max: 1000 }));
        let big = pb::Step { session_id: 1, step: 1, hidden: vec![0; 2000], ..Default::default() };
        assert!(matches!(codec.encode(&big), Err(FrameError::TooLarge { .. })));
        assert_eq!(codec.decode::<pb::Step>(&[0xff; 11]), Err(FrameError::BadLength));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let codec = FrameCodec::default();
        let mut seed = 0x1234_5678u64;
        for _ in 0..2000 {
            let len = (seed % 40) as usize;
            let mut buf = vec![len as u8];
            for _ in 0..len {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                buf.push((seed >> 33) as u8);
            }
            let _ = codec.decode::<pb::InferenceFrame>(&buf);
            let _ = codec.decode::<pb::SignedAnnouncement>(&buf);
        }
        assert!(matches!(codec.decode_exact::<pb::CloseSession>(&[2, 0x08]), Err(FrameError::Malformed(_))));
    }
}

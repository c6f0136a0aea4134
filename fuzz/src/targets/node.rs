//! Targets for the node's own readers of peer streams: inference frames as a session
//! reads them one after another, and the blob exchange's request and response frames.
//!
//! These read from an async stream, as on a connection; here the stream is the input.
//! Besides decoding, what matters is memory: a reader holds what a peer sent, never what
//! a length prefix claims (the runner's allocation bound checks that).

use futures::executor::block_on;
use futures::io::Cursor;
use libp2p::request_response::Codec;
use nak_node::net::frames::{read_frame, MAX_INFERENCE_FRAME};
use nak_node::net::{BlobCodec, BLOB_PROTOCOL};
use nak_protocol::pb;
use prost::Message;

use super::{refused, Outcome};

/// An inference stream: frames until the stream ends or one is refused.
pub fn inference_stream(data: &[u8]) -> Outcome {
    let mut stream = Cursor::new(data);
    let mut frames = 0;
    loop {
        match block_on(read_frame::<pb::InferenceFrame, _>(&mut stream, MAX_INFERENCE_FRAME)) {
            Ok(frame) => {
                frames += 1;
                assert!(frame.encoded_len() <= data.len(), "a frame larger than the stream it came in");
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && stream.position() == data.len() as u64 => {
                return if frames > 0 { Ok(()) } else { Err(refused(e)) };
            }
            Err(e) => return Err(refused(e)),
        }
    }
}

/// A blob request as a serving node reads it.
pub fn blob_request(data: &[u8]) -> Outcome {
    let request =
        block_on(BlobCodec::default().read_request(&BLOB_PROTOCOL, &mut Cursor::new(data))).map_err(refused)?;
    super::protocol::message::<pb::BlobRequest>(&request.encode_to_vec())
}

/// A blob response as a fetching node reads it.
pub fn blob_response(data: &[u8]) -> Outcome {
    let response =
        block_on(BlobCodec::default().read_response(&BLOB_PROTOCOL, &mut Cursor::new(data))).map_err(refused)?;
    super::protocol::message::<pb::BlobResponse>(&response.encode_to_vec())
}

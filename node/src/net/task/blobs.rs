//! Blob exchange: requests answered from the store on a blocking thread, answers to our
//! own requests routed back to their callers, and a strike for a malformed request.

use libp2p::request_response;
use nak_protocol::pb;

use super::{NetworkError, Task};
use crate::net::answers;

impl Task {
    pub(super) fn on_blobs(&mut self, event: request_response::Event<pb::BlobRequest, pb::BlobResponse>) {
        if let request_response::Event::Message { peer, .. } = &event {
            self.last_used.insert(*peer, std::time::Instant::now());
        }
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request: pb::BlobRequest { kind: Some(pb::blob_request::Kind::Announcement(model_id)) },
                    channel,
                    ..
                } => {
                    let response = pb::BlobResponse { result: Some(self.own_announcement(&model_id)) };
                    if self.swarm.behaviour_mut().blobs.send_response(channel, response).is_err() {
                        tracing::debug!("a peer asking for our announcement went away before its answer");
                    }
                }
                request_response::Message::Request { request_id, request, channel } => {
                    self.serving.insert(request_id, peer);
                    let provider = self.provider.clone();
                    let tx = self.served_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let response = answers::answer(&provider, request);
                        let _ = tx.blocking_send((channel, response));
                    });
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some((_, reply)) = self.pending_requests.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure { request_id, error, .. } => {
                if let Some((_, reply)) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Err(NetworkError::Failed(error.to_string())));
                }
            }
            request_response::Event::InboundFailure { peer, request_id, error, .. } => {
                self.serving.remove(&request_id);
                tracing::warn!(%peer, %error, "a blob request could not be read or answered");
                self.stats.failed_blob_requests += 1;
                if matches!(&error, request_response::InboundFailure::Io(e) if e.kind() == std::io::ErrorKind::InvalidData)
                {
                    self.strike(peer, "a malformed or oversized blob request");
                }
            }
            request_response::Event::ResponseSent { request_id, .. } => {
                self.serving.remove(&request_id);
            }
        }
    }
}

//! The stream a session pushes its outputs on to the next hop.
//!
//! A [`Pusher`] opens its stream on first use (dialling the next hop if needed, with the
//! hello exchange of [`super::connect`]) and the session task writes each step to it
//! directly. Error frames the next hop sends back on that stream go to the session's
//! client, marked with the next hop's peer id so the client knows whom they are about.
//! A write the stream breaks under is tried once more on a new stream; a second break,
//! or a next hop that takes nothing within 10 s, fails the push and drops the stream
//! (the next push opens a new one).

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use nak_protocol::pb;
use tokio::sync::mpsc;

use super::connect;
use crate::dilation::dilate;
use crate::net::frames::{read_frame, write_frame, MAX_INFERENCE_FRAME};
use crate::net::NetworkHandle;

use pb::inference_frame::Kind;

/// How long closing a stream to a hop that may be gone is waited for.
const CLOSE_WAIT: Duration = Duration::from_millis(200);
/// A next hop that takes no frame for this long is treated as gone: a stalled peer's
/// stream fills its window and the write would otherwise wait forever, with the session
/// unable to take the client's retarget.
const PUSH_WAIT: Duration = Duration::from_secs(10);

/// Sends a session's outputs to the next hop over a stream of its own.
pub(super) struct Pusher {
    net: NetworkHandle,
    target: PeerId,
    addrs: Vec<Multiaddr>,
    session_id: u64,
    writer: Option<futures::io::WriteHalf<crate::net::Stream>>,
}

impl Pusher {
    pub(super) fn new(net: NetworkHandle, target: PeerId, addrs: Vec<Multiaddr>, session_id: u64) -> Self {
        Self { net, target, addrs, session_id, writer: None }
    }

    /// The hop pushed to.
    pub(super) fn target(&self) -> PeerId {
        self.target
    }

    /// Whether this pushes back into session `id` of this very node (a one-hop ring).
    pub(super) fn is_loop(&self, id: u64) -> bool {
        self.target == self.net.peer_id() && self.session_id == id
    }

    /// Opens the stream. Error frames the next hop sends back on it go to `errors`.
    async fn connect(&mut self, errors: &mpsc::Sender<pb::InferenceFrame>, our_id: u64) -> Result<(), String> {
        let stream = connect(&self.net, self.target, &self.addrs).await?;
        let (mut reader, writer) = futures::AsyncReadExt::split(stream);
        let (errors, target) = (errors.clone(), self.target);
        tokio::spawn(async move {
            while let Ok(frame) = read_frame::<pb::InferenceFrame, _>(&mut reader, MAX_INFERENCE_FRAME).await {
                if let Some(Kind::Error(mut e)) = frame.kind {
                    e.message = format!("next hop {target}: {}", e.message);
                    e.session_id = our_id;
                    if e.peer.is_empty() {
                        e.peer = target.to_bytes();
                    }
                    let _ = errors.send(pb::InferenceFrame { kind: Some(Kind::Error(e)) }).await;
                }
            }
        });
        self.writer = Some(writer);
        Ok(())
    }

    /// Writes `step` to the next hop (as its session's step). A write the stream breaks
    /// under is tried once more on a new stream: a connection dropped between two live
    /// hops must not cost the session its next hop, and the next hop ignores a step it
    /// already has (a frame cut short by the break is dropped with its stream).
    pub(super) async fn push(
        &mut self,
        mut step: pb::Step,
        errors: &mpsc::Sender<pb::InferenceFrame>,
        our_id: u64,
    ) -> Result<(), String> {
        step.session_id = self.session_id;
        let frame = pb::InferenceFrame { kind: Some(Kind::Step(step)) };
        match self.write(&frame, errors, our_id).await {
            Err(Failed::Broke(e)) => {
                tracing::debug!(session = our_id, target = %self.target, error = %e, "push stream broke; opening another");
                self.write(&frame, errors, our_id).await.map_err(Failed::into_message)
            }
            written => written.map_err(Failed::into_message),
        }
    }

    async fn write(
        &mut self,
        frame: &pb::InferenceFrame,
        errors: &mpsc::Sender<pb::InferenceFrame>,
        our_id: u64,
    ) -> Result<(), Failed> {
        if self.writer.is_none() {
            self.connect(errors, our_id).await.map_err(Failed::Unreachable)?;
        }
        let Some(writer) = &mut self.writer else {
            return Err(Failed::Unreachable("no stream to the next hop".into()));
        };
        let written = tokio::time::timeout(dilate(PUSH_WAIT), write_frame(writer, frame, MAX_INFERENCE_FRAME)).await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.writer = None;
                Err(Failed::Broke(e.to_string()))
            }
            Err(_) => {
                self.writer = None;
                Err(Failed::Unreachable(format!("it took no frame for {} s", PUSH_WAIT.as_secs())))
            }
        }
    }

    /// Ends the stream, so the next hop sees it close (not waiting long for a hop that
    /// is gone or stalled).
    pub(super) async fn close(&mut self) {
        if let Some(mut writer) = self.writer.take() {
            let _ = tokio::time::timeout(dilate(CLOSE_WAIT), futures::AsyncWriteExt::close(&mut writer)).await;
        }
    }
}

/// Why a write to the next hop failed.
enum Failed {
    /// The stream broke under the write: worth one more try on a new stream.
    Broke(String),
    /// No stream could be opened, or the hop took nothing for [`PUSH_WAIT`].
    Unreachable(String),
}

impl Failed {
    fn into_message(self) -> String {
        match self {
            Failed::Broke(e) => format!("the stream broke: {e}"),
            Failed::Unreachable(e) => e,
        }
    }
}

//! The client's control streams to the hops of its route.
//!
//! [`Links::open`] opens a stream to a server (with the hello exchange every inference
//! stream starts with), gives it a writer task fed by a bounded channel, and a reader
//! task that tags every frame the server sends with the link's id and puts it into one
//! channel, so a session reads all its hops in one place. A stream that ends yields an
//! error frame (`CLOSED`, session 0) for its link. [`Links::wait_for`] waits for a frame
//! the caller picks and keeps the others, in order, for the next read: a repair can wait
//! for particular answers while tokens and errors go on arriving.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::AsyncReadExt;
use libp2p::{Multiaddr, PeerId};
use nak_protocol::pb;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::inference::{connect, error, write_loop};
use crate::net::frames::{read_frame, MAX_INFERENCE_FRAME};
use crate::net::NetworkHandle;

/// Frames waiting for the session to read them.
const INBOX: usize = 256;
/// Frames waiting for a link's writer.
const OUTBOX: usize = 64;

/// A frame from a link.
pub(super) type Tagged = (u64, pb::InferenceFrame);

/// A control stream to one server.
pub(super) struct Link {
    /// Tags this link's frames.
    pub(super) id: u64,
    writer: mpsc::Sender<pb::InferenceFrame>,
}

impl Link {
    /// Sends a frame; false when the stream has closed.
    pub(super) async fn send(&self, kind: pb::inference_frame::Kind) -> bool {
        self.writer.send(pb::InferenceFrame { kind: Some(kind) }).await.is_ok()
    }
}

/// Every control stream of a session, and the frames they bring.
pub(super) struct Links {
    net: NetworkHandle,
    tx: mpsc::Sender<Tagged>,
    rx: mpsc::Receiver<Tagged>,
    kept: VecDeque<Tagged>,
    next_id: AtomicU64,
}

impl Links {
    pub(super) fn new(net: NetworkHandle) -> Self {
        let (tx, rx) = mpsc::channel(INBOX);
        Self { net, tx, rx, kept: VecDeque::new(), next_id: AtomicU64::new(1) }
    }

    /// Opens a control stream to `peer` (several may be opened at once).
    pub(super) async fn open(&self, peer: PeerId, addrs: &[Multiaddr]) -> Result<Link, String> {
        let stream = connect(&self.net, peer, addrs).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (mut reader, writer) = stream.split();
        let (writer_tx, writer_rx) = mpsc::channel(OUTBOX);
        tokio::spawn(write_loop(writer, writer_rx));
        let tx = self.tx.clone();
        tokio::spawn(async move {
            while let Ok(frame) = read_frame::<pb::InferenceFrame, _>(&mut reader, MAX_INFERENCE_FRAME).await {
                if tx.send((id, frame)).await.is_err() {
                    return;
                }
            }
            let _ = tx.send((id, error(0, pb::ErrorCode::Closed, "the stream closed"))).await;
        });
        Ok(Link { id, writer: writer_tx })
    }

    /// The next frame from any link, the kept ones first; `None` at `deadline`.
    pub(super) async fn next(&mut self, deadline: Instant) -> Option<Tagged> {
        if let Some(frame) = self.kept.pop_front() {
            return Some(frame);
        }
        tokio::time::timeout_at(deadline, self.rx.recv()).await.ok().flatten()
    }

    /// The first frame `pick` takes (it returns `Some`), within `deadline`; frames it
    /// passes over are kept for [`Links::next`], in order.
    pub(super) async fn wait_for<T>(
        &mut self,
        deadline: Instant,
        mut pick: impl FnMut(u64, &pb::InferenceFrame) -> Option<T>,
    ) -> Option<T> {
        for i in 0..self.kept.len() {
            let (id, frame) = &self.kept[i];
            if let Some(found) = pick(*id, frame) {
                self.kept.remove(i);
                return Some(found);
            }
        }
        loop {
            let (id, frame) = tokio::time::timeout_at(deadline, self.rx.recv()).await.ok().flatten()?;
            match pick(id, &frame) {
                Some(found) => return Some(found),
                None => self.kept.push_back((id, frame)),
            }
        }
    }
}

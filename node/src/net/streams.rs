//! Streams of this node's own protocols (inference sessions, pushes), counted per peer.
//!
//! Every stream the node opens ([`super::NetworkHandle::open_stream`]) or accepts
//! ([`super::NetworkHandle::track`]) is wrapped in a [`Stream`] that holds one count of
//! its peer in [`StreamsInUse`] until it is dropped. The network task reads the counts
//! when it has too many connections: a connection that carries a session is never
//! the one it closes.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use futures::{AsyncRead, AsyncWrite};
use libp2p::PeerId;

/// Per peer: streams open now, and when one was last opened or closed.
#[derive(Clone, Default)]
pub(crate) struct StreamsInUse(Arc<Mutex<HashMap<PeerId, (usize, Instant)>>>);

impl StreamsInUse {
    fn update(&self, peer: PeerId, open: bool) {
        // A poisoned lock means a panic elsewhere already; counting is best effort then.
        let Ok(mut map) = self.0.lock() else { return };
        let entry = map.entry(peer).or_insert((0, Instant::now()));
        entry.0 = if open { entry.0 + 1 } else { entry.0.saturating_sub(1) };
        entry.1 = Instant::now();
    }

    /// Whether `peer` carries a stream now, and when it last opened or closed one.
    pub(crate) fn of(&self, peer: &PeerId) -> (bool, Option<Instant>) {
        match self.0.lock().ok().and_then(|m| m.get(peer).copied()) {
            Some((n, at)) => (n > 0, Some(at)),
            None => (false, None),
        }
    }

    /// Forgets peers that carry nothing and have not for a while (bounded memory).
    pub(crate) fn forget_idle(&self, before: Instant) {
        if let Ok(mut map) = self.0.lock() {
            map.retain(|_, (n, at)| *n > 0 || *at >= before);
        }
    }

    /// Wraps `stream` to `peer`, counting it until it is dropped.
    pub(crate) fn track(&self, peer: PeerId, stream: libp2p::Stream) -> Stream {
        self.update(peer, true);
        Stream { inner: stream, peer, in_use: self.clone() }
    }
}

/// A stream of one of the node's protocols, counted as in use while it lives.
pub struct Stream {
    inner: libp2p::Stream,
    peer: PeerId,
    in_use: StreamsInUse,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.in_use.update(self.peer, false);
    }
}

impl AsyncRead for Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

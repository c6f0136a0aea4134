//! TCP with a fixed delay on everything received: a wide-area link on loopback.
//!
//! Benchmarks of decoding over distance need a one-way delay between hosts, and this
//! machine has no `netem`. [`delayed_tcp_transport`] is TCP + noise + yamux where each
//! connection holds the bytes it reads for `delay` before handing them on, so every
//! message between two nodes that both use it arrives `delay` late, each way. Writes pass
//! straight through; reading keeps pulling from the socket meanwhile, so the link's
//! bandwidth is unchanged.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite, Future};
use libp2p::core::transport::Transport as _;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::{noise, tcp, yamux};
use tokio::time::{Instant, Sleep};

use super::{InjectedTransport, NetworkError};

/// TCP (no delay on sending) + noise + yamux, delaying what each connection reads by `delay`.
pub fn delayed_tcp_transport(keypair: &Keypair, delay: Duration) -> Result<InjectedTransport, NetworkError> {
    let noise = noise::Config::new(keypair).map_err(|e| NetworkError::Setup(e.to_string()))?;
    Ok(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .map(move |stream, _| Delayed::new(stream, delay))
        .upgrade(Version::V1)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .timeout(Duration::from_secs(20))
        .boxed())
}

/// A stream whose reads lag `delay` behind the bytes' arrival.
pub struct Delayed<S> {
    inner: S,
    delay: Duration,
    /// Bytes read, each chunk with the moment it may be handed on; an empty chunk is the end.
    queue: VecDeque<(Instant, Vec<u8>)>,
    timer: Option<Pin<Box<Sleep>>>,
    ended: bool,
}

impl<S> Delayed<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, delay: Duration) -> Self {
        Self { inner, delay, queue: VecDeque::new(), timer: None, ended: false }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Delayed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // Take in whatever has arrived, stamped with its release time.
        while !this.ended {
            let mut buf = [0u8; 16 * 1024];
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(0)) => {
                    this.ended = true;
                    this.queue.push_back((Instant::now() + this.delay, Vec::new()));
                }
                Poll::Ready(Ok(n)) => this.queue.push_back((Instant::now() + this.delay, buf[..n].to_vec())),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        loop {
            let Some((due, chunk)) = this.queue.front_mut() else { return Poll::Pending };
            if Instant::now() >= *due {
                this.timer = None;
                let n = chunk.len().min(out.len());
                out[..n].copy_from_slice(&chunk[..n]);
                chunk.drain(..n);
                if chunk.is_empty() && n > 0 {
                    this.queue.pop_front();
                }
                return Poll::Ready(Ok(n)); // 0 only for the end marker
            }
            let due = *due;
            let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Delayed<S> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::AsyncReadExt;

    #[tokio::test]
    async fn bytes_arrive_whole_and_in_order_only_after_the_delay() {
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut delayed = Delayed::new(futures::io::Cursor::new(data.clone()), Duration::from_millis(50));
        let t0 = std::time::Instant::now();
        let mut got = Vec::new();
        delayed.read_to_end(&mut got).await.unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(50), "{:?}", t0.elapsed());
        assert_eq!(got, data);
    }
}

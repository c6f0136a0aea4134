//! TCP with a fixed delay on everything received: a wide-area link on loopback.
//!
//! Benchmarks of decoding over distance need a one-way delay between hosts, and this
//! machine has no `netem`. [`delayed_tcp_transport`] is TCP + noise + yamux where each
//! connection holds the bytes it reads for `delay` before handing them on, so every
//! message between two nodes that both use it arrives `delay` late, each way. Writes pass
//! straight through; reading keeps pulling from the socket meanwhile, so the link's
//! bandwidth is unchanged.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::{Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::transport::Transport as _;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::{tcp, yamux};

use super::{InjectedTransport, NetworkError, SwarmProtocols};

/// TCP (no delay on sending) + noise + yamux, delaying what each connection reads by `delay`.
pub fn delayed_tcp_transport(
    keypair: &Keypair,
    protocols: &SwarmProtocols,
    delay: Duration,
) -> Result<InjectedTransport, NetworkError> {
    let noise = protocols.noise(keypair).map_err(|e| NetworkError::Setup(e.to_string()))?;
    Ok(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .map(move |stream, _| Delayed::new(stream, delay))
        .upgrade(Version::V1)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .timeout(Duration::from_secs(20))
        .boxed())
}

/// Wakes tasks at given instants, from a thread of its own.
///
/// tokio's timer wheel rounds every deadline up to the next millisecond tick, which
/// would add half a millisecond or more to each emulated link. This thread sleeps until
/// shortly before the next deadline and spins the rest of the way, since a sleeping
/// thread on an idle virtual CPU can wake a good fraction of a millisecond late.
struct PreciseTimer {
    due: Mutex<BinaryHeap<Reverse<Alarm>>>,
    changed: Condvar,
}

struct Alarm {
    at: Instant,
    waker: Waker,
}

impl PartialEq for Alarm {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Alarm {}
impl PartialOrd for Alarm {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Alarm {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

impl PreciseTimer {
    /// The process's timer, its thread started on first use.
    fn get() -> &'static PreciseTimer {
        static TIMER: OnceLock<&'static PreciseTimer> = OnceLock::new();
        TIMER.get_or_init(|| {
            let timer: &'static PreciseTimer =
                Box::leak(Box::new(PreciseTimer { due: Mutex::new(BinaryHeap::new()), changed: Condvar::new() }));
            // If the thread cannot start, alarms are never rung and delayed reads stall;
            // this transport exists only for benchmarks, where that shows at once.
            let _ = std::thread::Builder::new().name("nak-link-delay".into()).spawn(|| timer.run());
            timer
        })
    }

    fn wake_at(&self, at: Instant, waker: Waker) {
        let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        due.push(Reverse(Alarm { at, waker }));
        self.changed.notify_one();
    }

    fn run(&self) {
        /// How early to stop sleeping and start spinning.
        const SPIN: Duration = Duration::from_micros(300);
        let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let now = Instant::now();
            while due.peek().is_some_and(|Reverse(a)| a.at <= now) {
                if let Some(Reverse(alarm)) = due.pop() {
                    alarm.waker.wake();
                }
            }
            due = match due.peek().map(|Reverse(a)| a.at - now) {
                Some(wait) if wait > SPIN => {
                    self.changed.wait_timeout(due, wait - SPIN).unwrap_or_else(|p| p.into_inner()).0
                }
                Some(_) => {
                    drop(due);
                    std::hint::spin_loop();
                    self.due.lock().unwrap_or_else(|p| p.into_inner())
                }
                None => self.changed.wait(due).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}

/// A stream whose reads lag `delay` behind the bytes' arrival.
pub struct Delayed<S> {
    inner: S,
    delay: Duration,
    /// Bytes read, each chunk with the moment it may be handed on; an empty chunk is the end.
    queue: VecDeque<(Instant, Vec<u8>)>,
    /// The release time an alarm is set for.
    armed: Option<Instant>,
    ended: bool,
}

impl<S> Delayed<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, delay: Duration) -> Self {
        Self { inner, delay, queue: VecDeque::new(), armed: None, ended: false }
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
        let Some((due, chunk)) = this.queue.front_mut() else { return Poll::Pending };
        if Instant::now() < *due {
            if this.armed != Some(*due) {
                this.armed = Some(*due);
                PreciseTimer::get().wake_at(*due, cx.waker().clone());
            }
            return Poll::Pending;
        }
        let n = chunk.len().min(out.len());
        out[..n].copy_from_slice(&chunk[..n]);
        chunk.drain(..n);
        if chunk.is_empty() && n > 0 {
            this.queue.pop_front();
        }
        Poll::Ready(Ok(n)) // 0 only for the end marker
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
        let t0 = Instant::now();
        let mut got = Vec::new();
        delayed.read_to_end(&mut got).await.unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(50), "{:?}", t0.elapsed());
        assert_eq!(got, data);
    }

    #[tokio::test]
    async fn alarms_ring_in_deadline_order_and_not_before() {
        let t0 = Instant::now();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        for ms in [30u64, 10, 20] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let at = t0 + Duration::from_millis(ms);
                std::future::poll_fn(|cx| {
                    if Instant::now() >= at {
                        return Poll::Ready(());
                    }
                    PreciseTimer::get().wake_at(at, cx.waker().clone());
                    Poll::Pending
                })
                .await;
                let _ = tx.send((ms, t0.elapsed())).await;
            });
        }
        for expected in [10, 20, 30] {
            let (ms, elapsed) = rx.recv().await.unwrap();
            assert_eq!(ms, expected);
            assert!(elapsed >= Duration::from_millis(ms), "{ms} ms alarm rang at {elapsed:?}");
        }
    }
}

//! The simulated network that the nodes of one process talk over: a libp2p transport
//! ([`SimTransport`], one per node, with a key-exchanging handshake and yamux above it,
//! see `node.rs`) on a shared [`SimNet`].
//!
//! Data flow: a node listens on `/memory/<its index + 1>`; a dial looks that port up in
//! the net, waits one round trip (the handshake), and hands each side one end of a
//! connection made of two one-way [`Pipe`]s. Bytes written into a pipe are queued with
//! the instant they may be read: after the sender's uplink has sent them (per-node
//! bandwidth, shared by all its connections), plus the pair's one-way latency, plus
//! now and then a retransmission's round trip (loss is modelled as delay: the
//! muxer would break on lost bytes). A node dies one of two ways ([`Death`]): its
//! connections close at once (a process that exits), or its bytes and dials vanish
//! until the peers' timeouts notice (a machine that drops off the network). A
//! partition does the latter between groups of nodes; [`SimNet::sever_in_flight`]
//! breaks one pair's connections with bytes on their way, [`SimNet::sever_idle`] with none.
//!
//! Why not libp2p's `MemoryTransport`: its hub is global and has no latency, and a dead
//! port refuses at once, so lookups under failures would look too good.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite, Future, FutureExt};
use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::core::Transport;
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

use crate::clock::dilate;
use crate::latency::LatencyMatrix;

/// How a node leaves the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Death {
    /// Its connections close at once and dials to it are refused.
    Close,
    /// Its bytes and dials vanish: peers notice only by their timeouts.
    Blackhole,
}

/// Settings of the simulated links.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Each node's uplink, bytes per second (0: unlimited). Default 12.5 MB/s (100 Mbit/s).
    pub uplink: u64,
    /// Chance that a write needs a retransmission, costing one round trip more.
    /// Default 0.
    pub loss: f64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self { uplink: 12_500_000, loss: 0.0 }
    }
}

/// What crossed the network, for upkeep figures.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Bytes written into connections.
    pub bytes: AtomicU64,
    /// Writes (roughly, frames) into connections.
    pub writes: AtomicU64,
}

impl Traffic {
    /// Bytes and writes so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.bytes.load(Ordering::Relaxed), self.writes.load(Ordering::Relaxed))
    }

    /// Waits `window` (swarm time) and returns the bytes and writes per node per second
    /// of swarm time that crossed the network meanwhile.
    pub async fn per_node_over(&self, nodes: usize, window: Duration) -> (f64, f64) {
        let (b0, w0) = self.totals();
        crate::clock::sleep(window).await;
        let (b1, w1) = self.totals();
        let per_node_s = |d: u64| d as f64 / nodes.max(1) as f64 / window.as_secs_f64().max(1e-3);
        (per_node_s(b1 - b0), per_node_s(w1 - w0))
    }
}

type Incoming = (SimStream, u64);

/// Where every node listens, who is alive, and the latencies between them.
pub struct SimNet {
    latency: LatencyMatrix,
    links: LinkConfig,
    seed: u64,
    state: Mutex<State>,
    /// When each node's uplink is free again.
    uplinks: Vec<Mutex<Instant>>,
    /// Bytes and writes so far.
    pub traffic: Traffic,
}

#[derive(Default)]
struct State {
    listeners: HashMap<u64, (usize, mpsc::Sender<Incoming>)>,
    dead: HashMap<usize, Death>,
    /// The pipes each node's connections are made of.
    pipes: HashMap<usize, Vec<Weak<Pipe>>>,
    /// Partition group of each node (absent: group 0).
    group: HashMap<usize, u32>,
    connections: u64,
    /// Connections made between each pair of nodes (the lower index first).
    between: HashMap<(usize, usize), u64>,
}

/// Connections a listener may have waiting to be accepted.
const BACKLOG: usize = 128;

impl SimNet {
    /// A network over `latency`'s nodes.
    pub fn new(latency: LatencyMatrix, links: LinkConfig, seed: u64) -> Arc<Self> {
        let uplinks = (0..latency.nodes()).map(|_| Mutex::new(Instant::now())).collect();
        Arc::new(Self {
            latency,
            links,
            seed,
            state: Mutex::new(State::default()),
            uplinks,
            traffic: Traffic::default(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update under this lock is a single insert, remove or flag: a panic cannot tear it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latencies.
    pub fn latency(&self) -> &LatencyMatrix {
        &self.latency
    }

    /// The address node `node` listens on.
    pub fn addr(node: usize) -> Multiaddr {
        Multiaddr::empty().with(Protocol::Memory(node as u64 + 1))
    }

    /// The transport of node `node`.
    pub fn transport(self: &Arc<Self>, node: usize) -> SimTransport {
        SimTransport { net: self.clone(), node, listeners: Vec::new(), events: VecDeque::new() }
    }

    /// Takes `node` off the network.
    pub fn kill(&self, node: usize, death: Death) {
        let mut state = self.state();
        state.dead.insert(node, death);
        state.listeners.retain(|_, (owner, _)| *owner != node);
        for pipe in state.pipes.remove(&node).into_iter().flatten().filter_map(|w| w.upgrade()) {
            pipe.fail(death);
        }
    }

    /// Splits the network: nodes in different groups no longer reach each other
    /// (their connections go silent, their dials hang). Group 0 for nodes not listed.
    pub fn partition(&self, groups: &HashMap<usize, u32>) {
        let mut state = self.state();
        state.group = groups.clone();
        let group = |n: usize| groups.get(&n).copied().unwrap_or(0);
        for (&node, pipes) in &state.pipes {
            for pipe in pipes.iter().filter_map(Weak::upgrade) {
                if group(pipe.from) != group(pipe.to) && pipe.from == node {
                    pipe.fail(Death::Blackhole);
                }
            }
        }
    }

    /// Breaks every connection between `a` and `b` if bytes from `a` to `b` are on
    /// their way at this moment, losing them: a middlebox dropping a connection (both
    /// ends see it close; either may dial again). True when it did.
    pub fn sever_in_flight(&self, a: usize, b: usize) -> bool {
        self.sever_if(a, b, true)
    }

    /// Breaks every connection between `a` and `b` if they have one and no bytes from
    /// `a` to `b` are on their way: the break shows only when `a` next writes. True
    /// when it did.
    pub fn sever_idle(&self, a: usize, b: usize) -> bool {
        self.sever_if(a, b, false)
    }

    fn sever_if(&self, a: usize, b: usize, in_flight: bool) -> bool {
        let state = self.state();
        let between: Vec<Arc<Pipe>> = state
            .pipes
            .get(&a)
            .into_iter()
            .flatten()
            .filter_map(Weak::upgrade)
            .filter(|p| (p.from, p.to) == (a, b) || (p.from, p.to) == (b, a))
            .collect();
        let busy = between.iter().any(|p| p.from == a && !p.inner().queue.is_empty());
        if between.is_empty() || busy != in_flight {
            return false;
        }
        for pipe in between {
            pipe.fail(Death::Close);
        }
        true
    }

    /// Connections made so far.
    pub fn connections(&self) -> u64 {
        self.state().connections
    }

    /// Connections made so far between `a` and `b`, whichever dialled.
    pub fn connections_between(&self, a: usize, b: usize) -> u64 {
        self.state().between.get(&(a.min(b), a.max(b))).copied().unwrap_or(0)
    }

    /// Connections open now (each made of two pipes, listed under both its nodes).
    pub fn open_connections(&self) -> usize {
        let state = self.state();
        let pipes: usize = state.pipes.values().map(|l| l.iter().filter(|w| w.strong_count() > 0).count()).sum();
        pipes / 4
    }

    /// Open connections per node, for `nodes` nodes (each connection has two ends).
    pub fn open_connections_per_node(&self, nodes: usize) -> f64 {
        self.open_connections() as f64 * 2.0 / nodes.max(1) as f64
    }

    /// Whether `a` can reach `b` now: both alive and on the same side of any partition.
    fn reachable(state: &State, a: usize, b: usize) -> Result<(), Death> {
        if let Some(d) = state.dead.get(&b).or(state.dead.get(&a)) {
            return Err(*d);
        }
        let group = |n: usize| state.group.get(&n).copied().unwrap_or(0);
        if group(a) != group(b) {
            return Err(Death::Blackhole);
        }
        Ok(())
    }

    /// A connection between `a` (the dialer) and `b`: `a`'s end and `b`'s.
    fn connect(self: &Arc<Self>, a: usize, b: usize) -> (SimStream, SimStream) {
        let mut state = self.state();
        state.connections += 1;
        *state.between.entry((a.min(b), a.max(b))).or_default() += 1;
        let id = state.connections;
        let ab = Pipe::new(self, a, b, id * 2);
        let ba = Pipe::new(self, b, a, id * 2 + 1);
        for node in [a, b] {
            let list = state.pipes.entry(node).or_default();
            list.retain(|w| w.strong_count() > 0);
            list.extend([Arc::downgrade(&ab), Arc::downgrade(&ba)]);
        }
        (SimStream::new(ba.clone(), ab.clone()), SimStream::new(ab, ba))
    }

    /// When `node`'s uplink will have sent `len` more bytes, starting now.
    fn send_time(&self, node: usize, len: usize) -> Instant {
        let now = Instant::now();
        if self.links.uplink == 0 {
            return now;
        }
        let Some(uplink) = self.uplinks.get(node) else { return now };
        let mut free = uplink.lock().unwrap_or_else(|p| p.into_inner());
        let start = (*free).max(now);
        *free = start + dilate(Duration::from_secs_f64(len as f64 / self.links.uplink as f64));
        *free
    }
}

/// One direction of a connection.
struct Pipe {
    net: Weak<SimNet>,
    from: usize,
    to: usize,
    delay: Duration,
    inner: Mutex<PipeState>,
}

#[derive(Default)]
struct PipeState {
    queue: VecDeque<(Instant, Vec<u8>)>,
    reader: Option<Waker>,
    /// The writer closed it, or its node died at once: reads see the end.
    closed: bool,
    /// Bytes vanish from now on.
    blackholed: bool,
    /// When the last queued chunk arrives (order is kept).
    last: Option<Instant>,
    rng: Option<rand_chacha::ChaCha8Rng>,
}

impl Pipe {
    fn new(net: &Arc<SimNet>, from: usize, to: usize, id: u64) -> Arc<Self> {
        let rng = rand_chacha::ChaCha8Rng::seed_from_u64(net.seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        Arc::new(Self {
            net: Arc::downgrade(net),
            from,
            to,
            delay: dilate(net.latency.one_way(from, to)),
            inner: Mutex::new(PipeState { rng: Some(rng), ..PipeState::default() }),
        })
    }

    fn inner(&self) -> MutexGuard<'_, PipeState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, death: Death) {
        let mut s = self.inner();
        s.queue.clear();
        match death {
            Death::Close => s.closed = true,
            Death::Blackhole => s.blackholed = true,
        }
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }

    /// Queues `buf`; false if the pipe is closed.
    fn write(&self, buf: &[u8]) -> bool {
        let Some(net) = self.net.upgrade() else { return false };
        let sent = net.send_time(self.from, buf.len());
        let mut s = self.inner();
        if s.closed {
            return false;
        }
        if s.blackholed {
            return true;
        }
        net.traffic.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        net.traffic.writes.fetch_add(1, Ordering::Relaxed);
        let lost = net.links.loss > 0.0 && s.rng.as_mut().is_some_and(|r| r.gen_bool(net.links.loss.min(1.0)));
        let retransmit = if lost { self.delay * 2 } else { Duration::ZERO };
        let at = (sent + self.delay + retransmit).max(s.last.unwrap_or(sent));
        s.last = Some(at);
        s.queue.push_back((at, buf.to_vec()));
        if let Some(w) = s.reader.take() {
            w.wake();
        }
        true
    }

    fn close(&self) {
        let mut s = self.inner();
        s.closed = true;
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }
}

/// One end of a simulated connection.
pub struct SimStream {
    read: Arc<Pipe>,
    write: Arc<Pipe>,
    /// A chunk partly read, and how far (an offset, not a drain: readers take a few bytes
    /// at a time, and shifting the rest each time costs quadratic copying).
    partial: Vec<u8>,
    read_to: usize,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl SimStream {
    fn new(read: Arc<Pipe>, write: Arc<Pipe>) -> Self {
        Self { read, write, partial: Vec::new(), read_to: 0, sleep: None }
    }
}

impl AsyncRead for SimStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        loop {
            if self.read_to < self.partial.len() {
                let at = self.read_to;
                let n = buf.len().min(self.partial.len() - at);
                buf[..n].copy_from_slice(&self.partial[at..at + n]);
                self.read_to += n;
                return Poll::Ready(Ok(n));
            }
            let due = {
                let mut s = self.read.inner();
                match s.queue.front() {
                    Some((at, _)) if *at <= Instant::now() => s.queue.pop_front().map(|(_, chunk)| Ok(chunk)),
                    Some((at, _)) => Some(Err(*at)),
                    None if s.closed => return Poll::Ready(Ok(0)),
                    None => {
                        s.reader = Some(cx.waker().clone());
                        None
                    }
                }
            };
            match due {
                Some(Ok(chunk)) => {
                    self.sleep = None;
                    self.partial = chunk;
                    self.read_to = 0;
                }
                Some(Err(at)) => {
                    let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                    if sleep.deadline() != at {
                        sleep.as_mut().reset(at);
                    }
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                None => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.write.write(buf) {
            Poll::Ready(Ok(buf.len()))
        } else {
            Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.write.close();
        Poll::Ready(Ok(()))
    }
}

impl Drop for SimStream {
    fn drop(&mut self) {
        self.write.close();
        self.read.close();
    }
}

/// A node's transport on a [`SimNet`].
pub struct SimTransport {
    net: Arc<SimNet>,
    node: usize,
    listeners: Vec<(ListenerId, u64, mpsc::Receiver<Incoming>)>,
    events: VecDeque<TransportEvent<<Self as Transport>::ListenerUpgrade, std::io::Error>>,
}

fn port_of(addr: &Multiaddr) -> Option<u64> {
    match addr.iter().next() {
        Some(Protocol::Memory(port)) => Some(port),
        _ => None,
    }
}

impl Transport for SimTransport {
    type Output = SimStream;
    type Error = std::io::Error;
    type ListenerUpgrade = futures::future::Ready<Result<SimStream, std::io::Error>>;
    type Dial = BoxFuture<'static, Result<SimStream, std::io::Error>>;

    fn listen_on(&mut self, id: ListenerId, addr: Multiaddr) -> Result<(), TransportError<Self::Error>> {
        let port = match port_of(&addr) {
            Some(0) => self.node as u64 + 1,
            Some(p) => p,
            None => return Err(TransportError::MultiaddrNotSupported(addr)),
        };
        let (tx, rx) = mpsc::channel(BACKLOG);
        let mut state = self.net.state();
        if state.listeners.contains_key(&port) {
            return Err(TransportError::Other(std::io::ErrorKind::AddrInUse.into()));
        }
        state.listeners.insert(port, (self.node, tx));
        drop(state);
        self.listeners.push((id, port, rx));
        let listen_addr = Multiaddr::empty().with(Protocol::Memory(port));
        self.events.push_back(TransportEvent::NewAddress { listener_id: id, listen_addr });
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        let Some(i) = self.listeners.iter().position(|(l, _, _)| *l == id) else { return false };
        let (_, port, _) = self.listeners.remove(i);
        self.net.state().listeners.remove(&port);
        true
    }

    fn dial(&mut self, addr: Multiaddr, _: DialOpts) -> Result<Self::Dial, TransportError<Self::Error>> {
        let Some(port) = port_of(&addr) else { return Err(TransportError::MultiaddrNotSupported(addr)) };
        let (net, me) = (self.net.clone(), self.node);
        Ok(async move {
            let (target, dead) = {
                let state = net.state();
                let target = state.listeners.get(&port).map(|(node, tx)| (*node, tx.clone()));
                (target, state.dead.get(&(port as usize).wrapping_sub(1)).copied())
            };
            let Some((to, tx)) = target else {
                // Nobody listens there: a closed node's port refuses; a vanished one never answers.
                return match dead {
                    Some(Death::Blackhole) => futures::future::pending().await,
                    _ => Err(std::io::ErrorKind::ConnectionRefused.into()),
                };
            };
            let reach = SimNet::reachable(&net.state(), me, to);
            match reach {
                Err(Death::Close) => return Err(std::io::ErrorKind::ConnectionRefused.into()),
                Err(Death::Blackhole) => futures::future::pending().await,
                Ok(()) => {}
            }
            // The handshake: one round trip before either side may send.
            crate::clock::sleep(net.latency.one_way(me, to)).await;
            let (mine, theirs) = net.connect(me, to);
            tx.try_send((theirs, me as u64 + 1))
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::ConnectionRefused))?;
            crate::clock::sleep(net.latency.one_way(to, me)).await;
            Ok(mine)
        }
        .boxed())
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(event);
        }
        for (id, port, rx) in &mut self.listeners {
            if let Poll::Ready(Some((stream, from))) = rx.poll_recv(cx) {
                return Poll::Ready(TransportEvent::Incoming {
                    listener_id: *id,
                    upgrade: futures::future::ready(Ok(stream)),
                    local_addr: Multiaddr::empty().with(Protocol::Memory(*port)),
                    send_back_addr: Multiaddr::empty().with(Protocol::Memory(from)),
                });
            }
        }
        Poll::Pending
    }
}

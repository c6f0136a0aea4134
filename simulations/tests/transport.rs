//! The simulated network on its own: latency, byte order, the two ways to die.

use std::pin::Pin;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::core::transport::{DialOpts, ListenerId, PortUse, TransportEvent};
use libp2p::core::{Endpoint, Transport};
use nak_simulations::latency::LatencyMatrix;
use nak_simulations::transport::{Death, LinkConfig, SimNet, SimStream, SimTransport};
use tokio::time::Instant;

fn dial_opts() -> DialOpts {
    DialOpts { role: Endpoint::Dialer, port_use: PortUse::New }
}

/// The next event of a listening transport.
async fn next(
    t: &mut SimTransport,
) -> TransportEvent<futures::future::Ready<Result<SimStream, std::io::Error>>, std::io::Error> {
    futures::future::poll_fn(|cx| Pin::new(&mut *t).poll(cx)).await
}

/// Node 1 dials node 0; both ends of the connection.
async fn connected(net: &std::sync::Arc<SimNet>) -> (SimTransport, SimStream, SimStream) {
    let mut listener = net.transport(0);
    listener.listen_on(ListenerId::next(), SimNet::addr(0)).unwrap();
    assert!(matches!(next(&mut listener).await, TransportEvent::NewAddress { .. }));
    let dial = net.transport(1).dial(SimNet::addr(0), dial_opts()).unwrap();
    let (dialer, incoming) = tokio::join!(dial, next(&mut listener));
    let TransportEvent::Incoming { upgrade, send_back_addr, .. } = incoming else { panic!("no incoming connection") };
    assert_eq!(send_back_addr, SimNet::addr(1), "the dialer's own listening address");
    (listener, dialer.unwrap(), upgrade.await.unwrap())
}

#[tokio::test]
async fn bytes_arrive_in_order_after_the_latency() {
    let latency = LatencyMatrix::new(2, 3, 1.0);
    let one_way = latency.one_way(1, 0);
    let net = SimNet::new(latency, LinkConfig { uplink: 0, loss: 0.0 }, 3);
    let t0 = Instant::now();
    let (_l, mut a, mut b) = connected(&net).await;
    assert!(t0.elapsed() >= one_way * 2, "a connection costs a round trip");
    let sent = Instant::now();
    for chunk in [b"hello ".as_slice(), b"simulated ", b"world"] {
        a.write_all(chunk).await.unwrap();
    }
    let mut got = vec![0u8; 21];
    b.read_exact(&mut got).await.unwrap();
    assert_eq!(got, b"hello simulated world");
    let took = sent.elapsed();
    assert!(took >= one_way && took < one_way + Duration::from_millis(50), "{took:?} for a one-way {one_way:?}");
}

#[tokio::test]
async fn a_closed_node_ends_its_connections_and_refuses_dials() {
    let net = SimNet::new(LatencyMatrix::new(3, 1, 0.1), LinkConfig::default(), 1);
    let (_l, mut a, _b) = connected(&net).await;
    net.kill(0, Death::Close);
    let mut buf = [0u8; 8];
    assert_eq!(a.read(&mut buf).await.unwrap(), 0, "the end of the stream");
    assert!(a.write_all(b"x").await.is_err());
    let dial = net.transport(2).dial(SimNet::addr(0), dial_opts()).unwrap();
    assert_eq!(dial.await.err().map(|e| e.kind()), Some(std::io::ErrorKind::ConnectionRefused));
}

#[tokio::test]
async fn a_vanished_node_swallows_bytes_and_dials() {
    let net = SimNet::new(LatencyMatrix::new(3, 1, 0.1), LinkConfig::default(), 1);
    let (_l, mut a, _b) = connected(&net).await;
    net.kill(0, Death::Blackhole);
    a.write_all(b"into the void").await.unwrap();
    let mut buf = [0u8; 8];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), a.read(&mut buf)).await.is_err(),
        "nothing, not even an end"
    );
    let dial = net.transport(2).dial(SimNet::addr(0), dial_opts()).unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(300), dial).await.is_err(), "a dial that never answers");
}

#[tokio::test]
async fn a_severed_connection_loses_its_bytes_in_flight_and_both_may_dial_again() {
    let net = SimNet::new(LatencyMatrix::new(2, 3, 1.0), LinkConfig { uplink: 0, loss: 0.0 }, 3);
    let (mut listener, mut a, mut b) = connected(&net).await;
    assert!(!net.sever_in_flight(1, 0), "nothing is on its way");
    a.write_all(b"lost on the way").await.unwrap();
    assert!(!net.sever_in_flight(0, 1), "nothing is on its way the other way");
    assert!(net.sever_in_flight(1, 0));
    let mut buf = [0u8; 16];
    assert_eq!(b.read(&mut buf).await.unwrap(), 0, "the end of the stream, not the bytes");
    assert_eq!(a.read(&mut buf).await.unwrap(), 0);
    assert!(a.write_all(b"x").await.is_err());
    let dial = net.transport(1).dial(SimNet::addr(0), dial_opts()).unwrap();
    let (dialer, incoming) = tokio::join!(dial, next(&mut listener));
    assert!(dialer.is_ok() && matches!(incoming, TransportEvent::Incoming { .. }), "a new connection");
}

#[tokio::test]
async fn an_idle_sever_needs_a_connection_with_nothing_on_its_way_and_shows_at_the_next_write() {
    let net = SimNet::new(LatencyMatrix::new(2, 3, 1.0), LinkConfig { uplink: 0, loss: 0.0 }, 3);
    assert!(!net.sever_idle(1, 0), "no connection to break");
    let (mut listener, mut a, mut b) = connected(&net).await;
    assert_eq!(net.connections_between(0, 1), 1);
    a.write_all(b"on its way").await.unwrap();
    assert!(!net.sever_idle(1, 0), "bytes are on their way");
    let mut buf = [0u8; 16];
    assert_eq!(b.read(&mut buf).await.unwrap(), 10);
    assert!(net.sever_idle(1, 0));
    assert!(a.write_all(b"x").await.is_err(), "the next write finds the break");
    let dial = net.transport(1).dial(SimNet::addr(0), dial_opts()).unwrap();
    let (dialer, _) = tokio::join!(dial, next(&mut listener));
    assert!(dialer.is_ok());
    assert_eq!(net.connections_between(1, 0), 2, "counted whichever way round");
}

//! A behaviour wrapper that remembers when the node last sent each peer a request
//! through it.
//!
//! The connection bound ([`super::task`]'s trim) closes the connections used least
//! recently, and Kademlia's traffic is invisible to the swarm's events: a provide's walk
//! asked its peers over connections opened long before, the bound closed some of them
//! while the walk went on, and Kademlia then sent the provider record (a message with no
//! answer) to peers no longer connected. It dials them and forgets the message when the
//! query ends, at once (`libp2p-kad` 0.49): the record never arrived. [`ActivityTracked`]
//! sits between the swarm and a behaviour, and every request the behaviour sends a peer
//! marks that peer as used now; the trim keeps the connections of peers used within its
//! grace, long enough for the answer. Requests that peers send us, and our answers, do
//! not count: in a swarm that is joining every node is asked all the time, and counting
//! them kept nearly every connection open (a 1000-node run passed 14 GiB halfway through
//! its joins); a peer whose connection we close mid-request routes around us.

use std::collections::HashMap;
use std::task::{Context, Poll};
use std::time::Instant;

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// `B`, and when it last sent each connected peer a request.
pub struct ActivityTracked<B> {
    inner: B,
    last_sent: HashMap<PeerId, Instant>,
}

impl<B> ActivityTracked<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        Self { inner, last_sent: HashMap::new() }
    }

    /// When this behaviour last sent `peer` a request, while connected.
    pub fn last_sent(&self, peer: &PeerId) -> Option<Instant> {
        self.last_sent.get(peer).copied()
    }
}

impl<B> std::ops::Deref for ActivityTracked<B> {
    type Target = B;
    fn deref(&self) -> &B {
        &self.inner
    }
}

impl<B> std::ops::DerefMut for ActivityTracked<B> {
    fn deref_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for ActivityTracked<B> {
    type ConnectionHandler = B::ConnectionHandler;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner.handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_inbound_connection(connection_id, peer, local_addr, remote_addr)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(connection_id, maybe_peer, addresses, effective_role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_outbound_connection(connection_id, peer, addr, role_override, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = &event {
            if closed.remaining_established == 0 {
                self.last_sent.remove(&closed.peer_id);
            }
        }
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer_id, connection_id, event)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        let polled = self.inner.poll(cx);
        // Kademlia hands its own requests to any connection to the peer and its answers
        // to the connection that asked: only the requests count (see the module doc).
        if let Poll::Ready(ToSwarm::NotifyHandler { peer_id, handler: NotifyHandler::Any, .. }) = &polled {
            self.last_sent.insert(*peer_id, Instant::now());
        }
        polled
    }
}

//! Incoming connections bounded per remote IP address.
//!
//! libp2p's `connection_limits` bounds pending and established connections in all and
//! per peer, but a peer id costs nothing to make, and one host holding every pending
//! slot with sockets that never finish their handshake keeps every other newcomer out.
//! No libp2p crate bounds connections per address, so this small behaviour does: an
//! incoming connection is counted under its remote IP from the moment it arrives until
//! it fails or closes, and refused when its IP already has
//! [`super::ResourceLimits::max_pending_incoming_per_ip`] pending or
//! [`super::ResourceLimits::max_established_incoming_per_ip`] established. Relayed
//! connections (whose address is the relay's) and addresses without an IP (an
//! in-memory transport) are not counted.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    dummy, ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, ListenFailure, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// A connection refused because its IP holds enough already.
#[derive(Debug, thiserror::Error)]
#[error("{ip} already has {count} {state} incoming connections")]
pub struct PerIpLimitExceeded {
    ip: IpAddr,
    count: u32,
    state: &'static str,
}

/// Counts of incoming connections per remote IP (see the module doc).
#[derive(Debug, Default)]
pub(super) struct PerIpLimits {
    max_pending: u32,
    max_established: u32,
    /// Each counted connection: its IP, and whether it is established.
    connections: HashMap<ConnectionId, (IpAddr, bool)>,
    /// Per IP: pending, established.
    counts: HashMap<IpAddr, (u32, u32)>,
}

impl PerIpLimits {
    pub(super) fn new(max_pending: u32, max_established: u32) -> Self {
        PerIpLimits { max_pending, max_established, ..Default::default() }
    }

    fn release(&mut self, id: ConnectionId) {
        let Some((ip, established)) = self.connections.remove(&id) else { return };
        if let Some(c) = self.counts.get_mut(&ip) {
            match established {
                true => c.1 = c.1.saturating_sub(1),
                false => c.0 = c.0.saturating_sub(1),
            }
            if *c == (0, 0) {
                self.counts.remove(&ip);
            }
        }
    }
}

/// The IP a connection comes from, unless it is relayed.
fn remote_ip(addr: &Multiaddr) -> Option<IpAddr> {
    if addr.iter().any(|p| p == Protocol::P2pCircuit) {
        return None;
    }
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl NetworkBehaviour for PerIpLimits {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(ip) = remote_ip(remote) else { return Ok(()) };
        let held = self.counts.get(&ip).map_or(0, |c| c.0);
        if held >= self.max_pending {
            return Err(ConnectionDenied::new(PerIpLimitExceeded { ip, count: held, state: "pending" }));
        }
        self.counts.entry(ip).or_default().0 += 1;
        self.connections.insert(id, (ip, false));
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        _peer: PeerId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.release(id);
        let Some(ip) = remote_ip(remote) else { return Ok(dummy::ConnectionHandler) };
        let held = self.counts.get(&ip).map_or(0, |c| c.1);
        if held >= self.max_established {
            return Err(ConnectionDenied::new(PerIpLimitExceeded { ip, count: held, state: "established" }));
        }
        self.counts.entry(ip).or_default().1 += 1;
        self.connections.insert(id, (ip, true));
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        // A connection refused by another behaviour after this one counted it ends in a
        // listen failure too.
        match event {
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. })
            | FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => self.release(connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, _peer: PeerId, _id: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_ip_has_its_own_bound_and_closed_connections_free_their_place() {
        let mut limits = PerIpLimits::new(2, 1);
        let (local, a, b) = (addr("/ip4/10.0.0.1/tcp/1"), addr("/ip4/1.2.3.4/tcp/9"), addr("/ip4/5.6.7.8/tcp/9"));
        let ids: Vec<ConnectionId> = (0..5).map(|_| ConnectionId::new_unchecked(rand::random())).collect();
        assert!(limits.handle_pending_inbound_connection(ids[0], &local, &a).is_ok());
        assert!(limits.handle_pending_inbound_connection(ids[1], &local, &a).is_ok());
        assert!(limits.handle_pending_inbound_connection(ids[2], &local, &a).is_err(), "a third pending from one IP");
        assert!(limits.handle_pending_inbound_connection(ids[3], &local, &b).is_ok(), "another IP is not held back");
        // One of A's finishes its handshake: a pending place frees; a second established is refused.
        let peer = PeerId::random();
        assert!(limits.handle_established_inbound_connection(ids[0], peer, &local, &a).is_ok());
        assert!(limits.handle_pending_inbound_connection(ids[2], &local, &a).is_ok());
        assert!(limits.handle_established_inbound_connection(ids[1], peer, &local, &a).is_err());
        // Relayed and in-memory connections are not counted.
        let relayed = addr("/ip4/1.2.3.4/tcp/9/p2p/12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo/p2p-circuit");
        assert!(limits.handle_pending_inbound_connection(ids[4], &local, &relayed).is_ok());
        assert!(limits.handle_pending_inbound_connection(ids[4], &local, &addr("/memory/7")).is_ok());
        assert!(!limits.connections.contains_key(&ids[4]));
        // Closing and failing free every place; nothing is left behind.
        for id in &ids {
            limits.release(*id);
        }
        assert!(limits.counts.is_empty() && limits.connections.is_empty(), "{:?}", limits.counts);
    }
}

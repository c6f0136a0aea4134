//! The hops of a session's route as the client holds them, and the frames and errors
//! about one hop, shared by [`super::session`] and [`super::recovery`].

use libp2p::PeerId;
use nak_protocol::pb;

use super::links::Link;
use super::{ClientError, RouteHop};

/// One hop of the live route.
pub(super) struct Hop {
    pub(super) route: RouteHop,
    pub(super) session_id: u64,
    pub(super) link: Link,
}

/// A step the first hop ran, kept to replay it to a replacement first hop.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    pub(super) step: u64,
    pub(super) position: u32,
    pub(super) rows: u32,
    pub(super) generation: u32,
    pub(super) more: bool,
}

/// The server that turned a session away, if that is what `e` says.
pub(super) fn refused(e: &ClientError) -> Option<PeerId> {
    use pb::ErrorCode::{Closed, Overloaded, WrongSpan};
    match e {
        ClientError::Hop { peer, code: Overloaded | WrongSpan | Closed, .. } => Some(*peer),
        _ => None,
    }
}

/// `route` as the hop a server pushes its output to.
pub(super) fn push_target(route: &RouteHop, session_id: u64) -> pb::Hop {
    pb::Hop { peer_id: route.peer.to_bytes(), addrs: route.addrs.iter().map(|a| a.to_vec()).collect(), session_id }
}

/// The error of `hop` failing or refusing with `code`.
pub(super) fn hop_error(hop: &RouteHop, code: pb::ErrorCode, message: impl std::fmt::Display) -> ClientError {
    ClientError::Hop { peer: hop.peer, start: hop.start, end: hop.end, code, message: message.to_string() }
}

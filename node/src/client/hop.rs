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
    /// Trailing rows that are drafts.
    pub(super) draft: u32,
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

/// The tokens a ring's result `r` brings to a client that has the positions before
/// `expected` (`r.position` is not before it): the tokens of the rows the last hop ran
/// from `expected` on, which the client missed, then `r`'s own. None when they do not
/// reach back that far.
pub(super) fn ring_tokens(r: &pb::StepResult, expected: u32) -> Option<Vec<i32>> {
    let missed = r.position.checked_sub(expected)? as usize;
    let from = r.fed.len().checked_sub(missed)?;
    if missed > 0 {
        tracing::debug!(missed, position = r.position, "a ring result brings tokens whose results were lost");
    }
    Some(r.fed[from..].iter().copied().chain([r.token]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_result_fills_in_the_tokens_whose_results_were_lost() {
        let r = pb::StepResult { token: 7, position: 30, fed: vec![4, 5, 6], has_token: true, ..Default::default() };
        assert_eq!(ring_tokens(&r, 30), Some(vec![7]));
        assert_eq!(ring_tokens(&r, 29), Some(vec![6, 7]));
        assert_eq!(ring_tokens(&r, 27), Some(vec![4, 5, 6, 7]));
        assert_eq!(ring_tokens(&r, 26), None, "the result does not reach back to position 26");
        let bare = pb::StepResult { fed: vec![], ..r };
        assert_eq!(ring_tokens(&bare, 29), None, "a result without its rows' tokens cannot fill a gap");
    }
}

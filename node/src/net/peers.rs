//! Where a node finds peers to join through besides `--bootstrap`: the
//! `NAKSHATRA_BOOTSTRAP` variable, a `bootstrap` file in the data directory, and the
//! peers it met before (the `peers` file, which the network task keeps).
//!
//! The task remembers the address it reached each peer at (or that the peer's identify
//! reports), the most recent [`MAX_REMEMBERED`] peers, and rewrites the file when that
//! changed, at most every [`SAVE_EVERY`] and at shutdown. Both files hold one multiaddr
//! with its `/p2p/` part per line; `#` starts a comment.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use super::NetworkError;

/// Comma-separated bootstrap addresses.
pub const BOOTSTRAP_ENV: &str = "NAKSHATRA_BOOTSTRAP";
/// The user's list of bootstrap addresses, in the data directory.
pub const BOOTSTRAP_FILE: &str = "bootstrap";
/// The peers a node met, in the data directory.
pub const PEERS_FILE: &str = "peers";
/// Peers remembered.
pub const MAX_REMEMBERED: usize = 64;
/// Least time between two rewrites of the peers file.
pub const SAVE_EVERY: Duration = Duration::from_secs(1);

/// The addresses in the user's `bootstrap` file of `data_dir` (none if there is no
/// file); a line that is not a multiaddr with a `/p2p/` part is an error naming it.
pub fn bootstrap_file_peers(data_dir: &Path) -> Result<Vec<Multiaddr>, NetworkError> {
    let path = data_dir.join(BOOTSTRAP_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(NetworkError::Setup(format!("{}: {e}", path.display()))),
    };
    let mut out = Vec::new();
    for (n, line) in lines(&text) {
        match parse_peer_addr(line) {
            Some(addr) => out.push(addr),
            None => {
                return Err(NetworkError::Setup(format!(
                    "{} line {n}: {line:?} is not a multiaddr ending in /p2p/<peer id>",
                    path.display()
                )))
            }
        }
    }
    Ok(out)
}

/// The addresses in a peers file this node wrote (lines it cannot read are skipped:
/// the file is a cache).
pub fn read_peers_file(path: &Path) -> Vec<Multiaddr> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    lines(&text).filter_map(|(_, line)| parse_peer_addr(line)).collect()
}

/// Non-empty lines without comments, numbered from 1.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.split('#').next().unwrap_or_default().trim()))
        .filter(|(_, l)| !l.is_empty())
}

fn parse_peer_addr(text: &str) -> Option<Multiaddr> {
    let addr: Multiaddr = text.parse().ok()?;
    matches!(addr.iter().last(), Some(Protocol::P2p(_))).then_some(addr)
}

/// The peers met, most recent last, at most [`MAX_REMEMBERED`].
#[derive(Debug, Default)]
pub(super) struct MetPeers {
    peers: VecDeque<(PeerId, Multiaddr)>,
    changed: bool,
}

impl MetPeers {
    /// Starts from a peers file's contents.
    pub(super) fn load(path: &Path) -> Self {
        let mut met = Self::default();
        for addr in read_peers_file(path) {
            if let Some(Protocol::P2p(peer)) = addr.iter().last() {
                met.remember(peer, addr);
            }
        }
        met.changed = false;
        met
    }

    /// Remembers `addr` (without a `/p2p/` part, or with `peer`'s) as where `peer` is;
    /// relayed addresses are not kept (the relay may be gone by the next start).
    pub(super) fn remember(&mut self, peer: PeerId, addr: Multiaddr) {
        if addr.iter().any(|p| p == Protocol::P2pCircuit) {
            return;
        }
        let addr = match addr.iter().last() {
            Some(Protocol::P2p(p)) if p == peer => addr,
            Some(Protocol::P2p(_)) => return,
            _ => addr.with(Protocol::P2p(peer)),
        };
        if self.peers.back().is_some_and(|(p, a)| *p == peer && *a == addr) {
            return;
        }
        self.peers.retain(|(p, _)| *p != peer);
        self.peers.push_back((peer, addr));
        while self.peers.len() > MAX_REMEMBERED {
            self.peers.pop_front();
        }
        self.changed = true;
    }

    /// Whether `peer` is remembered.
    pub(super) fn knows(&self, peer: &PeerId) -> bool {
        self.peers.iter().any(|(p, _)| p == peer)
    }

    /// Forgets a peer (a banned one).
    pub(super) fn forget(&mut self, peer: &PeerId) {
        let before = self.peers.len();
        self.peers.retain(|(p, _)| p != peer);
        self.changed |= self.peers.len() != before;
    }

    /// Writes the file (atomically) if anything changed since the last write.
    pub(super) fn save(&mut self, path: &Path) -> std::io::Result<()> {
        if !self.changed {
            return Ok(());
        }
        let mut text = String::from("# peers this node met; rewritten by the node\n");
        for (_, addr) in &self.peers {
            text.push_str(&format!("{addr}\n"));
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)?;
        self.changed = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16, peer: PeerId) -> Multiaddr {
        format!("/ip4/10.0.0.1/tcp/{port}/p2p/{peer}").parse().unwrap()
    }

    #[test]
    fn met_peers_are_bounded_saved_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PEERS_FILE);
        let mut met = MetPeers::default();
        let peers: Vec<PeerId> = (0..MAX_REMEMBERED + 5).map(|_| PeerId::random()).collect();
        for (i, p) in peers.iter().enumerate() {
            met.remember(*p, format!("/ip4/10.0.0.1/tcp/{}", 1000 + i).parse().unwrap());
        }
        // A relayed address and an address naming another peer are not kept.
        met.remember(
            peers[0],
            "/ip4/10.0.0.9/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit".parse().unwrap(),
        );
        met.remember(peers[1], addr(7, peers[2]));
        met.save(&path).unwrap();
        let back = read_peers_file(&path);
        assert_eq!(back.len(), MAX_REMEMBERED);
        assert_eq!(back.last(), Some(&addr(1000 + MAX_REMEMBERED as u16 + 4, peers[MAX_REMEMBERED + 4])));
        assert!(!back.iter().any(|a| a.to_string().contains(&peers[0].to_string())), "the oldest were dropped");
        let mut again = MetPeers::load(&path);
        again.forget(&peers[MAX_REMEMBERED + 4]);
        again.save(&path).unwrap();
        assert_eq!(read_peers_file(&path).len(), MAX_REMEMBERED - 1);
    }

    #[test]
    fn a_bad_line_in_the_bootstrap_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(bootstrap_file_peers(dir.path()).unwrap().is_empty());
        let good = addr(4001, PeerId::random());
        std::fs::write(dir.path().join(BOOTSTRAP_FILE), format!("# ours\n{good}  # the lab\n\n")).unwrap();
        assert_eq!(bootstrap_file_peers(dir.path()).unwrap(), vec![good.clone()]);
        std::fs::write(dir.path().join(BOOTSTRAP_FILE), format!("{good}\n/ip4/1.2.3.4/tcp/1\n")).unwrap();
        let err = bootstrap_file_peers(dir.path()).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("/p2p/"), "{err}");
    }
}

//! Separate and private swarms.
//!
//! A swarm's name goes into every protocol id a node speaks (Kademlia, gossipsub, blob
//! exchange, inference streams, identify) and, on TCP, into the noise handshake's
//! prologue. Nodes of two swarms therefore fail the handshake on TCP; over QUIC (TLS,
//! no prologue) they connect but share no protocol, and each closes the connection once
//! identify shows the other's swarm. Their DHTs, records and gossip topics never meet:
//! a Kademlia query or a gossip message only travels over the swarm's own protocol id.
//! The `public` swarm keeps the plain protocol ids, so it speaks with any libp2p peer
//! that knows them.
//!
//! A private swarm adds a pre-shared key (libp2p pnet, the format of IPFS private
//! networks' `swarm.key`): every TCP connection is encrypted with it before anything
//! else, so a node without the key cannot even complete a handshake. pnet has no QUIC
//! form, so a private swarm runs on TCP alone (`behaviour::private_tcp_transport`).

use std::path::Path;

use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;
use libp2p::{noise, StreamProtocol};

use super::NetworkError;

/// The swarm a node joins unless told otherwise.
pub const PUBLIC_SWARM: &str = "public";

/// The protocol ids and noise prologue of one swarm.
#[derive(Debug, Clone)]
pub struct SwarmProtocols {
    /// The swarm's name.
    pub name: String,
    /// Kademlia.
    pub kad: StreamProtocol,
    /// Blob exchange (blobs, manifests, announcements, proofs).
    pub blobs: StreamProtocol,
    /// Inference sessions.
    pub inference: StreamProtocol,
    /// Identify's protocol version string: a peer that names another is of another swarm.
    pub identify: String,
    /// Gossipsub's protocol id prefix (`None`: gossipsub's own, `/meshsub`).
    pub gossip_prefix: Option<String>,
    /// Bytes both ends of a noise handshake must agree on (empty for the public swarm).
    pub noise_prologue: Vec<u8>,
}

impl SwarmProtocols {
    /// The protocols of swarm `name`: 1 to 32 characters of `a-z`, `0-9` and `-`.
    pub fn of(name: &str) -> Result<Self, NetworkError> {
        let valid = !name.is_empty()
            && name.len() <= 32
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(NetworkError::Setup(format!(
                "swarm name {name:?}: use 1 to 32 characters of a-z, 0-9 and '-'"
            )));
        }
        let public = name == PUBLIC_SWARM;
        // `/nakshatra/kad/1.0.0` in the public swarm, `/nakshatra-NAME/kad/1.0.0` in another.
        let id = |rest: &str| {
            let prefix = if public { "/nakshatra".to_string() } else { format!("/nakshatra-{name}") };
            StreamProtocol::try_from_owned(format!("{prefix}{rest}"))
                .map_err(|e| NetworkError::Setup(format!("protocol id for swarm {name}: {e}")))
        };
        Ok(Self {
            name: name.to_string(),
            kad: id("/kad/1.0.0")?,
            blobs: id("/blobs/1")?,
            inference: id("/inference/1")?,
            identify: id("/id/1.0.0")?.to_string(),
            gossip_prefix: (!public).then(|| format!("/nakshatra-{name}/meshsub")),
            noise_prologue: if public { Vec::new() } else { format!("nakshatra swarm {name}").into_bytes() },
        })
    }

    /// A noise configuration with this swarm's prologue.
    pub fn noise(&self, key: &Keypair) -> Result<noise::Config, noise::Error> {
        Ok(noise::Config::new(key)?.with_prologue(self.noise_prologue.clone()))
    }
}

/// Reads a private swarm's pre-shared key: the IPFS `swarm.key` format
/// (`/key/swarm/psk/1.0.0/`, `/base16/`, then 64 hex digits).
pub fn read_swarm_key(path: &Path) -> Result<PreSharedKey, NetworkError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| NetworkError::Setup(format!("swarm key {}: {e}", path.display())))?;
    text.parse().map_err(|e| {
        NetworkError::Setup(format!(
            "swarm key {}: {e} (expected /key/swarm/psk/1.0.0/, /base16/ and 64 hex digits, one per line)",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_swarm_keeps_the_plain_protocol_ids() {
        let p = SwarmProtocols::of(PUBLIC_SWARM).unwrap();
        assert_eq!(p.kad.as_ref(), "/nakshatra/kad/1.0.0");
        assert_eq!(p.inference.as_ref(), "/nakshatra/inference/1");
        assert!(p.gossip_prefix.is_none() && p.noise_prologue.is_empty());
    }

    #[test]
    fn other_swarms_have_their_own_ids_and_bad_names_are_refused() {
        let lab = SwarmProtocols::of("lab-2").unwrap();
        assert_eq!(lab.kad.as_ref(), "/nakshatra-lab-2/kad/1.0.0");
        assert_eq!(lab.blobs.as_ref(), "/nakshatra-lab-2/blobs/1");
        assert_ne!(lab.noise_prologue, SwarmProtocols::of("lab-3").unwrap().noise_prologue);
        for bad in ["", "Lab", "a/b", "x y", &"a".repeat(33)] {
            assert!(SwarmProtocols::of(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn swarm_keys_are_read_in_the_ipfs_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swarm.key");
        std::fs::write(&path, format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", "ab".repeat(32))).unwrap();
        assert!(read_swarm_key(&path).is_ok());
        std::fs::write(&path, "/key/swarm/psk/1.0.0/\n/base16/\nnot hex\n").unwrap();
        assert!(read_swarm_key(&path).is_err());
        assert!(read_swarm_key(&dir.path().join("missing")).is_err());
    }
}

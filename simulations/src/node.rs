//! A simulated node: the real network task (Kademlia, gossipsub, identify, ping, blob
//! exchange) on a [`SimTransport`], with a key drawn from the seed and a store in a
//! directory of the run (on tmpfs where the host has one: stores sync their files).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use libp2p::identity::ed25519;
use libp2p::Multiaddr;
use nak_node::net::{InjectedTransport, Network, NetworkConfig, NetworkHandle};
use nak_shard_store::Store;
use rand::{RngCore, SeedableRng};

use crate::transport::SimNet;

/// Node `n`'s identity, a pure function of the run's seed.
pub fn key(seed: u64, n: usize) -> ed25519::Keypair {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed ^ (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    // Any 32 bytes make an Ed25519 secret key.
    let secret = ed25519::SecretKey::try_from_bytes(&mut secret).expect("32 bytes are a valid ed25519 secret");
    ed25519::Keypair::from(secret)
}

/// Node `n`'s peer id.
pub fn peer_of(seed: u64, n: usize) -> libp2p::PeerId {
    libp2p::PeerId::from_public_key(&key(seed, n).public().into())
}

/// Node `n`'s address with its peer id.
pub fn dial_addr(seed: u64, n: usize) -> Multiaddr {
    SimNet::addr(n).with(libp2p::multiaddr::Protocol::P2p(peer_of(seed, n)))
}

/// A directory for the run's stores: under /dev/shm when there is one.
pub fn run_dir() -> Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
    dir.context("a directory for the nodes' stores")
}

/// Network settings of a simulated node: listening on its simulated address, joining
/// through `bootstrap`; no mDNS and no AutoNAT (every simulated node is reachable), and
/// the real node's defaults for everything else.
pub fn config(n: usize, bootstrap: Vec<Multiaddr>) -> NetworkConfig {
    NetworkConfig {
        listen: vec![SimNet::addr(n)],
        // Every simulated node is reachable at its listen address.
        external_addresses: vec![SimNet::addr(n)],
        bootstrap,
        mdns: false,
        autonat: false,
        ..NetworkConfig::default()
    }
}

/// Starts node `n`'s network on `net` with `cfg`, its store under `dir`.
pub async fn spawn(net: &Arc<SimNet>, dir: &Path, seed: u64, n: usize, cfg: NetworkConfig) -> Result<NetworkHandle> {
    let store = Store::open(store_dir(dir, n))?;
    let keypair = libp2p::identity::Keypair::from(key(seed, n));
    let transport = secured(net.transport(n), &keypair);
    let (handle, _task) = Network::spawn_with_transport(key(seed, n), store, cfg, Some(transport)).await?;
    Ok(handle)
}

/// The simulated transport upgraded as the node's real ones are, except that the
/// handshake only exchanges keys (libp2p's plaintext protocol) instead of running
/// Noise: peers still prove nothing about themselves to a simulated network that
/// cannot lie, and the Diffie-Hellman and cipher work, about a tenth of a 200-node
/// run's CPU, is left to the benchmarks that measure it on real sockets.
fn secured(transport: crate::transport::SimTransport, keypair: &libp2p::identity::Keypair) -> InjectedTransport {
    use libp2p::core::upgrade::Version;
    use libp2p::Transport as _;
    transport
        .upgrade(Version::V1)
        .authenticate(libp2p::plaintext::Config::new(keypair))
        .multiplex(libp2p::yamux::Config::default())
        .timeout(crate::clock::dilate(nak_node::net::HANDSHAKE_TIMEOUT))
        .boxed()
}

fn store_dir(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("n{n}"))
}

//! The node's identity: an Ed25519 key kept in the data directory.
//!
//! The 32-byte secret lives in `identity.ed25519` (mode 0600 on Unix). The same key
//! names the node on libp2p (its peer id) and signs its announcements.

use std::fs;
use std::io::Write;
use std::path::Path;

use libp2p::identity::{ed25519, Keypair};

/// Errors of identity handling.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The key file could not be read or written.
    #[error("identity file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The key file does not hold a valid key.
    #[error("identity file {0} is not a 32-byte Ed25519 secret")]
    Invalid(String),
}

/// File name of the identity key inside the data directory.
pub const IDENTITY_FILE: &str = "identity.ed25519";

/// Loads the node's key from `data_dir`, creating and saving a new one on first run.
pub fn load_or_create(data_dir: &Path) -> Result<ed25519::Keypair, IdentityError> {
    let path = data_dir.join(IDENTITY_FILE);
    let io = |source| IdentityError::Io { path: path.display().to_string(), source };
    match fs::read(&path) {
        Ok(mut bytes) => ed25519::SecretKey::try_from_bytes(&mut bytes)
            .map(ed25519::Keypair::from)
            .map_err(|_| IdentityError::Invalid(path.display().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = ed25519::Keypair::generate();
            fs::create_dir_all(data_dir).map_err(io)?;
            let tmp = path.with_extension("tmp");
            let mut opts = fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp).map_err(io)?;
            f.write_all(key.secret().as_ref()).and_then(|_| f.sync_all()).map_err(io)?;
            fs::rename(&tmp, &path).map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

/// The same key as an `ed25519_dalek` signer (announcements, receipts).
pub fn signing_key(key: &ed25519::Keypair) -> ed25519_dalek::SigningKey {
    // libp2p's Ed25519 secret is exactly 32 bytes, so the copy cannot fail.
    let mut secret = [0u8; 32];
    secret.copy_from_slice(key.secret().as_ref());
    ed25519_dalek::SigningKey::from_bytes(&secret)
}

/// The libp2p keypair of an Ed25519 key.
pub fn libp2p_keypair(key: &ed25519::Keypair) -> Keypair {
    Keypair::from(key.clone())
}

//! Model manifests, model ids and the blob formats they point to.
//!
//! A model is stored as blobs, each named by the blake3 hash of its bytes:
//!
//! - `meta`: the GGUF metadata (tokenizer included), GGUF-encoded;
//! - `embd`: the token embedding;
//! - `shared`: tensors outside the blocks that all layers use (absent when there are none);
//! - `block` i: every `blk.i.*` tensor, named without the `blk.i.` prefix, so identical
//!   layers of two models are one blob;
//! - `head`: the output norm and output matrix (just the norm when the head is tied to
//!   the embedding, which the manifest records).
//!
//! A tensor blob is `NAKB`, a u32 version, a u64 table length, a GGUF-style tensor table
//! (name, dims, type, offset into the data) and the tensors' bytes back to back.
//!
//! The manifest lists the blobs (role, layer, size, hash). Its canonical encoding is
//! compact JSON with fields in declaration order; the model id is the blake3 hash of
//! those bytes, so the same model imported anywhere gets the same id.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::gguf::{decode_tensor_table, encode_tensor_table, GgufError, TensorInfo};

/// A blake3 hash naming a blob.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// Hashes bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Hash(*blake3::hash(bytes).as_bytes())
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, blake3::HexError> {
        blake3::Hash::from_hex(s).map(Hash::from)
    }
}

impl From<blake3::Hash> for Hash {
    fn from(h: blake3::Hash) -> Self {
        Hash(*h.as_bytes())
    }
}

impl From<Hash> for blake3::Hash {
    fn from(h: Hash) -> Self {
        blake3::Hash::from_bytes(h.0)
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", &self.to_hex()[..16])
    }
}

impl Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Hash::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// A model's id: the hash of its manifest's canonical bytes.
pub type ModelId = Hash;

impl Hash {
    /// The id of a manifest from its canonical bytes.
    pub fn of_canonical(bytes: &[u8]) -> ModelId {
        Hash::of(bytes)
    }
}

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobRole {
    /// GGUF metadata.
    Meta,
    /// Token embedding.
    Embd,
    /// Non-block tensors all layers use.
    Shared,
    /// One transformer block.
    Block,
    /// Output norm and head.
    Head,
}

/// One blob of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// What it holds.
    pub role: BlobRole,
    /// The block index, for `block` blobs.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub layer: Option<u32>,
    /// Bytes.
    pub size: u64,
    /// blake3 of the bytes.
    pub hash: Hash,
}

/// The list of blobs that make a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version (1).
    pub format: u32,
    /// `general.name`, or the file name it was imported from.
    pub name: String,
    /// `general.architecture`.
    pub architecture: String,
    /// Transformer layers.
    pub n_layer: u32,
    /// Whether the output head reuses the token embedding.
    pub tied_embedding: bool,
    /// Blobs: meta, embd, shared (if any), blocks 0..n_layer, head.
    pub blobs: Vec<BlobRef>,
}

/// Errors of manifest and blob parsing.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not valid manifest JSON.
    #[error("not a valid manifest: {0}")]
    Json(#[from] serde_json::Error),
    /// The manifest's blob list is inconsistent.
    #[error("inconsistent manifest: {0}")]
    Inconsistent(String),
    /// A tensor blob's header is malformed.
    #[error("malformed tensor blob: {0}")]
    Blob(String),
    /// The tensor table inside a blob is malformed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
}

/// Current manifest format.
pub const MANIFEST_FORMAT: u32 = 1;

impl Manifest {
    /// The canonical bytes: compact JSON, fields in declaration order.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Serialising plain structs and strings to a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// This manifest's model id.
    pub fn model_id(&self) -> ModelId {
        Hash::of_canonical(&self.canonical_bytes())
    }

    /// Parses canonical bytes and checks the blob list's shape.
    pub fn from_canonical(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: Manifest = serde_json::from_slice(bytes)?;
        m.check()?;
        Ok(m)
    }

    fn check(&self) -> Result<(), ManifestError> {
        let bad = |m: &str| Err(ManifestError::Inconsistent(m.into()));
        if self.format != MANIFEST_FORMAT {
            return bad("unknown format version");
        }
        let count = |r: BlobRole| self.blobs.iter().filter(|b| b.role == r).count();
        if count(BlobRole::Meta) != 1 || count(BlobRole::Embd) != 1 || count(BlobRole::Head) != 1 {
            return bad("needs exactly one meta, embd and head blob");
        }
        if count(BlobRole::Shared) > 1 {
            return bad("at most one shared blob");
        }
        if self.blobs.iter().any(|b| (b.role == BlobRole::Block) != b.layer.is_some()) {
            return bad("block blobs, and only they, name a layer");
        }
        let layers: Vec<Option<u32>> =
            self.blobs.iter().filter(|b| b.role == BlobRole::Block).map(|b| b.layer).collect();
        if layers != (0..self.n_layer).map(Some).collect::<Vec<_>>() {
            return bad("block blobs must be layers 0..n_layer in order");
        }
        Ok(())
    }

    /// The blob with `role` (and `layer` for blocks).
    pub fn blob(&self, role: BlobRole, layer: Option<u32>) -> Option<&BlobRef> {
        self.blobs.iter().find(|b| b.role == role && b.layer == layer)
    }

    /// Total bytes of all blobs.
    pub fn total_size(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }
}

const BLOB_MAGIC: &[u8; 4] = b"NAKB";
const BLOB_VERSION: u32 = 1;
/// Bytes before the tensor table in a tensor blob.
pub const TENSOR_BLOB_PREFIX: usize = 16;

/// The header of a tensor blob for `tensors` (offsets are assigned back to back).
pub fn tensor_blob_header(tensors: &[TensorInfo]) -> Vec<u8> {
    let mut offset = 0;
    let table: Vec<TensorInfo> = tensors
        .iter()
        .map(|t| {
            let info = TensorInfo { offset, ..t.clone() };
            offset += t.n_bytes().unwrap_or(0);
            info
        })
        .collect();
    let table = encode_tensor_table(&table);
    let mut out = Vec::with_capacity(TENSOR_BLOB_PREFIX + table.len());
    out.extend_from_slice(BLOB_MAGIC);
    out.extend_from_slice(&BLOB_VERSION.to_le_bytes());
    out.extend_from_slice(&(table.len() as u64).to_le_bytes());
    out.extend_from_slice(&table);
    out
}

/// Length of the tensor table that follows a blob's 16-byte prefix.
pub fn tensor_blob_table_len(prefix: &[u8]) -> Result<u64, ManifestError> {
    if prefix.len() < TENSOR_BLOB_PREFIX || &prefix[..4] != BLOB_MAGIC {
        return Err(ManifestError::Blob("bad magic".into()));
    }
    let version = u32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
    if version != BLOB_VERSION {
        return Err(ManifestError::Blob(format!("unknown version {version}")));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&prefix[8..16]);
    Ok(u64::from_le_bytes(len))
}

/// Parses a tensor blob's table.
pub fn parse_tensor_table(table: &[u8]) -> Result<Vec<TensorInfo>, ManifestError> {
    Ok(decode_tensor_table(table, Path::new("<tensor blob>"))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(n_layer: u32) -> Manifest {
        let blob = |role, layer| BlobRef { role, layer, size: 1, hash: Hash::of(&[]) };
        let mut blobs = vec![blob(BlobRole::Meta, None), blob(BlobRole::Embd, None)];
        blobs.extend((0..n_layer).map(|i| blob(BlobRole::Block, Some(i))));
        blobs.push(blob(BlobRole::Head, None));
        Manifest {
            format: MANIFEST_FORMAT,
            name: "m".into(),
            architecture: "llama".into(),
            n_layer,
            tied_embedding: false,
            blobs,
        }
    }

    #[test]
    fn a_manifest_round_trips_and_only_block_blobs_name_a_layer() {
        let good = manifest(2);
        assert_eq!(Manifest::from_canonical(&good.canonical_bytes()).unwrap(), good);
        let mut stray = good.clone();
        stray.blobs[0].layer = Some(1);
        assert!(matches!(Manifest::from_canonical(&stray.canonical_bytes()), Err(ManifestError::Inconsistent(_))));
        let mut gap = good;
        gap.blobs[3].layer = Some(5);
        assert!(Manifest::from_canonical(&gap.canonical_bytes()).is_err());
    }
}

//! Verified blob transfer: any peer can serve a blob, no peer has to be trusted.
//!
//! A [`BlobProvider`] answers "give me these ranges of blob H" with BLAKE3 verified
//! streaming data (bao-tree encoding: the parent hashes down to each range, then its
//! bytes, in 16 KiB chunk groups). The transport is the provider's business: the
//! store serves itself through [`StoreProvider`]; the swarm wraps a remote peer.
//!
//! [`fetch_blob`] cuts a blob into pieces and runs one worker per provider; each worker
//! takes the next missing piece, asks its provider, verifies every chunk against the
//! blob's hash before writing it at its offset in a partial file, and records the piece
//! as done in a small sidecar file. A provider whose data fails verification, or that
//! fails to answer, is dropped and its piece goes back to the queue. When every piece is
//! done the file is hashed once more and published into the store; if providers run
//! out first, the partial file stays and the next call resumes where this one stopped.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use bao_tree::io::outboard::PostOrderOutboard;
use bao_tree::io::sync::{encode_ranges_validated, outboard_post_order, DecodeResponseIter};
use bao_tree::io::BaoContentItem;
use bao_tree::{BaoTree, BlockSize};

/// Sets of 1 KiB chunk ranges, as providers are asked for them, and chunk numbers.
pub use bao_tree::{ChunkNum, ChunkRanges};

use crate::manifest::Hash;
use crate::store::{Store, StoreError};

/// Chunk groups of 16 KiB: the outboard is 1/256 of the data.
pub const BLOCK_SIZE: BlockSize = BlockSize::from_chunk_log(4);
const CHUNK: u64 = 1024;

/// Why a provider did not deliver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// It does not have the blob.
    #[error("does not have the blob")]
    NotFound,
    /// It could not answer (disconnected, timed out, failed).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// A source of verified blob ranges.
pub trait BlobProvider: Send + Sync {
    /// A name for logs and reports (a peer id, say).
    fn name(&self) -> String;
    /// The bao-tree encoding of `ranges` (in 1 KiB chunks) of blob `hash`, `size` bytes long.
    fn fetch(&self, hash: &Hash, size: u64, ranges: &ChunkRanges) -> Result<Vec<u8>, ProviderError>;
}

/// Serves blobs from a local store, making each blob's outboard on first use.
#[derive(Debug, Clone)]
pub struct StoreProvider {
    store: Store,
    name: String,
}

impl StoreProvider {
    /// A provider over `store`, reported as `name`.
    pub fn new(store: Store, name: impl Into<String>) -> Self {
        Self { store, name: name.into() }
    }

    /// The store it serves from.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn outboard(&self, hash: &Hash, size: u64) -> Result<PostOrderOutboard<File>, StoreError> {
        let tree = BaoTree::new(size, BLOCK_SIZE);
        let path = self.store.outboard_path(hash);
        let io_err = |source| StoreError::Io { path: path.clone(), source };
        if !path.is_file() {
            let blob = File::open(self.store.blob_path(hash)).map_err(io_err)?;
            let tmp = self.store.temp_path("outboard");
            let mut w = io::BufWriter::new(File::create(&tmp).map_err(io_err)?);
            let root = outboard_post_order(io::BufReader::new(blob), tree, &mut w).map_err(io_err)?;
            drop(w);
            if Hash::from(root) != *hash {
                let _ = fs::remove_file(&tmp);
                return Err(StoreError::Corrupt { expected: *hash, actual: Hash::from(root) });
            }
            fs::rename(&tmp, &path).map_err(io_err)?;
        }
        Ok(PostOrderOutboard { root: (*hash).into(), tree, data: File::open(&path).map_err(io_err)? })
    }
}

impl BlobProvider for StoreProvider {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn fetch(&self, hash: &Hash, size: u64, ranges: &ChunkRanges) -> Result<Vec<u8>, ProviderError> {
        match self.store.blob_size(hash) {
            Ok(s) if s == size => {}
            Ok(_) | Err(StoreError::MissingBlob(_)) => return Err(ProviderError::NotFound),
            Err(e) => return Err(ProviderError::Unavailable(e.to_string())),
        }
        let outboard = self.outboard(hash, size).map_err(|e| match e {
            StoreError::Corrupt { .. } => ProviderError::NotFound,
            other => ProviderError::Unavailable(other.to_string()),
        })?;
        let data = File::open(self.store.blob_path(hash)).map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        let mut out = Vec::new();
        // Validated: a blob that rotted on our disk is refused here rather than sent.
        encode_ranges_validated(data, outboard, ranges, &mut out)
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        Ok(out)
    }
}

/// Fetch settings.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Bytes per request; a multiple of 16 KiB. Default 1 MiB.
    pub piece_bytes: u64,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self { piece_bytes: 1 << 20 }
    }
}

/// What a fetch did.
#[derive(Debug, Clone, Default)]
pub struct FetchReport {
    /// Pieces of the blob.
    pub pieces: usize,
    /// Pieces found done from an earlier, interrupted fetch.
    pub resumed: usize,
    /// Pieces each provider delivered, by name.
    pub delivered: Vec<(String, usize)>,
    /// Providers dropped, with the reason.
    pub dropped: Vec<(String, String)>,
    /// Whether the store already had the blob (nothing was fetched).
    pub already_present: bool,
}

/// `peer: reason; …`, for messages.
fn dropped_list(dropped: &[(String, String)]) -> String {
    dropped.iter().map(|(peer, reason)| format!("{peer}: {reason}")).collect::<Vec<_>>().join("; ")
}

/// Errors of a fetch.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// No provider has the blob.
    #[error("no provider has blob {0}")]
    NoProvider(Hash),
    /// Providers ran out before the blob was complete; the next fetch resumes.
    #[error("blob {hash}: {missing} of {pieces} pieces still missing after every provider was dropped ({})", dropped_list(.dropped))]
    Incomplete {
        /// The blob.
        hash: Hash,
        /// Pieces missing.
        missing: usize,
        /// Pieces in all.
        pieces: usize,
        /// Who was dropped and why.
        dropped: Vec<(String, String)>,
    },
    /// A bad configuration.
    #[error("piece size must be a positive multiple of 16 KiB")]
    PieceSize,
    /// Local storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Shared {
    queue: VecDeque<usize>,
    done: Vec<bool>,
    in_flight: usize,
    delivered: Vec<usize>,
    dropped: Vec<(String, String)>,
    not_found: usize,
    store_error: Option<StoreError>,
}

/// Downloads blob `hash` (`size` bytes) from `providers` into `store`, verifying every chunk.
pub fn fetch_blob(
    store: &Store,
    hash: &Hash,
    size: u64,
    providers: &[Arc<dyn BlobProvider>],
    cfg: &FetchConfig,
) -> Result<FetchReport, TransferError> {
    if cfg.piece_bytes == 0 || !cfg.piece_bytes.is_multiple_of(BLOCK_SIZE.bytes() as u64) {
        return Err(TransferError::PieceSize);
    }
    if store.has(hash) && store.blob_size(hash)? == size {
        return Ok(FetchReport { already_present: true, ..FetchReport::default() });
    }
    let pieces = size.div_ceil(cfg.piece_bytes).max(1) as usize;
    let partial = store.root().join("tmp").join(format!("partial-{}", hash.to_hex()));
    let done_path = partial.with_extension("done");
    let io_err = |p: &PathBuf| {
        let p = p.clone();
        move |source| StoreError::Io { path: p, source }
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&partial)
        .map_err(io_err(&partial))?;
    let mut done = vec![false; pieces];
    if file.metadata().map_err(io_err(&partial))?.len() == size {
        if let Ok(bits) = fs::read(&done_path) {
            if bits.len() == pieces {
                done = bits.iter().map(|b| *b == 1).collect();
            }
        }
    } else {
        file.set_len(size).map_err(io_err(&partial))?;
    }
    let resumed = done.iter().filter(|d| **d).count();
    let queue = (0..pieces).filter(|i| !done[*i]).collect();
    let state = Mutex::new(Shared {
        queue,
        done,
        in_flight: 0,
        delivered: vec![0; providers.len()],
        dropped: Vec::new(),
        not_found: 0,
        store_error: None,
    });
    let wake = Condvar::new();
    let tree = BaoTree::new(size, BLOCK_SIZE);

    std::thread::scope(|scope| {
        for (pi, provider) in providers.iter().enumerate() {
            let (state, wake, file, done_path) = (&state, &wake, &file, &done_path);
            scope.spawn(move || loop {
                let piece = {
                    let Ok(mut s) = state.lock() else { return };
                    loop {
                        if s.store_error.is_some() || s.done.iter().all(|d| *d) {
                            return;
                        }
                        if let Some(p) = s.queue.pop_front() {
                            s.in_flight += 1;
                            break p;
                        }
                        if s.in_flight == 0 {
                            return;
                        }
                        s = match wake.wait(s) {
                            Ok(s) => s,
                            Err(_) => return,
                        };
                    }
                };
                let start = piece as u64 * cfg.piece_bytes;
                let end = (start + cfg.piece_bytes).min(size);
                let result = fetch_piece(provider.as_ref(), hash, tree, start, end, file);
                let Ok(mut s) = state.lock() else { return };
                s.in_flight -= 1;
                match result {
                    Ok(()) => {
                        s.done[piece] = true;
                        s.delivered[pi] += 1;
                        let bits: Vec<u8> = s.done.iter().map(|d| u8::from(*d)).collect();
                        if let Err(e) = file.sync_data().and_then(|_| write_atomically(done_path, &bits)) {
                            s.store_error = Some(StoreError::Io { path: done_path.clone(), source: e });
                        }
                        wake.notify_all();
                    }
                    Err(reason) => {
                        s.queue.push_front(piece);
                        if reason == PieceError::Provider(ProviderError::NotFound) {
                            s.not_found += 1;
                        }
                        s.dropped.push((provider.name(), reason.to_string()));
                        wake.notify_all();
                        return;
                    }
                }
            });
        }
    });

    let s = state.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(e) = s.store_error {
        return Err(e.into());
    }
    let delivered: Vec<(String, usize)> = providers.iter().map(|p| p.name()).zip(s.delivered).collect();
    let missing = s.done.iter().filter(|d| !**d).count();
    if missing > 0 {
        if s.not_found == providers.len() && resumed == 0 && delivered.iter().all(|(_, n)| *n == 0) {
            return Err(TransferError::NoProvider(*hash));
        }
        return Err(TransferError::Incomplete { hash: *hash, missing, pieces, dropped: s.dropped });
    }
    drop(file);
    // Every chunk was verified on arrival; hash the whole once more before it becomes a blob.
    let mut hasher = blake3::Hasher::new();
    File::open(&partial).and_then(|mut f| io::copy(&mut f, &mut hasher)).map_err(io_err(&partial))?;
    let actual = Hash::from(hasher.finalize());
    let _ = fs::remove_file(&done_path);
    if actual != *hash {
        let _ = fs::remove_file(&partial);
        return Err(StoreError::Corrupt { expected: *hash, actual }.into());
    }
    store.publish(&partial, hash)?;
    store.sync_blobs(&[*hash])?;
    Ok(FetchReport { pieces, resumed, delivered, dropped: s.dropped, already_present: false })
}

/// Why a piece was not delivered.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PieceError {
    /// The provider did not answer.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The answer is not the verified encoding of the piece.
    #[error("sent data that failed verification: {0}")]
    Invalid(String),
    /// A verified chunk could not be written.
    #[error("local write failed: {0}")]
    Write(String),
}

/// The chunk ranges that cover bytes `[start, end)`: what a piece is asked for.
pub fn piece_ranges(start: u64, end: u64) -> ChunkRanges {
    ChunkRanges::from(ChunkNum(start / CHUNK)..ChunkNum(end.div_ceil(CHUNK).max(start / CHUNK + 1)))
}

/// Fetches bytes `[start, end)` from one provider, verifying before writing.
fn fetch_piece(
    provider: &dyn BlobProvider,
    hash: &Hash,
    tree: BaoTree,
    start: u64,
    end: u64,
    file: &File,
) -> Result<(), PieceError> {
    let encoded = provider.fetch(hash, tree.size(), &piece_ranges(start, end))?;
    verify_piece(hash, tree.size(), start..end, &encoded, |offset, data| file.write_all_at(data, offset))
}

/// Checks a provider's answer for bytes `range` of blob `hash` (`size` bytes long): the
/// bao-tree encoding of the chunks that cover them. Each chunk is handed to `write` (its
/// offset in the blob, its bytes) only once it has been verified against the hash, so a
/// forged answer can make `write` see nothing but the blob's own bytes; the answer must
/// cover the whole range and nothing outside it.
pub fn verify_piece(
    hash: &Hash,
    size: u64,
    range: std::ops::Range<u64>,
    encoded: &[u8],
    mut write: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> Result<(), PieceError> {
    let (start, end) = (range.start, range.end);
    // An empty blob is one empty piece; any other piece holds at least a byte.
    if start > end || end > size || (start == end && size > 0) {
        return Err(PieceError::Invalid(format!("bytes {start}..{end} of a {size}-byte blob")));
    }
    let ranges = piece_ranges(start, end);
    let tree = BaoTree::new(size, BLOCK_SIZE);
    let mut covered = 0u64;
    for item in DecodeResponseIter::new((*hash).into(), tree, Cursor::new(encoded), &ranges) {
        match item.map_err(|e| PieceError::Invalid(e.to_string()))? {
            BaoContentItem::Parent(_) => {}
            BaoContentItem::Leaf(leaf) => {
                let leaf_end = leaf.offset + leaf.data.len() as u64;
                if leaf.offset < start || leaf_end > end {
                    return Err(PieceError::Invalid("a chunk outside the requested piece".into()));
                }
                write(leaf.offset, &leaf.data).map_err(|e| PieceError::Write(e.to_string()))?;
                covered += leaf.data.len() as u64;
            }
        }
    }
    if covered != end - start {
        return Err(PieceError::Invalid(format!("covered {covered} of {} bytes", end - start)));
    }
    Ok(())
}

fn write_atomically(path: &PathBuf, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("done.tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

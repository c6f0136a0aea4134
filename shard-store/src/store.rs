//! The on-disk store: content-addressed blobs, model manifests and a cache of assembled spans.
//!
//! Layout under the data directory:
//!
//! ```text
//! blobs/ab/abcdef…        blob bytes, named by their blake3 hash (hex)
//! blobs/ab/abcdef….obao   its bao-tree outboard, made when the blob is first served
//! manifests/<model id>.json
//! spans/<model id>-<a>-<b>.gguf
//! tmp/                    files being written; renamed into place when complete
//! ```
//!
//! Every write goes to `tmp/` and is renamed into place only once its hash is known
//! (and matches, when one was expected). Blobs are forced to disk in batches
//! ([`Store::sync_blobs`]) before a manifest that names them is written, so a manifest
//! never points at data that a crash could lose; inserting a blob again replaces the
//! stored copy, which heals one torn by a crash. Readers hash what they read and fail at the end if the bytes do not
//! match their name: a blob corrupted on disk is never used.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::manifest::{Hash, Manifest, ModelId};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        source: io::Error,
    },
    /// Bytes do not hash to the name they are stored or requested under.
    #[error("blob {expected} is corrupt: its bytes hash to {actual}")]
    Corrupt {
        /// The name.
        expected: Hash,
        /// What the bytes hash to.
        actual: Hash,
    },
    /// No such blob.
    #[error("blob {0} is not in the store")]
    MissingBlob(Hash),
    /// No such model, or a prefix that names several.
    #[error("no single model matches `{0}`")]
    UnknownModel(String),
    /// A manifest could not be parsed.
    #[error("manifest {path}: {reason}")]
    BadManifest {
        /// Where.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// A blob store rooted at a data directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Result of an insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// Hash of the bytes.
    pub hash: Hash,
    /// Their length.
    pub size: u64,
    /// False when the store already had them (nothing was written).
    pub new: bool,
}

/// Result of checking one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobCheck {
    /// The blob's name.
    pub hash: Hash,
    /// Bytes read.
    pub size: u64,
    /// What its bytes hash to, when that differs from its name.
    pub corrupt_as: Option<Hash>,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        for sub in ["blobs", "manifests", "spans", "tmp"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        remove_orphaned_temp_files(&root.join("tmp"));
        Ok(Store { root })
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob lives (whether or not it is there).
    pub fn blob_path(&self, hash: &Hash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join("blobs").join(&hex[..2]).join(hex)
    }

    /// Where a blob's outboard lives.
    pub fn outboard_path(&self, hash: &Hash) -> PathBuf {
        let mut p = self.blob_path(hash).into_os_string();
        p.push(".obao");
        p.into()
    }

    /// Whether the store has a blob (its bytes are checked when read, not here).
    pub fn has(&self, hash: &Hash) -> bool {
        self.blob_path(hash).is_file()
    }

    /// Size of a stored blob.
    pub fn blob_size(&self, hash: &Hash) -> Result<u64, StoreError> {
        let path = self.blob_path(hash);
        match fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::MissingBlob(*hash)),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// A fresh path under `tmp/`: `<what>.<pid>.<n>`, so that a file left by a process
    /// that died is known as one ([`Store::open`] removes them).
    pub fn temp_path(&self, what: &str) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root.join("tmp").join(format!("{what}.{}.{n}", std::process::id()))
    }

    /// Streams bytes from `fill` into a new blob, hashing as they go; keeps the existing blob
    /// if the store already has these bytes. With `expected`, bytes that hash otherwise are
    /// refused and nothing is stored.
    pub fn insert_with(
        &self,
        expected: Option<&Hash>,
        fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<Inserted, StoreError> {
        let tmp = self.temp_path("blob");
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut w =
            HashingWriter { inner: BufWriter::with_capacity(1 << 20, file), hasher: blake3::Hasher::new(), len: 0 };
        let result = fill(&mut w).and_then(|_| w.inner.flush());
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&tmp)(e));
        }
        let hash = Hash::from(w.hasher.finalize());
        let size = w.len;
        drop(w);
        if let Some(expected) = expected {
            if *expected != hash {
                let _ = fs::remove_file(&tmp);
                return Err(StoreError::Corrupt { expected: *expected, actual: hash });
            }
        }
        self.publish(&tmp, &hash).map(|new| Inserted { hash, size, new })
    }

    /// Moves a complete temp file into place as blob `hash`; false if it was already there.
    ///
    /// The rename replaces an existing copy: the bytes are the same by their hash, and a
    /// copy torn by a crash before it reached the disk is healed by inserting it again.
    /// The data is not forced to disk here; call [`Store::sync_blobs`] before recording
    /// anything (a manifest) that relies on the blob.
    pub fn publish(&self, tmp: &Path, hash: &Hash) -> Result<bool, StoreError> {
        let dest = self.blob_path(hash);
        let existed = dest.is_file();
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        fs::rename(tmp, &dest).map_err(io_err(&dest))?;
        Ok(!existed)
    }

    /// Forces blobs (and their directory entries) to disk, several at once so the device
    /// can work on them together.
    pub fn sync_blobs(&self, hashes: &[Hash]) -> Result<(), StoreError> {
        let mut paths: Vec<PathBuf> = hashes.iter().map(|h| self.blob_path(h)).collect();
        let mut dirs: Vec<PathBuf> = paths.iter().filter_map(|p| p.parent().map(Path::to_path_buf)).collect();
        dirs.sort();
        dirs.dedup();
        paths.extend(dirs);
        let next = std::sync::Mutex::new(paths.iter());
        let first_error = std::sync::Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..paths.len().min(8) {
                scope.spawn(|| loop {
                    let Some(path) = next.lock().ok().and_then(|mut it| it.next()) else { return };
                    if let Err(e) = File::open(path).and_then(|f| f.sync_all()) {
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(StoreError::Io { path: path.clone(), source: e });
                        }
                    }
                });
            }
        });
        match first_error.into_inner() {
            Ok(Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Inserts an in-memory blob.
    pub fn insert_bytes(&self, bytes: &[u8]) -> Result<Inserted, StoreError> {
        self.insert_with(None, |w| w.write_all(bytes))
    }

    /// Opens a blob for reading; the reader fails at the end if the bytes do not match the name.
    pub fn open_blob(&self, hash: &Hash) -> Result<VerifyingReader<io::BufReader<File>>, StoreError> {
        let path = self.blob_path(hash);
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::MissingBlob(*hash),
            _ => io_err(&path)(e),
        })?;
        Ok(VerifyingReader::new(io::BufReader::with_capacity(1 << 20, file), *hash))
    }

    /// Reads a whole blob into memory, verified.
    pub fn read_blob(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        let mut buf = Vec::new();
        let mut r = self.open_blob(hash)?;
        r.read_to_end(&mut buf).map_err(|e| r.map_error(e))?;
        Ok(buf)
    }

    /// Re-hashes one blob.
    pub fn check_blob(&self, hash: &Hash) -> Result<BlobCheck, StoreError> {
        let mut r = self.open_blob(hash)?;
        let size = io::copy(&mut r.inner, &mut HashSink(&mut r.hasher)).map_err(io_err(&self.blob_path(hash)))?;
        let actual = Hash::from(r.hasher.finalize());
        Ok(BlobCheck { hash: *hash, size, corrupt_as: (actual != *hash).then_some(actual) })
    }

    /// Every blob name in the store.
    pub fn list_blobs(&self) -> Result<Vec<Hash>, StoreError> {
        let mut out = Vec::new();
        let blobs = self.root.join("blobs");
        for dir in fs::read_dir(&blobs).map_err(io_err(&blobs))? {
            let dir = dir.map_err(io_err(&blobs))?.path();
            if !dir.is_dir() {
                continue;
            }
            for f in fs::read_dir(&dir).map_err(io_err(&dir))? {
                let name = f.map_err(io_err(&dir))?.file_name();
                if let Some(h) = name.to_str().and_then(|n| Hash::from_hex(n).ok()) {
                    out.push(h);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Stores a manifest under its model id (idempotent).
    pub fn put_manifest(&self, manifest: &Manifest) -> Result<ModelId, StoreError> {
        let bytes = manifest.canonical_bytes();
        let id = ModelId::of_canonical(&bytes);
        let path = self.root.join("manifests").join(format!("{}.json", id.to_hex()));
        if !path.is_file() {
            let tmp = self.temp_path("manifest");
            File::create(&tmp)
                .and_then(|mut f| f.write_all(&bytes).and_then(|_| f.sync_all()))
                .map_err(io_err(&tmp))?;
            fs::rename(&tmp, &path).map_err(io_err(&path))?;
        }
        Ok(id)
    }

    /// Loads a manifest, checking that it hashes to its id.
    pub fn manifest(&self, id: &ModelId) -> Result<Manifest, StoreError> {
        let path = self.root.join("manifests").join(format!("{}.json", id.to_hex()));
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::UnknownModel(id.to_hex()),
            _ => io_err(&path)(e),
        })?;
        let bad = |reason: String| StoreError::BadManifest { path: path.clone(), reason };
        if ModelId::of_canonical(&bytes) != *id {
            return Err(bad("its bytes do not hash to its model id".into()));
        }
        Manifest::from_canonical(&bytes).map_err(|e| bad(e.to_string()))
    }

    /// All model ids with a manifest here.
    pub fn model_ids(&self) -> Result<Vec<ModelId>, StoreError> {
        let dir = self.root.join("manifests");
        let mut out = Vec::new();
        for f in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let name = f.map_err(io_err(&dir))?.file_name();
            if let Some(id) =
                name.to_str().and_then(|n| n.strip_suffix(".json")).and_then(|h| ModelId::from_hex(h).ok())
            {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Resolves a full model id or a unique prefix of one (at least 4 hex digits).
    pub fn resolve_model(&self, text: &str) -> Result<ModelId, StoreError> {
        let text = text.to_ascii_lowercase();
        let matches: Vec<ModelId> = if text.len() >= 4 {
            self.model_ids()?.into_iter().filter(|id| id.to_hex().starts_with(&text)).collect()
        } else {
            Vec::new()
        };
        match matches.as_slice() {
            [one] => Ok(*one),
            _ => Err(StoreError::UnknownModel(text)),
        }
    }

    /// Where the cached span `[a, b)` of a model lives.
    pub fn span_cache_path(&self, id: &ModelId, a: u32, b: u32) -> PathBuf {
        self.root.join("spans").join(format!("{}-{a}-{b}.gguf", id.to_hex()))
    }
}

/// Removes the temp files ([`Store::temp_path`]) of processes that no longer run: what a
/// crash or `kill -9` left half written. Resumable downloads (`partial-*`) and the files
/// of live processes stay. Where `/proc` does not exist, nothing is removed.
fn remove_orphaned_temp_files(tmp: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(tmp) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.rsplit('.').nth(1)).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            if let Err(e) = fs::remove_file(entry.path()) {
                tracing::debug!(path = %entry.path().display(), error = %e, "could not remove an orphaned temp file");
            }
        }
    }
}

/// The default data directory: `$NAKSHATRA_DATA_DIR`, else the per-user data dir + `nakshatra`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NAKSHATRA_DATA_DIR") {
        return dir.into();
    }
    dirs::data_dir().unwrap_or_else(std::env::temp_dir).join("nakshatra")
}

struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct HashSink<'a>(&'a mut blake3::Hasher);

impl Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A reader that hashes what passes through and, at end of input, fails with
/// `InvalidData` unless the bytes hash to the expected name.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    expected: Hash,
    done: bool,
}

impl<R: Read> VerifyingReader<R> {
    /// Wraps `inner`, expecting `expected`.
    pub fn new(inner: R, expected: Hash) -> Self {
        VerifyingReader { inner, hasher: blake3::Hasher::new(), expected, done: false }
    }

    /// Turns an I/O error of this reader into a store error (corruption keeps its meaning).
    pub fn map_error(&self, e: io::Error) -> StoreError {
        if e.kind() == io::ErrorKind::InvalidData {
            return StoreError::Corrupt { expected: self.expected, actual: Hash::from(self.hasher.finalize()) };
        }
        StoreError::Io { path: PathBuf::from(format!("blob {}", self.expected)), source: e }
    }

    /// Reads exactly `n` bytes into `out` (used to consume a blob piece by piece).
    pub fn copy_exact(&mut self, n: u64, out: &mut dyn Write) -> io::Result<()> {
        let copied = io::copy(&mut self.by_ref().take(n), out)?;
        if copied != n {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "blob shorter than its table says"));
        }
        Ok(())
    }

    /// Reads to the end and checks the hash.
    pub fn finish(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink())?;
        Ok(())
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        if n == 0 && !buf.is_empty() && !self.done {
            self.done = true;
            if Hash::from(self.hasher.finalize()) != self.expected {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("blob {} is corrupt", self.expected)));
            }
        }
        Ok(n)
    }
}

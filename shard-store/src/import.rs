//! Importing a GGUF into the store, and assembling span GGUFs back out of it.
//!
//! Import reads the file's header, then streams each blob's tensors straight from the
//! file into the store (hashing as they pass), so memory stays at a few buffers
//! whatever the model's size. Assembly plans the span with the same code that slices
//! a GGUF ([`crate::span::plan_span`]), then streams each needed blob through a
//! verifying reader into the span file, which is renamed into place only if every blob
//! matched its hash.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::gguf::{decode_metadata, encode_metadata, GgufError, GgufFile, GgufWriter, TensorInfo, TensorSource, Value};
use crate::manifest::{
    parse_tensor_table, tensor_blob_header, tensor_blob_table_len, BlobRef, BlobRole, Hash, Manifest, ManifestError,
    ModelId, MANIFEST_FORMAT, TENSOR_BLOB_PREFIX,
};
use crate::span::{block_index, plan_span, SpanError, SpanPlan, SpanPosition, TensorRole};
use crate::store::{Store, StoreError, VerifyingReader};

/// Errors of import and assembly.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Reading the GGUF failed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The store failed (including corrupt blobs).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A manifest or blob header is malformed.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Span planning failed.
    #[error(transparent)]
    Span(#[from] SpanError),
    /// The model lacks a part every model needs.
    #[error("cannot import: {0}")]
    Incomplete(String),
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The model id.
    pub model_id: ModelId,
    /// The manifest stored under it.
    pub manifest: Manifest,
    /// Blobs written (0 when the store already had the model).
    pub new_blobs: usize,
    /// Bytes written into new blobs.
    pub new_bytes: u64,
}

/// Imports `path` into `store`, calling `progress` with the tensor bytes copied so far.
pub fn import_gguf(store: &Store, path: &Path, progress: &mut dyn FnMut(u64)) -> Result<ImportReport, ImportError> {
    let file = GgufFile::open(path)?;
    let position = SpanPosition::of(&file)?;
    if !position.is_whole() {
        return Err(ImportError::Incomplete("the file is a span, not a whole model".into()));
    }
    let mut groups: BTreeMap<TensorRole, Vec<TensorInfo>> = BTreeMap::new();
    for t in &file.tensors {
        groups.entry(TensorRole::of(&t.name)).or_default().push(t.clone());
    }
    for (role, what) in [(TensorRole::Embedding, "token embedding"), (TensorRole::Head, "output norm")] {
        if !groups.contains_key(&role) {
            return Err(ImportError::Incomplete(format!("no {what}")));
        }
    }
    let blocks = groups.keys().filter(|r| matches!(r, TensorRole::Block(_))).count() as u32;
    if (0..position.n_layer).any(|i| !groups.contains_key(&TensorRole::Block(i))) || blocks != position.n_layer {
        return Err(ImportError::Incomplete(format!("blocks do not match block_count {}", position.n_layer)));
    }

    let mut new_blobs = 0;
    let mut new_bytes = 0;
    let mut done = 0u64;
    let mut blobs = Vec::with_capacity(groups.len() + 1);
    let meta = store.insert_bytes(&encode_metadata(&file.metadata)?)?;
    if meta.new {
        new_blobs += 1;
        new_bytes += meta.size;
    }
    blobs.push(BlobRef { role: BlobRole::Meta, layer: None, size: meta.size, hash: meta.hash });

    for (role, tensors) in &groups {
        // Block tensors are stored under their names within the block.
        let stored: Vec<TensorInfo> = tensors
            .iter()
            .map(|t| match block_index(&t.name) {
                Some((_, rest)) => TensorInfo { name: rest.to_string(), ..t.clone() },
                None => t.clone(),
            })
            .collect();
        let header = tensor_blob_header(&stored);
        let inserted = store.insert_with(None, |w| {
            w.write_all(&header)?;
            let mut counting = ProgressWriter { inner: w, done: &mut done, progress: &mut *progress };
            for t in tensors {
                file.copy_tensor_data(t, &mut counting).map_err(io::Error::other)?;
            }
            Ok(())
        })?;
        if inserted.new {
            new_blobs += 1;
            new_bytes += inserted.size;
        }
        let (role, layer) = match role {
            TensorRole::Embedding => (BlobRole::Embd, None),
            TensorRole::Shared => (BlobRole::Shared, None),
            TensorRole::Block(i) => (BlobRole::Block, Some(*i)),
            TensorRole::Head => (BlobRole::Head, None),
        };
        blobs.push(BlobRef { role, layer, size: inserted.size, hash: inserted.hash });
    }

    let name = file
        .get("general.name")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name,
        architecture: file.architecture()?.to_string(),
        n_layer: position.n_layer,
        tied_embedding: file.tensor("output.weight").is_none(),
        blobs,
    };
    let hashes: Vec<Hash> = manifest.blobs.iter().map(|b| b.hash).collect();
    store.sync_blobs(&hashes)?;
    let model_id = store.put_manifest(&manifest)?;
    Ok(ImportReport { model_id, manifest, new_blobs, new_bytes })
}

struct ProgressWriter<'a> {
    inner: &'a mut dyn Write,
    done: &'a mut u64,
    progress: &'a mut dyn FnMut(u64),
}

impl Write for ProgressWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        *self.done += n as u64;
        (self.progress)(*self.done);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a tensor blob's table (not yet verified: the bytes are checked when streamed).
fn blob_tensors(store: &Store, blob: &BlobRef) -> Result<Vec<TensorInfo>, ImportError> {
    let path = store.blob_path(&blob.hash);
    let io_err = |source| StoreError::Io { path: path.clone(), source };
    let mut f = std::fs::File::open(&path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => StoreError::MissingBlob(blob.hash),
        _ => io_err(e),
    })?;
    let mut prefix = [0u8; TENSOR_BLOB_PREFIX];
    f.read_exact(&mut prefix).map_err(io_err)?;
    let len = tensor_blob_table_len(&prefix)?;
    if len > blob.size {
        return Err(ManifestError::Blob("table longer than the blob".into()).into());
    }
    let mut table = vec![0u8; len as usize];
    f.read_exact(&mut table).map_err(io_err)?;
    Ok(parse_tensor_table(&table)?)
}

/// The blobs a span needs, in the canonical tensor order.
pub fn span_blobs(m: &Manifest, range: &Range<u32>) -> Vec<BlobRef> {
    let first = range.start == 0;
    let last = range.end == m.n_layer;
    let mut out = Vec::new();
    let mut push = |role, layer| {
        if let Some(b) = m.blob(role, layer) {
            out.push(b.clone());
        }
    };
    if first || (last && m.tied_embedding) {
        push(BlobRole::Embd, None);
    }
    push(BlobRole::Shared, None);
    for i in range.clone() {
        push(BlobRole::Block, Some(i));
    }
    if last {
        push(BlobRole::Head, None);
    }
    out
}

/// Writes the span `range` of model `id` to `out`, from blobs alone. The bytes equal those
/// of [`crate::span::write_span`] on the original file; a corrupt blob fails the call and
/// leaves no file at `out`.
pub fn assemble_span(store: &Store, id: &ModelId, range: Range<u32>, out: &Path) -> Result<SpanPlan, ImportError> {
    let manifest = store.manifest(id)?;
    if range.start >= range.end || range.end > manifest.n_layer {
        return Err(SpanError::BadRange { start: range.start, end: range.end, n_layer: manifest.n_layer }.into());
    }
    let metadata = model_metadata(store, id)?;

    // The tensor table the planner sees: whole-model names, blob by blob.
    let blobs = span_blobs(&manifest, &range);
    let mut tensors = Vec::new();
    let mut owner = Vec::new(); // blob index of each tensor
    for (bi, blob) in blobs.iter().enumerate() {
        for t in blob_tensors(store, blob)? {
            let name = match (blob.role, blob.layer) {
                (BlobRole::Block, Some(i)) => format!("blk.{i}.{}", t.name),
                _ => t.name.clone(),
            };
            tensors.push(TensorInfo { name, ..t });
            owner.push(bi);
        }
    }
    let plan = plan_span(&metadata, &tensors, range)?;
    if plan.tensors.len() != tensors.len() {
        return Err(ImportError::Incomplete("span plan and blobs disagree".into()));
    }

    // Stream blob after blob through a verifying reader; the last tensor of a blob
    // checks the blob's hash before the next one starts.
    let reader: Rc<RefCell<Option<VerifyingReader<io::BufReader<std::fs::File>>>>> = Rc::new(RefCell::new(None));
    let mut sources = Vec::with_capacity(plan.tensors.len());
    for (k, (info, _)) in plan.tensors.iter().enumerate() {
        let blob = blobs[owner[k]].clone();
        let opens = k == 0 || owner[k - 1] != owner[k];
        let closes = k + 1 == owner.len() || owner[k + 1] != owner[k];
        let size = info.n_bytes().unwrap_or(0);
        let reader = Rc::clone(&reader);
        let store = store.clone();
        sources.push(TensorSource {
            info: info.clone(),
            write: Box::new(move |w| {
                let mut slot = reader.borrow_mut();
                if opens {
                    let mut r = store.open_blob(&blob.hash).map_err(|e| GgufError::Write(e.to_string()))?;
                    let mut prefix = [0u8; TENSOR_BLOB_PREFIX];
                    r.read_exact(&mut prefix).map_err(|e| blob_error(&r, e))?;
                    let table_len = tensor_blob_table_len(&prefix).map_err(|e| GgufError::Write(e.to_string()))?;
                    r.copy_exact(table_len, &mut io::sink()).map_err(|e| blob_error(&r, e))?;
                    *slot = Some(r);
                }
                let r = slot.as_mut().ok_or_else(|| GgufError::Write("blob reader missing".into()))?;
                r.copy_exact(size, w).map_err(|e| blob_error(r, e))?;
                if closes {
                    r.finish().map_err(|e| blob_error(r, e))?;
                    *slot = None;
                }
                Ok(())
            }),
        });
    }
    let tmp = store.temp_path("span");
    let alignment = plan_alignment(&plan);
    if let Err(e) = GgufWriter::with_alignment(alignment).write(&tmp, &plan.metadata, sources) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    std::fs::rename(&tmp, out).map_err(|source| StoreError::Io { path: out.to_path_buf(), source })?;
    Ok(plan)
}

fn blob_error<R: Read>(r: &VerifyingReader<R>, e: io::Error) -> GgufError {
    GgufError::Write(r.map_error(e).to_string())
}

fn plan_alignment(plan: &SpanPlan) -> u64 {
    plan.metadata
        .iter()
        .find(|(k, _)| k == "general.alignment")
        .and_then(|(_, v)| v.as_u64())
        .unwrap_or(crate::gguf::DEFAULT_ALIGNMENT)
}

/// The cached span file of a model, assembled on first use. Its blake3 hash is kept beside
/// it and checked on every use; a cached file that no longer matches is assembled again.
pub fn cached_span(store: &Store, id: &ModelId, range: Range<u32>) -> Result<PathBuf, ImportError> {
    let path = store.span_cache_path(id, range.start, range.end);
    let mut sum_path = path.clone().into_os_string();
    sum_path.push(".blake3");
    let sum_path = PathBuf::from(sum_path);
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| StoreError::Io { path: p, source }
    };
    let file_hash = |p: &Path| -> Result<Hash, StoreError> {
        let mut hasher = blake3::Hasher::new();
        std::fs::File::open(p).and_then(|mut f| io::copy(&mut f, &mut hasher)).map_err(io_err(p))?;
        Ok(Hash::from(hasher.finalize()))
    };
    if path.is_file() {
        let recorded = std::fs::read_to_string(&sum_path).ok().and_then(|s| Hash::from_hex(s.trim()).ok());
        if recorded.is_some_and(|h| file_hash(&path).is_ok_and(|actual| actual == h)) {
            return Ok(path);
        }
        tracing::warn!(path = %path.display(), "cached span does not match its recorded hash; assembling it again");
    }
    assemble_span(store, id, range, &path)?;
    std::fs::write(&sum_path, file_hash(&path)?.to_hex()).map_err(io_err(&sum_path))?;
    Ok(path)
}

/// What [`verify_store`] found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Every blob on disk, re-hashed, with the models that use it.
    pub checked: Vec<(crate::store::BlobCheck, Vec<ModelId>)>,
    /// Blobs a manifest lists that are not on disk, with the models that need them.
    pub missing: Vec<(Hash, Vec<ModelId>)>,
}

impl VerifyReport {
    /// Blobs whose bytes do not match their name.
    pub fn corrupt(&self) -> impl Iterator<Item = &(crate::store::BlobCheck, Vec<ModelId>)> {
        self.checked.iter().filter(|(c, _)| c.corrupt_as.is_some())
    }
}

/// Re-hashes every blob in the store and finds blobs that manifests need but the store lacks.
pub fn verify_store(store: &Store) -> Result<VerifyReport, ImportError> {
    let mut users: BTreeMap<Hash, Vec<ModelId>> = BTreeMap::new();
    for id in store.model_ids()? {
        for b in store.manifest(&id)?.blobs {
            users.entry(b.hash).or_default().push(id);
        }
    }
    let mut report = VerifyReport::default();
    for hash in store.list_blobs()? {
        let check = store.check_blob(&hash)?;
        let models = users.remove(&hash).unwrap_or_default();
        report.checked.push((check, models));
    }
    report.missing = users.into_iter().collect();
    Ok(report)
}

/// Model `id`'s GGUF metadata (architecture, hyperparameters, tokenizer), from its
/// `meta` blob, verified: what decides, for instance, which spans of it can run
/// ([`crate::span::check_splittable`]).
pub fn model_metadata(store: &Store, id: &ModelId) -> Result<Vec<(String, Value)>, ImportError> {
    let manifest = store.manifest(id)?;
    let meta_ref = manifest.blob(BlobRole::Meta, None).ok_or_else(|| ImportError::Incomplete("no meta blob".into()))?;
    Ok(decode_metadata(&store.read_blob(&meta_ref.hash)?, Path::new("<meta blob>"))?)
}

/// Writes a GGUF with model `id`'s metadata (tokenizer and chat template included) and no
/// tensors, from its `meta` blob alone: what a client needs to tokenize. Returns its path
/// (in the span cache; rewritten on every call, it is small).
pub fn tokenizer_file(store: &Store, id: &ModelId) -> Result<PathBuf, ImportError> {
    let metadata = model_metadata(store, id)?;
    let out = store.span_cache_path(id, 0, 0).with_extension("tokenizer.gguf");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })?;
    }
    let tmp = store.temp_path("tokenizer");
    if let Err(e) = GgufWriter::with_alignment(crate::gguf::DEFAULT_ALIGNMENT).write(&tmp, &metadata, vec![]) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    std::fs::rename(&tmp, &out).map_err(|source| StoreError::Io { path: out.clone(), source })?;
    Ok(out)
}

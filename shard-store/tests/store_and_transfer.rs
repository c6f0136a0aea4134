//! Import, content addressing, assembly from blobs, corruption, and verified transfer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nak_shard_store::import::verify_store;
use nak_shard_store::transfer::{
    fetch_blob, BlobProvider, ChunkRanges, FetchConfig, ProviderError, StoreProvider, TransferError,
};
use nak_shard_store::{
    assemble_span, import_gguf, span, write_synthetic, BlobRole, GgufFile, Hash, ImportError, Store, SynthConfig,
    TensorType,
};

fn synth(dir: &std::path::Path, cfg: &SynthConfig) -> std::path::PathBuf {
    let path = dir.join(format!("model-{}.gguf", cfg.seed));
    write_synthetic(cfg, &path).unwrap();
    path
}

fn model_cfg() -> SynthConfig {
    SynthConfig { n_layer: 5, n_embd: 64, n_ff: 192, weight_type: TensorType::Q8_0, seed: 11, ..SynthConfig::default() }
}

#[test]
fn importing_twice_gives_one_id_and_stores_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth(dir.path(), &model_cfg());
    let store = Store::open(dir.path().join("data")).unwrap();
    let mut last_progress = 0;
    let first = import_gguf(&store, &model, &mut |n| last_progress = n).unwrap();
    let tensor_bytes: u64 = GgufFile::open(&model).unwrap().tensors.iter().map(|t| t.n_bytes().unwrap()).sum();
    assert_eq!(last_progress, tensor_bytes, "progress reports every tensor byte");
    assert_eq!(first.manifest.blobs.len(), 1 + 1 + 5 + 1);
    assert!(first.new_blobs > 0);
    let second = import_gguf(&store, &model, &mut |_| {}).unwrap();
    assert_eq!(first.model_id, second.model_id);
    assert_eq!((second.new_blobs, second.new_bytes), (0, 0));
    assert_eq!(store.model_ids().unwrap(), vec![first.model_id]);
    assert_eq!(store.manifest(&first.model_id).unwrap(), first.manifest);
    assert_eq!(first.manifest.model_id(), first.model_id);
    let prefix = &first.model_id.to_hex()[..8];
    assert_eq!(store.resolve_model(prefix).unwrap(), first.model_id);

    // A different model shares nothing but gets its own id.
    let other = synth(dir.path(), &SynthConfig { seed: 12, ..model_cfg() });
    let third = import_gguf(&store, &other, &mut |_| {}).unwrap();
    assert_ne!(third.model_id, first.model_id);
}

#[test]
fn spans_assembled_from_blobs_equal_spans_sliced_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for cfg in [model_cfg(), SynthConfig { tied_embedding: true, seed: 5, ..model_cfg() }] {
        let model = synth(dir.path(), &cfg);
        let store = Store::open(dir.path().join("data")).unwrap();
        let id = import_gguf(&store, &model, &mut |_| {}).unwrap().model_id;
        let src = GgufFile::open(&model).unwrap();
        for range in [0..5, 0..2, 2..4, 4..5, 1..5] {
            let sliced = dir.path().join("sliced.gguf");
            let assembled = dir.path().join("assembled.gguf");
            span::write_span(&src, range.clone(), &sliced).unwrap();
            assemble_span(&store, &id, range.clone(), &assembled).unwrap();
            assert!(std::fs::read(&sliced).unwrap() == std::fs::read(&assembled).unwrap(), "{range:?} differs");
        }
    }
}

fn corrupt_file(path: &std::path::Path, at: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = (at as usize).min(bytes.len() - 1);
    bytes[i] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_corrupt_blob_is_reported_and_never_used() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth(dir.path(), &model_cfg());
    let store = Store::open(dir.path().join("data")).unwrap();
    let report = import_gguf(&store, &model, &mut |_| {}).unwrap();
    let block2 = report.manifest.blob(BlobRole::Block, Some(2)).unwrap().clone();
    corrupt_file(&store.blob_path(&block2.hash), block2.size - 10);

    let checks = verify_store(&store).unwrap();
    assert_eq!(checks.checked.len(), report.manifest.blobs.len());
    assert!(checks.missing.is_empty());
    let bad: Vec<_> = checks.corrupt().collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].0.hash, block2.hash);
    assert_eq!(bad[0].1, vec![report.model_id]);

    let out = dir.path().join("span.gguf");
    match assemble_span(&store, &report.model_id, 1..4, &out) {
        Err(e) => assert!(e.to_string().contains("corrupt"), "{e}"),
        Ok(_) => panic!("assembled a span from a corrupt blob"),
    }
    assert!(!out.exists(), "no file is left behind");
    // Spans that do not touch block 2 still assemble.
    assemble_span(&store, &report.model_id, 3..5, &out).unwrap();
    // A cached span that rots on disk is noticed and assembled again from the blobs.
    let cached = nak_shard_store::cached_span(&store, &report.model_id, 3..5).unwrap();
    let good = std::fs::read(&cached).unwrap();
    corrupt_file(&cached, 100);
    assert_eq!(nak_shard_store::cached_span(&store, &report.model_id, 3..5).unwrap(), cached);
    assert_eq!(std::fs::read(&cached).unwrap(), good);
    // A blob that vanished is reported as missing.
    let head = report.manifest.blob(BlobRole::Head, None).unwrap();
    std::fs::remove_file(store.blob_path(&head.hash)).unwrap();
    assert_eq!(verify_store(&store).unwrap().missing, vec![(head.hash, vec![report.model_id])]);
    // A corrupt header is caught too.
    let meta = report.manifest.blob(BlobRole::Meta, None).unwrap();
    corrupt_file(&store.blob_path(&meta.hash), 3);
    assert!(matches!(assemble_span(&store, &report.model_id, 3..5, &out), Err(ImportError::Store(_))));
}

/// Flips one byte of every answer (inside the last chunk's data).
struct Liar(StoreProvider);
impl BlobProvider for Liar {
    fn name(&self) -> String {
        "liar".into()
    }
    fn fetch(&self, hash: &Hash, size: u64, ranges: &ChunkRanges) -> Result<Vec<u8>, ProviderError> {
        let mut v = self.0.fetch(hash, size, ranges)?;
        let n = v.len();
        v[n - 3] ^= 0x40;
        Ok(v)
    }
}

/// Answers `budget` requests, then is gone; counts what it was asked.
struct Flaky {
    inner: StoreProvider,
    budget: AtomicUsize,
    asked: AtomicUsize,
}
impl BlobProvider for Flaky {
    fn name(&self) -> String {
        "flaky".into()
    }
    fn fetch(&self, hash: &Hash, size: u64, ranges: &ChunkRanges) -> Result<Vec<u8>, ProviderError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        if self.budget.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1)).is_err() {
            return Err(ProviderError::Unavailable("connection reset".into()));
        }
        self.inner.fetch(hash, size, ranges)
    }
}

fn flaky(store: &Store, budget: usize) -> Arc<Flaky> {
    Arc::new(Flaky {
        inner: StoreProvider::new(store.clone(), "flaky"),
        budget: AtomicUsize::new(budget),
        asked: AtomicUsize::new(0),
    })
}

/// A source store holding one ~1.3 MB blob, and an empty destination.
fn stores(dir: &std::path::Path) -> (Store, Store, Hash, u64, Vec<u8>) {
    let src = Store::open(dir.join("src")).unwrap();
    let dst = Store::open(dir.join("dst")).unwrap();
    let bytes: Vec<u8> = (0..1_300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let ins = src.insert_bytes(&bytes).unwrap();
    assert_eq!(ins.hash, Hash::of(&bytes));
    (src, dst, ins.hash, ins.size, bytes)
}

const SMALL_PIECES: FetchConfig = FetchConfig { piece_bytes: 64 * 1024 };

#[test]
fn a_lying_provider_is_dropped_and_the_blob_arrives_intact() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst, hash, size, bytes) = stores(dir.path());
    let providers: Vec<Arc<dyn BlobProvider>> =
        vec![Arc::new(Liar(StoreProvider::new(src.clone(), "liar"))), Arc::new(StoreProvider::new(src, "honest"))];
    let report = fetch_blob(&dst, &hash, size, &providers, &SMALL_PIECES).unwrap();
    assert_eq!(dst.read_blob(&hash).unwrap(), bytes);
    assert_eq!(report.pieces, 20);
    assert_eq!(report.dropped.len(), 1);
    assert_eq!(report.dropped[0].0, "liar");
    assert!(report.dropped[0].1.contains("verification"), "{:?}", report.dropped);
    assert_eq!(report.delivered, vec![("liar".to_string(), 0), ("honest".to_string(), 20)]);
    // A second fetch finds it in place.
    assert!(fetch_blob(&dst, &hash, size, &providers, &SMALL_PIECES).unwrap().already_present);
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst, hash, size, bytes) = stores(dir.path());
    let first = flaky(&src, 7);
    let err = fetch_blob(&dst, &hash, size, &[first.clone() as Arc<dyn BlobProvider>], &SMALL_PIECES).unwrap_err();
    assert!(matches!(err, TransferError::Incomplete { missing: 13, pieces: 20, .. }), "{err}");
    assert!(!dst.has(&hash));

    let second = flaky(&src, usize::MAX);
    let report = fetch_blob(&dst, &hash, size, &[second.clone() as Arc<dyn BlobProvider>], &SMALL_PIECES).unwrap();
    assert_eq!(report.resumed, 7);
    assert_eq!(second.asked.load(Ordering::SeqCst), 13, "only the missing pieces are asked for");
    assert_eq!(dst.read_blob(&hash).unwrap(), bytes);
}

#[test]
fn several_providers_share_the_work() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst, hash, size, bytes) = stores(dir.path());
    let a = flaky(&src, usize::MAX);
    let b = flaky(&src, usize::MAX);
    let providers: Vec<Arc<dyn BlobProvider>> = vec![a.clone(), b.clone()];
    let report = fetch_blob(&dst, &hash, size, &providers, &SMALL_PIECES).unwrap();
    assert_eq!(dst.read_blob(&hash).unwrap(), bytes);
    assert_eq!(report.delivered.iter().map(|(_, n)| n).sum::<usize>(), 20);
    assert_eq!(a.asked.load(Ordering::SeqCst) + b.asked.load(Ordering::SeqCst), 20);
}

#[test]
fn a_blob_nobody_has_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst, _, _, _) = stores(dir.path());
    let missing = Hash::of(b"nobody has this");
    let providers: Vec<Arc<dyn BlobProvider>> =
        vec![Arc::new(StoreProvider::new(src.clone(), "a")), Arc::new(StoreProvider::new(src, "b"))];
    match fetch_blob(&dst, &missing, 5000, &providers, &FetchConfig::default()) {
        Err(TransferError::NoProvider(h)) => assert_eq!(h, missing),
        other => panic!("expected NoProvider, got {other:?}"),
    }
    assert!(matches!(
        fetch_blob(&dst, &missing, 5000, &[], &FetchConfig::default()),
        Err(TransferError::NoProvider(_))
    ));
}

#[test]
fn opening_the_store_removes_what_dead_processes_left_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let tmp = dir.path().join("tmp");
    // Above Linux's largest pid: no process has it.
    let orphan = tmp.join("blob.4194999.0");
    let live = store.temp_path("blob");
    let resumable = tmp.join("partial-00ff");
    for f in [&orphan, &live, &resumable] {
        std::fs::write(f, b"half").unwrap();
    }
    Store::open(dir.path()).unwrap();
    assert!(!orphan.exists(), "a dead process's temp file stays");
    assert!(live.exists() && resumable.exists(), "a live process's file or a resumable download was removed");
}

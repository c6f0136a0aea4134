//! The store's commands: `import`, `models`, `store verify`, and `slice` from the store.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use indicatif::{ProgressBar, ProgressStyle};
use nak_shard_store::import::verify_store;
use nak_shard_store::span::SpanPlan;
use nak_shard_store::{assemble_span, import_gguf, span, GgufFile, Store};

/// Peak resident memory of this process in KiB (Linux), if it can be read.
pub fn peak_rss_kib() -> Option<u64> {
    proc_status_kib("VmHWM:")
}

/// Current resident memory of this process in KiB (Linux), if it can be read.
pub fn rss_kib() -> Option<u64> {
    proc_status_kib("VmRSS:")
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

fn mb_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / 1e6 / seconds.max(1e-9)
}

/// `nak-node import`.
pub fn import(store: &Store, model: &Path, json: bool) -> Result<()> {
    let total: u64 = GgufFile::open(model)?.tensors.iter().filter_map(|t| t.n_bytes()).sum();
    let bar = if total >= 64 << 20 { ProgressBar::new(total) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message("importing");
    let t0 = Instant::now();
    let report = import_gguf(store, model, &mut |done| bar.set_position(done))
        .with_context(|| format!("importing {}", model.display()))?;
    let seconds = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let m = &report.manifest;
    if json {
        let out = serde_json::json!({
            "model_id": report.model_id.to_hex(),
            "name": m.name,
            "architecture": m.architecture,
            "n_layer": m.n_layer,
            "tied_embedding": m.tied_embedding,
            "blobs": m.blobs.len(),
            "size": m.total_size(),
            "new_blobs": report.new_blobs,
            "new_bytes": report.new_bytes,
            "seconds": seconds,
            "mb_per_s": mb_per_s(total, seconds),
            "peak_rss_kib": peak_rss_kib(),
        });
        println!("{out}");
    } else {
        println!("{}", report.model_id);
        eprintln!(
            "{} ({}, {} layers): {} blobs, {} new ({} bytes) in {:.2} s, {:.0} MB/s",
            m.name,
            m.architecture,
            m.n_layer,
            m.blobs.len(),
            report.new_blobs,
            report.new_bytes,
            seconds,
            mb_per_s(total, seconds)
        );
    }
    Ok(())
}

/// `nak-node models`.
pub fn models(store: &Store, json: bool) -> Result<()> {
    let mut rows = Vec::new();
    for id in store.model_ids()? {
        let m = store.manifest(&id)?;
        rows.push(serde_json::json!({
            "model_id": id.to_hex(),
            "name": m.name,
            "architecture": m.architecture,
            "n_layer": m.n_layer,
            "size": m.total_size(),
        }));
        if !json {
            println!(
                "{}  {:<32} {:<10} {:>4} layers {:>14} bytes",
                id,
                m.name,
                m.architecture,
                m.n_layer,
                m.total_size()
            );
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(rows));
    } else if rows.is_empty() {
        eprintln!("no models in {}", store.root().display());
    }
    Ok(())
}

/// `nak-node store verify`: fails when any blob is corrupt.
pub fn verify(store: &Store, json: bool) -> Result<()> {
    let t0 = Instant::now();
    let report = verify_store(store)?;
    let seconds = t0.elapsed().as_secs_f64();
    let bytes: u64 = report.checked.iter().map(|(c, _)| c.size).sum();
    let corrupt: Vec<_> = report.corrupt().collect();
    let ids = |models: &[nak_shard_store::ModelId]| models.iter().map(|m| m.to_hex()).collect::<Vec<_>>();
    if json {
        let bad: Vec<_> = corrupt
            .iter()
            .map(|(c, models)| {
                serde_json::json!({
                    "blob": c.hash.to_hex(),
                    "hashes_to": c.corrupt_as.map(|h| h.to_hex()),
                    "models": ids(models),
                })
            })
            .collect();
        let missing: Vec<_> = report
            .missing
            .iter()
            .map(|(h, models)| serde_json::json!({ "blob": h.to_hex(), "models": ids(models) }))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "blobs": report.checked.len(), "bytes": bytes, "seconds": seconds,
                "mb_per_s": mb_per_s(bytes, seconds), "corrupt": bad, "missing": missing,
            })
        );
    } else {
        for (c, models) in &corrupt {
            println!("CORRUPT {} (hashes to {:?}), used by {}", c.hash, c.corrupt_as, ids(models).join(", "));
        }
        for (h, models) in &report.missing {
            println!("MISSING {h}, needed by {}", ids(models).join(", "));
        }
        eprintln!(
            "checked {} blobs, {} bytes in {:.2} s ({:.0} MB/s): {} corrupt, {} missing",
            report.checked.len(),
            bytes,
            seconds,
            mb_per_s(bytes, seconds),
            corrupt.len(),
            report.missing.len()
        );
    }
    if !corrupt.is_empty() || !report.missing.is_empty() {
        bail!("{} corrupt and {} missing blob(s) in {}", corrupt.len(), report.missing.len(), store.root().display());
    }
    Ok(())
}

/// `nak-node slice`: from a GGUF path, or from the store by model id (or a unique prefix).
pub fn slice(store: &Store, model: &str, layers: &str, output: &Path) -> Result<SpanPlan> {
    let range =
        span::parse_layer_range(layers).with_context(|| format!("--layers {layers}: expected A:B with A < B"))?;
    if Path::new(model).is_file() {
        let src = GgufFile::open(model)?;
        return Ok(span::write_span(&src, range, output)?);
    }
    let id =
        store.resolve_model(model).with_context(|| format!("{model} is neither a file nor a model in the store"))?;
    Ok(assemble_span(store, &id, range, output)?)
}

/// `nak-node bench-store`: import and verify throughput beside raw blake3 and raw disk writes.
pub fn bench_store(dir: &Path, model: Option<&Path>, synth_gib: f64) -> Result<String> {
    use std::fmt::Write as _;
    use std::io::Write as _;
    std::fs::create_dir_all(dir)?;
    let model = match model {
        Some(m) => m.to_path_buf(),
        None => {
            // Llama-7B-like layers (GQA 32/8 heads) in Q8_0, about 188 MB each, enough to reach the size asked for.
            let layer_bytes = 188_000_000f64;
            let layers = ((synth_gib * (1u64 << 30) as f64 - 280e6) / layer_bytes).ceil().max(1.0) as u32;
            let cfg = nak_shard_store::SynthConfig {
                n_layer: layers,
                n_embd: 4096,
                n_head: 32,
                n_head_kv: 8,
                n_ff: 11008,
                n_vocab: 32000,
                weight_type: nak_shard_store::TensorType::Q8_0,
                ..Default::default()
            };
            let path = dir.join(format!("synth-{layers}L.gguf"));
            if !path.is_file() {
                eprintln!("writing a {layers}-layer synthetic model to {}", path.display());
                nak_shard_store::write_synthetic(&cfg, &path)?;
            }
            path
        }
    };
    let file_bytes = std::fs::metadata(&model)?.len();
    let store_dir = dir.join(format!("store-{}", std::process::id()));
    let store = Store::open(&store_dir)?;
    let rss_before = rss_kib().unwrap_or(0);

    let t = Instant::now();
    let report = import_gguf(&store, &model, &mut |_| {})?;
    let import_s = t.elapsed().as_secs_f64();
    let peak = peak_rss_kib().unwrap_or(0);

    let t = Instant::now();
    let checks = verify_store(&store)?;
    let verify_s = t.elapsed().as_secs_f64();
    let verified: u64 = checks.checked.iter().map(|(c, _)| c.size).sum();

    // Raw disk: copy the model into a new file and sync it, as import writes its blobs.
    let copy = dir.join("raw-copy.bin");
    let t = Instant::now();
    {
        let mut src = std::fs::File::open(&model)?;
        let mut dst = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&copy)?);
        std::io::copy(&mut src, &mut dst)?;
        dst.flush()?;
        dst.get_ref().sync_all()?;
    }
    let copy_s = t.elapsed().as_secs_f64();
    std::fs::remove_file(&copy)?;

    // Raw hashing: blake3 over 256 MiB in memory, one thread (as import hashes).
    let buf: Vec<u8> = (0..256u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    let t = Instant::now();
    let h = blake3::hash(&buf);
    let hash_s = t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&store_dir)?;

    let mut out = String::new();
    let _ = writeln!(out, "model {} ({} bytes, {} blobs)", model.display(), file_bytes, report.manifest.blobs.len());
    let _ = writeln!(out, "{:<44} {:>10}", "", "MB/s");
    let _ = writeln!(out, "{:<44} {:>10.0}", "raw blake3, 256 MiB in memory, 1 thread", mb_per_s(256 << 20, hash_s));
    let _ = writeln!(out, "{:<44} {:>10.0}", "raw disk: copy model file + fsync", mb_per_s(file_bytes, copy_s));
    let _ = writeln!(out, "{:<44} {:>10.0}", "nak-node import (fresh store)", mb_per_s(file_bytes, import_s));
    let _ = writeln!(out, "{:<44} {:>10.0}", "nak-node store verify", mb_per_s(verified, verify_s));
    let _ = writeln!(
        out,
        "import peak resident memory: {} KiB ({} KiB before import); hash check {}",
        peak,
        rss_before,
        &h.to_hex()[..8]
    );
    Ok(out)
}

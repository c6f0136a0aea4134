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
    let checks = verify_store(store)?;
    let seconds = t0.elapsed().as_secs_f64();
    let bytes: u64 = checks.iter().map(|(c, _)| c.size).sum();
    let corrupt: Vec<_> = checks.iter().filter(|(c, _)| c.corrupt_as.is_some()).collect();
    if json {
        let bad: Vec<_> = corrupt
            .iter()
            .map(|(c, models)| {
                serde_json::json!({
                    "blob": c.hash.to_hex(),
                    "hashes_to": c.corrupt_as.map(|h| h.to_hex()),
                    "models": models.iter().map(|m| m.to_hex()).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "blobs": checks.len(), "bytes": bytes, "seconds": seconds,
                "mb_per_s": mb_per_s(bytes, seconds), "corrupt": bad,
            })
        );
    } else {
        for (c, models) in &corrupt {
            let users: Vec<String> = models.iter().map(|m| m.to_hex()[..12].to_string()).collect();
            println!("CORRUPT {} (hashes to {:?}), used by {}", c.hash, c.corrupt_as, users.join(", "));
        }
        eprintln!(
            "checked {} blobs, {} bytes in {:.2} s ({:.0} MB/s): {} corrupt",
            checks.len(),
            bytes,
            seconds,
            mb_per_s(bytes, seconds),
            corrupt.len()
        );
    }
    if !corrupt.is_empty() {
        bail!("{} corrupt blob(s) in {}", corrupt.len(), store.root().display());
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

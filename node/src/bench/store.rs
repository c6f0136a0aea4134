//! `nak-node bench-store`: import and verify throughput of the blob store beside raw
//! blake3 hashing and raw disk writes, on a synthetic Llama-7B-like model of the size
//! asked for (or a given model).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use nak_shard_store::import::verify_store;
use nak_shard_store::{import_gguf, Store, SynthConfig, TensorType};

use super::{mb_per_s, peak_rss_kib, rss_kib};

/// Runs the benchmark in `dir` and returns its report.
pub fn run(dir: &Path, model: Option<&Path>, synth_gib: f64) -> Result<String> {
    std::fs::create_dir_all(dir)?;
    let model = match model {
        Some(m) => m.to_path_buf(),
        None => {
            // Llama-7B-like layers (GQA 32/8 heads) in Q8_0, about 188 MB each, enough to reach the size asked for.
            let layer_bytes = 188_000_000f64;
            let layers = ((synth_gib * (1u64 << 30) as f64 - 280e6) / layer_bytes).ceil().max(1.0) as u32;
            let cfg = SynthConfig {
                n_layer: layers,
                n_embd: 4096,
                n_head: 32,
                n_head_kv: 8,
                n_ff: 11008,
                n_vocab: 32000,
                weight_type: TensorType::Q8_0,
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

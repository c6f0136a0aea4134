//! Models and files: `import`, `models`, `store verify`, `slice`, `synth` and `info`,
//! over the local blob store ([`nak_shard_store`]) and GGUF files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use indicatif::{ProgressBar, ProgressStyle};
use nak_node::engine::SpanEngine;
use nak_shard_store::import::verify_store;
use nak_shard_store::{assemble_span, import_gguf, span, GgufFile, ModelId, SynthArch, SynthConfig, TensorType};

use super::{open_store, EngineArgs};
use crate::bench::{mb_per_s, peak_rss_kib, rss_kib};

/// Split a GGUF into content-addressed blobs in the store; prints the model id.
#[derive(clap::Args)]
pub struct ImportArgs {
    /// The whole model.
    model: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// List the models in the store.
#[derive(clap::Args)]
pub struct ModelsArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Maintain the store.
#[derive(clap::Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(clap::Subcommand)]
enum StoreCommand {
    /// Re-hash every blob and report corrupt ones (exit status 1 if any).
    Verify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Write a span GGUF holding layers A:B (end exclusive) of a model.
#[derive(clap::Args)]
pub struct SliceArgs {
    /// A whole-model GGUF, or the id (or a unique prefix) of a model in the store.
    model: String,
    /// Layers as A:B, end exclusive.
    #[arg(long)]
    layers: String,
    /// Output file.
    #[arg(short, long)]
    output: PathBuf,
}

/// Write a synthetic model with random weights, of any splittable architecture.
#[derive(clap::Args)]
pub struct SynthArgs {
    /// Output file.
    #[arg(short, long)]
    output: PathBuf,
    /// Architecture: llama, qwen2, qwen3, qwen3moe, gemma3, phi3 or mistral3.
    #[arg(long, default_value = "llama")]
    arch: SynthArch,
    #[arg(long, default_value_t = 4)]
    layers: u32,
    #[arg(long, default_value_t = 64)]
    embd: u32,
    #[arg(long, default_value_t = 4)]
    heads: u32,
    #[arg(long, default_value_t = 2)]
    kv_heads: u32,
    #[arg(long, default_value_t = 128)]
    ff: u32,
    #[arg(long, default_value_t = 512)]
    vocab: u32,
    /// Weight type: f32, f16 or q8_0.
    #[arg(long, default_value = "f32")]
    weight_type: String,
    /// Tie the output head to the token embedding.
    #[arg(long)]
    tied: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// qwen3moe: experts per layer.
    #[arg(long, default_value_t = 8)]
    experts: u32,
    /// qwen3moe: experts each token is routed to.
    #[arg(long, default_value_t = 2)]
    experts_used: u32,
    /// gemma3: the sliding window, in positions.
    #[arg(long, default_value_t = 8)]
    sliding_window: u32,
}

/// Describe a model or span file; with --load, load it into llama.cpp and report memory.
#[derive(clap::Args)]
pub struct InfoArgs {
    /// The GGUF file.
    file: PathBuf,
    /// Load it and report the process's resident memory.
    #[arg(long)]
    load: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

/// `nak-node import`.
pub fn import(args: ImportArgs, data_dir: Option<PathBuf>) -> Result<()> {
    let (store, model, json) = (open_store(data_dir)?, args.model.as_path(), args.json);
    let total: u64 = GgufFile::open(model)?.tensors.iter().filter_map(|t| t.n_bytes()).sum();
    let bar = if total >= 64 << 20 { ProgressBar::new(total) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message("importing");
    let t0 = Instant::now();
    let report = import_gguf(&store, model, &mut |done| bar.set_position(done))
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
pub fn models(args: ModelsArgs, data_dir: Option<PathBuf>) -> Result<()> {
    let (store, json) = (open_store(data_dir)?, args.json);
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
pub fn store(args: StoreArgs, data_dir: Option<PathBuf>) -> Result<()> {
    let StoreCommand::Verify { json } = args.command;
    let store = open_store(data_dir)?;
    let t0 = Instant::now();
    let report = verify_store(&store)?;
    let seconds = t0.elapsed().as_secs_f64();
    let bytes: u64 = report.checked.iter().map(|(c, _)| c.size).sum();
    let corrupt: Vec<_> = report.corrupt().collect();
    let ids = |models: &[ModelId]| models.iter().map(|m| m.to_hex()).collect::<Vec<_>>();
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
            let hashes_to = c.corrupt_as.map_or("unreadable".to_string(), |h| format!("hashes to {h}"));
            println!("CORRUPT {} ({hashes_to}), used by {}", c.hash, ids(models).join(", "));
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
pub fn slice(args: SliceArgs, data_dir: Option<PathBuf>) -> Result<()> {
    let (model, layers, output) = (args.model.as_str(), args.layers.as_str(), args.output.as_path());
    let store = open_store(data_dir)?;
    let range =
        span::parse_layer_range(layers).with_context(|| format!("--layers {layers}: expected A:B with A < B"))?;
    let plan = if Path::new(model).is_file() {
        span::write_span(&GgufFile::open(model)?, range, output)?
    } else {
        let id = store
            .resolve_model(model)
            .with_context(|| format!("{model} is neither a file nor a model in the store"))?;
        assemble_span(&store, &id, range, output)?
    };
    let size = std::fs::metadata(output)?.len();
    println!(
        "wrote {} (layers {}..{} of {}, embedding: {}, head: {}, {} tensors, {size} bytes)",
        output.display(),
        plan.position.first,
        plan.position.first + plan.position.n_layer,
        plan.position.total,
        plan.position.has_embedding,
        plan.position.has_head,
        plan.tensors.len()
    );
    Ok(())
}

/// `nak-node synth`.
pub fn synth(args: SynthArgs) -> Result<()> {
    let weight_type = match args.weight_type.to_ascii_lowercase().as_str() {
        "f32" => TensorType::F32,
        "f16" => TensorType::F16,
        "q8_0" => TensorType::Q8_0,
        other => bail!("--weight-type {other}: expected f32, f16 or q8_0"),
    };
    let cfg = SynthConfig {
        arch: args.arch,
        n_layer: args.layers,
        n_embd: args.embd,
        n_head: args.heads,
        n_head_kv: args.kv_heads,
        n_ff: args.ff,
        n_vocab: args.vocab,
        weight_type,
        tied_embedding: args.tied,
        seed: args.seed,
        n_expert: args.experts,
        n_expert_used: args.experts_used,
        sliding_window: args.sliding_window,
        ..SynthConfig::default()
    };
    let size = nak_shard_store::write_synthetic(&cfg, &args.output)?;
    println!("wrote {} ({size} bytes)", args.output.display());
    Ok(())
}

/// `nak-node info`.
pub fn info(args: InfoArgs) -> Result<()> {
    let path = args.file.as_path();
    let file = GgufFile::open(path)?;
    let pos = span::SpanPosition::of(&file)?;
    let tensor_bytes: u64 = file.tensors.iter().filter_map(|t| t.n_bytes()).sum();
    println!(
        "{}: {} layers {}..{} of {} (embedding: {}, head: {}), {} tensors, {} tensor bytes, {} file bytes",
        path.display(),
        file.architecture()?,
        pos.first,
        pos.first + pos.n_layer,
        pos.total,
        pos.has_embedding,
        pos.has_head,
        file.tensors.len(),
        tensor_bytes,
        file.file_len()
    );
    let arch = file.architecture()?;
    if span::SPLITTABLE_ARCHITECTURES.contains(&arch) {
        println!("splits into spans: yes ({arch} runs any range of layers)");
    } else {
        println!("splits into spans: no ({arch} runs only as a whole model)");
    }
    if args.load {
        let before = rss_kib().unwrap_or(0);
        let engine = SpanEngine::load(path, args.engine.config())?;
        let after = rss_kib().unwrap_or(0);
        println!(
            "loaded: n_embd {}, resident memory {} KiB (+{} KiB for the span and its context)",
            engine.n_embd(),
            after,
            after.saturating_sub(before)
        );
    }
    Ok(())
}

//! `nak-node bench`: a whole model through llama-cpp-2 against local chains of 1, 2 and 3 spans.
//!
//! All configurations are loaded once, warmed up, then measured in interleaved rounds
//! (reference, 1 span, 2 spans, 3 spans, reference, ...) so drift in the machine's
//! speed hits them alike. Each prompt length gives prefill and decode rates; the
//! report prints medians and each chain's ratio to the reference.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use nak_node::chain::{GenerateOptions, LocalChain};
use nak_node::engine::EngineConfig;
use nak_node::reference::ReferenceModel;
use nak_shard_store::{span::SpanPosition, GgufFile};

use super::median;

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Tokens generated per measurement.
    pub tokens: usize,
    /// Measured repetitions per configuration.
    pub reps: usize,
    /// Prompt lengths in tokens.
    pub contexts: Vec<usize>,
    /// Engine settings shared by all configurations.
    pub engine: EngineConfig,
}

/// A prompt of exactly `n` tokens: the model's tokenization of filler text, cut to length.
fn prompt_of(reference: &ReferenceModel, n: usize) -> Vec<i32> {
    let sentence = "The swarm splits one model into spans of layers, and every node runs the span it holds. ";
    let mut text = String::from(sentence);
    let mut tokens = reference.tokenize(&text);
    while tokens.len() < n {
        text.push_str(sentence);
        tokens = reference.tokenize(&text);
    }
    tokens.truncate(n.max(1));
    tokens
}

/// Runs the benchmark on `model` and returns a printable report.
pub fn run(model: &Path, opts: &BenchOptions) -> Result<String> {
    let n_layer = SpanPosition::of(&GgufFile::open(model)?)?.n_layer;
    let reference = ReferenceModel::load(model)?;
    let configs: Vec<(String, Vec<u32>)> = vec![
        ("1 span".into(), vec![]),
        ("2 spans".into(), vec![n_layer / 2]),
        ("3 spans".into(), vec![n_layer / 3, 2 * n_layer / 3]),
    ];
    let mut chains = Vec::new();
    for (_, cuts) in &configs {
        chains.push(LocalChain::from_model(model, cuts, &opts.engine)?);
    }
    let gen = GenerateOptions { max_tokens: opts.tokens, ignore_eos: true, ..GenerateOptions::default() };

    let mut report = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let _ = writeln!(
        report,
        "model {} ({n_layer} layers), {} threads, {cpu}; {} tokens generated per run, median of {} runs",
        model.display(),
        opts.engine.threads,
        opts.tokens,
        opts.reps
    );
    let _ = writeln!(
        report,
        "{:>8} {:<26} {:>12} {:>8} {:>12} {:>8}",
        "context", "configuration", "prefill t/s", "ratio", "decode t/s", "ratio"
    );

    for &ctx in &opts.contexts {
        let prompt = prompt_of(&reference, ctx);
        // Warm-up: page in weights, build graphs.
        reference.generate_greedy(&prompt, 4, true, &opts.engine)?;
        for c in chains.iter_mut() {
            c.generate(&prompt, &GenerateOptions { max_tokens: 4, ..gen })?;
        }
        let mut prefill = vec![Vec::new(); configs.len() + 1];
        let mut decode = vec![Vec::new(); configs.len() + 1];
        for _ in 0..opts.reps {
            let r = reference.generate_greedy(&prompt, opts.tokens, true, &opts.engine)?;
            prefill[0].push(prompt.len() as f64 / r.prefill_s);
            decode[0].push(r.tokens.len().saturating_sub(1) as f64 / r.decode_s);
            for (i, c) in chains.iter_mut().enumerate() {
                let g = c.generate(&prompt, &gen)?;
                prefill[i + 1].push(g.prefill_tokens_per_s);
                decode[i + 1].push(g.decode_tokens_per_s);
            }
        }
        let base_p = median(&mut prefill[0]);
        let base_d = median(&mut decode[0]);
        let names = std::iter::once("whole model (llama-cpp-2)".to_string()).chain(configs.iter().map(|(n, cuts)| {
            if cuts.is_empty() {
                format!("{n} (engine)")
            } else {
                format!("{n} (cuts {})", cuts.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
            }
        }));
        for (i, name) in names.enumerate() {
            let p = median(&mut prefill[i]);
            let d = median(&mut decode[i]);
            let _ = writeln!(
                report,
                "{:>8} {:<26} {:>12.1} {:>8.3} {:>12.1} {:>8.3}",
                prompt.len(),
                name,
                p,
                p / base_p,
                d,
                d / base_d
            );
        }
    }
    Ok(report)
}

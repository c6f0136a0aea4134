//! `nak-fuzz`: runs the fuzz targets for as many inputs as asked.
//!
//! ```text
//! nak-fuzz list
//! nak-fuzz run [--target NAME]... [--inputs N] [--seed S] [--jobs J] [--save]
//! nak-fuzz seed-corpus        # writes every target's seeds into fuzz/corpus/
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use nak_fuzz::runner::{self, Report, RunConfig};
use nak_fuzz::targets::{target, Target, TARGETS};

#[derive(Parser)]
#[command(about = "Fuzzes Nakshatra's decoders (seeded, stable Rust)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Lists the targets.
    List,
    /// Runs targets and reports inputs, outcomes, peak memory and findings.
    Run {
        /// Targets to run (default: all).
        #[arg(long = "target")]
        targets: Vec<String>,
        /// Inputs per target.
        #[arg(long, default_value_t = 1_000_000)]
        inputs: u64,
        /// Seed of the mutations.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Targets run at once.
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Write each finding's input into the corpus.
        #[arg(long)]
        save: bool,
    },
    /// Writes each target's seeds into its corpus folder.
    SeedCorpus,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::List => {
            for t in TARGETS {
                println!("{}", t.name);
            }
        }
        Command::SeedCorpus => {
            for t in TARGETS {
                let dir = nak_fuzz::default_corpus().join(t.name);
                std::fs::create_dir_all(&dir)?;
                for (i, seed) in nak_fuzz::seeds::seeds(t.name).iter().enumerate() {
                    std::fs::write(dir.join(format!("seed-{i}")), seed)?;
                }
            }
        }
        Command::Run { targets, inputs, seed, jobs, save } => {
            let chosen: Vec<Target> = if targets.is_empty() {
                TARGETS.to_vec()
            } else {
                targets
                    .iter()
                    .map(|n| target(n).ok_or_else(|| anyhow::anyhow!("no target `{n}`")))
                    .collect::<Result<_>>()?
            };
            let cfg = RunConfig { inputs, seed, corpus: nak_fuzz::default_corpus(), save_findings: save };
            let quiet = nak_fuzz::quiet_panics();
            let next = AtomicUsize::new(0);
            let reports = Mutex::new(Vec::new());
            std::thread::scope(|scope| {
                for _ in 0..jobs.max(1) {
                    scope.spawn(|| {
                        while let Some(t) = chosen.get(next.fetch_add(1, Ordering::Relaxed)) {
                            let report = runner::run(*t, &cfg);
                            print_report(&report);
                            if let Ok(mut all) = reports.lock() {
                                all.push(report);
                            }
                        }
                    });
                }
            });
            drop(quiet);
            let reports = reports.into_inner().unwrap_or_default();
            let findings: usize = reports.iter().map(|r| r.findings.len()).sum();
            if findings > 0 {
                bail!("{findings} findings");
            }
        }
    }
    Ok(())
}

fn print_report(r: &Report) {
    println!(
        "{:<18} {:>9} inputs {:>9} accepted {:>4} outcomes  pool {:>4}  peak {:>8} B (input {:>6} B)  slowest {:>9.3?}  {:>7.1?}  {} findings",
        r.target,
        r.inputs,
        r.accepted,
        r.outcomes,
        r.pool,
        r.peak_alloc.0,
        r.peak_alloc.1,
        r.slowest,
        r.elapsed,
        r.findings.len()
    );
    for f in &r.findings {
        println!("    {}: {} (input {} bytes: {})", r.target, f.what, f.input.len(), hex_prefix(&f.input));
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(32).map(|b| format!("{b:02x}")).collect()
}

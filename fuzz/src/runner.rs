//! The runner: seeded, mutation-based fuzzing on stable Rust, guided by outcomes.
//!
//! For one target it builds a pool from the target's corpus folder (every file, run
//! first as it is) and its [`seeds`](crate::seeds), then for each further input takes a
//! pool entry, mutates it and runs the target under `catch_unwind`, the allocation
//! counter and a clock. Without coverage instrumentation (libFuzzer needs a nightly
//! compiler) it steers by what the decoder said: an input whose outcome (accepted, or
//! the reason it was refused, digits blurred) has not been seen before joins the pool,
//! so inputs that reach a new check breed. A panic, an allocation over the bound or a
//! slow input is a [`Finding`], kept with its input; the same seed repeats a run exactly.

use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::alloc;
use crate::mutate::mutate;
use crate::seeds::seeds;
use crate::targets::Target;

/// Most bytes a decoder may hold at once per byte of input, on top of [`ALLOC_SLACK`].
/// Protobuf lets each byte of input become a few dozen bytes of message (an empty
/// sub-message is two bytes on the wire and a struct of several vectors in memory);
/// what the bound catches is memory reserved for what a length field claims.
pub const ALLOC_PER_BYTE: usize = 256;
/// Memory any input may use regardless of its length.
pub const ALLOC_SLACK: usize = 1 << 20;
/// An input that takes longer than this is a finding (a decoder loop that does not end
/// shows as one that takes very long).
pub const SLOW: Duration = Duration::from_secs(1);
/// Most inputs kept in the pool.
const POOL_MAX: usize = 4096;

/// How one run goes.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Inputs to run, the corpus and seeds included.
    pub inputs: u64,
    /// Seed of the mutations.
    pub seed: u64,
    /// The corpus root: the target's inputs are in `<corpus>/<target>/`.
    pub corpus: PathBuf,
    /// Whether to write each finding's input into the corpus folder.
    pub save_findings: bool,
}

/// Something wrong a target did with an input.
#[derive(Debug, Clone)]
pub struct Finding {
    /// What went wrong.
    pub what: String,
    /// The input.
    pub input: Vec<u8>,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The target.
    pub target: String,
    /// Inputs run.
    pub inputs: u64,
    /// Inputs the decoder accepted.
    pub accepted: u64,
    /// Distinct outcomes seen.
    pub outcomes: usize,
    /// Inputs in the pool at the end.
    pub pool: usize,
    /// The most memory one input held, and that input's length.
    pub peak_alloc: (usize, usize),
    /// The slowest input's time.
    pub slowest: Duration,
    /// Findings (the first of each kind).
    pub findings: Vec<Finding>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// The inputs in `dir`, in name order (none if it does not exist).
pub fn corpus_inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    paths.sort();
    paths.into_iter().filter_map(|p| std::fs::read(&p).ok().map(|bytes| (p, bytes))).collect()
}

/// What one input did.
struct Ran {
    /// Its outcome key and whether it was accepted, or what went wrong.
    result: Result<(String, bool), String>,
    /// The most memory it held.
    peak: usize,
    took: Duration,
}

fn run_one(target: Target, input: &[u8]) -> Ran {
    let start = Instant::now();
    let (result, peak) = alloc::measure(|| panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input))));
    let took = start.elapsed();
    let bound = ALLOC_PER_BYTE * input.len() + ALLOC_SLACK;
    let result = match result {
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panic: {message}"))
        }
        Ok(_) if peak > bound => Err(format!("held {peak} bytes for a {}-byte input (bound {bound})", input.len())),
        Ok(_) if took > SLOW => Err(format!("took {took:?}")),
        Ok(Ok(())) => Ok(("accepted".to_string(), true)),
        Ok(Err(reason)) => Ok((blur(&reason), false)),
    };
    Ran { result, peak, took }
}

/// A refusal reason with its numbers blurred, so one check counts as one outcome.
fn blur(reason: &str) -> String {
    let mut out = String::new();
    for c in reason.chars().take(120) {
        if c.is_ascii_digit() {
            if !out.ends_with('#') {
                out.push('#');
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Fuzzes `target` (see the module doc).
pub fn run(target: Target, cfg: &RunConfig) -> Report {
    let started = Instant::now();
    let dir = cfg.corpus.join(target.name);
    let mut pool: Vec<Vec<u8>> = corpus_inputs(&dir).into_iter().map(|(_, bytes)| bytes).collect();
    pool.extend(seeds(target.name));
    pool.push(Vec::new());
    let replay = pool.len();
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ hash_name(target.name));
    let mut seen = HashSet::new();
    let mut report = Report { target: target.name.to_string(), ..Report::default() };
    let mut kinds = HashSet::new();
    for i in 0..cfg.inputs {
        let input = if (i as usize) < replay {
            pool[i as usize].clone()
        } else {
            let mut input = pool[rng.gen_range(0..pool.len())].clone();
            let other = &pool[rng.gen_range(0..pool.len())];
            mutate(&mut rng, &mut input, other);
            input
        };
        report.inputs += 1;
        let ran = run_one(target, &input);
        report.slowest = report.slowest.max(ran.took);
        if ran.peak > report.peak_alloc.0 {
            report.peak_alloc = (ran.peak, input.len());
        }
        match ran.result {
            Ok((outcome, accepted)) => {
                report.accepted += u64::from(accepted);
                if seen.insert(outcome) && pool.len() < POOL_MAX && i as usize >= replay {
                    pool.push(input);
                }
            }
            Err(what) => {
                let kind = blur(&what);
                if kinds.insert(kind) {
                    if cfg.save_findings {
                        save(&dir, &input);
                    }
                    report.findings.push(Finding { what, input });
                }
            }
        }
    }
    report.outcomes = seen.len();
    report.pool = pool.len();
    report.elapsed = started.elapsed();
    report
}

fn hash_name(name: &str) -> u64 {
    let h = blake3::hash(name.as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or_default())
}

/// Keeps a finding's input in the corpus, named by its hash, so every later run replays it.
fn save(dir: &Path, input: &[u8]) {
    let name = format!("finding-{}", &blake3::hash(input).to_hex()[..16]);
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(dir.join(&name), input)) {
        eprintln!("could not keep {name}: {e}");
    }
}

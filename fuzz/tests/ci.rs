//! The bounded fuzzing run of CI: every target over its corpus, its seeds and a seeded
//! number of mutations, with no panic, excess allocation or slow input; and checks that
//! the runner does catch each kind of finding.

use nak_fuzz::alloc;
use nak_fuzz::runner::{self, RunConfig};
use nak_fuzz::targets::{target, Outcome, Target, TARGETS};

/// Inputs per target in CI; `nak-fuzz run` runs a million.
const CI_INPUTS: u64 = 20_000;

/// The tests that silence panics take turns: the panic hook is one for the process.
static QUIET: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn config(inputs: u64) -> RunConfig {
    RunConfig { inputs, seed: 1, corpus: nak_fuzz::default_corpus(), save_findings: false }
}

#[test]
fn every_target_survives_its_corpus_and_a_bounded_run() {
    let turn = QUIET.lock().unwrap_or_else(|e| e.into_inner());
    let quiet = nak_fuzz::quiet_panics();
    let mut failed = Vec::new();
    for t in TARGETS {
        let report = runner::run(*t, &config(CI_INPUTS));
        println!(
            "{}: {} inputs, {} accepted, {} outcomes, peak {} bytes, {:?}",
            t.name, report.inputs, report.accepted, report.outcomes, report.peak_alloc.0, report.elapsed
        );
        if report.accepted == 0 {
            failed.push(format!("{}: no input was accepted, so nothing past the first check was tried", t.name));
        }
        for f in report.findings {
            failed.push(format!("{}: {} (input {:02x?})", t.name, f.what, &f.input[..f.input.len().min(64)]));
        }
    }
    drop((quiet, turn));
    assert!(failed.is_empty(), "findings:\n{}", failed.join("\n"));
}

#[test]
fn a_frame_length_alone_reserves_nothing() {
    // Five bytes that claim a 30 MiB inference frame, then nothing.
    let claim = [0x80, 0x80, 0x80, 0x0f];
    let stream = target("inference_stream").expect("the target exists");
    let (outcome, peak) = alloc::measure(|| (stream.run)(&claim));
    assert!(outcome.is_err(), "a frame cut off after its length is refused");
    assert!(peak < 64 << 10, "the reader held {peak} bytes for a 4-byte claim");
}

fn claims_what_it_reads(data: &[u8]) -> Outcome {
    let claimed = u32::from_le_bytes(data.get(..4).and_then(|b| b.try_into().ok()).ok_or("short")?);
    let buffer = vec![0u8; claimed as usize % (64 << 20)];
    std::hint::black_box(&buffer);
    Ok(())
}

fn panics_on_three_bytes(data: &[u8]) -> Outcome {
    if data.len() == 3 {
        panic!("a reachable panic");
    }
    Err("refused".into())
}

#[test]
fn the_runner_finds_panics_and_excess_allocations() {
    let turn = QUIET.lock().unwrap_or_else(|e| e.into_inner());
    let quiet = nak_fuzz::quiet_panics();
    let mut missed = Vec::new();
    for (name, run, kind) in
        [("receipt", claims_what_it_reads as fn(&[u8]) -> Outcome, "held"), ("receipt", panics_on_three_bytes, "panic")]
    {
        let report = runner::run(Target { name, run }, &config(50_000));
        if !report.findings.iter().any(|f| f.what.starts_with(kind)) {
            missed.push(format!("{kind}: {:?}", report.findings.iter().map(|f| &f.what).collect::<Vec<_>>()));
        }
    }
    drop((quiet, turn));
    assert!(missed.is_empty(), "the runner missed planted findings: {missed:?}");
}

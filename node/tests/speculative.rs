//! Speculative decoding through a swarm of separate processes: four `nak-node run`
//! servers on loopback hold layers 0:10, 10:20, 20:30 and 20:30 again of SmolLM2-135M,
//! all but the last with a draft model.
//!
//! The engine first: a step of drafted rows, each row sampled in turn, gives the tokens
//! one-row steps give, for greedy and seeded sampling with penalties, whichever drafts
//! stand; the rows of rejected drafts are dropped and the draws go on.
//!
//! With `--speculative lookup` and with `--speculative draft` (a draft model: the last
//! server's in ring mode, the client's in client-sampled mode), greedy and seeded
//! sampling give the tokens they give without it, in ring mode (the last server drafts
//! and verifies; with a draft model, the route ends on a server that has one, which
//! announces it) and in client-sampled mode (the client drafts and judges); on a prompt
//! whose answer repeats its input the drafts stand and trips bring several tokens each. (Drafted trips across a failover:
//! `failover.rs`.)

mod common;

use common::{
    log_tails, nak_command, nak_json as nak, smollm_path, test_engine_config, test_model, Swarm, PROMPTS, QWEN2,
};
use nak_node::engine::{SamplingParams, SessionConfig, SpanEngine, StepInput, StepOutput, StepRequest};
use nak_node::speculative::{DraftModel, DraftSession};

/// A prompt whose answer copies much of it.
const REPEAT: &str = "Repeat this list exactly: apples, pears, plums, cherries, grapes, lemons, limes, figs, \
dates, melons. Again: apples, pears, plums, cherries, grapes, lemons, limes, figs, dates, melons. Again:";

fn generate(swarm: &Swarm, prompt: &str, tokens: &str, extra: &[&str]) -> serde_json::Value {
    let args = ["generate", "--bootstrap", &swarm.addr, "--model", &swarm.id, "--prompt", prompt, "--json"];
    nak(&[&args[..], &["--max-tokens", tokens], extra].concat())
}

#[test]
fn drafted_tokens_equal_plain_decoding_in_ring_and_client_mode() {
    // The first three servers can draft with a draft model (SmolLM2 itself: the same
    // vocabulary); the fourth, a second 20:30, has none, so a ring drafting with a draft
    // model must end on the third.
    let draft = smollm_path();
    let draft = draft.to_str().unwrap();
    let serve_draft = |i: usize| if i < 3 { vec!["--draft-model".to_string(), draft.to_string()] } else { vec![] };
    let swarm = Swarm::start_full(&smollm_path(), &["0:10", "10:20", "20:30", "20:30"], serve_draft, |_| vec![]);
    // Their announcements say which have one.
    let mut drafting = Vec::new();
    for _ in 0..10 {
        let status = nak(&["status", "--bootstrap", &swarm.addr, "--model", &swarm.id, "--wait", "5", "--json"]);
        let servers = status["models"][0]["server_list"].as_array().cloned().unwrap_or_default();
        drafting = servers.iter().map(|s| (s["layers"][0].as_u64(), s["draft_model"].as_bool())).collect();
        if drafting.len() == 4 {
            break;
        }
    }
    drafting.sort();
    let want = [(0, true), (10, true), (20, false), (20, true)].map(|(l, d)| (Some(l), Some(d)));
    assert_eq!(drafting, want, "(first layer, draft model) of each server, as announced");
    let sampled = ["--temperature", "0.8", "--seed", "7", "--top-k", "40", "--repeat-penalty", "1.1"];
    let lookup = ["--speculative", "lookup"];
    let with_model = |mode: &str| match mode {
        "client" => vec!["--speculative", "draft", "--draft-model", draft],
        _ => vec!["--speculative", "draft"],
    };
    for (prompt, sampling) in [(REPEAT, &[][..]), (PROMPTS[0], &[][..]), (REPEAT, &sampled[..])] {
        // The draft model reads the prompt in the background before it drafts: on loopback,
        // with no delay, that takes a loaded host some 30 trips.
        let tokens = if prompt == REPEAT { "112" } else { "48" };
        for mode in ["ring", "client"] {
            let plain = generate(&swarm, prompt, tokens, &[&["--mode", mode], sampling].concat());
            assert!(plain.get("speculation").is_none());
            let model_args = with_model(mode);
            let sources = [Some(&lookup[..]), (prompt == REPEAT).then_some(&model_args[..])];
            for source in sources.into_iter().flatten() {
                let spec = generate(&swarm, prompt, tokens, &[&["--mode", mode], source, sampling].concat());
                assert_eq!(
                    spec["tokens"],
                    plain["tokens"],
                    "{mode} mode, {source:?}, prompt {prompt:?}, sampling {sampling:?}\nlogs:\n{}",
                    log_tails(swarm.dir.path(), 15)
                );
                let report = &spec["speculation"];
                let (trips, drafted, accepted) = (
                    report["trips"].as_u64().unwrap(),
                    report["drafted"].as_u64().unwrap(),
                    report["accepted"].as_u64().unwrap(),
                );
                assert!(accepted <= drafted, "{report}");
                if prompt == REPEAT && sampling.is_empty() {
                    let n = spec["tokens"].as_array().unwrap().len() as u64;
                    assert!(accepted > 0 && trips < n, "{mode}, {source:?}: drafts should stand: {report}");
                }
            }
        }
    }

    // A draft model of another vocabulary is refused with the reason, before any step.
    let qwen = test_model(QWEN2);
    let args = ["generate", "--bootstrap", &swarm.addr, "--model", &swarm.id, "--prompt", REPEAT, "--mode", "client"];
    let draft_args = ["--speculative", "draft", "--draft-model", qwen.to_str().unwrap()];
    let out = nak_command().args(args).args(draft_args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("vocabulary"), "{stderr}");
}

/// `n` tokens after `prompt`, one row a step.
fn one_row_tokens(engine: &mut SpanEngine, sampling: SamplingParams, prompt: &[i32], n: usize) -> Vec<i32> {
    let id = engine.open_session(SessionConfig { sampling, ..Default::default() }).unwrap();
    let mut out = Vec::new();
    let mut input = prompt.to_vec();
    while out.len() < n {
        let StepOutput::Token { token, .. } = engine.step(id, StepInput::Tokens(input)).unwrap() else { panic!() };
        out.push(token);
        input = vec![token];
    }
    engine.close_session(id).unwrap();
    out
}

/// The same tokens through drafted steps: after each token, `drafts(i)` guesses of the
/// next ones (right or wrong), verified as the ring's last hop does.
fn drafted_tokens(
    engine: &mut SpanEngine,
    sampling: SamplingParams,
    prompt: &[i32],
    n: usize,
    drafts: impl Fn(usize) -> Vec<i32>,
) -> (Vec<i32>, usize) {
    let id = engine.open_session(SessionConfig { sampling, ..Default::default() }).unwrap();
    let StepOutput::Token { token, .. } = engine.step(id, StepInput::Tokens(prompt.to_vec())).unwrap() else {
        panic!()
    };
    let (mut out, mut stood_in_all) = (vec![token], 0);
    while out.len() < n {
        let guess = drafts(out.len());
        let at = engine.session_len(id).unwrap();
        let rows: Vec<i32> = [*out.last().unwrap()].into_iter().chain(guess.iter().copied()).collect();
        let request = StepRequest {
            row_tokens: rows.clone(),
            sample_rows: rows.len() as u32,
            verify: true,
            row_by_row: true,
            ..StepRequest::new(id, StepInput::Tokens(rows))
        };
        let picks: Vec<i32> = match engine.step_request(request).unwrap() {
            StepOutput::Rows(rows) => rows.into_iter().map(|r| r.0).collect(),
            StepOutput::Token { token, .. } => vec![token],
            _ => panic!("no token"),
        };
        let stood = guess.iter().zip(&picks).take_while(|(g, p)| g == p).count();
        assert!(picks.len() <= stood + 1, "the draws stop at the first miss: {picks:?} for {guess:?}");
        stood_in_all += stood;
        out.extend_from_slice(&picks[..=stood]);
        // The rows past the drafts that stood go; the next step starts at the last pick.
        engine.rewind(id, at + 1 + stood as u32).unwrap();
    }
    engine.close_session(id).unwrap();
    out.truncate(n);
    (out, stood_in_all)
}

#[test]
fn drafted_steps_sample_every_row_as_one_row_steps_would() {
    let seeded = SamplingParams { temperature: 0.9, seed: 11, top_k: 40, repeat_penalty: 1.2, ..Default::default() };
    // Q4_1, and Q4_K, whose CPU kernels round a batch of several rows differently from one row.
    for model in [smollm_path(), common::test_model(common::QWEN2)] {
        let mut engine = SpanEngine::load(&model, test_engine_config()).unwrap();
        let prompt = engine.model().tokenize(PROMPTS[0], true).unwrap();
        for sampling in [SamplingParams::default(), seeded] {
            let want = one_row_tokens(&mut engine, sampling, &prompt, 40);
            // Right guesses (the tokens to come), wrong ones, and a mix.
            let right = |i: usize| want[i..(i + 4).min(want.len())].to_vec();
            let wrong = |i: usize| vec![(want[i] + 1) % 1000, 7, 7];
            let mixed = |i: usize| {
                if i.is_multiple_of(3) {
                    right(i)
                } else {
                    [&want[i..(i + 1).min(want.len())], &[5][..]].concat()
                }
            };
            let (got, stood) = drafted_tokens(&mut engine, sampling, &prompt, 40, right);
            assert_eq!(got, want, "right drafts, {model:?}, {sampling:?}");
            assert!(stood >= 30, "right drafts stand: {stood}");
            let (got, stood) = drafted_tokens(&mut engine, sampling, &prompt, 40, wrong);
            assert_eq!((got, stood), (want.clone(), 0), "wrong drafts, {model:?}, {sampling:?}");
            let got = drafted_tokens(&mut engine, sampling, &prompt, 40, mixed).0;
            assert_eq!(got, want, "mixed drafts, {model:?}, {sampling:?}");
        }
    }
}

/// A draft model that reads the context ahead, in the background and in steps of any
/// size, drafts what greedy decoding gives; positions of rejected drafts are dropped.
#[test]
fn a_draft_model_reading_ahead_drafts_the_greedy_tokens() {
    let mut engine = SpanEngine::load(&smollm_path(), test_engine_config()).unwrap();
    let prompt = engine.model().tokenize(PROMPTS[0], true).unwrap();
    let want = one_row_tokens(&mut engine, SamplingParams::default(), &prompt, 24);
    drop(engine);
    let full: Vec<i32> = prompt.iter().chain(&want).copied().collect();
    let p = prompt.len();
    // Drafts after the newest of the first `n` tokens: the greedy tokens that follow.
    let wanted = |n: usize, k: usize| full[n..n + k].to_vec();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let model = DraftModel::load(&smollm_path(), test_engine_config()).unwrap();
        let mut session = model.open().await.unwrap();
        let wait_read = |session: &mut DraftSession| {
            let started = std::time::Instant::now();
            while session.is_reading() {
                assert!(started.elapsed() < std::time::Duration::from_secs(60), "the read never ends");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        // The prompt is read in the background; a follow while it reads queues nothing.
        session.follow(&full[..p - 1]).await.unwrap();
        session.follow(&full[..p + 2]).await.unwrap();
        wait_read(&mut session);
        // What the reads lacked is fed with the newest token.
        assert_eq!(session.draft(&full[..p + 2], full[p + 2], 4).await.unwrap(), wanted(p + 3, 4));
        // A context that differs from the cache (two drafts rejected for other tokens).
        let mut other = full[..p + 4].to_vec();
        other.extend([7, 8]);
        session.follow(&other).await.unwrap();
        wait_read(&mut session);
        assert_eq!(session.draft(&full[..p + 5], full[p + 5], 3).await.unwrap(), wanted(p + 6, 3));
        // Two of those drafts stood; drafting again right away, with no read between.
        assert_eq!(session.draft(&full[..p + 7], full[p + 7], 5).await.unwrap(), wanted(p + 8, 5));
        // Five tokens on, with no read ahead either; and no drafts asked for: none.
        assert_eq!(session.draft(&full[..p + 12], full[p + 12], 2).await.unwrap(), wanted(p + 13, 2));
        assert!(session.draft(&full[..p + 12], full[p + 12], 0).await.unwrap().is_empty());
    });
}

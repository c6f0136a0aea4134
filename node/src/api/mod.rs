//! An OpenAI-compatible HTTP API over the swarm (axum).
//!
//! Data flow: a request (`/v1/completions`, `/v1/chat/completions`) is checked and
//! tokenized here (the chat template applied), then [`generate`] opens a session on a
//! route of the swarm, runs it on a task of its own and sends what comes out through a
//! bounded channel: text that is safe to show ([`TextStream`]: whole characters, stop
//! strings cut exactly), then one end with the usage and timings. The handler turns that
//! channel into server-sent events (llama-server's chunk shapes) or one JSON answer. A
//! client that goes away drops the channel; the generation sees it at its next token,
//! stops, and closes the session on every hop. `/v1/models` lists the model with the
//! servers of each block; `/health` answers 200 only while every layer has a server;
//! `/metrics` is the node's Prometheus metrics; `/` is the swarm monitor ([`monitor`]).

mod monitor;
mod openai;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{MatchedPath, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::client::{ClientError, RemoteSession, SessionOptions, Speculation, SwarmModel, TextStream};
use crate::engine::SamplingParams;
use crate::metrics;
use openai::{ApiError, Params};

/// How long a request waits for a full route before it fails.
const ROUTE_WAIT: Duration = Duration::from_secs(15);

/// Tokens a request generates when it names no `max_tokens`.
const DEFAULT_MAX_TOKENS: usize = 256;

/// Generations that may run at once; a request beyond them is answered 429 at once
/// rather than queued (each holds a session slot on every hop of its route).
pub const MAX_GENERATIONS: usize = 64;

/// What every handler shares: the model, as this client sees the swarm, and the
/// permits of generations running.
#[derive(Clone)]
pub struct ApiState {
    model: Arc<SwarmModel>,
    generations: Arc<tokio::sync::Semaphore>,
    /// Speculative decoding of every generation, if any.
    speculation: Option<Speculation>,
}

/// Serves the API for `model` on `listener` until the process ends.
pub async fn serve(model: Arc<SwarmModel>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, router(model)).await
}

/// The API's routes, the monitor's and `/metrics`; every answer is counted in
/// `nak_requests_total`.
pub fn router(model: Arc<SwarmModel>) -> Router {
    router_with(model, None)
}

/// [`router`], each generation decoding speculatively with `speculation` when given.
pub fn router_with(model: Arc<SwarmModel>, speculation: Option<Speculation>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .merge(monitor::router())
        .merge(metrics::router())
        .layer(axum::middleware::from_fn(count_request))
        .with_state(ApiState {
            model,
            generations: Arc::new(tokio::sync::Semaphore::new(MAX_GENERATIONS)),
            speculation,
        })
}

/// Counts an answer by its route (not its path: a label per path would grow without end)
/// and status.
async fn count_request(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("other", |p| p.as_str()).to_string();
    let response = next.run(request).await;
    let labels = vec![("endpoint", route), ("status", response.status().as_u16().to_string())];
    metrics::global().requests.get_or_create(&labels).inc();
    response
}

/// How long a health check or model list may spend asking the swarm about layers that
/// lack a server.
const VIEW_WAIT: Duration = Duration::from_secs(2);

/// The model's servers per block; empty blocks mean no full route.
async fn coverage(model: &SwarmModel) -> Vec<usize> {
    let mut blocks = vec![0; model.n_layer() as usize];
    for server in model.view(VIEW_WAIT).await.unwrap_or_default() {
        for layer in server.layers.clone() {
            if let Some(n) = blocks.get_mut(layer as usize) {
                *n += 1;
            }
        }
    }
    blocks
}

async fn health(State(state): State<ApiState>) -> Response {
    let blocks = coverage(&state.model).await;
    match blocks.iter().position(|&n| n == 0) {
        None => Json(json!({"status": "ok"})).into_response(),
        Some(layer) => {
            ApiError::unavailable(format!("no server holds layer {layer} of {} now", blocks.len())).into_response()
        }
    }
}

async fn models(State(state): State<ApiState>) -> Response {
    let model = &state.model;
    let blocks = coverage(model).await;
    Json(json!({
        "object": "list",
        "data": [{
            "id": model.id().to_string(),
            "object": "model",
            "created": 0,
            "owned_by": "nakshatra",
            "name": model.manifest().name,
            "layers": model.n_layer(),
            "servers_per_block": blocks,
            "full_route": blocks.iter().all(|&n| n > 0),
        }]
    }))
    .into_response()
}

/// What a generation sends its handler.
enum Out {
    /// Text to show, with the log-probabilities of the tokens it came from (when asked).
    Text(String, Vec<TokenLogprob>),
    /// The end.
    Done(Finished),
    /// It could not run, or broke off.
    Failed(ApiError),
}

/// One generated token's log-probability and its most likely alternatives.
struct TokenLogprob {
    token: Piece,
    logprob: f32,
    top: Vec<(Piece, f32)>,
}

/// A token's text: its bytes, and those read as UTF-8 (a token may hold part of a character).
struct Piece {
    text: String,
    bytes: Vec<u8>,
}

impl Piece {
    fn of(model: &SwarmModel, token: i32) -> Self {
        let bytes = model.vocab().token_piece(token);
        Self { text: String::from_utf8_lossy(&bytes).into_owned(), bytes }
    }
}

/// How a generation ended.
struct Finished {
    /// `stop` (an end token or a stop string) or `length`.
    reason: &'static str,
    prompt_tokens: usize,
    completion_tokens: usize,
    timings: Value,
}

/// Counts a generation in `generations_active` while it lives.
struct Active;

impl Active {
    fn start() -> Self {
        metrics::global().generations_active.inc();
        Active
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        metrics::global().generations_active.dec();
    }
}

/// Starts generating after `tokens` on a task of its own, unless [`MAX_GENERATIONS`] run
/// already; what comes out arrives on the returned channel (which holds a whole
/// generation, so the generation never waits on a slow reader; dropping it stops the
/// generation).
fn generate(state: &ApiState, tokens: Vec<i32>, params: Params) -> Result<mpsc::Receiver<Out>, ApiError> {
    let permit = state.generations.clone().try_acquire_owned().map_err(|_| {
        ApiError::too_many(format!("{MAX_GENERATIONS} generations are running here; try again shortly"))
    })?;
    let (model, speculation) = (state.model.clone(), state.speculation.clone());
    let (tx, rx) = mpsc::channel(params.max_tokens + 2);
    tokio::spawn(async move {
        let _active = (Active::start(), permit);
        // Drafted tokens come without logprobs: a request for them decodes without drafts.
        let speculation = speculation.filter(|_| params.logprobs.is_none());
        let opts = SessionOptions {
            sampling: params.sampling,
            logprobs: params.logprobs,
            speculation,
            ..SessionOptions::default()
        };
        let mut session = match RemoteSession::start(&model, opts, ROUTE_WAIT).await {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Out::Failed(ApiError::from_client(e))).await;
                return;
            }
        };
        let mut text = TextStream::new(params.stop);
        let mut logprobs = Vec::new();
        let result = session
            .generate(&model, &tokens, params.max_tokens, |t| {
                let token = Piece::of(&model, t.token);
                let piece = text.push(&token.bytes);
                if let Some(logprob) = t.logprob {
                    let top = t.top.iter().map(|&(alt, lp)| (Piece::of(&model, alt), lp)).collect();
                    logprobs.push(TokenLogprob { token, logprob, top });
                }
                let sent = piece.is_empty() || tx.try_send(Out::Text(piece, std::mem::take(&mut logprobs))).is_ok();
                sent && !text.stopped() && !tx.is_closed()
            })
            .await;
        session.close().await;
        let out = match result {
            Ok(out) if out.error.is_none() || text.stopped() => out,
            Ok(out) => {
                let e = out.error.unwrap_or_default();
                let _ = tx.send(Out::Failed(ApiError::unavailable(format!("the generation broke off: {e}")))).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Out::Failed(ApiError::from_client(e))).await;
                return;
            }
        };
        let rest = text.finish();
        if !rest.is_empty() || !logprobs.is_empty() {
            let _ = tx.send(Out::Text(rest, logprobs)).await;
        }
        let generated = out.generation.tokens.len();
        let route: Vec<Value> = out
            .route
            .iter()
            .map(|h| json!({"peer": h.peer.to_string(), "start": h.start, "end": h.end, "expected_ms": h.expected_s * 1e3}))
            .collect();
        let timings = json!({
            "prompt_n": out.generation.prompt_tokens,
            "prompt_ms": out.generation.prefill_ms,
            "predicted_n": generated,
            "predicted_per_second": out.generation.decode_tokens_per_s,
            "route": route,
            "failovers": out.failovers.len(),
        });
        let finished = Finished {
            reason: if text.stopped() || out.ended { "stop" } else { "length" },
            prompt_tokens: tokens.len(),
            completion_tokens: generated,
            timings,
        };
        let _ = tx.send(Out::Done(finished)).await;
    });
    Ok(rx)
}

/// Seconds since the epoch, for `created`.
fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The sampling an OpenAI request asks for, on llama.cpp's samplers.
fn sampling(temperature: Option<f32>, top_p: Option<f32>, seed: Option<u64>, penalties: (f32, f32)) -> SamplingParams {
    SamplingParams {
        temperature: temperature.unwrap_or(1.0),
        top_p: top_p.unwrap_or(1.0),
        seed: seed.map(|s| s as u32).unwrap_or_else(rand::random),
        presence_penalty: penalties.0,
        frequency_penalty: penalties.1,
        ..SamplingParams::default()
    }
}

impl ApiError {
    fn from_client(e: ClientError) -> Self {
        match e {
            ClientError::Input(msg) => ApiError::invalid(msg),
            other => ApiError::unavailable(other.to_string()),
        }
    }
}

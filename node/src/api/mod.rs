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
//! servers of each block; `/health` answers 200 only while every layer has a server.

mod openai;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::client::{ClientError, RemoteSession, SessionOptions, SwarmModel, TextStream};
use crate::engine::SamplingParams;
use openai::{ApiError, Params};

/// How long a request waits for a full route before it fails.
const ROUTE_WAIT: Duration = Duration::from_secs(15);

/// Tokens a request generates when it names no `max_tokens`.
const DEFAULT_MAX_TOKENS: usize = 256;

/// What every handler shares: the model, as this client sees the swarm.
#[derive(Clone)]
pub struct ApiState {
    model: Arc<SwarmModel>,
}

/// Serves the API for `model` on `listener` until the process ends.
pub async fn serve(model: Arc<SwarmModel>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, router(model)).await
}

/// The API's routes.
pub fn router(model: Arc<SwarmModel>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .with_state(ApiState { model })
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
    /// Text to show.
    Text(String),
    /// The end.
    Done(Finished),
    /// It could not run, or broke off.
    Failed(ApiError),
}

/// How a generation ended.
struct Finished {
    /// `stop` (an end token or a stop string) or `length`.
    reason: &'static str,
    prompt_tokens: usize,
    completion_tokens: usize,
    timings: Value,
}

/// Starts generating after `tokens` on a task of its own; what comes out arrives on the
/// returned channel (which holds a whole generation, so the generation never waits on
/// a slow reader; dropping it stops the generation).
fn generate(model: Arc<SwarmModel>, tokens: Vec<i32>, params: Params) -> mpsc::Receiver<Out> {
    let (tx, rx) = mpsc::channel(params.max_tokens + 2);
    tokio::spawn(async move {
        let opts = SessionOptions { sampling: params.sampling, ..SessionOptions::default() };
        let mut session = match RemoteSession::start(&model, opts, ROUTE_WAIT).await {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Out::Failed(ApiError::from_client(e))).await;
                return;
            }
        };
        let mut text = TextStream::new(params.stop);
        let result = session
            .generate(&model, &tokens, params.max_tokens, |token| {
                let piece = text.push(&model.vocab().token_piece(token));
                let sent = piece.is_empty() || tx.try_send(Out::Text(piece)).is_ok();
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
        if !rest.is_empty() {
            let _ = tx.send(Out::Text(rest)).await;
        }
        let generated = out.generation.tokens.len();
        let ended = text.stopped() || (generated < params.max_tokens && !out.cancelled);
        let route: Vec<Value> =
            out.route.iter().map(|h| json!({"peer": h.peer.to_string(), "start": h.start, "end": h.end})).collect();
        let timings = json!({
            "prompt_n": out.generation.prompt_tokens,
            "prompt_ms": out.generation.prefill_ms,
            "predicted_n": generated,
            "predicted_per_second": out.generation.decode_tokens_per_s,
            "route": route,
            "failovers": out.failovers.len(),
        });
        let finished = Finished {
            reason: if ended { "stop" } else { "length" },
            prompt_tokens: tokens.len(),
            completion_tokens: generated,
            timings,
        };
        let _ = tx.send(Out::Done(finished)).await;
    });
    rx
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

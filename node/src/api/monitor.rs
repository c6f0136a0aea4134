//! The swarm monitor: a page at `/` (plain HTML, CSS and JavaScript compiled into the
//! binary; nothing is fetched from elsewhere) fed by `/api/status`.
//!
//! Data flow: [`snapshot`] reads this node's view of the swarm (the served model's
//! servers, found through the DHT and kept current by its announcement topic; the other
//! models whose topics the peers subscribe to, joined as they appear) and the ping round
//! trips, and builds one JSON object ([`crate::client::model_status`] per model).
//! `/api/status` answers it once; `/api/status/stream` sends it as a server-sent event
//! every [`REFRESH`], which the page redraws: the servers of each model, a map of blocks
//! × servers, and a chat box that streams from `/v1/chat/completions`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use nak_protocol::keys;
use nak_shard_store::ModelId;
use serde_json::{json, Value};

use super::ApiState;
use crate::client::{model_status, SwarmModel};

/// How often the page gets a new snapshot.
const REFRESH: Duration = Duration::from_secs(2);

/// Most models of other topics the monitor follows (a peer may subscribe to many).
const MAX_MODELS: usize = 16;

/// How long a snapshot waits for the served model's missing layers.
const SNAPSHOT_WAIT: Duration = Duration::from_millis(300);

const PAGE: &str = include_str!("../../monitor/index.html");
const SCRIPT: &str = include_str!("../../monitor/monitor.js");
const STYLE: &str = include_str!("../../monitor/monitor.css");

/// The page, its assets and its feed.
pub(super) fn router() -> Router<ApiState> {
    Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", PAGE)))
        .route("/monitor.js", get(|| asset("text/javascript; charset=utf-8", SCRIPT)))
        .route("/monitor.css", get(|| asset("text/css; charset=utf-8", STYLE)))
        .route("/api/status", get(status))
        .route("/api/status/stream", get(stream))
}

async fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(CONTENT_TYPE, kind)], body).into_response()
}

async fn status(State(state): State<ApiState>) -> Response {
    Json(snapshot(&state.model).await).into_response()
}

async fn stream(State(state): State<ApiState>) -> Response {
    let events = futures::stream::unfold((state, true), |(state, first)| async move {
        if !first {
            tokio::time::sleep(REFRESH).await;
        }
        let event = Event::default().event("status").data(snapshot(&state.model).await.to_string());
        Some((Ok::<_, Infallible>(event), (state, false)))
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

/// The swarm as this node sees it now: `{served, refresh_ms, peers, models: [..]}`, the
/// served model first.
async fn snapshot(model: &SwarmModel) -> Value {
    // Asks the DHT and the servers again while layers lack a server.
    let _ = model.view(SNAPSHOT_WAIT).await;
    let net = model.net();
    let served = model.id();
    let mut others: Vec<ModelId> = Vec::new();
    for id in net.peer_models().await.unwrap_or_default().into_iter().filter(|id| *id != served).take(MAX_MODELS) {
        // Idempotent: the topic's announcements come in from now on.
        let _ = net.subscribe(keys::announce_topic(&id.0)).await;
        others.push(id);
    }
    let all = net.announcements().await.unwrap_or_default();
    let rtts = net.rtts().await.unwrap_or_else(|_| HashMap::new());
    let mut models = Vec::new();
    for id in std::iter::once(served).chain(others) {
        let anns: Vec<_> = all.iter().filter(|a| a.model_id == id.0).collect();
        let n_layer = if id == served { model.n_layer() } else { anns.iter().map(|a| a.end_layer).max().unwrap_or(0) };
        let mut status = model_status(id, n_layer, &anns, &rtts);
        let full =
            status["blocks"].as_array().is_some_and(|b| !b.is_empty() && b.iter().all(|b| b["servers"] != json!([])));
        status["full_route"] = full.into();
        if id == served {
            status["name"] = model.manifest().name.clone().into();
        }
        models.push(status);
    }
    let peers = net.connected_peers().await.map(|p| p.len()).unwrap_or(0);
    json!({
        "served": served.to_hex(),
        "refresh_ms": REFRESH.as_millis() as u64,
        "peers": peers,
        "models": models,
    })
}

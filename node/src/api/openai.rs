//! OpenAI's wire format: the requests of `/v1/completions` and `/v1/chat/completions`,
//! their answers (one JSON object, or server-sent chunks in llama-server's shape: a
//! role delta first, `finish_reason` null until a last content-less chunk, one id, a
//! `choices: []` usage chunk exactly when `stream_options.include_usage` asks, then
//! `[DONE]`), and the `{"error": {message, type, code}}` envelope.

use std::convert::Infallible;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{generate, now_s, sampling, ApiState, Finished, Out, TokenLogprob, DEFAULT_MAX_TOKENS};
use crate::engine::SamplingParams;

/// An error as OpenAI's clients expect it.
#[derive(Debug)]
pub(super) struct ApiError {
    pub(super) status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    pub(super) fn invalid(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, kind: "invalid_request_error", message: message.into() }
    }

    pub(super) fn unavailable(message: impl Into<String>) -> Self {
        Self { status: StatusCode::SERVICE_UNAVAILABLE, kind: "unavailable_error", message: message.into() }
    }

    pub(super) fn too_many(message: impl Into<String>) -> Self {
        Self { status: StatusCode::TOO_MANY_REQUESTS, kind: "rate_limit_error", message: message.into() }
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self { status: StatusCode::NOT_FOUND, kind: "not_found_error", message: message.into() }
    }

    fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "code": self.status.as_u16()}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The fields both requests share.
#[derive(Debug, Deserialize)]
struct Common {
    model: String,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    #[serde(default)]
    presence_penalty: f32,
    #[serde(default)]
    frequency_penalty: f32,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<u32>,
    /// Chat: `true` asks for log-probabilities; completions: how many alternatives.
    logprobs: Option<Value>,
    /// Chat: how many alternatives with each token's log-probability.
    top_logprobs: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub(super) struct CompletionRequest {
    prompt: Value,
    #[serde(flatten)]
    common: Common,
}

#[derive(Debug, Deserialize)]
pub(super) struct ChatRequest {
    messages: Vec<Message>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    content: Value,
}

/// What a generation is asked for, checked.
pub(super) struct Params {
    pub(super) max_tokens: usize,
    pub(super) sampling: SamplingParams,
    pub(super) stop: Vec<String>,
    /// Log-probabilities with this many alternatives per token, or none.
    pub(super) logprobs: Option<u32>,
}

/// Most alternatives a request may ask for with each token (OpenAI's limit).
const MAX_TOP_LOGPROBS: u32 = 20;

/// Most stop strings a request may give (OpenAI's limit).
const MAX_STOPS: usize = 4;

impl Common {
    fn params(&self, kind: Kind) -> Result<Params, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("only n = 1 is supported"));
        }
        let stop = match &self.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOPS {
            return Err(ApiError::invalid(format!("at most {MAX_STOPS} stop strings")));
        }
        let max = self.max_completion_tokens.or(self.max_tokens).map_or(DEFAULT_MAX_TOKENS, |n| n as usize);
        if max == 0 {
            return Err(ApiError::invalid("max_tokens must be at least 1"));
        }
        let penalties = (self.presence_penalty, self.frequency_penalty);
        let sampling = sampling(self.temperature, self.top_p, self.seed, penalties);
        sampling.validate().map_err(ApiError::invalid)?;
        Ok(Params { max_tokens: max, sampling, stop, logprobs: self.logprobs(kind)? })
    }

    /// What `logprobs` and `top_logprobs` ask for, in each endpoint's own terms.
    fn logprobs(&self, kind: Kind) -> Result<Option<u32>, ApiError> {
        let n = match (kind, &self.logprobs) {
            (_, None | Some(Value::Null)) | (Kind::Chat, Some(Value::Bool(false))) => {
                if self.top_logprobs.is_some() {
                    return Err(ApiError::invalid("top_logprobs needs logprobs set to true"));
                }
                return Ok(None);
            }
            (Kind::Chat, Some(Value::Bool(true))) => self.top_logprobs.unwrap_or(0),
            (Kind::Text, Some(n)) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| ApiError::invalid("logprobs must be a count of alternatives"))?,
            (Kind::Chat, Some(_)) => return Err(ApiError::invalid("logprobs must be true or false")),
        };
        if n > MAX_TOP_LOGPROBS {
            return Err(ApiError::invalid(format!("at most {MAX_TOP_LOGPROBS} alternatives per token")));
        }
        Ok(Some(n))
    }

    fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }
}

/// The request's body, or the envelope saying why it is not one.
fn body<T>(request: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    request.map(|Json(r)| r).map_err(|e| ApiError::invalid(e.body_text()))
}

/// Checks that `name` is the served model: its id or its name.
fn check_model(state: &ApiState, name: &str) -> Result<(), ApiError> {
    let model = &state.model;
    if name == model.id().to_string() || name == model.manifest().name {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("the model `{name}` does not exist here (see /v1/models)")))
    }
}

/// A message's content: a string, or an array of text parts.
fn content_text(content: &Value) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                (Some("text"), Some(text)) => Ok(text),
                _ => Err(ApiError::invalid("only text content parts are supported")),
            })
            .collect(),
        Value::Null => Ok(String::new()),
        _ => Err(ApiError::invalid("content must be a string or an array of text parts")),
    }
}

pub(super) async fn completions(
    State(state): State<ApiState>,
    request: Result<Json<CompletionRequest>, JsonRejection>,
) -> Response {
    let run = async {
        let request = body(request)?;
        check_model(&state, &request.common.model)?;
        let params = request.common.params(Kind::Text)?;
        let prompt = request.prompt.as_str().ok_or_else(|| ApiError::invalid("prompt must be a string"))?;
        let tokens = state.model.vocab().tokenize(prompt, true).map_err(|e| ApiError::invalid(e.to_string()))?;
        Ok::<_, ApiError>((request.common, params, tokens))
    };
    answer(&state, Kind::Text, run.await).await
}

pub(super) async fn chat_completions(
    State(state): State<ApiState>,
    request: Result<Json<ChatRequest>, JsonRejection>,
) -> Response {
    let run = async {
        let request = body(request)?;
        check_model(&state, &request.common.model)?;
        let params = request.common.params(Kind::Chat)?;
        if request.messages.is_empty() {
            return Err(ApiError::invalid("messages must not be empty"));
        }
        let texts = request.messages.iter().map(|m| content_text(&m.content)).collect::<Result<Vec<_>, _>>()?;
        let messages: Vec<(&str, &str)> =
            request.messages.iter().zip(&texts).map(|(m, t)| (m.role.as_str(), t.as_str())).collect();
        let vocab = state.model.vocab();
        let prompt = vocab.apply_chat_template(&messages, true).map_err(|e| ApiError::invalid(e.to_string()))?;
        let tokens = vocab.tokenize(&prompt, false).map_err(|e| ApiError::invalid(e.to_string()))?;
        Ok::<_, ApiError>((request.common, params, tokens))
    };
    answer(&state, Kind::Chat, run.await).await
}

/// Which endpoint answers.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Chat,
}

/// A checked request (its fields, sampling and prompt tokens), or why it is not one.
type Checked = Result<(Common, Params, Vec<i32>), ApiError>;

/// The generation as one JSON answer, or as a stream of chunks; or the request's error.
async fn answer(state: &ApiState, kind: Kind, request: Checked) -> Response {
    let (common, params, tokens) = match request {
        Ok(checked) => checked,
        Err(e) => return e.into_response(),
    };
    let id = format!("{}-{:016x}", if matches!(kind, Kind::Chat) { "chatcmpl" } else { "cmpl" }, rand::random::<u64>());
    let logprobs = params.logprobs.is_some();
    let shape = Shape { id, kind, model: common.model.clone(), created: now_s(), logprobs };
    let mut rx = match generate(state, tokens, params) {
        Ok(rx) => rx,
        Err(e) => return e.into_response(),
    };
    if common.stream {
        // The first thing out decides the status: an error before any text is an error answer.
        let first = rx.recv().await;
        if let Some(Out::Failed(e)) = first {
            return e.into_response();
        }
        let events = shape.stream(first, rx, common.include_usage());
        return Sse::new(events).keep_alive(KeepAlive::default()).into_response();
    }
    let (mut text, mut logprobs) = (String::new(), Vec::new());
    while let Some(out) = rx.recv().await {
        match out {
            Out::Text(t, lp) => {
                text.push_str(&t);
                logprobs.extend(lp);
            }
            Out::Failed(e) => return e.into_response(),
            Out::Done(done) => return Json(shape.whole(&text, &logprobs, &done)).into_response(),
        }
    }
    ApiError::unavailable("the generation ended without an answer").into_response()
}

/// What every chunk of one answer shares.
struct Shape {
    id: String,
    kind: Kind,
    model: String,
    created: u64,
    /// Whether the request asked for log-probabilities.
    logprobs: bool,
}

impl Shape {
    fn whole(&self, text: &str, logprobs: &[TokenLogprob], done: &Finished) -> Value {
        let logprobs = self.logprobs_json(logprobs, 0);
        let choice = match self.kind {
            Kind::Chat => json!({"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": done.reason, "logprobs": logprobs}),
            Kind::Text => json!({"index": 0, "text": text, "finish_reason": done.reason, "logprobs": logprobs}),
        };
        let object = match self.kind {
            Kind::Chat => "chat.completion",
            Kind::Text => "text_completion",
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
               "choices": [choice], "usage": usage(done), "timings": done.timings})
    }

    fn chunk(&self, choices: Value) -> Value {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Text => "text_completion",
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices})
    }

    fn delta(&self, text: Option<&str>, logprobs: Value, finish: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let delta = text.map_or(json!({}), |t| json!({"content": t}));
                json!({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs})
            }
            Kind::Text => {
                json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": finish, "logprobs": logprobs})
            }
        };
        self.chunk(json!([choice]))
    }

    /// Log-probabilities in the endpoint's shape (null when the request asked for none):
    /// chat's `{"content": [{token, logprob, bytes, top_logprobs}]}`, or the parallel
    /// lists of completions, whose text offsets start at `offset`.
    fn logprobs_json(&self, logprobs: &[TokenLogprob], offset: usize) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        match self.kind {
            Kind::Chat => {
                let entry =
                    |text: &str, bytes: &[u8], logprob: f32| json!({"token": text, "logprob": logprob, "bytes": bytes});
                let content: Vec<Value> = logprobs
                    .iter()
                    .map(|t| {
                        let mut e = entry(&t.token.text, &t.token.bytes, t.logprob);
                        let top: Vec<Value> = t.top.iter().map(|(p, lp)| entry(&p.text, &p.bytes, *lp)).collect();
                        e["top_logprobs"] = top.into();
                        e
                    })
                    .collect();
                json!({"content": content})
            }
            Kind::Text => {
                let offsets: Vec<usize> = logprobs
                    .iter()
                    .scan(offset, |at, t| {
                        let here = *at;
                        *at += t.token.text.len();
                        Some(here)
                    })
                    .collect();
                let top: Vec<serde_json::Map<String, Value>> = logprobs
                    .iter()
                    .map(|t| t.top.iter().map(|(p, lp)| (p.text.clone(), json!(lp))).collect())
                    .collect();
                json!({
                    "tokens": logprobs.iter().map(|t| t.token.text.as_str()).collect::<Vec<_>>(),
                    "token_logprobs": logprobs.iter().map(|t| t.logprob).collect::<Vec<_>>(),
                    "top_logprobs": top,
                    "text_offset": offsets,
                })
            }
        }
    }

    /// The chunks of a streamed answer, `first` being what the generation sent first.
    fn stream(
        self,
        first: Option<Out>,
        rx: mpsc::Receiver<Out>,
        include_usage: bool,
    ) -> impl futures::Stream<Item = Result<Event, Infallible>> {
        let opening = match self.kind {
            Kind::Chat => Some(self.chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": null},
                                                  "finish_reason": null, "logprobs": null}]))),
            Kind::Text => None,
        };
        let head = futures::stream::iter(opening.map(|c| Event::default().data(c.to_string())));
        let outs = futures::stream::iter(first)
            .chain(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|out| (out, rx)) }));
        let mut offset = 0;
        let body = outs.flat_map(move |out| {
            let events: Vec<Event> = match out {
                Out::Text(t, lp) => {
                    let logprobs = self.logprobs_json(&lp, offset);
                    offset += lp.iter().map(|t| t.token.text.len()).sum::<usize>();
                    vec![Event::default().data(self.delta(Some(&t), logprobs, None).to_string())]
                }
                Out::Done(done) => {
                    let mut events =
                        vec![Event::default().data(self.delta(None, Value::Null, Some(done.reason)).to_string())];
                    if include_usage {
                        let mut chunk = self.chunk(json!([]));
                        chunk["usage"] = usage(&done);
                        chunk["timings"] = done.timings.clone();
                        events.push(Event::default().data(chunk.to_string()));
                    }
                    events.push(Event::default().data("[DONE]"));
                    events
                }
                // Mid-stream, the status is sent already: the envelope goes as an event.
                Out::Failed(e) => vec![Event::default().data(e.body().to_string())],
            };
            futures::stream::iter(events)
        });
        head.chain(body).map(Ok)
    }
}

fn usage(done: &Finished) -> Value {
    json!({"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
           "total_tokens": done.prompt_tokens + done.completion_tokens})
}

//! The OpenAI-compatible API, for editors, scripts and agents:
//!
//! | route | |
//! |---|---|
//! | `GET /v1/models`, `GET /v1/models/{id}` | the loaded model |
//! | `POST /v1/chat/completions` | a chat answer, whole or streamed; SmolLM3's thinking as `reasoning_content` |
//! | `POST /v1/completions` | a raw prompt's continuation |
//! | `GET /health` | 200 when a model is ready (with the queue), 503 with the reason otherwise |
//!
//! Requests queue on the one engine worker in fair turns with the desktop's chats and other
//! clients, and never appear in the chat list. Errors are OpenAI's shape ([`ApiError`]).

mod body;
mod chat;
mod completions;
mod error;
mod run;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ::chat::ModelState;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::json;

pub use body::BODY_LIMIT;
pub use error::ApiError;

use crate::Server;

pub(crate) fn routes() -> Router<Server> {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/{*rest}", axum::routing::any(unknown))
        .route("/health", get(health))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}

/// The loaded model as the API names it: `id` is its file name without `.gguf`; requests may
/// also use the file name or the model's own name.
pub(crate) struct ApiModel {
    pub id: String,
    aliases: Vec<String>,
    created: u64,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn now() -> u64 {
    unix_secs(SystemTime::now())
}

/// Responses made by this process so far: the part of a response id that never repeats.
static RESPONSES: AtomicU64 = AtomicU64::new(0);

/// `chatcmpl-<clock>-<n>`: the clock in nanoseconds (apart across runs) and this process's count
/// of responses (apart within a run, where the clock can repeat), so no two ids are the same and
/// neither are the tool-call ids made from them.
pub(crate) fn response_id(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    response_id_at(prefix, nanos)
}

fn response_id_at(prefix: &str, nanos: u128) -> String {
    let n = RESPONSES.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{nanos:x}-{n:x}")
}

/// The ready model, or 503 saying why there is none. A remote endpoint's model is served by
/// its name there.
pub(crate) fn loaded(s: &Server) -> Result<ApiModel, ApiError> {
    let info = match s.chat().model_state() {
        ModelState::Ready { info, .. } => info,
        ModelState::Remote { model, .. } => {
            return Ok(ApiModel {
                id: model,
                aliases: Vec::new(),
                created: 0,
            })
        }
        other => return Err(ApiError::unavailable(other.describe())),
    };
    let file = info
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let id = file.strip_suffix(".gguf").unwrap_or(&file).to_owned();
    let mut aliases = vec![file];
    aliases.extend(info.config.name.clone());
    let created = std::fs::metadata(&info.path)
        .and_then(|m| m.modified())
        .map(unix_secs)
        .unwrap_or(0);
    Ok(ApiModel {
        id,
        aliases,
        created,
    })
}

impl ApiModel {
    /// The model a request names, or 404.
    pub fn named(self, requested: &str) -> Result<ApiModel, ApiError> {
        let r = requested.trim();
        if r == self.id || self.aliases.iter().any(|a| a == r) {
            Ok(self)
        } else {
            Err(ApiError::model_not_found(requested, &[self.id]))
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({"id": self.id, "object": "model", "created": self.created, "owned_by": "local"})
    }
}

/// Who is asking, for fair turns: the request's `user`, else its connection.
pub(crate) fn source(
    user: Option<&str>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> String {
    match (user, peer) {
        (Some(u), _) => format!("api user {u}"),
        (None, Some(Extension(ConnectInfo(addr)))) => format!("api {addr}"),
        (None, None) => "api".into(),
    }
}

async fn models(State(s): State<Server>) -> Response {
    let data: Vec<_> = loaded(&s).iter().map(ApiModel::json).collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn model(State(s): State<Server>, Path(id): Path<String>) -> Response {
    match loaded(&s).and_then(|m| m.named(&id)) {
        Ok(m) => Json(m.json()).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn unknown(req: axum::extract::Request) -> Response {
    ApiError::not_found(&format!("{} {}", req.method(), req.uri().path())).into_response()
}

/// 405 in OpenAI's shape (axum's own has an empty body); axum adds the `Allow` header.
async fn method_not_allowed(req: axum::extract::Request) -> Response {
    ApiError::method_not_allowed(req.method(), req.uri().path()).into_response()
}

async fn health(State(s): State<Server>) -> Response {
    match loaded(&s) {
        Ok(m) => {
            let engine = s.chat().engine_status();
            // The latest answer (any client's or chat's): how it ended and how fast it was, so a
            // client can see that one it dropped was stopped.
            let last = engine.last.map(|l| {
                json!({
                    "finish": l.finish,
                    "completion_tokens": l.completion_tokens,
                    "time_to_first_token_ms": l.time_to_first_token_ms,
                    "decode_tok_s": l.decode_tok_s,
                })
            });
            Json(json!({
                "status": "ok",
                "model": m.id,
                "queue": engine.queued,
                "context": {"used": engine.cached_tokens, "size": engine.context_len},
                "last": last,
            }))
            .into_response()
        }
        Err(e) => {
            let state = match s.chat().model_state() {
                ModelState::Loading { .. } | ModelState::Connecting { .. } => "loading",
                ModelState::Failed { .. } | ModelState::RemoteFailed { .. } => "failed",
                _ => "no_model",
            };
            let mut body = e.body();
            body["status"] = json!(state);
            (e.status, Json(body)).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_ids_differ_even_when_the_clock_repeats() {
        let (a, b) = (response_id_at("chatcmpl", 7), response_id_at("chatcmpl", 7));
        assert_ne!(a, b);
        assert!(a.starts_with("chatcmpl-7-"), "{a}");
        assert_ne!(response_id("chatcmpl"), response_id("chatcmpl"));
    }
}

//! `POST /v1/chat/completions`: a conversation (system, user, assistant, tool messages) answered
//! with the model's own template, whole or streamed. SmolLM3's thinking comes back as
//! `reasoning_content`, as llama.cpp's server returns it, and `chat_template_kwargs.enable_thinking`
//! switches it (on by default, as in the template).

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chat::{MessageStats, Prompt};
use engine::ChatMessage;
use serde_json::{json, Value};

use super::body::Body;
use super::run::{self, finish_reason, usage, Chunks};
use super::{loaded, now, response_id, source, ApiError};
use crate::Server;

const FIELDS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "chat_template_kwargs",
    "user",
];

/// `content`: a string, or text parts (`[{"type": "text", "text": ...}]`); null for an assistant
/// message that only called tools.
fn content(i: usize, m: &Value) -> Result<String, ApiError> {
    let param = format!("messages[{i}].content");
    match m.get("content") {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text")) {
                (Some("text"), Some(Value::String(t))) => Ok(t.as_str()),
                _ => Err(ApiError::invalid(
                    "Only text content parts are supported (`{\"type\": \"text\", \"text\": ...}`).",
                    Some(&param),
                )),
            })
            .collect::<Result<String, _>>(),
        Some(_) => Err(ApiError::invalid(
            "A message's content must be a string or an array of text parts.",
            Some(&param),
        )),
    }
}

fn messages(body: &Body) -> Result<Vec<ChatMessage>, ApiError> {
    let Some(Value::Array(list)) = body.get("messages") else {
        return Err(ApiError::invalid(
            "`messages` must be an array of messages.",
            Some("messages"),
        ));
    };
    if list.is_empty() {
        return Err(ApiError::invalid(
            "`messages` must hold at least one message.",
            Some("messages"),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.get("role").and_then(Value::as_str) {
                Some(r @ ("system" | "user" | "assistant" | "tool")) => r,
                // OpenAI's newer name for the system message.
                Some("developer") => "system",
                other => {
                    return Err(ApiError::invalid(
                        format!(
                            "The role must be system, user, assistant or tool, got {}.",
                            other.map_or("none".into(), |r| format!("`{r}`"))
                        ),
                        Some(&format!("messages[{i}].role")),
                    ))
                }
            };
            Ok(ChatMessage::new(role, content(i, m)?))
        })
        .collect()
}

fn thinking(body: &Body) -> Result<bool, ApiError> {
    let Some(kwargs) = body.get("chat_template_kwargs") else {
        return Ok(true);
    };
    match kwargs.get("enable_thinking") {
        None | Some(Value::Null) => Ok(true),
        Some(Value::Bool(on)) => Ok(*on),
        Some(_) => Err(ApiError::invalid(
            "`chat_template_kwargs.enable_thinking` must be true or false.",
            Some("chat_template_kwargs"),
        )),
    }
}

struct ChatChunks {
    id: String,
    created: u64,
    model: String,
    /// With `include_usage`, every chunk has `"usage": null` but the last.
    usage_field: bool,
}

impl ChatChunks {
    fn chunk(&self, choices: Value) -> Value {
        let mut c = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "choices": choices,
        });
        if self.usage_field {
            c["usage"] = Value::Null;
        }
        c
    }
}

impl Chunks for ChatChunks {
    fn opening(&self) -> Option<Value> {
        Some(self.chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""},
            "logprobs": null, "finish_reason": null}]),
        ))
    }

    fn delta(&mut self, thinking: bool, text: String) -> Value {
        let delta = match thinking {
            true => json!({"reasoning_content": text}),
            false => json!({"content": text}),
        };
        self.chunk(json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]))
    }

    fn finish(&mut self, stats: &MessageStats) -> Value {
        self.chunk(json!([{"index": 0, "delta": {}, "logprobs": null,
            "finish_reason": finish_reason(stats)}]))
    }

    fn usage(&self, stats: &MessageStats) -> Value {
        let mut c = self.chunk(json!([]));
        c["usage"] = usage(stats);
        c
    }
}

pub(super) async fn completions(
    State(s): State<Server>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = Body::parse(&headers, body, FIELDS)?;
    let requested = body.model()?;
    let messages = messages(&body)?;
    let params = body.sampling(s.chat().settings().max_tokens)?;
    let stream = body.bool("stream")?.unwrap_or(false);
    let include_usage = body.include_usage(stream)?;
    let prompt = Prompt::Chat {
        messages,
        thinking: thinking(&body)?,
        drop_oldest: false,
    };
    let model = loaded(&s)?.named(requested)?;
    let who = source(body.string("user")?, peer);
    let running = run::start(&s, prompt, params, who, "messages")?;
    let id = response_id("chatcmpl");
    if stream {
        let chunks = ChatChunks {
            id,
            created: now(),
            model: model.id,
            usage_field: include_usage,
        };
        return Ok(run::stream(running, chunks, include_usage));
    }
    let created = now();
    let a = running.collect().await?;
    let mut message = json!({"role": "assistant", "content": a.text});
    if !a.thinking.is_empty() {
        message["reasoning_content"] = json!(a.thinking);
    }
    Ok(Json(json!({
        "id": id, "object": "chat.completion", "created": created, "model": model.id,
        "choices": [{"index": 0, "message": message, "logprobs": null,
            "finish_reason": finish_reason(&a.stats)}],
        "usage": usage(&a.stats),
    }))
    .into_response())
}

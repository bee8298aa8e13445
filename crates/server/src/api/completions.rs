//! `POST /v1/completions`: a raw prompt, fed as it is (no chat template), continued; whole or
//! streamed. A `<think>` block the model writes stays in the text, tags included.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chat::{MessageStats, Prompt};
use serde_json::{json, Value};

use super::body::Body;
use super::run::{self, finish_reason, usage, Chunks};
use super::{loaded, now, response_id, source, ApiError};
use crate::Server;

const FIELDS: &[&str] = &[
    "model",
    "prompt",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "max_tokens",
    "stop",
    "seed",
    "user",
];

/// OpenAI's default answer length for completions.
const DEFAULT_MAX_TOKENS: usize = 16;

/// `prompt`: a string, or an array holding one.
fn prompt(body: &Body) -> Result<String, ApiError> {
    let one = |v: &Value| v.as_str().map(str::to_owned);
    match body.get("prompt") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(items)) if items.len() == 1 && one(&items[0]).is_some() => {
            Ok(one(&items[0]).unwrap_or_default())
        }
        Some(Value::Array(items)) if items.len() > 1 => Err(ApiError::invalid(
            "Only one prompt per request is supported.",
            Some("prompt"),
        )),
        _ => Err(ApiError::invalid(
            "`prompt` must be a string.",
            Some("prompt"),
        )),
    }
}

/// Puts the thinking the engine separated back into the text, where the model wrote it.
#[derive(Default)]
struct Rejoin {
    in_think: bool,
}

impl Rejoin {
    fn piece(&mut self, thinking: bool, text: &str) -> String {
        let out = match (self.in_think, thinking) {
            (false, true) => format!("<think>\n{text}"),
            (true, false) => format!("\n</think>\n\n{text}"),
            _ => text.to_owned(),
        };
        self.in_think = thinking;
        out
    }

    fn end(&mut self) -> &'static str {
        match std::mem::take(&mut self.in_think) {
            true => "\n</think>",
            false => "",
        }
    }
}

struct TextChunks {
    id: String,
    created: u64,
    model: String,
    rejoin: Rejoin,
}

impl TextChunks {
    fn chunk(&self, text: &str, finish: Option<&str>) -> Value {
        json!({
            "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
        })
    }
}

impl Chunks for TextChunks {
    fn opening(&self) -> Option<Value> {
        None
    }

    fn tool_call(&mut self, _: &chat::ToolRecord) -> Option<Value> {
        None // raw completions are offered no tools
    }

    fn delta(&mut self, thinking: bool, text: String) -> Value {
        let piece = self.rejoin.piece(thinking, &text);
        self.chunk(&piece, None)
    }

    fn finish(&mut self, stats: &MessageStats) -> Value {
        let tail = self.rejoin.end();
        self.chunk(tail, Some(finish_reason(stats, false)))
    }

    fn usage(&self, stats: &MessageStats) -> Value {
        let mut c = self.chunk("", None);
        c["choices"] = json!([]);
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
    let text = prompt(&body)?;
    let params = body.sampling(DEFAULT_MAX_TOKENS, s.chat().settings().speculative)?;
    let stream = body.bool("stream")?.unwrap_or(false);
    let include_usage = body.include_usage(stream)?;
    let model = loaded(&s)?.named(requested)?;
    let who = source(body.string("user")?, peer);
    let running = run::start(&s, Prompt::Text(text), params, who, "prompt", None)?;
    let (id, created) = (response_id("cmpl"), now());
    if stream {
        let chunks = TextChunks {
            id,
            created,
            model: model.id,
            rejoin: Rejoin::default(),
        };
        return run::stream(running, chunks, include_usage).await;
    }
    let a = running.collect().await?;
    let mut rejoin = Rejoin::default();
    let mut text = String::new();
    if !a.thinking.is_empty() {
        text.push_str(&rejoin.piece(true, &a.thinking));
    }
    text.push_str(&rejoin.piece(false, &a.text));
    Ok(Json(json!({
        "id": id, "object": "text_completion", "created": created, "model": model.id,
        "choices": [{"index": 0, "text": text, "logprobs": null,
            "finish_reason": finish_reason(&a.stats, false)}],
        "usage": usage(&a.stats),
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinking_goes_back_between_its_tags() {
        let mut r = Rejoin::default();
        let text: String = [
            r.piece(true, "Hmm"),
            r.piece(true, "."),
            r.piece(false, "Four"),
        ]
        .concat();
        assert_eq!(text, "<think>\nHmm.\n</think>\n\nFour");
        assert_eq!(r.end(), "");
        let mut r = Rejoin::default();
        let _ = r.piece(true, "cut off");
        assert_eq!(r.end(), "\n</think>");
    }
}

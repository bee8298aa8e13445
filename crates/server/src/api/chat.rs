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
use chat::{MessageStats, Prompt, ToolRecord, Tools};
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
    "tools",
    "tool_choice",
];

/// The `tools` offered to the model, as its template's `xml_tools` lists them
/// (`{"name","description","parameters"}`); `None` with no tools or `tool_choice: "none"`.
fn tools(body: &Body) -> Result<Option<Vec<Value>>, ApiError> {
    match body.get("tool_choice") {
        None => {}
        Some(Value::String(c)) if c == "auto" => {}
        Some(Value::String(c)) if c == "none" => return Ok(None),
        Some(_) => {
            return Err(ApiError::invalid(
                "Only `tool_choice` \"auto\" and \"none\" are supported: the model cannot be forced to call a tool.",
                Some("tool_choice"),
            ))
        }
    }
    let list = match body.get("tools") {
        None => return Ok(None),
        Some(Value::Array(list)) if list.is_empty() => return Ok(None),
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(ApiError::invalid(
                "`tools` must be an array.",
                Some("tools"),
            ))
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let param = format!("tools[{i}]");
            let wrong = || {
                ApiError::invalid(
                    "A tool must be `{\"type\": \"function\", \"function\": {\"name\": ..., \"description\": ..., \"parameters\": {...}}}`.",
                    Some(&param),
                )
            };
            let f = match (t.get("type").and_then(Value::as_str), t.get("function")) {
                (Some("function"), Some(Value::Object(f))) => f,
                _ => return Err(wrong()),
            };
            let mut spec = serde_json::Map::new();
            match f.get("name") {
                Some(Value::String(n)) if !n.trim().is_empty() => spec.insert("name".into(), json!(n)),
                _ => return Err(wrong()),
            };
            match f.get("description") {
                None | Some(Value::Null) => {}
                Some(d @ Value::String(_)) => {
                    spec.insert("description".into(), d.clone());
                }
                Some(_) => return Err(wrong()),
            }
            match f.get("parameters") {
                None | Some(Value::Null) => {}
                Some(p @ Value::Object(_)) => {
                    spec.insert("parameters".into(), p.clone());
                }
                Some(_) => return Err(wrong()),
            }
            Ok(Value::Object(spec))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// An assistant message's `tool_calls`, written back as the model wrote them
/// (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`): its template shows only content.
fn calls_as_text(i: usize, m: &Value) -> Result<String, ApiError> {
    let Some(calls) = m.get("tool_calls").filter(|v| !v.is_null()) else {
        return Ok(String::new());
    };
    let param = format!("messages[{i}].tool_calls");
    let wrong = || {
        ApiError::invalid(
            "`tool_calls` must be an array of `{\"type\": \"function\", \"function\": {\"name\": ..., \"arguments\": \"{...}\"}}`.",
            Some(&param),
        )
    };
    let mut out = String::new();
    for call in calls.as_array().ok_or_else(wrong)? {
        let f = call.get("function").ok_or_else(wrong)?;
        let name = f.get("name").and_then(Value::as_str).ok_or_else(wrong)?;
        let arguments: Value = match f.get("arguments") {
            Some(Value::String(s)) => serde_json::from_str(s).map_err(|_| wrong())?,
            Some(v @ Value::Object(_)) => v.clone(),
            _ => return Err(wrong()),
        };
        // Name first, as the template's instructions show the model.
        let name = json!(name);
        out.push_str(&format!(
            "\n<tool_call>\n{{\"name\": {name}, \"arguments\": {arguments}}}\n</tool_call>"
        ));
    }
    Ok(out)
}

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
            Ok(ChatMessage::new(
                role,
                content(i, m)? + calls_as_text(i, m)?.as_str(),
            ))
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
    /// The answer asked for tool calls (its `finish_reason` is `tool_calls`).
    called: bool,
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

    fn tool_call(&mut self, call: &ToolRecord) -> Option<Value> {
        self.called = true;
        let mut c = tool_call_json(&self.id, call);
        c["index"] = json!(call.index);
        Some(self.chunk(
            json!([{"index": 0, "delta": {"tool_calls": [c]}, "logprobs": null, "finish_reason": null}]),
        ))
    }

    fn finish(&mut self, stats: &MessageStats) -> Value {
        self.chunk(json!([{"index": 0, "delta": {}, "logprobs": null,
            "finish_reason": finish_reason(stats, self.called)}]))
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
    let settings = s.chat().settings();
    let params = body.sampling(settings.max_tokens, settings.speculative)?;
    let stream = body.bool("stream")?.unwrap_or(false);
    let include_usage = body.include_usage(stream)?;
    let prompt = Prompt::Chat {
        messages,
        thinking: thinking(&body)?,
        drop_oldest: false,
    };
    let model = loaded(&s)?.named(requested)?;
    let who = source(body.string("user")?, peer);
    let offered = tools(&body)?.map(Tools::Offer);
    let running = run::start(&s, prompt, params, who, "messages", offered)?;
    let id = response_id("chatcmpl");
    if stream {
        let chunks = ChatChunks {
            id,
            created: now(),
            model: model.id,
            usage_field: include_usage,
            called: false,
        };
        return run::stream(running, chunks, include_usage).await;
    }
    let created = now();
    let a = running.collect().await?;
    // OpenAI's shape: a message that only calls tools has no content (null, not "", nor the
    // whitespace the model wrote between its calls).
    let content = match a.text.trim().is_empty() && !a.calls.is_empty() {
        true => Value::Null,
        false => json!(a.text),
    };
    let mut message = json!({"role": "assistant", "content": content});
    if !a.thinking.is_empty() {
        message["reasoning_content"] = json!(a.thinking);
    }
    if !a.calls.is_empty() {
        message["tool_calls"] = a.calls.iter().map(|c| tool_call_json(&id, c)).collect();
    }
    Ok(Json(json!({
        "id": id, "object": "chat.completion", "created": created, "model": model.id,
        "choices": [{"index": 0, "message": message, "logprobs": null,
            "finish_reason": finish_reason(&a.stats, !a.calls.is_empty())}],
        "usage": usage(&a.stats),
    }))
    .into_response())
}

/// A call in OpenAI's shape: `{"id","type":"function","function":{"name","arguments"}}`, the
/// arguments as a JSON string. The id is the response's (`chatcmpl-…`) and the call's index, so
/// no two calls share one, across responses too: a client matches results to calls by it.
fn tool_call_json(response: &str, call: &ToolRecord) -> Value {
    let response = response.strip_prefix("chatcmpl-").unwrap_or(response);
    json!({
        "id": format!("call_{response}_{}", call.index),
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments.to_string()},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Body {
        let bytes = Bytes::from(v.to_string());
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        Body::parse(&headers, Ok(bytes), FIELDS).unwrap()
    }

    #[test]
    fn tools_become_the_templates_specs_and_tool_choice_is_checked() {
        let tool = json!({"type": "function", "function": {"name": "get_weather",
            "description": "Weather now", "parameters": {"type": "object"}}});
        let specs = tools(&body(json!({"tools": [tool]}))).unwrap().unwrap();
        assert_eq!(
            specs,
            [
                json!({"name": "get_weather", "description": "Weather now", "parameters": {"type": "object"}})
            ]
        );
        assert!(
            tools(&body(json!({"tools": [tool], "tool_choice": "none"})))
                .unwrap()
                .is_none()
        );
        assert!(
            tools(&body(json!({"tools": [tool], "tool_choice": "auto"})))
                .unwrap()
                .is_some()
        );
        let forced = json!({"tools": [tool], "tool_choice": "required"});
        assert_eq!(
            tools(&body(forced)).unwrap_err().param.as_deref(),
            Some("tool_choice")
        );
        let bad = json!({"tools": [{"type": "function", "function": {"name": ""}}]});
        assert_eq!(
            tools(&body(bad)).unwrap_err().param.as_deref(),
            Some("tools[0]")
        );
    }

    #[test]
    fn an_assistants_tool_calls_are_written_back_as_the_model_wrote_them() {
        let m = json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_0", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]});
        let list = messages(&body(
            json!({"messages": [{"role": "user", "content": "Hi"}, m,
            {"role": "tool", "tool_call_id": "call_0", "content": "sunny"}]}),
        ))
        .unwrap();
        assert_eq!(
            list[1].content,
            "\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call>"
        );
        assert_eq!(
            (list[2].role.as_str(), list[2].content.as_str()),
            ("tool", "sunny")
        );
        let bad = json!({"role": "assistant", "tool_calls": [{"function": {"name": "x", "arguments": "not json"}}]});
        let err = messages(&body(json!({"messages": [bad]}))).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages[0].tool_calls"));
    }
}

//! A remote OpenAI-compatible endpoint as the model (llama.cpp's `llama-server`, vLLM, another
//! `smollm3 serve`...): [`Endpoint`] is the setting (base URL, key, model name, timeout);
//! [`RemoteModel::connect`] checks it once (`GET /models`: reachable, key accepted, model served)
//! and [`RemoteModel::generate`] streams one answer from `POST /chat/completions` (or
//! `/completions` for a raw prompt) as the same [`JobEvent`]s the local engine gives.
//!
//! Thinking arrives either as `reasoning_content` (llama.cpp's and vLLM's reasoning parsers; vLLM
//! also names it `reasoning`) or inline as `<think>…</think>` in the content, which the engine's
//! own [`TextStream`] splits, exactly as for a local model.
//!
//! The HTTP exchange runs on a thread of its own that hands lines to the caller over a channel:
//! the caller polls the Stop flag while it waits, so Stop works even while the server is silent.
//! A stopped answer drops the channel; the thread then closes the connection at its next read,
//! which tells the server to stop generating.

use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use engine::textstream::{Delta, TextStream};
use engine::ChatMessage;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{ChatError, Result};
use crate::sampling::{check_range, invalid, AnswerParams};
use crate::stats::{Finish, MessageStats};
use crate::worker::{JobEvent, Prompt};

/// Default wait for the endpoint: to connect, and between any two pieces of its answer.
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;
/// How often a waiting answer looks at its Stop flag.
const STOP_POLL: Duration = Duration::from_millis(25);
/// The most of an error body read (for its message).
const ERROR_BODY_LIMIT: u64 = 64 * 1024;

/// The endpoint setting. `base_url` may be given with or without `/v1`: a URL with no path gets
/// `/v1` added (the path every OpenAI-compatible server uses); one with a path is used as given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Endpoint {
    pub base_url: String,
    /// Sent as `Authorization: Bearer KEY` when set.
    pub api_key: String,
    /// The model to ask for; empty = the first one the endpoint lists.
    pub model: String,
    /// Seconds to wait to connect, and between any two pieces of an answer.
    pub timeout_secs: u64,
}

impl Default for Endpoint {
    fn default() -> Self {
        Endpoint {
            base_url: String::new(),
            api_key: String::new(),
            model: String::new(),
            timeout_secs: DEFAULT_TIMEOUT_SECS,
        }
    }
}

impl Endpoint {
    /// Rejects what cannot work, naming the setting.
    pub fn validate(&self) -> Result<()> {
        self.api_url()?;
        check_range("endpoint.timeout_secs", Some(self.timeout_secs), 1, 3600)?;
        if self.api_key.chars().any(char::is_control) {
            return Err(invalid(
                "endpoint.api_key",
                "contains a line break or another control character",
            ));
        }
        if self.model.len() > 256 || self.model.chars().any(char::is_control) {
            return Err(invalid(
                "endpoint.model",
                "must be a model name (at most 256 characters, one line)",
            ));
        }
        Ok(())
    }

    /// The API's base: `base_url` with `/v1` added when it has no path, without a trailing `/`.
    pub fn api_url(&self) -> Result<String> {
        let url = self.base_url.trim().trim_end_matches('/');
        let bad = |why: &str| {
            invalid(
                "endpoint.base_url",
                format!("“{url}” {why} (e.g. http://192.168.1.20:8080/v1)"),
            )
        };
        if url.is_empty() {
            return Err(bad("is empty: give the server's address"));
        }
        let uri: ureq::http::Uri = url.parse().map_err(|_| bad("is not a URL"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(bad("must start with http:// or https://"));
        }
        if uri.host().is_none_or(str::is_empty) || uri.query().is_some() {
            return Err(bad("must name a host, and no query"));
        }
        Ok(match uri.path() {
            "" | "/" => format!("{url}/v1"),
            _ => url.to_owned(),
        })
    }
}

/// A checked endpoint, ready to answer.
#[derive(Clone)]
pub struct RemoteModel {
    agent: ureq::Agent,
    /// The API's base URL (see [`Endpoint::api_url`]).
    pub url: String,
    /// The model asked for: the setting's, or the first the endpoint listed.
    pub model: String,
    api_key: String,
    timeout: Duration,
}

impl std::fmt::Debug for RemoteModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("RemoteModel")
            .field("url", &self.url)
            .field("model", &self.model)
            .finish()
    }
}

impl RemoteModel {
    /// Checks the endpoint: it answers `GET /models`, accepts the key, and serves the model (or
    /// some model, when none is named). Each failure says which of these went wrong.
    pub fn connect(endpoint: &Endpoint) -> Result<RemoteModel> {
        endpoint.validate()?;
        let url = endpoint.api_url()?;
        let timeout = Duration::from_secs(endpoint.timeout_secs);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(timeout))
            .timeout_per_read(Some(timeout))
            .user_agent(concat!("smollm3/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let mut remote = RemoteModel {
            agent,
            url,
            model: endpoint.model.trim().to_owned(),
            api_key: endpoint.api_key.clone(),
            timeout,
        };
        let models_url = format!("{}/models", remote.url);
        let mut req = remote.agent.get(&models_url);
        if !remote.api_key.is_empty() {
            req = req.header("Authorization", format!("Bearer {}", remote.api_key));
        }
        let resp = req.call().map_err(|e| remote.transport(e))?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        if !(200..300).contains(&status) {
            return Err(remote.status_error(status, read_error_body(&mut body)));
        }
        let listed: Value = body
            .read_to_string()
            .map_err(|e| remote.transport(e))
            .and_then(|text| {
                serde_json::from_str(&text).map_err(|e| {
                    remote.protocol(format!("its model list (GET /models) is not JSON: {e}"))
                })
            })?;
        let served: Vec<String> = listed["data"]
            .as_array()
            .map(|models| {
                models
                    .iter()
                    .filter_map(|m| m["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if remote.model.is_empty() {
            remote.model = served.first().cloned().ok_or_else(|| {
                remote.protocol("it lists no models (name one in the settings)".into())
            })?;
        } else if !served.contains(&remote.model) {
            return Err(ChatError::EndpointModelNotFound {
                url: remote.url.clone(),
                model: remote.model.clone(),
                served: match served.is_empty() {
                    true => String::new(),
                    false => format!("it serves {}", served.join(", ")),
                },
            });
        }
        Ok(remote)
    }

    /// Streams one answer into `sink` ([`JobEvent::Thinking`] / [`JobEvent::Token`]) and returns
    /// its numbers; stopped by `cancelled` (finish `cancelled`). A request the endpoint rejects as
    /// asked (400: too long for its context, bad parameters) is `Err(EndpointRejected)`.
    pub fn generate(
        &self,
        prompt: &Prompt,
        params: &AnswerParams,
        cancelled: &AtomicBool,
        sink: &mut dyn FnMut(JobEvent),
    ) -> Result<MessageStats> {
        let (path, body) = self.request_body(prompt, params);
        let start = Instant::now();
        let mut stats = MessageStats {
            model: Some(self.model.clone()),
            ..MessageStats::default()
        };
        if cancelled.load(Ordering::SeqCst) {
            stats.finish = Some(Finish::Cancelled);
            return Ok(stats);
        }
        let (tx, rx) = channel();
        let me = self.clone();
        let url = format!("{}{path}", self.url);
        std::thread::Builder::new()
            .name("remote-answer".into())
            .spawn(move || me.exchange(&url, &body, &tx))
            .map_err(|e| self.protocol(format!("cannot start its reader thread: {e}")))?;

        let mut text = TextStream::new(params.stop().to_vec(), false);
        let mut first_at: Option<Instant> = None;
        let mut finish = None;
        let mut server_timings: Option<Value> = None;
        loop {
            if cancelled.load(Ordering::Relaxed) {
                finish = Some(Finish::Cancelled);
                break;
            }
            let chunk = match rx.recv_timeout(STOP_POLL) {
                Ok(Line::Data(chunk)) => chunk,
                Ok(Line::Failed(e)) => {
                    // What was held back (a possible tag's start) is text the answer had.
                    emit(text.finish(), sink, &mut first_at);
                    return Err(e);
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
                emit(text.finish(), sink, &mut first_at);
                return Err(self.status_error(500, Some(error_message(error))));
            }
            if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
                read_usage(usage, &mut stats);
            }
            if let Some(t) = chunk.get("timings").filter(|t| t.is_object()) {
                server_timings = Some(t.clone());
            }
            let Some(choice) = chunk["choices"].get(0) else {
                continue;
            };
            let delta = &choice["delta"];
            for key in ["reasoning_content", "reasoning"] {
                if let Some(t) = delta[key].as_str().filter(|t| !t.is_empty()) {
                    first_at.get_or_insert_with(Instant::now);
                    sink(JobEvent::Thinking(t.to_owned()));
                }
            }
            // Chat answers carry `delta.content`; raw completions carry `text`.
            let piece = delta["content"].as_str().or(choice["text"].as_str());
            if let Some(piece) = piece.filter(|p| !p.is_empty()) {
                emit(text.push(piece), sink, &mut first_at);
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                finish = Some(match reason {
                    "length" => Finish::Length,
                    _ => Finish::Stop,
                });
            }
            if text.stopped() {
                finish = Some(Finish::Stop);
                break; // one of our stop strings: the rest is not wanted
            }
        }
        emit(text.finish(), sink, &mut first_at);
        let Some(finish) = finish else {
            return Err(self.protocol("the answer ended without a finish reason".into()));
        };
        stats.finish = Some(finish);
        let total_ms = start.elapsed().as_secs_f64() * 1e3;
        stats.time_to_first_token_ms =
            first_at.map_or(total_ms, |t| t.duration_since(start).as_secs_f64() * 1e3);
        stats.prefill_ms = stats.time_to_first_token_ms;
        stats.decode_ms = total_ms - stats.time_to_first_token_ms;
        // llama.cpp's server measures its own prefill and decode; they leave the network out.
        if let Some(t) = server_timings {
            let f = |k: &str| t[k].as_f64().unwrap_or(0.0);
            stats.prefill_ms = f("prompt_ms");
            stats.decode_ms = f("predicted_ms");
            stats.prefill_tok_s = f("prompt_per_second");
            stats.decode_tok_s = f("predicted_per_second");
            stats.cached_tokens = t["cache_n"].as_u64().unwrap_or(0) as usize;
        } else {
            stats.prefill_tok_s = per_s(stats.prompt_tokens, stats.prefill_ms);
            stats.decode_tok_s = per_s(stats.completion_tokens, stats.decode_ms);
        }
        stats.context_used = stats.prompt_tokens + stats.completion_tokens;
        Ok(stats)
    }

    /// The path and JSON body for `prompt`: a chat (the server applies its template) or raw text.
    fn request_body(&self, prompt: &Prompt, params: &AnswerParams) -> (&'static str, Value) {
        let s = params.sampling();
        let mut body = json!({
            "model": self.model,
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": s.max_tokens,
        });
        let path = match prompt {
            Prompt::Chat {
                messages, thinking, ..
            } => {
                body["messages"] = json!(messages
                    .iter()
                    .map(|ChatMessage { role, content }| json!({"role": role, "content": content}))
                    .collect::<Vec<_>>());
                // Only when off: thinking is the templates' default, and servers that know no
                // templates (OpenAI's own) refuse fields they do not know.
                if !thinking {
                    body["chat_template_kwargs"] = json!({"enable_thinking": false});
                }
                "/chat/completions"
            }
            Prompt::Text(text) => {
                body["prompt"] = json!(text);
                "/completions"
            }
        };
        // Unset choices are left to the server (its defaults for its model). `top_k`, `min_p` and
        // `repeat_penalty` are llama.cpp's and vLLM's extensions: sent only when the user set them.
        let fields = [
            ("temperature", s.temperature.map(f64::from).map(Value::from)),
            ("top_p", s.top_p.map(f64::from).map(Value::from)),
            ("top_k", s.top_k.map(Value::from)),
            ("min_p", s.min_p.map(f64::from).map(Value::from)),
            (
                "repeat_penalty",
                s.repeat_penalty.map(f64::from).map(Value::from),
            ),
            ("seed", s.seed.map(Value::from)),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                body[k] = v;
            }
        }
        if !s.stop.is_empty() {
            body["stop"] = json!(s.stop);
        }
        (path, body)
    }

    /// The reader thread: POSTs `body` and sends each `data:` payload of the event stream, or
    /// the failure. Ends quietly when the receiver is gone (the answer was stopped).
    fn exchange(&self, url: &str, body: &Value, tx: &Sender<Line>) {
        let mut req = self
            .agent
            .post(url)
            .header("Content-Type", "application/json")
            .header("Accept", "text/event-stream");
        if !self.api_key.is_empty() {
            req = req.header("Authorization", format!("Bearer {}", self.api_key));
        }
        let resp = match req.send(body.to_string().as_bytes()) {
            Ok(resp) => resp,
            Err(e) => {
                let _ = tx.send(Line::Failed(self.transport(e)));
                return;
            }
        };
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        if !(200..300).contains(&status) {
            let message = read_error_body(&mut body);
            let _ = tx.send(Line::Failed(self.status_error(status, message)));
            return;
        }
        let reader = BufReader::new(body.into_reader());
        for line in reader.lines() {
            let line = match line {
                Ok(line) => line,
                Err(e) => {
                    let _ = tx.send(Line::Failed(self.transport(ureq::Error::from(e))));
                    return;
                }
            };
            // Server-sent events: only `data:` lines matter; `[DONE]` ends the stream.
            let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                continue;
            };
            if data == "[DONE]" {
                return;
            }
            let sent = match serde_json::from_str(data) {
                Ok(chunk) => tx.send(Line::Data(chunk)),
                Err(e) => tx.send(Line::Failed(
                    self.protocol(format!("it sent an event that is not JSON ({e}): {data}")),
                )),
            };
            if sent.is_err() {
                return; // stopped: dropping the body closes the connection
            }
        }
    }

    fn transport(&self, e: ureq::Error) -> ChatError {
        let url = self.url.clone();
        let reason = match e {
            ureq::Error::Timeout(_) => {
                return ChatError::EndpointTimeout {
                    url,
                    secs: self.timeout.as_secs(),
                }
            }
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                return ChatError::EndpointTimeout {
                    url,
                    secs: self.timeout.as_secs(),
                }
            }
            ureq::Error::HostNotFound => "the host name could not be resolved".to_owned(),
            ureq::Error::ConnectionFailed => "the connection failed".to_owned(),
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                "connection refused (is the server running on that port?)".to_owned()
            }
            other => other.to_string(),
        };
        ChatError::EndpointUnreachable { url, reason }
    }

    fn status_error(&self, status: u16, message: Option<String>) -> ChatError {
        let url = self.url.clone();
        let message = message.unwrap_or_default();
        match status {
            401 | 403 => ChatError::EndpointAuth {
                url,
                status,
                message,
            },
            404 => ChatError::EndpointModelNotFound {
                url,
                model: self.model.clone(),
                served: message,
            },
            400 | 413 | 422 => ChatError::EndpointRejected { url, message },
            _ => ChatError::EndpointFailed {
                url,
                status,
                message,
            },
        }
    }

    fn protocol(&self, reason: String) -> ChatError {
        ChatError::EndpointProtocol {
            url: self.url.clone(),
            reason,
        }
    }
}

enum Line {
    Data(Value),
    Failed(ChatError),
}

/// The message of an error answer: OpenAI's `{"error": {"message"}}`, else the text itself.
fn read_error_body(body: &mut ureq::Body) -> Option<String> {
    let mut text = String::new();
    body.as_reader()
        .take(ERROR_BODY_LIMIT)
        .read_to_string(&mut text)
        .ok()?;
    let text = text.trim();
    match serde_json::from_str::<Value>(text) {
        Ok(v) if v.get("error").is_some() => Some(error_message(&v["error"])),
        _ if text.is_empty() => None,
        _ => Some(text.chars().take(500).collect()),
    }
}

fn error_message(error: &Value) -> String {
    error["message"]
        .as_str()
        .or(error.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| error.to_string())
}

fn emit(deltas: Vec<Delta>, sink: &mut dyn FnMut(JobEvent), first_at: &mut Option<Instant>) {
    for d in deltas {
        first_at.get_or_insert_with(Instant::now);
        sink(match d {
            Delta::Thinking(t) => JobEvent::Thinking(t),
            Delta::Answer(t) => JobEvent::Token(t),
        });
    }
}

fn read_usage(usage: &Value, stats: &mut MessageStats) {
    let n = |v: &Value| v.as_u64().unwrap_or(0) as usize;
    stats.prompt_tokens = n(&usage["prompt_tokens"]);
    stats.completion_tokens = n(&usage["completion_tokens"]);
    stats.cached_tokens = n(&usage["prompt_tokens_details"]["cached_tokens"]);
}

fn per_s(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1e3 / ms
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str) -> Endpoint {
        Endpoint {
            base_url: url.into(),
            ..Endpoint::default()
        }
    }

    #[test]
    fn the_api_url_gets_v1_only_when_it_has_no_path() {
        let api = |u: &str| endpoint(u).api_url().unwrap();
        assert_eq!(api("http://h:8080"), "http://h:8080/v1");
        assert_eq!(api(" http://h:8080/ "), "http://h:8080/v1");
        assert_eq!(api("https://h/v1/"), "https://h/v1");
        assert_eq!(api("https://h/openai/v1"), "https://h/openai/v1");
        for bad in ["", "h:8080", "ftp://h", "http://", "http://h/v1?x=1"] {
            let err = endpoint(bad).validate().unwrap_err().to_string();
            assert!(err.contains("endpoint.base_url"), "{bad}: {err}");
        }
    }

    #[test]
    fn keys_and_names_on_more_than_one_line_are_refused() {
        let mut e = endpoint("http://h");
        e.api_key = "a\nb".into();
        assert!(e.validate().unwrap_err().to_string().contains("api_key"));
        e.api_key.clear();
        e.timeout_secs = 0;
        assert!(e.validate().unwrap_err().to_string().contains("timeout"));
    }
}

//! A request body as a JSON object, read field by field so that every refusal names its field:
//! malformed JSON, a field this server does not support, a value of the wrong type or range.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap, StatusCode};
use chat::{AnswerParams, ChatError, Sampling};
use serde_json::{Map, Value};

use super::ApiError;

/// Largest request body the API reads.
pub const BODY_LIMIT: usize = 4 * 1024 * 1024;

pub(crate) struct Body(Map<String, Value>);

/// Fields accepted only with the value that means "nothing": `logprobs: false`, `n: 1`, ...
fn neutral(field: &str, v: &Value) -> bool {
    match field {
        "n" => v == &Value::from(1) || v.is_null(),
        "logprobs" | "echo" => v == &Value::Bool(false) || v.is_null(),
        "frequency_penalty" | "presence_penalty" => v.as_f64() == Some(0.0) || v.is_null(),
        "response_format" => v.get("type").and_then(Value::as_str) == Some("text") || v.is_null(),
        "tool_choice" => v.as_str() == Some("none") || v.is_null(),
        "tools" | "functions" => v.as_array().is_some_and(Vec::is_empty) || v.is_null(),
        _ => v.is_null(),
    }
}

/// The `Origin` of a request a web page of another site made, if it is one. A browser sends
/// `Origin` with every POST; API clients (curl, the OpenAI libraries) send none. Such a page
/// needs no preflight to post a "simple" body (a form, `text/plain`), so this check, not the
/// content type, is what keeps other sites from using a local server through the browser.
fn cross_origin(headers: &HeaderMap) -> Option<&str> {
    let origin = headers.get(header::ORIGIN)?.to_str().unwrap_or("null");
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let authority = origin.split_once("://").map(|(_, rest)| rest);
    match (authority, host) {
        (Some(a), Some(h)) if a.eq_ignore_ascii_case(h) => None,
        _ => Some(origin),
    }
}

impl Body {
    /// The body, refused unless it is a JSON object of `fields` (the supported ones) and of
    /// [`neutral`] ones at their neutral values.
    pub fn parse(
        headers: &HeaderMap,
        body: Result<Bytes, BytesRejection>,
        fields: &[&str],
    ) -> Result<Body, ApiError> {
        let body = body.map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(BODY_LIMIT),
            _ => ApiError::invalid(format!("The request body could not be read: {e}"), None),
        })?;
        if let Some(origin) = cross_origin(headers) {
            return Err(ApiError::cross_origin(origin));
        }
        // Any content type is read as JSON, as llama.cpp's server reads it (`curl -d` sends
        // `application/x-www-form-urlencoded`); a body that is not JSON says what to send.
        let value: Value = serde_json::from_slice(&body).map_err(|e| {
            let declared = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.trim_start().starts_with("application/json"));
            let hint = match declared {
                Some(t) => {
                    format!(" (it was sent as `{t}`: send JSON, `Content-Type: application/json`)")
                }
                None => String::new(),
            };
            ApiError::invalid(format!("The body is not valid JSON: {e}{hint}."), None)
        })?;
        let Value::Object(map) = value else {
            return Err(ApiError::invalid("The body must be a JSON object.", None));
        };
        for (k, v) in &map {
            if !fields.contains(&k.as_str()) && !neutral(k, v) {
                let what = match k.as_str() {
                    "n" => "Only one choice per request is supported (`n` must be 1).".to_owned(),
                    _ => format!("`{k}` is not supported by this server."),
                };
                return Err(ApiError::invalid(what, Some(k)));
            }
        }
        Ok(Body(map))
    }

    pub fn get(&self, field: &str) -> Option<&Value> {
        self.0.get(field).filter(|v| !v.is_null())
    }

    fn wrong(field: &str, what: &str) -> ApiError {
        ApiError::invalid(format!("`{field}` must be {what}."), Some(field))
    }

    /// The `model` field, which both endpoints require.
    pub fn model(&self) -> Result<&str, ApiError> {
        self.string("model")?
            .ok_or_else(|| ApiError::invalid("`model` is required.", Some("model")))
    }

    pub fn string(&self, field: &str) -> Result<Option<&str>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| Self::wrong(field, "a string")),
        }
    }

    pub fn bool(&self, field: &str) -> Result<Option<bool>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| Self::wrong(field, "true or false")),
        }
    }

    pub fn f32(&self, field: &str) -> Result<Option<f32>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| Self::wrong(field, "a number")),
        }
    }

    pub fn u64(&self, field: &str) -> Result<Option<u64>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| Self::wrong(field, "a whole number, 0 or more")),
        }
    }

    /// `stop`: a string or an array of strings.
    pub fn stop(&self) -> Result<Vec<String>, ApiError> {
        match self.get("stop") {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| Self::wrong("stop", "a string or an array of strings")),
            Some(_) => Err(Self::wrong("stop", "a string or an array of strings")),
        }
    }

    /// `stream_options.include_usage`; the options only go with `stream`, as in OpenAI's API.
    pub fn include_usage(&self, stream: bool) -> Result<bool, ApiError> {
        let Some(options) = self.get("stream_options").filter(|o| !o.is_null()) else {
            return Ok(false);
        };
        if !stream {
            return Err(ApiError::invalid(
                "`stream_options` is only allowed with `stream: true`.",
                Some("stream_options"),
            ));
        }
        match options.get("include_usage") {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(on)) => Ok(*on),
            Some(_) => Err(ApiError::invalid(
                "`stream_options.include_usage` must be true or false.",
                Some("stream_options"),
            )),
        }
    }

    /// The sampling fields (OpenAI's, and llama.cpp's `top_k`, `min_p`, `repeat_penalty`),
    /// validated with the same ranges as the settings; `max_tokens` when none is given. Whether
    /// the engine drafts is the settings' `speculative` (no API field: the answer is the same).
    pub fn sampling(
        &self,
        default_max_tokens: usize,
        speculative: bool,
    ) -> Result<AnswerParams, ApiError> {
        let max = match self.u64("max_completion_tokens")? {
            Some(n) => Some(n),
            None => self.u64("max_tokens")?,
        };
        let sampling = Sampling {
            temperature: self.f32("temperature")?,
            top_p: self.f32("top_p")?,
            top_k: self.u64("top_k")?.map(|n| n as usize),
            min_p: self.f32("min_p")?,
            repeat_penalty: self.f32("repeat_penalty")?,
            seed: self.u64("seed")?,
            max_tokens: max.map_or(default_max_tokens, |n| n as usize),
            max_thinking_tokens: None,
            stop: self.stop()?,
            speculative,
        };
        sampling.validate().map_err(|e| match e {
            ChatError::InvalidSetting { field, reason } => {
                // The API's name for the answer's length, whichever the client used.
                let field = match field {
                    "max_tokens" if self.get("max_completion_tokens").is_some() => {
                        "max_completion_tokens"
                    }
                    f => f,
                };
                ApiError::invalid(format!("`{field}` {reason}."), Some(field))
            }
            other => ApiError::invalid(other.to_string(), None),
        })
    }
}

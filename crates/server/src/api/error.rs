//! [`ApiError`]: an OpenAI-shaped error, `{"error": {"message", "type", "param", "code"}}`, with the
//! HTTP status that goes with it.

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chat::{ChatError, JobError};
use engine::EngineError;
use serde_json::json;

#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `unavailable_error`, `server_error`.
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400: malformed JSON or parameters; `param` names the field.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_owned),
            code: None,
        }
    }

    pub fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "Missing or wrong API key: send it as `Authorization: Bearer KEY`.".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    pub fn model_not_found(model: &str, available: &[String]) -> Self {
        let offer = match available {
            [] => "no model is loaded".to_owned(),
            names => format!("this server has {}", names.join(", ")),
        };
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{model}` does not exist: {offer}."),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    pub fn not_found(what: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("There is no {what} on this server."),
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
        }
    }

    /// 405: a route of the API asked with a method it does not answer (axum adds `Allow`).
    pub fn method_not_allowed(method: &Method, path: &str) -> Self {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("{path} does not answer {method} requests (see the Allow header)."),
            kind: "invalid_request_error",
            param: None,
            code: Some("method_not_allowed"),
        }
    }

    /// 403: a web page of another site posted to the API through the user's browser.
    pub fn cross_origin(origin: &str) -> Self {
        ApiError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "Requests from web pages of another site ({origin}) are refused: call the API from a program, not a browser page."
            ),
            kind: "invalid_request_error",
            param: None,
            code: Some("cross_origin"),
        }
    }

    pub fn too_large(limit: usize) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("The request body is larger than {} KiB.", limit / 1024),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_too_large"),
        }
    }

    /// 503: no model to answer with; `reason` says why and what to do.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: reason.into(),
            kind: "unavailable_error",
            param: None,
            code: Some("model_not_ready"),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// Why a job gave no answer, with the status that goes with it: 400 for what the request
    /// asked (`refused`, or a prompt longer than the context; `input` names its field), 503
    /// without a model, 502 and 504 for a remote endpoint that failed or fell silent, 500 for the
    /// engine's own failures.
    pub fn job(e: &JobError, refused: bool, input: &str) -> Self {
        let message = sentence(&e.to_string());
        let server = |code| ApiError {
            code: Some(code),
            ..ApiError::internal(message.clone())
        };
        let gateway = |status, code| ApiError {
            status,
            ..server(code)
        };
        let invalid = |param: Option<&str>, code| ApiError {
            code: Some(code),
            ..ApiError::invalid(message.clone(), param)
        };
        match e {
            JobError::NoModel(_) => ApiError::unavailable(message.clone()),
            JobError::PromptTooLong { .. } => invalid(Some(input), "context_length_exceeded"),
            JobError::Engine(e) => match &**e {
                EngineError::ContextOverflow { .. } => {
                    invalid(Some(input), "context_length_exceeded")
                }
                EngineError::Sampling(_) => invalid(None, "invalid_sampling"),
                _ if refused => invalid(Some(input), "invalid_prompt"),
                _ => server("engine_failed"),
            },
            JobError::Remote(e) => match &**e {
                ChatError::EndpointRejected { .. } => invalid(Some(input), "endpoint_rejected"),
                ChatError::EndpointUnreachable { .. } => {
                    gateway(StatusCode::BAD_GATEWAY, "endpoint_unreachable")
                }
                ChatError::EndpointTimeout { .. } => {
                    gateway(StatusCode::GATEWAY_TIMEOUT, "endpoint_timeout")
                }
                ChatError::EndpointAuth { .. }
                | ChatError::EndpointModelNotFound { .. }
                | ChatError::EndpointFailed { .. }
                | ChatError::EndpointProtocol { .. } => {
                    gateway(StatusCode::BAD_GATEWAY, "endpoint_failed")
                }
                _ => server("engine_failed"),
            },
            JobError::Crashed(_) => server("engine_crashed"),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// `text` as a sentence: a capital first, a full stop last.
pub(crate) fn sentence(text: &str) -> String {
    let mut c = text.trim().chars();
    let mut s: String = match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => return String::new(),
    };
    if !s.ends_with(['.', '!', '?']) {
        s.push('.');
    }
    s
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn status(e: JobError, refused: bool) -> (u16, Option<&'static str>) {
        let a = ApiError::job(&e, refused, "messages");
        assert!(a.message.ends_with('.'), "{a:?}");
        assert!(a.message.starts_with(char::is_uppercase), "{a:?}");
        (a.status.as_u16(), a.code)
    }

    fn remote(e: ChatError) -> JobError {
        JobError::Remote(Arc::new(e))
    }

    #[test]
    fn each_job_error_has_its_status() {
        let url = || "http://gpu:8080/v1".to_owned();
        let no_model = JobError::NoModel(Box::new(chat::ModelState::NoModel {
            why: "the model was unloaded.".into(),
            how_to_get_one: "Load it again from Settings.".into(),
        }));
        let too_long = JobError::PromptTooLong {
            prompt_tokens: 9000,
            context_len: 8192,
        };
        let template = JobError::from(EngineError::Template("no such role".into()));
        let nan = JobError::from(EngineError::NanLogits { position: 3 });
        let cases = [
            (no_model, false, 503, "model_not_ready"),
            (too_long, true, 400, "context_length_exceeded"),
            (template, true, 400, "invalid_prompt"),
            (nan, false, 500, "engine_failed"),
            (
                JobError::Crashed("index out of bounds".into()),
                false,
                500,
                "engine_crashed",
            ),
            (
                remote(ChatError::EndpointRejected {
                    url: url(),
                    message: "too long".into(),
                }),
                true,
                400,
                "endpoint_rejected",
            ),
            (
                remote(ChatError::EndpointUnreachable {
                    url: url(),
                    reason: "connection refused".into(),
                }),
                false,
                502,
                "endpoint_unreachable",
            ),
            (
                remote(ChatError::EndpointAuth {
                    url: url(),
                    status: 401,
                    message: String::new(),
                }),
                false,
                502,
                "endpoint_failed",
            ),
            (
                remote(ChatError::EndpointTimeout {
                    url: url(),
                    secs: 30,
                }),
                false,
                504,
                "endpoint_timeout",
            ),
        ];
        for (e, refused, want, code) in cases {
            let shown = e.to_string();
            assert_eq!(status(e, refused), (want, Some(code)), "{shown}");
        }
    }

    #[test]
    fn a_sentence_has_a_capital_and_one_full_stop() {
        assert_eq!(
            sentence("the engine crashed: boom"),
            "The engine crashed: boom."
        );
        assert_eq!(
            sentence("the model was unloaded."),
            "The model was unloaded."
        );
    }
}

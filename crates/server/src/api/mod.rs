//! The OpenAI-compatible API: `GET /v1/models`, `GET /health`, and (next) chat completions.

mod error;

pub use error::ApiError;

//! Numbers about one answer ([`MessageStats`]) and why it ended ([`Finish`]): produced by the
//! worker, streamed as the `stats` event, stored with the message.

use serde::{Deserialize, Serialize};

/// Why an answer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// End of turn or a stop string.
    Stop,
    /// The token limit or a full context.
    Length,
    /// Stopped by the user (or the app closing).
    Cancelled,
}

impl From<engine::FinishReason> for Finish {
    fn from(r: engine::FinishReason) -> Self {
        match r {
            engine::FinishReason::Stop => Finish::Stop,
            engine::FinishReason::Length => Finish::Length,
            engine::FinishReason::Cancelled => Finish::Cancelled,
        }
    }
}

/// Numbers about one answer, shown beside it and stored with it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageStats {
    pub finish: Option<Finish>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens reused from the KV cache (the previous turn's prefix).
    pub cached_tokens: usize,
    pub time_to_first_token_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    /// Tokens in the context after this answer, and its size (the context meter).
    pub context_used: usize,
    pub context_len: usize,
    /// The model file's name; `None` for answers made without a model (`/quote`).
    pub model: Option<String>,
}

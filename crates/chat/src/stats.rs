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
    /// Speculative decoding: tokens drafted and verified, and how many of them were the answer's
    /// (0 and 0 when nothing was drafted). Absent from answers stored before drafting existed.
    #[serde(default)]
    pub drafted_tokens: usize,
    #[serde(default)]
    pub accepted_drafts: usize,
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

impl MessageStats {
    /// The numbers of an answer made of two generation steps (a tool call between them): `next`
    /// decides how it ended and the context; tokens and times add up, rates follow from them.
    /// The prompt is the first step's (the later steps' prompts are mostly its cached prefix).
    pub fn then(self, next: MessageStats) -> MessageStats {
        let completion_tokens = self.completion_tokens + next.completion_tokens;
        let prefill_ms = self.prefill_ms + next.prefill_ms;
        let decode_ms = self.decode_ms + next.decode_ms;
        let rate = |tokens: usize, ms: f64| match ms > 0.0 {
            true => tokens as f64 * 1000.0 / ms,
            false => 0.0,
        };
        MessageStats {
            finish: next.finish,
            prompt_tokens: self.prompt_tokens,
            completion_tokens,
            cached_tokens: self.cached_tokens,
            drafted_tokens: self.drafted_tokens + next.drafted_tokens,
            accepted_drafts: self.accepted_drafts + next.accepted_drafts,
            time_to_first_token_ms: self.time_to_first_token_ms,
            prefill_ms,
            decode_ms,
            prefill_tok_s: self.prefill_tok_s,
            decode_tok_s: rate(completion_tokens, decode_ms),
            context_used: next.context_used,
            context_len: next.context_len,
            model: next.model.or(self.model),
        }
    }
}

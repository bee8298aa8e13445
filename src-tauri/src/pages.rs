//! View models: the chat core's types turned into what the templates show (titles, formatted stats, the
//! context meter), and stream events turned into the page's frame shape (see `doc/app.md`).

use chat::protocol::{EventKind, StreamEvent};
use chat::store::{Chat, Message, MessageKind, MessageStatus, Role};
use chat::MessageStats;
use serde::Serialize;

#[derive(Serialize)]
pub struct ChatView {
    pub id: i64,
    pub title: String,
    pub thinking: bool,
    pub snippet: Option<String>,
}

impl ChatView {
    pub fn new(c: &Chat) -> Self {
        Self {
            id: c.id,
            title: c.title.clone(),
            thinking: c.thinking,
            snippet: None,
        }
    }
}

#[derive(Serialize)]
pub struct ContextMeter {
    pub used: usize,
    pub size: usize,
    pub percent: u32,
}

#[derive(Serialize)]
pub struct MessageView {
    pub id: i64,
    pub chat_id: i64,
    pub role: &'static str,
    pub content: String,
    pub thinking: String,
    pub thinking_secs: Option<String>,
    pub status: &'static str,
    pub error: Option<String>,
    /// Command replies and context resets: no copy / regenerate buttons.
    pub command: bool,
    /// Still being generated: the page connects to its stream.
    pub streaming: bool,
    /// The stream id to resume after (for a streaming message).
    pub after: u64,
    pub stats: Option<String>,
    pub stats_detail: Option<String>,
    pub context: Option<ContextMeter>,
    /// The newest answer of its chat: it can be regenerated.
    pub last: bool,
}

impl MessageView {
    pub fn new(m: &Message, last: bool, after: u64) -> Self {
        let stats = m.stats.as_ref().filter(|s| s.completion_tokens > 0);
        Self {
            id: m.id,
            chat_id: m.chat_id,
            role: match m.role {
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::System => "system",
            },
            content: m.content.clone(),
            thinking: m.thinking.clone(),
            thinking_secs: m.thinking_ms.map(|ms| format_secs(ms as f64 / 1000.0)),
            status: m.status.as_str(),
            error: m.error.clone(),
            command: m.kind != MessageKind::Chat,
            streaming: m.status == MessageStatus::Streaming,
            after,
            stats: stats.map(stats_line),
            stats_detail: stats.map(stats_detail),
            context: m
                .stats
                .as_ref()
                .filter(|s| s.context_len > 0)
                .map(|s| ContextMeter {
                    used: s.context_used,
                    size: s.context_len,
                    percent: ((s.context_used * 100) / s.context_len.max(1)) as u32,
                }),
            last,
        }
    }
}

/// The views of a chat's messages; the last assistant answer is marked regenerable.
pub fn message_views(messages: &[Message], after: u64) -> Vec<MessageView> {
    let last_answer = messages
        .iter()
        .rev()
        .find(|m| m.role == Role::Assistant && m.kind == MessageKind::Chat)
        .map(|m| m.id);
    messages
        .iter()
        .map(|m| MessageView::new(m, Some(m.id) == last_answer, after))
        .collect()
}

fn format_secs(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{s:.0} s")
    }
}

/// `42 tokens · 35.1 tok/s · first token 120 ms`
pub fn stats_line(s: &MessageStats) -> String {
    let mut line = format!(
        "{} tokens · {:.1} tok/s",
        s.completion_tokens, s.decode_tok_s
    );
    if s.time_to_first_token_ms > 0.0 {
        line.push_str(&format!(
            " · first token {:.0} ms",
            s.time_to_first_token_ms
        ));
    }
    line
}

fn stats_detail(s: &MessageStats) -> String {
    format!(
        "prompt {} tokens ({} reused from the cache), prefill {:.1} tok/s, decode {:.1} tok/s{}",
        s.prompt_tokens,
        s.cached_tokens,
        s.prefill_tok_s,
        s.decode_tok_s,
        s.model
            .as_deref()
            .map(|m| format!(", model {m}"))
            .unwrap_or_default()
    )
}

/// A stream event as the page's extension reads it (`ui/static/tauri-sse.js`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Frame {
    pub id: u64,
    pub chat: i64,
    /// `None` on the `complete` frame that replaces events already dropped (see `Core::frames_after`).
    pub message: Option<i64>,
    pub event: &'static str,
    pub data: String,
}

impl Frame {
    pub fn new(ev: &StreamEvent) -> Self {
        let data = match &ev.kind {
            EventKind::Thinking { text } | EventKind::Token { text } => text.clone(),
            EventKind::Stats { stats } => stats_line(stats),
            EventKind::Complete { status } => status.as_str().to_string(),
            EventKind::Error { message } => message.clone(),
        };
        Self {
            id: ev.id,
            chat: ev.chat_id,
            message: Some(ev.message_id),
            event: ev.kind.name(),
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_line_reads_well() {
        let s = MessageStats {
            completion_tokens: 42,
            decode_tok_s: 35.06,
            time_to_first_token_ms: 120.4,
            ..Default::default()
        };
        assert_eq!(
            stats_line(&s),
            "42 tokens · 35.1 tok/s · first token 120 ms"
        );
    }

    #[test]
    fn frames_carry_text_and_names() {
        let ev = StreamEvent {
            id: 5,
            chat_id: 2,
            message_id: 9,
            kind: EventKind::Token {
                text: "Paris".into(),
            },
        };
        assert_eq!(
            Frame::new(&ev),
            Frame {
                id: 5,
                chat: 2,
                message: Some(9),
                event: "token",
                data: "Paris".into()
            }
        );
    }
}

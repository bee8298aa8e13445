//! View models: the chat core's types turned into what the templates show (titles, formatted stats, the
//! context meter, the model's state).

use chat::store::{Chat, Message, MessageKind, MessageStatus, Role};
use chat::tools::{ToolRecord, ToolStatus};
use chat::{MessageStats, ModelState};
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
    /// An answer waiting for the engine behind others: its place, as the `queued` frames say it.
    pub waiting: String,
    pub stats: Option<String>,
    pub stats_detail: Option<String>,
    pub context: Option<ContextMeter>,
    /// The newest answer of its chat: it can be regenerated.
    pub last: bool,
    /// The answer's tool calls, as cards.
    pub tools: Vec<ToolView>,
    /// A message with other versions (after an edit): which one this is, of how many.
    pub branches: Option<chat::Branches>,
}

/// A tool call's card (`tool_card.html`).
#[derive(Serialize)]
pub struct ToolView {
    pub index: usize,
    pub name: String,
    /// Compact JSON, or the raw text of a malformed call.
    pub arguments: String,
    pub status: &'static str,
    pub result: String,
    /// Empty while it runs.
    pub duration: String,
}

impl ToolView {
    pub fn new(t: &ToolRecord) -> Self {
        Self {
            index: t.index,
            name: match t.name.is_empty() {
                true => "malformed call".into(),
                false => t.name.clone(),
            },
            arguments: match &t.arguments {
                serde_json::Value::String(raw) => raw.clone(),
                value => value.to_string(),
            },
            status: t.status.as_str(),
            result: t.result.clone(),
            duration: match t.status {
                ToolStatus::Running | ToolStatus::Pending => String::new(),
                _ => format!("{} ms", t.duration_ms),
            },
        }
    }
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
            waiting: m.waiting.map(waiting_line).unwrap_or_default(),
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
            tools: m.tools.iter().map(ToolView::new).collect(),
            branches: m.branches,
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

/// What an answer waiting for the engine shows until its first token (a `queued` frame's text):
/// `Waiting for the model — 2 answers ahead`; nothing once it is next (its dots alone).
pub fn waiting_line(ahead: usize) -> String {
    match ahead {
        0 => String::new(),
        1 => "Waiting for the model — 1 answer ahead".into(),
        n => format!("Waiting for the model — {n} answers ahead"),
    }
}

/// `42 tokens · 35.1 tok/s · first token 120 ms`, then `· 12 of 20 drafted tokens accepted`
/// when speculative decoding drafted any (the accepted ones are why the rate can pass plain
/// decoding's).
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
    if s.drafted_tokens > 0 {
        let plural = if s.drafted_tokens == 1 { "" } else { "s" };
        line.push_str(&format!(
            " · {} of {} drafted token{plural} accepted",
            s.accepted_drafts, s.drafted_tokens
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

/// The model's state for the status line and the banner.
#[derive(Serialize)]
pub struct ModelView {
    /// `none`, `loading`, `ready` or `failed`.
    pub state: &'static str,
    pub label: String,
    pub detail: String,
    /// Whether to offer thinking mode ([`ModelState::supports_thinking`]).
    pub thinking: bool,
    /// The load failed on a GPU (or Candle's CPU device): offer "Use the CPU" in one click.
    pub use_cpu: bool,
}

impl ModelView {
    pub fn new(state: ModelState) -> Self {
        let detail = state.describe();
        let thinking = state.supports_thinking();
        let use_cpu = matches!(&state, ModelState::Failed { placement, .. }
            if *placement != engine::Placement::default());
        let (state, label) = match state {
            ModelState::NoModel { .. } => ("none", "No model".into()),
            ModelState::Loading { path, .. } => ("loading", file_name(&path)),
            ModelState::Ready {
                info,
                threads,
                placement,
            } => {
                let name = chat::worker::model_name(&info);
                let on = match (placement.device(), placement.backend()) {
                    (engine::DeviceSpec::Cpu, engine::BackendKind::Native) => {
                        format!("CPU · {threads} threads")
                    }
                    (engine::DeviceSpec::Cpu, engine::BackendKind::Candle) => {
                        "CPU (Candle)".to_string()
                    }
                    (device, _) => device.to_string(),
                };
                ("ready", format!("{name} · {on}"))
            }
            ModelState::Failed { path, .. } => {
                ("failed", format!("{} failed to load", file_name(&path)))
            }
            ModelState::Connecting { url, .. } => ("loading", format!("connecting to {url}")),
            ModelState::Remote { url, model } => ("ready", format!("{model} · {url}")),
            ModelState::RemoteFailed { url, .. } => ("failed", format!("{url} cannot be used")),
        };
        ModelView {
            state,
            label,
            detail,
            thinking,
            use_cpu,
        }
    }
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
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
        let drafted = MessageStats {
            drafted_tokens: 20,
            accepted_drafts: 12,
            ..s
        };
        assert_eq!(
            stats_line(&drafted),
            "42 tokens · 35.1 tok/s · first token 120 ms · 12 of 20 drafted tokens accepted"
        );
        // Drafts proposed and all rejected are still shown: drafting ran and did not pay.
        let missed = MessageStats {
            accepted_drafts: 0,
            ..drafted
        };
        assert!(
            stats_line(&missed).ends_with(" · 0 of 20 drafted tokens accepted"),
            "{}",
            stats_line(&missed)
        );
        let one = MessageStats {
            drafted_tokens: 1,
            accepted_drafts: 1,
            ..missed
        };
        assert!(
            stats_line(&one).ends_with(" · 1 of 1 drafted token accepted"),
            "{}",
            stats_line(&one)
        );
    }
}

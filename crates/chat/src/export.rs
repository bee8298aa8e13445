//! A chat as a Markdown document (`/export`, the shell's "Export" action).

use chrono::TimeZone;
use serde::{Deserialize, Serialize};

use crate::store::{Chat, Message, MessageKind, MessageStatus, Role};
use crate::tools::ToolRecord;

/// An exported chat: the document and a file name to suggest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Export {
    pub file_name: String,
    pub markdown: String,
}

fn local_time(ms: i64) -> String {
    match chrono::Local.timestamp_millis_opt(ms) {
        chrono::LocalResult::Single(t) => t.format("%Y-%m-%d %H:%M").to_string(),
        _ => ms.to_string(),
    }
}

/// A file name from the title: letters, digits, `-` and `_` only, never empty.
pub fn file_name(chat: &Chat) -> String {
    let mut name = String::new();
    for c in chat.title.chars() {
        match c {
            c if c.is_alphanumeric() => name.push(c),
            '-' | '_' => name.push(c),
            _ if !name.ends_with('-') && !name.is_empty() => name.push('-'),
            _ => {}
        }
    }
    let name: String = name.trim_end_matches('-').chars().take(60).collect();
    match name.is_empty() {
        true => format!("chat-{}.md", chat.id),
        false => format!("{name}.md"),
    }
}

/// A fence longer than any backtick run in `text`, so quoted text cannot close it.
pub fn fence_for(text: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    "`".repeat((longest + 1).max(3))
}

fn heading(m: &Message) -> &'static str {
    match (m.kind, m.role) {
        (MessageKind::Command, Role::User) => "You (command)",
        (MessageKind::Command, _) => "App",
        (_, Role::User) => "You",
        (_, Role::Assistant) => "Assistant",
        (_, Role::System) => "System",
    }
}

/// The chat as Markdown: title, then each message under a heading; thinking folded in a
/// `<details>` block, interrupted and failed answers marked, context resets as rules.
pub fn chat_markdown(chat: &Chat, messages: &[Message]) -> String {
    let mut out = format!(
        "# {}\n\n*Exported from NotSo-SmolLM3 Bot on {}; started {}; {} messages.*\n",
        chat.title,
        local_time(crate::store::now_ms()),
        local_time(chat.created_at),
        messages.len()
    );
    for m in messages {
        if m.kind == MessageKind::Reset {
            out.push_str("\n---\n\n*Context reset: the model did not see the messages above.*\n");
            continue;
        }
        out.push_str(&format!("\n## {}\n\n", heading(m)));
        if !m.thinking.trim().is_empty() {
            let took = m
                .thinking_ms
                .map(|ms| format!(" ({:.1} s)", ms as f64 / 1e3))
                .unwrap_or_default();
            out.push_str(&format!(
                "<details><summary>Thinking{took}</summary>\n\n{}\n\n</details>\n\n",
                m.thinking.trim()
            ));
        }
        for call in &m.tools {
            out.push_str(&tool_markdown(call));
        }
        out.push_str(m.content.trim_end());
        out.push('\n');
        match m.status {
            MessageStatus::Interrupted => out.push_str("\n*(stopped before the end)*\n"),
            MessageStatus::Failed => out.push_str(&format!(
                "\n*(failed: {})*\n",
                m.error.as_deref().unwrap_or("unknown error")
            )),
            MessageStatus::Streaming => out.push_str("\n*(still being written)*\n"),
            MessageStatus::Complete => {}
        }
    }
    out
}

/// A tool call as a folded block: name, status and duration; arguments and result fenced.
fn tool_markdown(call: &ToolRecord) -> String {
    let arguments = match &call.arguments {
        serde_json::Value::String(raw) => raw.clone(), // a malformed call, as written
        value => value.to_string(),
    };
    let name = match call.name.is_empty() {
        true => "(malformed call)",
        false => call.name.as_str(),
    };
    let (af, rf) = (fence_for(&arguments), fence_for(&call.result));
    format!(
        "<details><summary>Tool {name}: {} ({} ms)</summary>\n\nArguments:\n\n{af}json\n{arguments}\n{af}\n\nResult:\n\n{rf}\n{}\n{rf}\n\n</details>\n\n",
        call.status.as_str(),
        call.duration_ms,
        call.result
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_outgrow_the_text_and_file_names_are_safe() {
        assert_eq!(fence_for("no ticks"), "```");
        assert_eq!(fence_for("a ```` b"), "`````");
        let mut chat = Chat {
            id: 4,
            title: "What is 2+2? / a test".into(),
            title_is_custom: false,
            created_at: 0,
            updated_at: 0,
            thinking: true,
            thinking_budget: None,
            settings: serde_json::Value::Null,
            last_event_id: 0,
        };
        assert_eq!(file_name(&chat), "What-is-2-2-a-test.md");
        chat.title = "???".into();
        assert_eq!(file_name(&chat), "chat-4.md");
    }
}

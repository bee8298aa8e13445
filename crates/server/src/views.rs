//! HTML fragments: the minijinja templates of `ui/templates`, compiled into the binary.
//!
//! Templates see plain view structs (see `pages.rs`), never the chat core's types, so the page can change
//! without touching the core. Auto-escaping is on for every `.html` template: model and user text is data.

use minijinja::Environment;
use serde::Serialize;

macro_rules! templates {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../../ui/templates/", $name)))),*]
    };
}

const TEMPLATES: &[(&str, &str)] = templates!(
    "base.html",
    "main.html",
    "chat_list.html",
    "model_status.html",
    "model_banner.html",
    "empty.html",
    "chat.html",
    "thinking_pill.html",
    "rename.html",
    "title.html",
    "composer.html",
    "palette.html",
    "message.html",
    "tool_card.html",
    "follow_ups.html",
    "edit.html",
    "mcp_server.html",
    "mcp_entry.html",
    "mcp_add.html",
    "mcp_list.html",
    "shown.html",
    "settings.html",
    "quick.html",
    "quick_answer.html",
    "toast.html",
    "onboarding.html",
    "model_manager.html",
);

pub struct Views {
    env: Environment<'static>,
}

impl Views {
    pub fn new() -> Self {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("template {name} does not compile: {e:#}"));
        }
        Self { env }
    }

    /// Renders `name` with `ctx`; a template error becomes a visible error fragment, never a crash.
    pub fn render<S: Serialize>(&self, name: &str, ctx: S) -> String {
        match self
            .env
            .get_template(name)
            .and_then(|t| t.render(minijinja::Value::from(minijinja::value::Serde(&ctx))))
        {
            Ok(html) => html,
            Err(e) => {
                tracing::error!(template = name, error = %format!("{e:#}"), "template failed");
                let text =
                    minijinja::HtmlEscape(&format!("Display error in {name}: {e}")).to_string();
                format!("<div class=\"toast error\" role=\"alert\">{text}</div>")
            }
        }
    }
}

impl Default for Views {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_template_compiles() {
        let views = Views::new();
        for (name, _) in TEMPLATES {
            assert!(views.env.get_template(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn settings_and_onboarding_render_their_data() {
        let views = Views::new();
        let html = views.render(
            "settings.html",
            json!({
                "s": {"model_path": "/m/a.gguf", "context_len": 8192, "device": "cpu", "threads": 2,
                      "thinking": true, "shortcut": "CommandOrControl+Shift+Space"},
                "defaults": {"temperature": 0.6},
                "devices": [{"id": "cpu", "name": "CPU, 2 threads", "available": true, "facts": "2.0 GB available"},
                            {"id": "cuda", "available": false, "reason": "not in this build"}],
                "manager": {"models": [{"name": "a.gguf", "path": "/m/a\"b.gguf", "size": "1 MB", "active": false}]},
                "max_threads": 4,
            }),
        );
        assert!(html.contains("Cannot be used: not in this build"), "{html}");
        assert!(
            html.contains(r#"value="cuda"  disabled"#) || html.contains("disabled>"),
            "{html}"
        );
        // A path with a quote stays valid JSON inside hx-vals.
        assert!(
            html.contains(r#"hx-vals='{"path": "/m/a\"b.gguf"}'"#),
            "{html}"
        );
        let html = views.render(
            "onboarding.html",
            json!({"downloads": {"catalog": [{"id": "x", "name": "X", "size": "1 GB", "recommended": true}],
                                 "download": {"id": "x", "name": "X", "running": true, "percent": "30",
                                              "state": "downloading", "done": "300 MB", "total": "1 GB"}}}),
        );
        assert!(html.contains("300 MB of 1 GB"), "{html}");
        assert!(html.contains("/models/pause"), "{html}");
    }

    #[test]
    fn the_thinking_pill_shows_only_for_a_model_with_thinking_mode() {
        let views = Views::new();
        let pill = |model_thinking: bool, chat_thinking: bool| {
            views.render(
                "thinking_pill.html",
                json!({"model": {"thinking": model_thinking}, "chat": {"id": 3, "thinking": chat_thinking}}),
            )
        };
        assert!(pill(true, true).contains("thinking on"));
        assert!(pill(true, false).contains("thinking off"));
        let hidden = pill(false, true);
        assert!(!hidden.contains("thinking o"), "{hidden}");
        // The slot stays, to come back when a model with thinking mode loads.
        assert!(hidden.contains(r#"hx-get="/chats/3/thinking""#), "{hidden}");
    }

    #[test]
    fn tool_calls_show_as_cards_escaped_and_streaming_answers_take_tool_frames() {
        let views = Views::new();
        let record = chat::tools::ToolRecord {
            index: 0,
            name: "calculator".into(),
            arguments: json!({"expression": "<b>1</b>+1"}),
            status: chat::tools::ToolStatus::Done,
            result: "2".into(),
            duration_ms: 3,
        };
        let tool = crate::pages::ToolView::new(&record);
        let done = views.render(
            "message.html",
            json!({"m": {"id": 7, "chat_id": 1, "role": "assistant", "status": "complete", "content": "It is 2.", "tools": [tool]}}),
        );
        assert!(
            done.contains(r#"<details class="tool-card status-done" data-tool-index="0">"#),
            "{done}"
        );
        assert!(
            done.contains(r#"<span class="tool-name">calculator</span>"#),
            "{done}"
        );
        assert!(
            done.contains("&lt;b&gt;1&lt;&#x2f;b&gt;+1") || done.contains("&lt;b&gt;1&lt;/b&gt;+1"),
            "{done}"
        );
        assert!(
            done.contains(r#"<pre class="tool-result">2</pre>"#),
            "{done}"
        );
        assert!(
            done.contains(r#"<span class="tool-time">3 ms</span>"#),
            "{done}"
        );
        // Without calls, no card and no empty container.
        let plain = views.render(
            "message.html",
            json!({"m": {"id": 8, "chat_id": 1, "role": "assistant", "status": "complete", "content": "Hi", "tools": []}}),
        );
        assert!(!plain.contains("tool"), "{plain}");
        // A streaming answer has the container the `tool` frames go to, seeded with its calls so far.
        let streaming = views.render(
            "message.html",
            json!({"m": {"id": 9, "chat_id": 1, "role": "assistant", "streaming": true, "tools": [crate::pages::ToolView::new(&record)]}}),
        );
        assert!(streaming.contains(r#"<div class="tools" sse-swap="tool" sse-render="tool"><details class="tool-card status-done""#), "{streaming}");
    }

    #[test]
    fn a_call_waiting_for_approval_offers_allow_once_always_and_deny_while_streaming() {
        let views = Views::new();
        let record = chat::tools::ToolRecord {
            index: 1,
            name: "files__write".into(),
            arguments: json!({"path": "a"}),
            status: chat::tools::ToolStatus::Pending,
            result: String::new(),
            duration_ms: 0,
        };
        let tool = crate::pages::ToolView::new(&record);
        let html = |streaming: bool| {
            views.render(
                "message.html",
                json!({"m": {"id": 9, "chat_id": 2, "role": "assistant", "streaming": streaming, "status": "interrupted", "content": "", "tools": [&tool]}}),
            )
        };
        let live = html(true);
        for decision in ["once", "always", "deny"] {
            let button = format!(
                r#"hx-post="/chats/2/messages/9/tools/1/decide" hx-vals='{{"decision": "{decision}"}}'"#
            );
            assert!(live.contains(&button), "{live}");
        }
        assert!(live.contains(">Always for this tool</button>"), "{live}");
        assert!(
            !html(false).contains("<button class=\"btn primary\" hx-post"),
            "a stored card asks nothing"
        );
    }

    #[test]
    fn an_mcp_server_card_starts_it_when_shown_and_says_how_it_stands() {
        use chat::tools::mcp::{McpServerStatus, McpState, McpTool};
        let views = Views::new();
        let card = |state| {
            views.render(
                "mcp_server.html",
                json!({"server": McpServerStatus {name: "files".into(), state}}),
            )
        };
        let stopped = card(McpState::Stopped);
        assert!(
            stopped.contains(r#"hx-post="/settings/mcp/files/start" hx-trigger="load""#),
            "{stopped}"
        );
        let running = card(McpState::Running {
            tools: vec![McpTool {
                server: "files".into(),
                name: "read_file".into(),
                description: "Read <a> file.".into(),
                input_schema: json!({}),
            }],
        });
        assert!(!running.contains("hx-trigger=\"load\""), "{running}");
        assert!(
            running.contains("<li><code>files__read_file</code> Read &lt;a&gt; file.</li>"),
            "{running}"
        );
        assert!(running.contains(">Restart</button>"), "{running}");
        let failed = card(McpState::Failed {
            why: "cannot run \"npx\": not found".into(),
            retry_in_s: 7,
        });
        assert!(
            failed.contains("Failed: cannot run &quot;npx&quot;: not found")
                && failed.contains("started again on its next use after 7 s.")
                && failed.contains(">Retry</button>"),
            "{failed}"
        );
        let due = card(McpState::Failed {
            why: "it stopped".into(),
            retry_in_s: 0,
        });
        assert!(due.contains("started again on its next use."), "{due}");
        assert!(!card(McpState::Disabled).contains("<button"));
    }

    #[test]
    fn an_mcp_entry_has_its_fields_error_slots_and_trust_boxes() {
        use chat::tools::mcp::{McpServerStatus, McpState, McpTool};
        let views = Views::new();
        let tool = |name: &str| McpTool {
            server: "files".into(),
            name: name.into(),
            description: format!("{name} a file"),
            input_schema: json!({}),
        };
        let status = McpServerStatus {
            name: "files".into(),
            state: McpState::Running {
                tools: vec![tool("read"), tool("write")],
            },
        };
        let entry = json!({"e": {
            "index": 2, "name": "files", "command": "npx", "args": "-y\nfs", "env": "A=1\n",
            "enabled": true,
            "card": {"server": status, "index": 2, "trust": [
                {"name": "read", "description": "read a file", "trusted": true},
                {"name": "write", "description": "write a file", "trusted": false},
            ]},
        }});
        let html = views.render("mcp_entry.html", entry);
        for field in [
            r#"name="mcp_2_name" value="files""#,
            r#"name="mcp_2_command" value="npx""#,
            ">-y\nfs</textarea>",
            ">A=1\n</textarea>",
            r#"name="mcp_2_enabled" value="on" checked"#,
            r#"id="mcp-2-name-error""#,
            r#"id="mcp-2-env-error""#,
            r#"data-remove-closest=".mcp-entry""#,
            r#"name="mcp_2_trust_read" value="on" checked>"#,
            r#"name="mcp_2_trust_write" value="on" >"#,
            r#"hx-post="/settings/mcp/files/start?index=2""#,
        ] {
            assert!(html.contains(field), "{field}\n{html}");
        }
        let added = views.render(
            "mcp_entry.html",
            json!({"e": {"index": 5, "name": "", "command": "", "args": "", "env": "",
                "enabled": true, "card": null}}),
        );
        assert!(added.contains("<legend>New server</legend>"), "{added}");
        assert!(!added.contains("mcp-server"), "no card before it is saved");
        let button = views.render("mcp_add.html", json!({"next": 6, "oob": true}));
        assert!(
            button.contains(r#"hx-get="/settings/mcp/new?index=6""#)
                && button.contains("hx-swap-oob"),
            "{button}"
        );
    }

    #[test]
    fn user_text_is_escaped_in_messages() {
        let views = Views::new();
        let html = views.render(
            "message.html",
            json!({"m": {"id": 7, "role": "user", "content": "<img src=x onerror=alert(1)> hx-get=\"/x\""}}),
        );
        assert!(
            html.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{html}"
        );
        assert!(!html.contains("<img src=x"), "{html}");
    }
}

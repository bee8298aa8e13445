//! The tool loop end to end through the real chat app: the model's output is scripted at the
//! engine's token boundary (no tool-capable model fits the test machine); everything else (the
//! template, the parser, the worker's steps, the tools, the stream, the store) is the real path.

use std::time::Duration;

use crate::events::AppEvent;
use crate::protocol::EventKind;
use crate::scripted_app::{self, pieces, wait, ScriptedApp};
use crate::store::MessageStatus;
use crate::tools::{ToolRecord, ToolSettings, ToolStatus};
use crate::{SendOutcome, Settings};

type Harness = ScriptedApp;

fn harness(replies: Vec<Vec<String>>, tools: ToolSettings) -> Harness {
    let settings = Settings {
        tools,
        // Their generation would take the script's next reply.
        follow_ups: crate::FollowUpSettings {
            enabled: false,
            ..Default::default()
        },
        ..Settings::default()
    };
    scripted_app::open(settings, replies)
}

impl Harness {
    /// Sends `text` in a new chat; returns the stored answer's text and the tool events.
    fn ask(&self, text: &str) -> (String, Vec<ToolRecord>) {
        let chat = self.app.create_chat().unwrap();
        let SendOutcome::Generating {
            assistant_message_id: id,
            ..
        } = self.app.send(chat.id, text).unwrap()
        else {
            panic!("not an answer")
        };
        let answer = wait(|| {
            let view = self.app.chat(chat.id).unwrap();
            let m = view.messages.into_iter().find(|m| m.id == id)?;
            (!view.busy && m.status != MessageStatus::Streaming).then_some(m)
        });
        assert_eq!(answer.status, MessageStatus::Complete, "{answer:?}");
        let records = self
            .events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                AppEvent::Stream(s) if s.message_id == id => match &s.kind {
                    EventKind::Tool { call } => Some((**call).clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect::<Vec<ToolRecord>>();
        // Stored with the answer: the last record of each call, in order.
        let mut last: Vec<ToolRecord> = Vec::new();
        for r in &records {
            crate::protocol::upsert_tool(&mut last, r);
        }
        assert_eq!(answer.tools, last);
        (answer.content, records)
    }

    fn prompts(&self) -> Vec<String> {
        self.prompts.lock().unwrap().clone()
    }
}

#[test]
fn a_calculator_call_runs_and_its_result_reaches_the_model_through_the_template() {
    let call = "<tool_call>\n{\"name\": \"calculator\", \"arguments\": {\"expression\": \"17 * 23\"}}\n</tool_call>";
    let h = harness(
        vec![
            pieces(&format!("Let me compute that.\n{call}"), 3),
            pieces("17 × 23 = 391.", 2),
        ],
        ToolSettings::default(),
    );
    let (content, records) = h.ask("What is 17 times 23?");

    // The user sees the text around the call, never the call itself.
    assert_eq!(content, "Let me compute that.\n17 × 23 = 391.");
    let statuses: Vec<_> = records.iter().map(|r| (r.index, r.status)).collect();
    assert_eq!(statuses, [(0, ToolStatus::Running), (0, ToolStatus::Done)]);
    let done = &records[1];
    assert_eq!(done.name, "calculator");
    assert_eq!(done.arguments, serde_json::json!({"expression": "17 * 23"}));
    assert_eq!(done.result, "391");

    let prompts = h.prompts();
    assert_eq!(prompts.len(), 2);
    // The tools are offered through the template's `xml_tools`.
    // (Keys print sorted: minijinja iterates maps in key order, see engine::template.)
    assert!(
        prompts[0].contains("<tools>\n{'description': 'Get the current date"),
        "{}",
        prompts[0]
    );
    assert!(prompts[0].contains("'name': 'current_time'"));
    assert!(prompts[0].contains("'name': 'calculator'"));
    assert!(prompts[0].contains("'name': 'search_chats'"));
    // The export shows the call with its arguments and result.
    let chat_id = h.app.list_chats().unwrap()[0].id;
    let markdown = h.app.export(chat_id).unwrap().markdown;
    assert!(
        markdown.contains("<details><summary>Tool calculator: done (")
            && markdown.contains("```json\n{\"expression\":\"17 * 23\"}\n```")
            && markdown.contains("Result:\n\n```\n391\n```"),
        "{markdown}"
    );
    // The second step sees its own call, then the result as the template renders a tool turn.
    let expected = format!(
        "<|im_start|>assistant\nLet me compute that.\n{call}<|im_end|>\n<|im_start|>user\n{{\"name\":\"calculator\",\"result\":\"391\"}}<|im_end|>\n<|im_start|>assistant\n"
    );
    assert!(prompts[1].ends_with(&expected), "{}", prompts[1]);
    assert!(
        prompts[1].starts_with(&prompts[0][..prompts[0].len() - "<|im_start|>assistant\n".len()])
    );
}

#[test]
fn bad_calls_go_back_to_the_model_and_the_step_limit_holds() {
    let h = harness(
        vec![
            vec![
                "<tool_call>{\"name\": \"calculator\", \"arguments\": {\"expression\": \"2+\"}}"
                    .into(),
                "</tool_call>\n<tool_call>{oops}</tool_call>".into(),
                "<tool_call>{\"name\": \"weather\", \"arguments\": {}}</tool_call>".into(),
            ],
            vec![
                "<tool_call>{\"name\": \"current_time\", \"arguments\": {}}</tool_call>".into(),
                "Sorry.".into(),
            ],
        ],
        ToolSettings {
            max_steps: 1,
            ..ToolSettings::default()
        },
    );
    let (content, records) = h.ask("Weather?");
    assert_eq!(content, "\nSorry.");
    let last: Vec<_> = records
        .iter()
        .filter(|r| r.status != ToolStatus::Running)
        .map(|r| (r.index, r.name.as_str(), r.status))
        .collect();
    assert_eq!(
        last,
        [
            (0, "calculator", ToolStatus::Failed),
            (1, "", ToolStatus::Failed),
            (2, "weather", ToolStatus::Failed),
            (3, "current_time", ToolStatus::Skipped),
        ]
    );
    let done: Vec<&ToolRecord> = records
        .iter()
        .filter(|r| r.status != ToolStatus::Running)
        .collect();
    assert!(
        done[0].result.starts_with("cannot evaluate"),
        "{}",
        done[0].result
    );
    assert!(done[1]
        .result
        .starts_with("malformed tool call: the call is not valid JSON"));
    assert_eq!(done[2].result, "there is no tool named \"weather\"");
    assert_eq!(
        done[3].result,
        "not run: the answer reached its limit of tool steps"
    );

    // Every failure went back to the model as a tool result; the limit stopped a third step.
    let prompts = h.prompts();
    assert_eq!(prompts.len(), 2);
    assert!(
        prompts[1].contains("{\"error\":\"cannot evaluate"),
        "{}",
        prompts[1]
    );
    assert!(prompts[1].contains("{\"error\":\"malformed tool call: the call is not valid JSON"));
    assert!(prompts[1]
        .contains("{\"error\":\"there is no tool named \\\"weather\\\"\",\"name\":\"weather\"}"));
}

#[test]
fn search_chats_finds_an_earlier_chat_and_tools_can_be_turned_off() {
    let h = harness(
        vec![
            vec!["Noted: the marmalade recipe.".into()],
            vec!["<tool_call>{\"name\": \"search_chats\", \"arguments\": {\"query\": \"marmalade\"}}</tool_call>".into()],
            vec!["Found it.".into()],
            vec!["<tool_call>{\"name\": \"current_time\"}</tool_call>".into()],
        ],
        ToolSettings::default(),
    );
    h.ask("Remember my marmalade recipe: oranges and sugar.");
    let (content, records) = h.ask("What did I say about jam?");
    assert_eq!(content, "Found it.");
    let result = &records.last().unwrap().result;
    assert!(
        result.starts_with("Messages matching \"marmalade\":"),
        "{result}"
    );
    assert!(
        result.contains("user message: Remember my marmalade recipe"),
        "{result}"
    );

    let mut settings = h.app.settings();
    settings.tools.enabled = false;
    h.app.update_settings(settings).unwrap();
    // Without tools the model is offered none, and what it writes is its answer as it is.
    let (content, records) = h.ask("What time is it?");
    assert_eq!(
        content,
        "<tool_call>{\"name\": \"current_time\"}</tool_call>"
    );
    assert!(records.is_empty());
    let prompts = h.prompts();
    assert!(prompts[2].contains("### Tools"));
    assert!(!prompts[3].contains("### Tools"), "{}", prompts[3]);
}

#[test]
fn offered_tools_are_handed_back_unrun_and_a_malformed_call_stays_text() {
    let h = harness(
        vec![vec![
            "Checking.<tool_call>{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Paris\\\"}\"}</tool_call>".into(),
            "<tool_call>{bad}</tool_call>".into(),
        ]],
        ToolSettings::default(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let spec = serde_json::json!({"name": "get_weather", "parameters": {"type": "object"}});
    h.app
        .submit(crate::GenerationJob {
            prompt: crate::Prompt::Chat {
                messages: vec![engine::ChatMessage::new("user", "Weather in Paris?")],
                thinking: false,
                drop_oldest: false,
            },
            params: Settings::default().answer_params().unwrap(),
            source: "api test".into(),
            cancelled: Default::default(),
            sink: Box::new(move |e| {
                let _ = tx.send(e);
            }),
            tools: Some(crate::tools::Tools::Offer(vec![spec])),
            follow_ups: None,
        })
        .unwrap();
    let (mut text, mut calls) = (String::new(), Vec::new());
    loop {
        match rx.recv_timeout(Duration::from_secs(20)).unwrap() {
            crate::JobEvent::Token(t) => text.push_str(&t),
            crate::JobEvent::Tool(r) => calls.push(r),
            crate::JobEvent::Finished(_) => break,
            crate::JobEvent::Queued(_) | crate::JobEvent::Thinking(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(text, "Checking.<tool_call>{bad}</tool_call>");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].status, ToolStatus::Requested);
    assert_eq!(calls[0].name, "get_weather");
    assert_eq!(calls[0].arguments, serde_json::json!({"city": "Paris"}));
    // Offered through the template, and nothing ran: one step only.
    let prompts = h.prompts();
    assert_eq!(prompts.len(), 1);
    assert!(
        prompts[0].contains("<tools>\n{'name': 'get_weather'"),
        "{}",
        prompts[0]
    );
}

/// The test MCP server (see `tests/mcp.rs`), configured as `demo`.
fn demo_server() -> crate::tools::mcp::McpServerConfig {
    crate::tools::mcp::McpServerConfig {
        name: "demo".into(),
        command: "python3".into(),
        args: vec![concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp_demo_server.py").into()],
        enabled: true,
        ..Default::default()
    }
}

#[test]
fn an_mcp_tool_is_offered_beside_the_builtins_and_its_call_runs_in_the_loop() {
    let call =
        "<tool_call>{\"name\": \"demo__add\", \"arguments\": {\"a\": 19, \"b\": 23}}</tool_call>";
    let h = harness(
        vec![vec![call.into()], vec!["It is 42.".into()]],
        ToolSettings {
            // Trusted: it runs without asking (asking: see the next test).
            mcp_servers: vec![crate::tools::mcp::McpServerConfig {
                trusted: vec!["add".into()],
                ..demo_server()
            }],
            ..ToolSettings::default()
        },
    );
    let (content, records) = h.ask("What is 19 + 23?");
    assert_eq!(content, "It is 42.");
    let done = records.last().unwrap();
    assert_eq!(
        (done.name.as_str(), done.status, done.result.as_str()),
        ("demo__add", ToolStatus::Done, "42")
    );
    let prompts = h.prompts();
    assert!(prompts[0].contains("'name': 'demo__add'"), "{}", prompts[0]);
    assert!(prompts[0].contains("'name': 'calculator'"));
    assert!(prompts[1].contains("{\"name\":\"demo__add\",\"result\":\"42\"}"));
    let servers = h.app.mcp_servers();
    assert_eq!(servers.len(), 1);
    assert!(matches!(
        servers[0].state,
        crate::tools::mcp::McpState::Running { .. }
    ));
}

/// Sends `text` in a new chat and waits until call `index` of its answer waits for approval.
fn ask_until_pending(h: &Harness, text: &str, index: usize) -> (crate::ChatId, crate::MessageId) {
    let chat = h.app.create_chat().unwrap();
    let SendOutcome::Generating {
        assistant_message_id: id,
        ..
    } = h.app.send(chat.id, text).unwrap()
    else {
        panic!("not an answer")
    };
    wait(|| h.app.inner.approvals.waiting(id, index));
    (chat.id, id)
}

fn stored(h: &Harness, chat: crate::ChatId, id: crate::MessageId) -> crate::Message {
    wait(|| {
        let view = h.app.chat(chat).unwrap();
        let m = view.messages.into_iter().find(|m| m.id == id)?;
        (!view.busy && m.status != MessageStatus::Streaming).then_some(m)
    })
}

#[test]
fn an_mcp_call_waits_for_approval_deny_always_and_stop() {
    use crate::tools::approval::Decision;
    let call =
        "<tool_call>{\"name\": \"demo__add\", \"arguments\": {\"a\": 1, \"b\": 2}}</tool_call>";
    let h = harness(
        vec![
            vec![call.into()],
            vec!["You declined.".into()],
            vec![call.into()],
            vec!["It is 3.".into()],
            vec![call.into()],
            vec!["Again 3.".into()],
            vec!["<tool_call>{\"name\": \"calculator\", \"arguments\": {\"expression\": \"1+2\"}}</tool_call>".into()],
            vec!["3.".into()],
        ],
        ToolSettings {
            mcp_servers: vec![demo_server()],
            ..ToolSettings::default()
        },
    );
    // Deny: the model is told the user declined; the tool did not run.
    let (chat, id) = ask_until_pending(&h, "1+2?", 0);
    let err = h.app.decide_tool(chat, id, 5, Decision::Once).unwrap_err();
    assert!(err.to_string().contains("no longer waits"), "{err}");
    h.app.decide_tool(chat, id, 0, Decision::Deny).unwrap();
    let m = stored(&h, chat, id);
    assert_eq!(m.content, "You declined.");
    assert_eq!(
        (m.tools[0].status, m.tools[0].result.as_str()),
        (ToolStatus::Declined, crate::tools::approval::DECLINED)
    );
    assert!(h.prompts()[1].contains("the user declined to run this tool"));

    // Always: it runs, the tool is trusted in the settings, and the next call does not ask.
    let (chat, id) = ask_until_pending(&h, "1+2 again?", 0);
    h.app.decide_tool(chat, id, 0, Decision::Always).unwrap();
    let m = stored(&h, chat, id);
    assert_eq!(
        (m.tools[0].status, m.tools[0].result.as_str()),
        (ToolStatus::Done, "3")
    );
    assert_eq!(h.app.settings().tools.mcp_servers[0].trusted, ["add"]);
    let (content, records) = h.ask("and again?");
    assert_eq!(content, "Again 3.");
    assert!(records.iter().all(|r| r.status != ToolStatus::Pending));

    // Built-ins are read-only: they never ask.
    let (_, records) = h.ask("1+2 with the calculator?");
    assert!(records.iter().all(|r| r.status != ToolStatus::Pending));
}

#[test]
fn stop_ends_the_wait_for_approval() {
    let call =
        "<tool_call>{\"name\": \"demo__add\", \"arguments\": {\"a\": 1, \"b\": 2}}</tool_call>";
    let h = harness(
        vec![vec![call.into()]],
        ToolSettings {
            mcp_servers: vec![demo_server()],
            ..ToolSettings::default()
        },
    );
    let (chat, id) = ask_until_pending(&h, "1+2?", 0);
    assert!(h.app.stop(chat));
    let m = stored(&h, chat, id);
    assert_eq!(m.status, MessageStatus::Interrupted);
    assert_eq!(
        (m.tools[0].status, m.tools[0].result.as_str()),
        (ToolStatus::Skipped, "not run: the answer was stopped")
    );
    assert_eq!(h.prompts().len(), 1, "no step after the stop");
}

#[test]
fn stop_ends_a_running_mcp_call_long_before_its_timeout() {
    let call =
        "<tool_call>{\"name\": \"demo__sleep\", \"arguments\": {\"seconds\": 120}}</tool_call>";
    let h = harness(
        vec![vec![call.into()]],
        ToolSettings {
            timeout_secs: 60,
            mcp_servers: vec![crate::tools::mcp::McpServerConfig {
                trusted: vec!["sleep".into()],
                ..demo_server()
            }],
            ..ToolSettings::default()
        },
    );
    let chat = h.app.create_chat().unwrap();
    let SendOutcome::Generating {
        assistant_message_id: id,
        ..
    } = h.app.send(chat.id, "Sleep.").unwrap()
    else {
        panic!("not an answer")
    };
    // The call runs (the server sleeps in it) ...
    wait(|| {
        h.events.lock().unwrap().iter().find_map(|e| match e {
            AppEvent::Stream(s) if s.message_id == id => match &s.kind {
                EventKind::Tool { call } if call.status == ToolStatus::Running => Some(()),
                _ => None,
            },
            _ => None,
        })
    });
    // ... and Stop ends it: the answer is stored as stopped well before the 60 s timeout
    // (`wait` gives up after 20 s).
    assert!(h.app.stop(chat.id));
    let m = stored(&h, chat.id, id);
    assert_eq!(m.status, MessageStatus::Interrupted);
    assert_eq!(
        (m.tools[0].status, m.tools[0].result.as_str()),
        (ToolStatus::Failed, crate::tools::STOPPED)
    );
    assert_eq!(h.prompts().len(), 1, "no step after the stop");
}

/// SmolLM2's template has no `xml_tools`: the model is offered no tools, no MCP server starts
/// for the answer, and text that looks like a call is answer text.
#[test]
fn a_template_without_tools_is_offered_none_and_call_text_stays_text() {
    let call =
        "<tool_call>{\"name\": \"demo__add\", \"arguments\": {\"a\": 1, \"b\": 2}}</tool_call>";
    let settings = Settings {
        tools: ToolSettings {
            mcp_servers: vec![crate::tools::mcp::McpServerConfig {
                trusted: vec!["add".into()],
                ..demo_server()
            }],
            ..ToolSettings::default()
        },
        follow_ups: crate::FollowUpSettings {
            enabled: false,
            ..Default::default()
        },
        ..Settings::default()
    };
    let h = scripted_app::open_with(
        settings,
        vec![pieces(&format!("Like this: {call}"), 3)],
        scripted_app::smollm2_template(),
    );
    let (content, records) = h.ask("How do you call a tool?");
    assert_eq!(content, format!("Like this: {call}"));
    assert!(records.is_empty(), "{records:?}");
    let prompts = h.prompts();
    assert_eq!(prompts.len(), 1);
    assert!(!prompts[0].contains("calculator"), "{}", prompts[0]);
    assert_eq!(
        h.app.mcp_servers()[0].state,
        crate::tools::mcp::McpState::Stopped
    );
}

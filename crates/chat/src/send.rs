//! Sending: the composer's text becomes a slash command (see [`crate::replies`]) or a stored
//! message with a queued answer; `stop` and `regenerate`.

use std::sync::Arc;

use crate::app::ChatApp;
use crate::commands::{self, Parsed};
use crate::core::Turn;
use crate::error::{ChatError, Result};
use crate::followups::{self, FollowUps};
use crate::protocol::{DeltaKind, End, StreamInput};
use crate::sampling::Sampling;
use crate::store::{ChatId, MessageId, MessageKind, MessageStatus, NewMessage, Role};
use crate::stream::Producer;
use crate::tools::approval::Decision;
use crate::tools::builtin::Builtins;
use crate::tools::host::AppTools;
use crate::tools::{mcp, Approval, ToolUse, Tools};
use crate::views::SendOutcome;
use crate::worker::{FollowUpRequest, GenerationJob, JobEvent, ModelState, Prompt};

/// Longest message accepted from the composer.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

impl ChatApp {
    /// Handles the composer's text: a slash command runs (its reply is stored), anything else
    /// is stored as the user's message and an answer is queued.
    pub fn send(&self, chat_id: ChatId, text: &str) -> Result<SendOutcome> {
        let text = checked_text(text)?;
        self.core().dismiss_follow_ups(chat_id);
        match commands::parse(text) {
            Parsed::Message(message) => self.send_message(chat_id, &message),
            Parsed::Command(command) => self.run_command(chat_id, text, command),
            Parsed::Unknown { name, closest } => {
                let reply = commands::unknown_text(&name, closest);
                self.reply_to_command(chat_id, text, "unknown", &reply, None)
            }
        }
    }

    pub(crate) fn ensure_model_usable(&self) -> Result<()> {
        match self.model_state() {
            ModelState::Ready { .. }
            | ModelState::Loading { .. }
            | ModelState::Remote { .. }
            | ModelState::Connecting { .. } => Ok(()),
            other => Err(ChatError::ModelNotReady(Box::new(other))),
        }
    }

    fn send_message(&self, chat_id: ChatId, text: &str) -> Result<SendOutcome> {
        let turn = self.core().begin_answer(chat_id, |store| {
            self.ensure_model_usable()?;
            let user = store.add_message(NewMessage {
                chat_id,
                role: Role::User,
                kind: MessageKind::Chat,
                content: text,
                status: MessageStatus::Complete,
            })?;
            let answer =
                store.add_message(NewMessage::answer_placeholder(chat_id, MessageKind::Chat))?;
            Ok((user, answer))
        })?;
        self.queue_answer(chat_id, turn)
    }

    /// Queues the generation of `turn`'s answer to the conversation before it, once the
    /// question is on disk; if either fails, the answer is stored as `failed` with the reason.
    pub(crate) fn queue_answer(&self, chat_id: ChatId, turn: Turn) -> Result<SendOutcome> {
        let answer_id = turn.answer.id;
        // The question, the placeholder and the settings snapshot were committed unsynced: one
        // flush of the WAL puts all three on disk, where each commit used to wait for its own.
        // It comes before the job, not beside its prefill: flushing while the engine ran made
        // the prefill about as much slower as the flush took (+4-9 ms on the shared machine).
        self.generation_job(chat_id, &turn)
            .and_then(|job| {
                self.core().sync()?;
                self.inner.worker.generate(job)
            })
            .inspect_err(|e| self.core().abandon_answer(answer_id, e))?;
        Ok(SendOutcome::Generating {
            user_message_id: turn.question.id,
            assistant_message_id: answer_id,
        })
    }

    fn generation_job(&self, chat_id: ChatId, turn: &Turn) -> Result<GenerationJob> {
        let answer_id = turn.answer.id;
        let settings = self.settings();
        let snapshot = serde_json::json!({
            "model": self.model_state_path(),
            "system_prompt": settings.system_prompt,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "top_k": settings.top_k,
            "min_p": settings.min_p,
            "repeat_penalty": settings.repeat_penalty,
            "seed": settings.seed,
            "max_tokens": settings.max_tokens,
            "context_len": settings.context_len,
        });
        // Unsynced as the question: queue_answer flushes them together.
        let (chat, context) = self.core().store(|store| {
            store.unsynced(|store| store.set_chat_settings(chat_id, &snapshot))?;
            Ok((
                store.chat(chat_id)?,
                store.context(chat_id, Some(answer_id))?,
            ))
        })?;
        let mut messages = Vec::new();
        if !settings.system_prompt.trim().is_empty() {
            messages.push(engine::ChatMessage::new(
                "system",
                settings.system_prompt.clone(),
            ));
        }
        messages.extend(
            context
                .into_iter()
                .map(|m| engine::ChatMessage::new(m.role.as_str(), m.content)),
        );
        let mut stream = Producer::new(self.inner.core.clone(), self.core().stream_sender()?);
        let core = self.inner.core.clone();
        let sink = Box::new(move |event: JobEvent| {
            let input = match event {
                // Its place while it waits behind other answers, published at once.
                JobEvent::Queued(ahead) => {
                    stream.queued(chat_id, answer_id, ahead);
                    return;
                }
                JobEvent::Thinking(text) => delta(chat_id, answer_id, true, text),
                JobEvent::Token(text) => delta(chat_id, answer_id, false, text),
                JobEvent::Tool(record) => StreamInput::Tool {
                    chat_id,
                    message_id: answer_id,
                    record,
                },
                JobEvent::Finished(stats) => finish(chat_id, answer_id, End::Finished(stats)),
                // The stored message keeps the text: this is the chat's edge.
                JobEvent::Refused(error) | JobEvent::Failed(error) => {
                    finish(chat_id, answer_id, End::Failed(error.to_string()))
                }
                // Not part of the answer's stream: kept beside the chat, in memory.
                JobEvent::FollowUps { questions, stats } => {
                    core.follow_ups_ready(FollowUps {
                        chat_id,
                        message_id: answer_id,
                        questions,
                        stats,
                    });
                    return;
                }
            };
            stream.send(input);
        });
        let follow_ups = match settings.follow_ups.enabled {
            false => None,
            true => Some(FollowUpRequest {
                params: Sampling {
                    max_tokens: settings.follow_ups.max_tokens,
                    // Suggestions need no thinking: in a thinking chat it closes at once.
                    max_thinking_tokens: Some(1),
                    temperature: Some(
                        settings
                            .temperature
                            .map_or(followups::MAX_TEMPERATURE, |t| {
                                t.min(followups::MAX_TEMPERATURE)
                            }),
                    ),
                    ..settings.sampling()
                }
                .validate()?,
                cancelled: self.core().ask_follow_ups(chat_id, answer_id),
            }),
        };
        Ok(GenerationJob {
            prompt: Prompt::Chat {
                messages,
                thinking: chat.thinking,
                drop_oldest: true,
            },
            // The chat's own thinking budget wins over the settings' one.
            params: Sampling {
                max_thinking_tokens: chat.thinking_budget.or(settings.max_thinking_tokens),
                ..settings.sampling()
            }
            .validate()?,
            source: format!("chat {chat_id}"),
            cancelled: turn.cancelled.clone(),
            sink,
            tools: self.tool_use(&settings, answer_id),
            follow_ups,
        })
    }

    /// The tools a chat's answer may call, per the settings.
    fn tool_use(&self, settings: &crate::Settings, answer: MessageId) -> Option<Tools> {
        settings.tools.enabled.then(|| {
            Tools::Run(ToolUse {
                host: Arc::new(AppTools::new(
                    Builtins::new(self.inner.core.clone()),
                    self.inner.mcp.clone(),
                    settings.tools.timeout(),
                )),
                max_steps: settings.tools.max_steps,
                timeout: settings.tools.timeout(),
                approval: Some(Approval {
                    approvals: self.inner.approvals.clone(),
                    answer,
                }),
            })
        })
    }

    fn model_state_path(&self) -> Option<String> {
        match self.model_state() {
            ModelState::Ready { info, .. } => Some(info.path.display().to_string()),
            ModelState::Loading { path, .. } => Some(path.display().to_string()),
            ModelState::Remote { url, model } => Some(format!("{model} at {url}")),
            ModelState::Connecting { url, .. } => Some(url),
            _ => None,
        }
    }

    /// Queues a generation that belongs to no chat (an API request): nothing is stored, and its
    /// events go to `job.sink`. Refused with `ModelNotReady` unless a model is ready.
    pub fn submit(&self, job: GenerationJob) -> Result<()> {
        match self.model_state() {
            ModelState::Ready { .. } | ModelState::Remote { .. } => self.inner.worker.generate(job),
            other => Err(ChatError::ModelNotReady(Box::new(other))),
        }
    }

    /// The follow-up suggestions under the chat's latest answer, once they are generated (an
    /// [`crate::AppEvent::FollowUpsChanged`] says when they appear or go).
    pub fn follow_ups(&self, chat_id: ChatId) -> Option<FollowUps> {
        self.core().follow_ups(chat_id)
    }

    /// The user is typing (or chose something else): the chat's follow-ups are cancelled if
    /// still being generated, and no longer shown. Whether there were any.
    pub fn dismiss_follow_ups(&self, chat_id: ChatId) -> bool {
        self.core().dismiss_follow_ups(chat_id)
    }

    /// Stops every answer in progress or queued in the chat; each is kept as `interrupted`
    /// with the text it had. Returns whether there was one.
    pub fn stop(&self, chat_id: ChatId) -> bool {
        self.core().stop(chat_id)
    }

    /// The user's answer to call `index` of the answer `message_id`, waiting for approval.
    /// "Always" first marks the tool trusted in the settings.
    pub fn decide_tool(
        &self,
        chat_id: ChatId,
        message_id: MessageId,
        index: usize,
        decision: Decision,
    ) -> Result<()> {
        if self.core().store(|s| s.message(message_id))?.chat_id != chat_id {
            return Err(ChatError::NoSuchMessage(message_id));
        }
        let gone = || ChatError::Invalid("this tool call no longer waits for an answer".into());
        let approvals = &self.inner.approvals;
        let name = approvals.waiting(message_id, index).ok_or_else(gone)?;
        if decision == Decision::Always {
            self.trust_tool(&name)?;
        }
        match approvals.decide(message_id, index, decision) {
            true => Ok(()),
            false => Err(gone()),
        }
    }

    /// Adds the MCP tool the model calls `exposed` to its server's trusted tools.
    fn trust_tool(&self, exposed: &str) -> Result<()> {
        let not_mcp = || ChatError::Invalid(format!("{exposed:?} is not an MCP server's tool"));
        let (server, tool) = mcp::split_exposed(exposed).ok_or_else(not_mcp)?;
        let mut settings = self.settings();
        let config = settings
            .tools
            .mcp_servers
            .iter_mut()
            .find(|s| s.name == server)
            .ok_or_else(not_mcp)?;
        if !config.trusted.iter().any(|t| t == tool) {
            config.trusted.push(tool.into());
        }
        self.update_settings(settings)?;
        Ok(())
    }

    /// Replaces an answer of `chat_id` (and every later message of the chat) with a new one. A
    /// message of another chat is refused as missing: a stale page must not rewrite a chat it
    /// does not show.
    pub fn regenerate(&self, chat_id: ChatId, message_id: MessageId) -> Result<SendOutcome> {
        if self.core().store(|s| s.message(message_id))?.chat_id != chat_id {
            return Err(ChatError::NoSuchMessage(message_id));
        }
        let turn = self.core().begin_answer(chat_id, |store| {
            let old = store.message(message_id)?;
            if old.role != Role::Assistant || old.kind != MessageKind::Chat {
                return Err(ChatError::Invalid(
                    "only a model's answer can be regenerated".into(),
                ));
            }
            self.ensure_model_usable()?;
            let question = store
                .context(chat_id, Some(message_id))?
                .into_iter()
                .rev()
                .find(|m| m.role == Role::User)
                .ok_or_else(|| ChatError::Invalid("there is no question to answer again".into()))?;
            store.delete_messages_from(chat_id, message_id)?;
            let answer =
                store.add_message(NewMessage::answer_placeholder(chat_id, MessageKind::Chat))?;
            Ok((question, answer))
        })?;
        self.queue_answer(chat_id, turn)
    }
}

/// The composer's text, trimmed: refused when empty or longer than [`MAX_MESSAGE_BYTES`].
pub(crate) fn checked_text(text: &str) -> Result<&str> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ChatError::Invalid("type a message first".into()));
    }
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(ChatError::Invalid(format!(
            "the message is too long ({} KiB; at most {} KiB)",
            text.len() / 1024,
            MAX_MESSAGE_BYTES / 1024
        )));
    }
    Ok(text)
}

pub(crate) fn delta(
    chat_id: ChatId,
    message_id: MessageId,
    thinking: bool,
    text: String,
) -> StreamInput {
    let kind = match thinking {
        true => DeltaKind::Thinking,
        false => DeltaKind::Answer,
    };
    StreamInput::Delta {
        chat_id,
        message_id,
        kind,
        text,
        shown: false,
    }
}

pub(crate) fn finish(chat_id: ChatId, message_id: MessageId, end: End) -> StreamInput {
    StreamInput::Finish {
        chat_id,
        message_id,
        end,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc::channel;

    use super::*;
    use crate::events::AppEvent;
    use crate::protocol::{EventKind, StreamEvent};
    use crate::scripted_app::{self, wait};
    use crate::Settings;

    fn answer_id(outcome: SendOutcome) -> MessageId {
        match outcome {
            SendOutcome::Generating {
                assistant_message_id,
                ..
            } => assistant_message_id,
            other => panic!("{other:?}"),
        }
    }

    /// A chat's answer queued behind an API request is told its place as a `queued` frame at
    /// once (the chat UI dropped it and showed only dots), then that it is next, then its tokens;
    /// an answer that never waits has no `queued` frame.
    #[test]
    fn an_answer_queued_behind_another_streams_its_place_then_its_tokens() {
        let mut settings = Settings::default();
        settings.follow_ups.enabled = false;
        settings.tools.enabled = false;
        let replies = [&["Busy", "."][..], &["Hello", " there"], &["Again"]];
        let h = scripted_app::open(
            settings,
            replies
                .iter()
                .map(|r| r.iter().map(|s| s.to_string()).collect())
                .collect(),
        );
        // An API client's answer holds the engine at its first token until released.
        let (started, running) = channel();
        let (release, held) = channel::<()>();
        let mut first = true;
        h.app
            .submit(GenerationJob {
                prompt: Prompt::Chat {
                    messages: vec![engine::ChatMessage::new("user", "Hold on.")],
                    thinking: false,
                    drop_oldest: false,
                },
                params: Settings::default().sampling().validate().unwrap(),
                source: "api 127.0.0.1:9".into(),
                cancelled: Arc::new(AtomicBool::new(false)),
                sink: Box::new(move |e| {
                    if matches!(e, JobEvent::Token(_)) && std::mem::take(&mut first) {
                        started.send(()).unwrap();
                        held.recv().unwrap();
                    }
                }),
                tools: None,
                follow_ups: None,
            })
            .unwrap();
        running.recv().unwrap();

        let chat = h.app.create_chat().unwrap();
        let id = answer_id(h.app.send(chat.id, "Hi").unwrap());
        let stream = |id: MessageId| -> Vec<StreamEvent> {
            h.events
                .lock()
                .unwrap()
                .iter()
                .filter_map(|e| match e {
                    AppEvent::Stream(s) if s.message_id == id => Some(s.clone()),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            stream(id).iter().map(|s| &s.kind).collect::<Vec<_>>(),
            [&EventKind::Queued { ahead: 1 }],
            "the place is published before send returns"
        );
        assert!(
            h.app.events_after(chat.id, 0).events.len() == 1,
            "and kept for a page that attaches late"
        );
        let view = h.app.chat(chat.id).unwrap();
        assert_eq!(
            view.messages.last().unwrap().waiting,
            Some(1),
            "a page rendered now shows the place"
        );

        release.send(()).unwrap();
        wait(|| {
            stream(id)
                .iter()
                .any(|s| s.kind.is_terminal())
                .then_some(())
        });
        let events = stream(id);
        assert!(events.windows(2).all(|w| w[0].id < w[1].id), "{events:?}");
        assert_eq!(
            events[..2].iter().map(|s| &s.kind).collect::<Vec<_>>(),
            [
                &EventKind::Queued { ahead: 1 },
                &EventKind::Queued { ahead: 0 }
            ],
            "told it is next once the API's answer is done: {events:?}"
        );
        let text: String = events[2..]
            .iter()
            .map_while(|s| match &s.kind {
                EventKind::Token { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "Hello there", "{events:?}");

        // Nothing ahead: no `queued` frame at all.
        wait(|| (h.app.inner.worker.status().queued == 0).then_some(()));
        let again = answer_id(h.app.send(chat.id, "Once more").unwrap());
        wait(|| {
            stream(again)
                .iter()
                .any(|s| s.kind.is_terminal())
                .then_some(())
        });
        let names: Vec<&str> = stream(again).iter().map(|s| s.kind.name()).collect();
        assert_eq!(names, ["token", "stats", "complete"]);
    }
}

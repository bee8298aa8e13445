//! What each slash command does and replies (parsing is in [`crate::commands`]).
//!
//! The command as typed is stored as a user message and the reply as an assistant message,
//! both of kind `command`: they survive a reload, the model never sees them, search skips them.
//! `/export` alone stores nothing: its reply is the chat itself.

use std::fmt::Write as _;

use crate::app::ChatApp;
use crate::commands::{self, Command};
use crate::error::{ChatError, Result};
use crate::events::AppEvent;
use crate::export::fence_for;
use crate::quote;
use crate::sampling::Sampling;
use crate::store::{ChatId, MessageKind, MessageStatus, NewMessage, Role};
use crate::views::{CommandAction, SendOutcome};
use crate::worker::{model_name, ModelState};

/// The text of the reset marker stored by `/reset`.
pub const RESET_TEXT: &str =
    "Context reset: the model no longer sees the messages above. They stay here and in search.";

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl ChatApp {
    pub(crate) fn run_command(
        &self,
        chat_id: ChatId,
        text: &str,
        command: Command,
    ) -> Result<SendOutcome> {
        match command {
            Command::Help => {
                self.reply_to_command(chat_id, text, "help", &commands::help_text(), None)
            }
            Command::Status => {
                let reply = self.status_text(chat_id)?;
                self.reply_to_command(chat_id, text, "status", &reply, None)
            }
            Command::Model => {
                let reply = self.model_text();
                self.reply_to_command(chat_id, text, "model", &reply, None)
            }
            Command::Think(budget) => self.think_reply(chat_id, text, &budget),
            Command::NoThink => {
                self.core().store(|s| s.set_thinking(chat_id, false))?;
                let mut reply =
                    "Thinking is **off** for this chat: the model answers directly.".to_owned();
                self.note_no_thinking_mode(&mut reply);
                self.reply_to_command(
                    chat_id,
                    text,
                    "no_think",
                    &reply,
                    Some(CommandAction::Thinking { on: false }),
                )
            }
            Command::Search(query) => self.search_reply(chat_id, text, &query),
            Command::Export => {
                let export = self.export(chat_id)?;
                let fence = fence_for(&export.markdown);
                let reply = format!(
                    "This chat as Markdown (`{}`):\n\n{fence}markdown\n{}\n{fence}",
                    export.file_name,
                    export.markdown.trim_end()
                );
                Ok(SendOutcome::Shown {
                    command: "export".into(),
                    reply,
                    action: Some(CommandAction::Export(export)),
                })
            }
            Command::Reset => self.reset_context(chat_id, text),
            Command::Quote => self.quote(chat_id, text),
        }
    }

    /// Stores the command and its reply.
    /// `/think [TOKENS]`: thinking on, with the chat's own budget when given, else the
    /// settings' one. A budget the settings would refuse is refused here with the same words.
    fn think_reply(&self, chat_id: ChatId, text: &str, arg: &str) -> Result<SendOutcome> {
        let settings = self.settings();
        let budget = match arg.trim() {
            "" => None,
            n => {
                let checked = n.parse::<usize>().map_err(|_| {
                    format!("`/think` takes a number of tokens (e.g. `/think 512`), not “{n}”.")
                });
                let checked = checked.and_then(|n| {
                    Sampling {
                        max_thinking_tokens: Some(n),
                        ..settings.sampling()
                    }
                    .validate()
                    .map(|_| n)
                    .map_err(|e| match e {
                        ChatError::InvalidSetting { reason, .. } => {
                            format!("The thinking budget {reason}.")
                        }
                        e => e.to_string(),
                    })
                });
                match checked {
                    Ok(n) => Some(n),
                    Err(why) => return self.reply_to_command(chat_id, text, "think", &why, None),
                }
            }
        };
        self.core().store(|s| {
            s.set_thinking(chat_id, true)?;
            s.set_thinking_budget(chat_id, budget)
        })?;
        let mut reply =
            "Thinking is **on** for this chat: the model reasons before it answers".to_owned();
        let _ = match (budget, settings.max_thinking_tokens) {
            (Some(n), _) => write!(reply, ", at most {n} tokens of it per answer."),
            (None, Some(n)) => write!(
                reply,
                ", at most {n} tokens of it per answer (the settings' budget)."
            ),
            (None, None) => write!(reply, "."),
        };
        self.note_no_thinking_mode(&mut reply);
        self.reply_to_command(
            chat_id,
            text,
            "think",
            &reply,
            Some(CommandAction::Thinking { on: true }),
        )
    }

    /// Adds why a thinking choice does nothing now, when the loaded model has no thinking mode.
    fn note_no_thinking_mode(&self, reply: &mut String) {
        let state = self.model_state();
        if let (false, ModelState::Ready { info, .. }) = (state.supports_thinking(), &state) {
            let _ = write!(
                reply,
                " (The loaded model, {}, has no thinking mode: this applies to models that have one, such as SmolLM3.)",
                model_name(info)
            );
        }
    }

    pub(crate) fn reply_to_command(
        &self,
        chat_id: ChatId,
        text: &str,
        command: &str,
        reply: &str,
        action: Option<CommandAction>,
    ) -> Result<SendOutcome> {
        let (user, answer) = self.core().store(|store| {
            let user = store.add_message(command_message(chat_id, Role::User, text))?;
            let answer = store.add_message(command_message(chat_id, Role::Assistant, reply))?;
            Ok((user, answer))
        })?;
        self.emit(AppEvent::ChatsChanged);
        Ok(SendOutcome::Command {
            command: command.into(),
            user_message_id: user.id,
            reply_message_id: answer.id,
            streaming: false,
            action,
        })
    }

    fn status_text(&self, chat_id: ChatId) -> Result<String> {
        let status = self.status();
        let chat = self.core().store(|s| s.chat(chat_id))?;
        let mut out = String::from("**Status**\n\n");
        let _ = match &status.model {
            ModelState::Ready {
                info, placement, ..
            } => writeln!(
                out,
                "- Model: {} ({}), ready\n- Device: {placement}",
                model_name(info),
                info.path.display(),
            ),
            other => writeln!(out, "- Model: {}", other.describe()),
        };
        if let ModelState::Ready { info, .. } = &status.model {
            if !info.has_chat_template {
                out.push_str("- Chat template: none in the model file, so ChatML is used\n");
            }
        }
        out.push_str("- Devices:\n");
        for d in &status.devices {
            let _ = writeln!(out, "  - {}", crate::device::describe(d));
        }
        let e = &status.engine;
        let _ = writeln!(out, "- Threads: {}", status.threads);
        if e.context_len > 0 {
            let _ = writeln!(
                out,
                "- Context: {} of {} tokens in use ({:.0}%)",
                e.cached_tokens,
                e.context_len,
                100.0 * e.cached_tokens as f64 / e.context_len as f64
            );
        }
        match &e.last {
            Some(s) => {
                let _ = writeln!(
                    out,
                    "- Last answer: {:.1} tokens/s ({} tokens; prompt {} tokens at {:.0} tokens/s, {} reused from the cache)",
                    s.decode_tok_s, s.completion_tokens, s.prompt_tokens, s.prefill_tok_s, s.cached_tokens
                );
            }
            None => out.push_str("- Last answer: none yet\n"),
        }
        let _ = writeln!(out, "- Queue: {} answer(s) waiting or running", e.queued);
        let _ = writeln!(out, "- Local server: {}", status.server.describe());
        // Whether a model thinks is its template's fact, not the chat's wish.
        let budget = chat
            .thinking_budget
            .map(|n| format!(", at most {n} tokens per answer"))
            .or_else(|| {
                self.settings()
                    .max_thinking_tokens
                    .map(|n| format!(", at most {n} tokens per answer (the settings' budget)"))
            })
            .unwrap_or_default();
        let _ = match (&status.model, chat.thinking) {
            (ModelState::Ready { info, .. }, _) if !status.model.supports_thinking() => write!(
                out,
                "- This chat: no thinking ({} has no thinking mode)",
                model_name(info)
            ),
            (_, true) => write!(out, "- This chat: thinking on{budget}"),
            (_, false) => write!(out, "- This chat: thinking off"),
        };
        Ok(out)
    }

    fn model_text(&self) -> String {
        let (info, placement, threads) = match self.model_state() {
            ModelState::Ready {
                info,
                placement,
                threads,
            } => (info, placement, threads),
            other => return other.describe(),
        };
        let c = &info.config;
        let weights: Vec<String> = info
            .weight_types
            .iter()
            .map(|(t, n)| format!("{t} × {n}"))
            .collect();
        let nope = match info.nope_layers.is_empty() {
            true => "none".to_owned(),
            false => format!("{:?}", info.nope_layers),
        };
        let rows = [
            ("Name", model_name(&info)),
            (
                "File",
                format!("{} ({})", info.path.display(), mib(info.file_bytes)),
            ),
            ("Architecture", c.arch.name().to_owned()),
            ("Layers", c.n_layer.to_string()),
            ("Hidden size", c.n_embd.to_string()),
            (
                "Attention heads",
                format!("{} ({} key/value)", c.n_head, c.n_head_kv),
            ),
            ("Feed-forward size", c.n_ff.to_string()),
            ("Vocabulary", format!("{} tokens", info.vocab_size)),
            (
                "Context",
                format!(
                    "{} tokens in use (trained for {})",
                    info.context_len, c.context_length
                ),
            ),
            ("RoPE base", format!("{}", c.rope_theta)),
            ("Layers without RoPE", nope),
            ("Weights", weights.join(", ")),
            (
                "Chat template",
                match info.has_chat_template {
                    true => "yes",
                    false => "none in the model file: ChatML is used",
                }
                .to_owned(),
            ),
            (
                "Device",
                match placement.backend() {
                    engine::BackendKind::Native => format!("{placement} with {threads} threads"),
                    engine::BackendKind::Candle => placement.to_string(),
                },
            ),
            ("Load time", format!("{:.0} ms", info.load_ms)),
        ];
        let mut out = String::from("**Model**\n\n| | |\n|---|---|\n");
        for (k, v) in rows {
            let _ = writeln!(out, "| {k} | {} |", v.replace('|', "\\|"));
        }
        out
    }

    fn search_reply(&self, chat_id: ChatId, text: &str, query: &str) -> Result<SendOutcome> {
        if query.trim().is_empty() {
            let reply = "Usage: `/search QUERY` searches every chat, e.g. `/search prime numbers`.";
            return self.reply_to_command(chat_id, text, "search", reply, None);
        }
        let hits = match self.search(query) {
            Ok(hits) => hits,
            Err(ChatError::InvalidQuery(why)) => {
                return self.reply_to_command(chat_id, text, "search", &why, None)
            }
            Err(e) => return Err(e),
        };
        let mut reply = match hits.len() {
            0 => format!("No messages match “{query}”."),
            n => format!("**{n} result(s) for “{query}”**\n"),
        };
        for (i, hit) in hits.iter().enumerate() {
            let who = match hit.role {
                Role::User => "you",
                _ => "answer",
            };
            let _ = write!(
                reply,
                "\n{}. **{}** ({who}): {}",
                i + 1,
                hit.chat_title,
                hit.snippet_marked("**", "**").replace('\n', " ")
            );
        }
        let action = CommandAction::Search {
            query: query.to_owned(),
            hits,
        };
        self.reply_to_command(chat_id, text, "search", &reply, Some(action))
    }

    fn reset_context(&self, chat_id: ChatId, text: &str) -> Result<SendOutcome> {
        let (user, marker) = self.core().while_idle(chat_id, |store| {
            let user = store.add_message(command_message(chat_id, Role::User, text))?;
            let marker = store.add_message(NewMessage {
                chat_id,
                role: Role::System,
                kind: MessageKind::Reset,
                content: RESET_TEXT,
                status: MessageStatus::Complete,
            })?;
            Ok((user, marker))
        })?;
        self.inner.worker.reset()?;
        self.emit(AppEvent::ChatsChanged);
        Ok(SendOutcome::Command {
            command: "reset".into(),
            user_message_id: user.id,
            reply_message_id: marker.id,
            streaming: false,
            action: Some(CommandAction::ContextReset),
        })
    }

    fn quote(&self, chat_id: ChatId, text: &str) -> Result<SendOutcome> {
        let tx = self.core().stream_sender()?;
        let turn = self.core().begin_answer(chat_id, |store| {
            let user = store.add_message(command_message(chat_id, Role::User, text))?;
            let answer = store.add_message(NewMessage::answer_placeholder(
                chat_id,
                MessageKind::Command,
            ))?;
            Ok((user, answer))
        })?;
        // As an answer's: both rows reach the disk in one flush before the passage streams.
        self.core()
            .sync()
            .inspect_err(|e| self.core().abandon_answer(turn.answer.id, e))?;
        quote::spawn(tx, chat_id, turn.answer.id, turn.cancelled);
        Ok(SendOutcome::Command {
            command: "quote".into(),
            user_message_id: turn.question.id,
            reply_message_id: turn.answer.id,
            streaming: true,
            action: None,
        })
    }
}

fn command_message(chat_id: ChatId, role: Role, content: &str) -> NewMessage<'_> {
    NewMessage {
        chat_id,
        role,
        kind: MessageKind::Command,
        content,
        status: MessageStatus::Complete,
    }
}

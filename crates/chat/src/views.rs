//! What the facade's methods return: a chat as the UI shows it, what `send` did, status.

use serde::{Deserialize, Serialize};

use crate::export::Export;
use crate::local_server::ServerStatus;
use crate::protocol::EventId;
use crate::search::SearchHit;
use crate::store::{Chat, Message, MessageId};
use crate::worker::{EngineStatus, ModelState};

/// A chat with its messages, as of `last_event_id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatView {
    pub chat: Chat,
    /// In order. An answer in progress has status `streaming` and its text so far.
    pub messages: Vec<Message>,
    /// The messages include every stream event up to this id: apply only later ones.
    pub last_event_id: EventId,
    /// An answer (or `/quote`) is in progress: show Stop, not Send.
    pub busy: bool,
}

/// What `send` did. JSON: `{"outcome":"generating","user_message_id":1,
/// "assistant_message_id":2}` or `{"outcome":"command","command":"status",...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SendOutcome {
    /// The answer is queued; its events carry `assistant_message_id`.
    Generating {
        user_message_id: MessageId,
        assistant_message_id: MessageId,
    },
    /// A slash command ran; its reply is stored. `streaming`: the reply arrives as stream
    /// events (`/quote`).
    Command {
        command: String,
        user_message_id: MessageId,
        reply_message_id: MessageId,
        streaming: bool,
        action: Option<CommandAction>,
    },
    /// A command whose reply is shown once and never stored (`/export`: storing the document
    /// would double the chat with every export).
    Shown {
        command: String,
        reply: String,
        action: Option<CommandAction>,
    },
}

/// Something the shell may do with a command's result beyond showing the reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum CommandAction {
    /// Offer to save the chat (`/export`).
    Export(Export),
    /// Show clickable results (`/search`).
    Search { query: String, hits: Vec<SearchHit> },
    /// The chat's thinking mode changed (`/think`, `/no_think`).
    Thinking { on: bool },
    /// A fresh context starts after the reset marker (`/reset`).
    ContextReset,
}

/// What `/status` reports, also for a status bar.
#[derive(Clone, Debug, Serialize)]
pub struct AppStatus {
    pub model: ModelState,
    pub engine: EngineStatus,
    pub threads: usize,
    /// Every device, usable or with the reason it is not ([`crate::ChatApp::devices`]).
    pub devices: Vec<engine::device::DeviceReport>,
    pub server: ServerStatus,
}

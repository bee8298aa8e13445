//! The app core of NotSo-SmolLM3 Bot, free of any UI or transport: the shell (Tauri) calls
//! [`ChatApp`] and forwards its [`AppEvent`]s.
//!
//! The flow, file by file:
//! - [`app`]: [`ChatApp`], the facade, opened on [`AppPaths`] with an [`EventSink`] for
//!   [`AppEvent`]s; it returns [`views`]. [`send`]: the composer text is parsed ([`commands`]);
//!   a message is stored ([`store`]) with a `streaming` placeholder for the answer, and a
//!   [`worker::GenerationJob`] is queued. `core` (private) holds the shared state behind
//!   operations that own their locking, "begin an answer" among them.
//! - [`worker`]: one thread owns the [`engine::Engine`] and its KV cache, loads models in the
//!   background ([`ModelState`]), renders the conversation with the model's template and
//!   generates; deltas go to the stream thread.
//! - `stream` (private) + [`protocol`]: deltas become coalesced, numbered [`StreamEvent`]s
//!   (`queued`, `thinking`, `token`, `stats`, `complete`, `error`) kept in a per-chat [`EventLog`] until
//!   the answer is stored; `events_after` replays them. [`stats`]: the numbers of an answer.
//! - [`store`] (+ [`migrations`], [`search`], [`export`]): SQLite with WAL, FTS5 search over
//!   messages, Markdown export. [`data_lock`]: one process at a time opens a data folder.
//! - [`followups`]: up to three next questions after an answer, generated on the cached prefix.
//! - [`commands`] parses slash commands and suggests them; [`replies`] runs them; [`quote`]
//!   streams the built-in passage without a model.
//! - [`settings`]: the settings file, validation and what a change needs; [`sampling`]: an
//!   answer's sampling choices, validated once for the worker; [`remote`]: an OpenAI-compatible
//!   endpoint that answers instead of the local engine; [`local_server`]: where the app
//!   may serve over HTTP, and its status; [`device`]: the devices the model can run on, each other
//!   with the reason (the engine's, or too little memory for the model).
//!
//! Stages are named by their types: composer text -> [`commands::Parsed`] ->
//! [`worker::GenerationJob`] -> [`worker::JobEvent`] -> [`StreamEvent`] -> [`AppEvent`].

pub mod app;
pub mod branches;
pub mod commands;
mod core;
pub mod data_lock;
pub mod device;
pub mod error;
pub mod events;
pub mod export;
pub mod followups;
pub mod local_server;
pub mod migrations;
pub mod paths;
pub mod protocol;
mod queue;
pub mod quote;
pub mod remote;
pub mod replies;
pub mod sampling;
#[cfg(test)]
mod scripted_app;
pub mod search;
pub mod send;
pub mod settings;
pub mod stats;
pub mod store;
mod stream;
pub mod tools;
pub mod views;
pub mod worker;

pub use app::{ChatApp, RunOverrides};
pub use branches::{Branches, Switch};
pub use commands::CommandSuggestion;
pub use error::{ChatError, Result};
pub use events::{AppEvent, EventSink};
pub use export::Export;
pub use followups::{FollowUpSettings, FollowUps};
pub use local_server::{LocalServer, ServerStatus};
pub use paths::{default_database_path, AppPaths};
pub use protocol::{EventId, EventKind, EventLog, EventsAfter, StreamEvent};
pub use remote::{Endpoint, RemoteModel};
pub use sampling::{AnswerParams, Sampling};
pub use search::{SearchHit, SnippetPart};
pub use settings::{Apply, ModelSource, Settings, SettingsDiff};
pub use stats::{Finish, MessageStats};
pub use store::{Chat, ChatId, Message, MessageId, MessageKind, MessageStatus, Role, Store};
pub use tools::{ToolRecord, ToolStatus, Tools};
pub use views::{AppStatus, ChatView, CommandAction, SendOutcome};
pub use worker::{
    EngineStatus, FollowUpRequest, GenerationJob, JobError, JobEvent, LoadError, ModelState, Prompt,
};

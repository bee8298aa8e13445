//! The chat core's error type: one enum, messages a user can act on.

use std::path::PathBuf;

use crate::store::{ChatId, MessageId};

/// Everything the chat core can refuse or fail at. The shell shows `to_string()` to the user.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("cannot open the chat database {path}: {error}")]
    OpenStore {
        path: PathBuf,
        error: rusqlite::Error,
    },
    #[error("the chat database {path} was written by a newer version of this app (schema {found}, this app knows up to {known}); update the app")]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    /// Another process (or another open chat core) has the data folder: see
    /// [`crate::data_lock`].
    #[error(
        "the chat data in {} is in use by another NotSo-SmolLM3 process{}; quit that one first",
        dir.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    DataInUse { dir: PathBuf, pid: Option<u32> },
    #[error("chat database error: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("cannot {action} {path}: {error}")]
    Io {
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("chat {0} does not exist (it may have been deleted)")]
    NoSuchChat(ChatId),
    #[error("message {0} does not exist (it may have been deleted)")]
    NoSuchMessage(MessageId),
    /// A search query with nothing to search for, or another unusable query.
    #[error("{0}")]
    InvalidQuery(String),
    #[error("invalid setting `{field}`: {reason}")]
    InvalidSetting { field: &'static str, reason: String },
    /// A field of the MCP server at `index` of `tools.mcp_servers` (the settings form shows it
    /// beside that field).
    #[error("invalid setting `tools.mcp_servers[{index}].{field}`: {reason}")]
    InvalidMcpServer {
        index: usize,
        /// `name`, `command` or `env`.
        field: &'static str,
        reason: String,
    },
    #[error("the settings file {path} is not valid: {reason}")]
    SettingsFile { path: PathBuf, reason: String },
    /// A request that makes no sense in the current state (empty message, regenerating a user
    /// message, ...).
    #[error("{0}")]
    Invalid(String),
    /// The chat is still producing an answer.
    #[error("this chat is still answering; wait for it or press Stop")]
    Busy(ChatId),
    /// No model is loaded (or it failed to load), in this state; its text says why and what to do.
    #[error("{}", .0.describe())]
    ModelNotReady(Box<crate::worker::ModelState>),
    #[error("cannot reach the endpoint {url}: {reason}. Check its address in Settings and that the server runs")]
    EndpointUnreachable { url: String, reason: String },
    #[error("the endpoint {url} sent nothing for {secs} s (the timeout in Settings)")]
    EndpointTimeout { url: String, secs: u64 },
    #[error(
        "the endpoint {url} refused the API key ({status}{}); check the key in Settings",
        colon(message)
    )]
    EndpointAuth {
        url: String,
        status: u16,
        message: String,
    },
    #[error(
        "the endpoint {url} does not serve the model “{model}”{}",
        served_list(served)
    )]
    EndpointModelNotFound {
        url: String,
        model: String,
        /// The models it does serve, or its own words (a 404's message).
        served: String,
    },
    /// A request the endpoint refuses as asked (400): too long for its context, say.
    #[error("the endpoint {url} refused the request: {message}")]
    EndpointRejected { url: String, message: String },
    #[error("the endpoint {url} failed (HTTP {status}){}", colon(message))]
    EndpointFailed {
        url: String,
        status: u16,
        message: String,
    },
    /// It answered, but not as an OpenAI-compatible server does.
    #[error("the endpoint {url} does not speak the OpenAI API as expected: {reason}")]
    EndpointProtocol { url: String, reason: String },
    #[error("the engine worker has stopped; restart the app")]
    WorkerGone,
}

fn colon(message: &str) -> String {
    match message.is_empty() {
        true => String::new(),
        false => format!(": {message}"),
    }
}

fn served_list(served: &str) -> String {
    match served.is_empty() {
        true => " (it lists none)".into(),
        false => format!(" ({served})"),
    }
}

impl ChatError {
    /// The chat database, when it is what cannot be used (damaged, unreadable, written by a newer
    /// version): the shell may offer to move it aside and start fresh.
    pub fn unusable_database(&self) -> Option<&std::path::Path> {
        match self {
            ChatError::OpenStore { path, .. } | ChatError::NewerSchema { path, .. } => Some(path),
            _ => None,
        }
    }
}

pub type Result<T, E = ChatError> = std::result::Result<T, E>;

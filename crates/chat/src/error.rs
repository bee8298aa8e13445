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
    #[error("the settings file {path} is not valid: {reason}")]
    SettingsFile { path: PathBuf, reason: String },
    /// A request that makes no sense in the current state (empty message, regenerating a user
    /// message, ...).
    #[error("{0}")]
    Invalid(String),
    /// The chat is still producing an answer.
    #[error("this chat is still answering; wait for it or press Stop")]
    Busy(ChatId),
    /// No model is loaded (or it failed to load); the text says why and what to do.
    #[error("{0}")]
    ModelNotReady(String),
    #[error("the engine worker has stopped; restart the app")]
    WorkerGone,
}

pub type Result<T, E = ChatError> = std::result::Result<T, E>;

//! [`AppEvent`]: everything the core tells the shell, through the [`EventSink`] it was opened
//! with.

use std::sync::Arc;

use serde::Serialize;

use crate::protocol::StreamEvent;
use crate::settings::Settings;
use crate::store::ChatId;
use crate::worker::ModelState;

/// Everything the shell is told. JSON: `{"type":"stream","data":{...StreamEvent}}`,
/// `{"type":"model_state","data":{"state":"loading",...}}`, `{"type":"chats_changed"}`,
/// `{"type":"settings_changed","data":{...Settings}}`, `{"type":"follow_ups_changed","data":{"chat_id":3}}`.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum AppEvent {
    Stream(StreamEvent),
    ModelState(ModelState),
    /// A chat was created, renamed, deleted, titled or got a new message: refresh the list.
    ChatsChanged,
    /// Boxed: the settings are far larger than the other events.
    SettingsChanged(Box<Settings>),
    /// The chat's follow-up suggestions appeared or went away: read them with
    /// [`crate::ChatApp::follow_ups`].
    FollowUpsChanged {
        chat_id: ChatId,
    },
}

impl AppEvent {
    /// `stream`, `model_state`, `chats_changed`, `settings_changed` or `follow_ups_changed`.
    pub fn name(&self) -> &'static str {
        match self {
            AppEvent::Stream(_) => "stream",
            AppEvent::ModelState(_) => "model_state",
            AppEvent::ChatsChanged => "chats_changed",
            AppEvent::SettingsChanged(_) => "settings_changed",
            AppEvent::FollowUpsChanged { .. } => "follow_ups_changed",
        }
    }
}

/// Receives every [`AppEvent`], on the app's threads: keep it quick (forward and return).
pub type EventSink = Arc<dyn Fn(AppEvent) + Send + Sync>;

//! One axum [`Router`] over the chat core, for every transport: the desktop app calls it as a tower
//! `Service` per `app://` request, and [`http::serve`] answers HTTP with it (the chat UI in any
//! browser, the OpenAI-compatible [`api`]).
//!
//! - [`Server`]: the state every route shares: the chat core ([`chat::ChatApp`]), the [`Hub`] of
//!   page events, the templates ([`views`]), the model downloads ([`models`]).
//! - [`routes`]: pages and htmx fragments (table in `doc/app.md`); they render [`pages`]' view
//!   models with [`views`] and answer with a [`reply::Reply`]. Static files come from `ui/dist`,
//!   embedded at build time.
//! - [`hub`]: chat core events -> page events (stream frames, page-wide triggers); the desktop shell
//!   listens to them, HTTP clients read them as Server-Sent Events ([`sse`]).
//! - [`shell`]: what needs a window (dialogs, window management), behind a trait the desktop app
//!   implements; over HTTP there is none.
//!
//! The flow of a message: `POST /chats/{id}/messages` -> [`chat::ChatApp::send`] -> the worker ->
//! [`chat::AppEvent::Stream`] -> [`Hub`] -> Tauri `chat-stream` event or SSE on
//! `/chats/{id}/stream` -> `ui/static/sse.js` swaps the frame into the page.

pub mod api;
pub mod http;
pub mod hub;
pub mod models;
pub mod pages;
pub mod reply;
pub mod routes;
pub mod shell;
pub mod sse;
pub mod views;

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use chat::{ChatApp, ChatId, EventId};

pub use hub::{Frame, Hub, PageEvent, StateEvent};
pub use shell::{Shell, WithShell};

use crate::models::Models;
use crate::views::Views;

/// Where model downloads come from (a hub or a mirror) and the token for gated models.
#[derive(Clone, Debug, Default)]
pub struct Downloads {
    pub endpoint: Option<String>,
    pub token: Option<String>,
}

struct Inner {
    chat: ChatApp,
    hub: Hub,
    views: Views,
    models: Models,
    /// The desktop app's HTTP listener ("Local server").
    listener: tokio::sync::Mutex<Option<http::Running>>,
}

/// The state of the routes. Cheap to clone.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

impl Server {
    /// `chat` must have been opened with `hub.sink()`, so its events reach the pages.
    pub fn new(chat: ChatApp, hub: Hub, downloads: Downloads) -> Server {
        let models = Models::new(
            chat.paths().models_dir.clone(),
            downloads.endpoint,
            downloads.token,
        );
        Server {
            inner: Arc::new(Inner {
                chat,
                hub,
                views: Views::new(),
                models,
                listener: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// The pages, fragments and streams of the chat UI.
    pub fn router(&self) -> Router {
        routes::router(self.clone())
    }

    pub fn chat(&self) -> &ChatApp {
        &self.inner.chat
    }

    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    pub(crate) fn views(&self) -> &Views {
        &self.inner.views
    }

    pub(crate) fn models(&self) -> &Models {
        &self.inner.models
    }

    pub(crate) fn listener(&self) -> &tokio::sync::Mutex<Option<http::Running>> {
        &self.inner.listener
    }

    /// Shows `text` as a toast in every page.
    pub fn toast(&self, text: impl Into<String>, error: bool) {
        self.hub().state(StateEvent::toast(text, error));
    }

    /// Imports a GGUF file dropped on a window, telling the user how it went.
    pub fn import_dropped(&self, path: &Path) {
        match self.models().import(self.chat(), path) {
            Ok(p) => self.hub().state(StateEvent {
                trigger: Some("model-changed"),
                ..StateEvent::toast(format!("Imported {}; loading it now.", p.display()), false)
            }),
            Err(e) => self.toast(e.to_string(), true),
        }
    }

    /// The stream frames after `after`. When they were dropped because the answer is stored, one
    /// `complete` frame (for no message in particular) tells the page to fetch the stored message.
    pub fn frames_after(&self, chat_id: ChatId, after: EventId) -> Vec<Frame> {
        let got = self.chat().events_after(chat_id, after);
        if got.reload {
            return vec![Frame {
                id: got.last_id.max(after.saturating_add(1)),
                chat: chat_id,
                message: None,
                event: "complete",
                data: "stored".into(),
            }];
        }
        got.events.iter().map(Frame::new).collect()
    }
}

//! [`Hub`]: what the pages are told without asking, whichever transport carries it. The chat core's
//! [`AppEvent`]s become [`PageEvent`]s: stream [`Frame`]s (`chat-stream`) and [`StateEvent`]s
//! (`app-state`: page-wide htmx triggers, busy flags, toasts). The desktop shell listens
//! ([`Hub::listen`]) and emits them as Tauri events; HTTP clients subscribe ([`Hub::subscribe`])
//! through Server-Sent Events (see [`crate::sse`]).

use std::sync::{Arc, RwLock};

use chat::protocol::{EventKind, StreamEvent};
use chat::{AppEvent, ChatId, EventSink};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::pages::{stats_line, waiting_line};

/// A stream event as the page reads it (`ui/static/sse.js`):
/// `{"id":17,"chat":3,"message":42,"event":"token","data":"Paris"}`; a `queued` frame's data is
/// the text the waiting answer shows.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Frame {
    pub id: u64,
    pub chat: ChatId,
    /// `None` on the `complete` frame that stands for events already dropped (see
    /// [`crate::Server::frames_after`]).
    pub message: Option<i64>,
    pub event: &'static str,
    pub data: String,
}

impl Frame {
    pub fn new(ev: &StreamEvent) -> Self {
        let data = match &ev.kind {
            EventKind::Queued { ahead } => waiting_line(*ahead),
            EventKind::Thinking { text } | EventKind::Token { text } => text.clone(),
            EventKind::Tool { call } => serde_json::to_string(call).unwrap_or_default(),
            EventKind::Stats { stats } => stats_line(stats),
            EventKind::Complete { status } => status.as_str().to_string(),
            EventKind::Error { message } => message.clone(),
        };
        Self {
            id: ev.id,
            chat: ev.chat_id,
            message: Some(ev.message_id),
            event: ev.kind.name(),
            data,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self.event, "complete" | "error")
    }
}

/// Page-wide news (`app-state`): `{"trigger":"chats-changed"}`, `{"busy":true,"chat":3}`,
/// `{"toast":"Saved","kind":""}`; `app.js` applies it.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct StateEvent {
    /// An htmx event fired on `<body>` (`model-changed`, `chats-changed`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<&'static str>,
    /// The chat's composer shows Stop (`true`) or Send.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busy: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat: Option<ChatId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub toast: Option<String>,
    /// `""` or `"error"`, with a toast.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
}

impl StateEvent {
    pub fn trigger(name: &'static str) -> Self {
        StateEvent {
            trigger: Some(name),
            ..Self::default()
        }
    }

    pub fn busy(chat: ChatId, busy: bool) -> Self {
        StateEvent {
            busy: Some(busy),
            chat: Some(chat),
            ..Self::default()
        }
    }

    pub fn toast(text: impl Into<String>, error: bool) -> Self {
        StateEvent {
            toast: Some(text.into()),
            kind: Some(if error { "error" } else { "" }),
            ..Self::default()
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum PageEvent {
    /// Tauri event `chat-stream`; SSE on `/chats/{id}/stream`.
    Frame(Frame),
    /// Tauri event `app-state`; SSE event `app-state` on `/events`.
    State(StateEvent),
}

type Listener = Arc<dyn Fn(&PageEvent) + Send + Sync>;

struct Inner {
    tx: broadcast::Sender<PageEvent>,
    listeners: RwLock<Vec<Listener>>,
}

/// Fans page events out to the desktop shell and to HTTP clients. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// Events a slow HTTP client may fall behind by before it resumes from the replay log.
const BACKLOG: usize = 1024;

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Hub {
        Hub {
            inner: Arc::new(Inner {
                tx: broadcast::channel(BACKLOG).0,
                listeners: RwLock::new(Vec::new()),
            }),
        }
    }

    /// The sink to open the chat core with: its events, as page events.
    pub fn sink(&self) -> EventSink {
        let hub = self.clone();
        Arc::new(move |event| hub.forward(&event))
    }

    fn forward(&self, event: &AppEvent) {
        match event {
            AppEvent::Stream(ev) => {
                self.publish(PageEvent::Frame(Frame::new(ev)));
                if ev.kind.is_terminal() {
                    self.publish(PageEvent::State(StateEvent {
                        trigger: Some("chats-changed"),
                        ..StateEvent::busy(ev.chat_id, false)
                    }));
                }
            }
            AppEvent::ModelState(_) => self.state(StateEvent::trigger("model-changed")),
            AppEvent::ChatsChanged => self.state(StateEvent::trigger("chats-changed")),
            AppEvent::SettingsChanged(_) => self.state(StateEvent::trigger("settings-changed")),
            AppEvent::FollowUpsChanged { chat_id } => self.state(StateEvent {
                chat: Some(*chat_id),
                ..StateEvent::trigger("follow-ups-changed")
            }),
        }
    }

    pub fn publish(&self, event: PageEvent) {
        for listener in self.inner.listeners.read().unwrap().iter() {
            listener(&event);
        }
        // No subscriber is not an error: nobody is watching over HTTP.
        let _ = self.inner.tx.send(event);
    }

    pub fn state(&self, event: StateEvent) {
        self.publish(PageEvent::State(event))
    }

    /// Calls `f` with every event, on the thread that publishes it: keep it quick.
    pub fn listen(&self, f: impl Fn(&PageEvent) + Send + Sync + 'static) {
        self.inner.listeners.write().unwrap().push(Arc::new(f));
    }

    /// Every event from now on (a receiver that falls [`BACKLOG`] behind is told it lagged).
    pub fn subscribe(&self) -> broadcast::Receiver<PageEvent> {
        self.inner.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat::MessageStatus;

    #[test]
    fn a_terminal_frame_also_clears_busy_and_refreshes_the_chat_list() {
        let hub = Hub::new();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        hub.listen(move |e| s.lock().unwrap().push(e.clone()));
        (hub.sink())(AppEvent::Stream(StreamEvent {
            id: 5,
            chat_id: 2,
            message_id: 9,
            kind: EventKind::Complete {
                status: MessageStatus::Complete,
            },
        }));
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen[0],
            PageEvent::Frame(Frame {
                id: 5,
                chat: 2,
                message: Some(9),
                event: "complete",
                data: "complete".into()
            })
        );
        let PageEvent::State(state) = &seen[1] else {
            panic!("{seen:?}")
        };
        assert_eq!(
            serde_json::to_value(state).unwrap(),
            serde_json::json!({"trigger": "chats-changed", "busy": false, "chat": 2})
        );
    }
}
